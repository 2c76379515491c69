"""The writer: stores results idempotently, matches them against the watch rules, and asks for the
roll-ups that are due."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.jobs.result import JobResult, stored_counts
from pipeline.messages import EndMarker, parse
from pipeline.queue import retrying
from pipeline.rollup import rollups_due, window_of
from pipeline.types import Segment, Summary

from actors.runtime.stage import Stage, unix_seconds


class WriterStage(Stage):
    """Stores results idempotently and drives the roll-ups from what is stored, with
    the same windows as --local: window w of a stream closes when a later chunk
    arrives or the stream ends; the stream summary follows its last window."""

    role = "writer"

    def __init__(self, cfg, redis_url, name, store_root: str):
        super().__init__(cfg, redis_url, name)
        from pipeline.store import Store

        self.store = Store(store_root)
        from actors.runtime.watch import watch_service

        # rules of the data directory (store_root's parent); their notifier is a thread of this actor
        self.watch = watch_service(cfg, Path(store_root).parent, self.r, self.store, log=self.log_line)
        self.window_seconds = cfg.summary.window_seconds
        self.views: dict[str, dict] = {}
        self._replanned = 0.0

    def log_line(self, line: str) -> None:
        print(f"{self.name}: {line}", flush=True)

    def run(self) -> str:
        try:
            return super().run()
        finally:
            self.watch.close(drain_s=0)  # the driver waited for deliveries (watch.drain_s) before stopping us

    def _view(self, stream_id: str) -> dict:
        """What the store holds for a stream, loaded once (a restarted writer rebuilds it)."""
        if stream_id not in self.views:  # only this stream's partition is read, however large the store
            chunks = self.store.stream_rows("segments", stream_id, ["chunk_seq", "t_start", "t_end", "caption",
                                                                    "wall_clock"])
            summaries = self.store.stream_rows("summaries", stream_id, ["level", "seq", "text"])
            self.views[stream_id] = {
                "chunks": {r["chunk_seq"]: r for r in chunks},
                "summaries": {(r["level"], r["seq"]): r for r in summaries},
            }
        return self.views[stream_id]

    def tick(self) -> None:
        msgs = self.q.consume([self.keys.results], count=16, block_ms=200)
        if not msgs and time.monotonic() - self._replanned > 2.0:
            # A writer that died between its ack and its plan left decisions unmade:
            # planning is idempotent, so every open stream is simply planned again.
            self._replanned = time.monotonic()
            done = {k.decode() for k in self.r.hkeys(self.keys.done)}
            for stream_id in sorted(m.decode() for m in self.r.smembers(self.keys.active)):
                if stream_id not in done:
                    self._roll_up(stream_id)
            return
        records, touched, acks, ends = [], set(), [], {}
        for msg in msgs:
            try:
                m = parse(msg.data, Segment, Summary, EndMarker)
                if isinstance(m, EndMarker):
                    ends[m.stream_id] = m.to_json()
                else:
                    records.append(m)
                touched.add(m.stream_id)
                acks.append(msg)
            except (ValueError, TypeError, KeyError) as err:
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
        if not acks:
            return
        for stream_id in touched:
            self._view(stream_id)
        self.store.write_records(records)  # durable (and idempotent) before the ack
        self.watch.observe(records, strict=True)  # into the outbox before the ack (a Redis error: the tick again)
        for rec in records:
            view = self.views[rec.stream_id]
            if isinstance(rec, Segment):
                view["chunks"][rec.chunk_seq] = {"t_start": rec.t_start, "t_end": rec.t_end,
                                                 "caption": rec.caption, "wall_clock": rec.wall_clock}
            else:
                view["summaries"][(rec.level, rec.seq)] = {"text": rec.text}
        self.handoff(acks, [], extra=(lambda pipe: pipe.hset(self.keys.ends, mapping=ends)) if ends else None)
        for stream_id in touched:
            self._roll_up(stream_id)

    def _roll_up(self, stream_id: str) -> None:
        view = self._view(stream_id)
        chunks = view["chunks"]
        end_raw = self.r.hget(self.keys.ends, stream_id)
        end = EndMarker.from_json(end_raw) if end_raw else None
        prefix = []
        while len(prefix) in chunks:
            prefix.append(chunks[len(prefix)])
        complete = end is not None and len(prefix) == end.last_chunk_seq + 1
        if prefix and view.get("done_s") != prefix[-1]["t_end"]:  # GET /progress, the CLI's progress bars
            view["done_s"] = prefix[-1]["t_end"]
            retrying(lambda: self.r.hset(self.keys.ingest(stream_id), "done_s", view["done_s"]))
        rows = [dict(row, wall_clock=unix_seconds(row["wall_clock"])) for row in prefix]
        # only this run's windows: a store may hold summaries of another window length for the same stream
        windows = {window_of(r["t_start"], rows[0]["t_start"], self.window_seconds) for r in rows}
        written = {k: v["text"] for k, v in view["summaries"].items() if k[0] != "window" or k[1] in windows}
        requests = rollups_due(stream_id, rows, written,
                               t0=rows[0]["t_start"] if rows else None, t_end=rows[-1]["t_end"] if rows else None,
                               ended=complete and end.status == "done", window_seconds=self.window_seconds)
        for req in requests:
            if not self.r.sismember(self.keys.rolled, req.tag):  # ask once (one writer); the store dedupes repeats
                pipe = self.r.pipeline(transaction=True)
                pipe.sadd(self.keys.rolled, req.tag)
                self.q.publish(self.keys.rollup, req.to_bytes(), pipe)
                pipe.execute()
        # nothing due: every window a later chunk closed is summarised (and, if it ended well, the stream)
        if complete and not requests and not self.r.hexists(self.keys.done, stream_id):
            if end.status == "failed" or ("stream", 0) in view["summaries"]:
                self._finish(stream_id, end, view)

    def _finish(self, stream_id: str, end: EndMarker, view: dict) -> None:
        counts = stored_counts(view["chunks"], view["summaries"], self.window_seconds)
        row = JobResult.from_job(end.job, stream_id=stream_id, status=end.status, error=end.error,
                                 finished_at=time.time()).counted(counts).row()
        self.store.write_job(row)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.done, stream_id, json.dumps(row))
        pipe.srem(self.keys.active, stream_id)
        pipe.execute()
        self.views.pop(stream_id, None)
