"""The pipeline's stages as queue workers: decode -> encode -> temporal -> summarize -> write.

Each class is plain Python around pipeline/ objects (runtime.py makes them Ray
actors). Stages talk only through Redis Streams:

    {p}:frames          FrameChunks (the frames that changed) / end markers   group encoders
    {p}:tokens:<stream> projected grids (fp16) of the frames group temporal (its one owner)
                        SigLIP encoded, + the reuse mask
    {p}:pooled          pooled tokens + visual embedding    group summarizers
    {p}:rollup          window / stream summary requests    group summarizers
    {p}:results         segments, summaries, end markers    group writer

Every stage hands its output on and acks its input in one MULTI/EXEC, so a stage
killed at any instant leaves either both or neither; what it held unacked is
reclaimed by a live consumer. The temporal owner writes the stream's state in the
same transaction: a new owner resumes from exactly the last applied chunk. The
writer stores idempotently, so redelivery never makes a second row.

temporal.mode=offline (files only; decoders refuse live sources): the temporal owner
writes each chunk's projected tokens to a file (before its ack, with the state) and
hands nothing on until the stream's end marker; then it scans the whole file and hands
on each chunk's pooled tokens in order, each with a count of those handed on, so a
new owner scans again and hands on only the rest. The files live in
temporal.offline_spill_dir (default <data dir>/spill): a new owner on another machine
needs the same folder, else the stream fails with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.errors import VidstormError
from pipeline.queue import RedisQueue, connect, retrying
from pipeline.messages import ChunkInfo, EndMarker, Pooled, RollupRequest, Tokens, encode_record, parse
from pipeline.processor import encoded_count, to_wire
from pipeline.reuse import gate, reference_from_text, reference_to_text
from pipeline.rollup import rollups_due, window_of
from pipeline.types import FrameChunk, Segment, Summary


class Keys:
    def __init__(self, prefix: str):
        self.p = prefix

    frames = property(lambda self: f"{self.p}:frames")
    pooled = property(lambda self: f"{self.p}:pooled")
    rollup = property(lambda self: f"{self.p}:rollup")
    results = property(lambda self: f"{self.p}:results")
    done = property(lambda self: f"{self.p}:done")  # hash stream -> final job row (JSON)
    ends = property(lambda self: f"{self.p}:ends")  # hash stream -> end marker (JSON)
    rolled = property(lambda self: f"{self.p}:rolled")  # set of requested roll-ups
    active = property(lambda self: f"{self.p}:active")  # set of streams of the current run
    stop = property(lambda self: f"{self.p}:stop")
    progress = property(lambda self: f"{self.p}:progress")  # hash worker name -> messages handed on

    def tokens(self, stream_id: str) -> str:
        return f"{self.p}:tokens:{stream_id}"

    def state(self, stream_id: str) -> str:
        return f"{self.p}:state:{stream_id}"

    def decoded(self, stream_id: str) -> str:
        return f"{self.p}:decoded:{stream_id}"

    def owner(self, index: int) -> str:
        return f"{self.p}:owner:{index}"

    def ingest(self, stream_id: str) -> str:
        """hash of a running stream's progress: source, started_at, position_at_start (the run),
        duration, decoded_s (the decoder), done_s (the writer: end of the stored chunks)"""
        return f"{self.p}:ingest:{stream_id}"

    def offline(self, stream_id: str) -> str:
        return f"{self.p}:offline:{stream_id}"  # offline mode: chunks handed on after the whole-file scan

    def stream_keys(self, stream_id: str) -> list[str]:
        return [self.tokens(stream_id), self.state(stream_id), self.decoded(stream_id), self.offline(stream_id),
                self.ingest(stream_id)]


class Stage:
    """A queue worker: run() loops over tick() until the stop key is set."""

    role = "stage"

    def __init__(self, cfg: Config, redis_url: str, name: str):
        self.cfg, self.name = cfg, name
        self.keys = Keys(cfg.queue.prefix)
        self.q = RedisQueue(
            connect(redis_url), group=self.role, consumer=f"{name}-{uuid.uuid4().hex[:6]}",
            prefix=cfg.queue.prefix, maxlen=cfg.queue.maxlen,
            reclaim_idle_ms=int(cfg.queue.reclaim_idle_s * 1000), max_deliveries=cfg.queue.max_deliveries,
        )
        self.r = self.q.r
        self._stop_checked, self._stopping = 0.0, False

    def stopping(self) -> bool:
        now = time.monotonic()
        if now - self._stop_checked > 0.3:
            self._stop_checked = now
            self._stopping = bool(retrying(lambda: self.r.exists(self.keys.stop)))
        return self._stopping

    def run(self) -> str:
        while not self.stopping():
            retrying(self.tick)
        return f"{self.name} stopped"

    def tick(self) -> None:
        raise NotImplementedError

    def wait_for_room(self, stream: str) -> None:
        self.q.wait_for_room(stream, self.cfg.queue.max_in_flight, stop=self.stopping)

    def handoff(self, msgs, outputs, extra=None) -> None:
        """Publish outputs and ack inputs atomically, counting the work in {p}:progress."""
        n = len(msgs) if isinstance(msgs, list) else 1

        def with_count(pipe):
            if extra is not None:
                extra(pipe)
            pipe.hincrby(self.keys.progress, self.name, n)

        self.q.handoff(msgs, outputs, extra=with_count)

    def ping(self) -> tuple[str, int]:
        return self.name, os.getpid()


class DecoderStage(Stage):
    """Reads sources into FrameChunks. Progress is kept in Redis, so a restarted decoder
    continues after the last chunk it published."""

    role = "decoders"

    def __init__(self, cfg, redis_url, name, image_size: int, pad_multiple: int):
        super().__init__(cfg, redis_url, name)
        self.image_size, self.pad_multiple = image_size, pad_multiple

    def decode(self, job: dict) -> str:
        from pipeline.decode import Source, SourceError, VideoDecoder
        from pipeline.ingest import check_offline_source

        source = Source(job["source"], job["stream_id"], job["live"])
        key = self.keys.decoded(source.stream_id)
        progress = {k.decode(): v.decode() for k, v in retrying(lambda: self.r.hgetall(key)).items()}
        if progress.get("finished"):
            return "finished earlier"
        next_seq = int(progress.get("next_chunk_seq", 0))
        video_seconds = float(progress.get("video_seconds", 0.0))
        d = self.cfg.decode
        decoder = VideoDecoder.for_config(
            source, d, self.image_size, self.pad_multiple,
            start_at=float(progress.get("t_end", 0.0)) if next_seq and not source.live else 0.0,
            first_chunk_seq=next_seq,
        )
        status, error = "done", ""
        try:
            check_offline_source(source, self.cfg.temporal.mode)
            reference = reference_from_text(progress.get("gate_ref"))
            for chunk in decoder.chunks():
                self.wait_for_room(self.keys.frames)
                if self.stopping():  # shut down mid-stream: the position stays, no end marker
                    return "stopped"
                video_seconds += chunk.t_end - chunk.t_start
                # static-frame reuse: only the frames that changed travel on to SigLIP; the reference
                # is saved with the position, so a restarted decoder decides as this one would have
                mask, reference = gate(chunk.frames, reference, self.cfg.encoder.static_threshold)
                self._publish(chunk.gated(mask), key, video_seconds, decoder.duration, reference)
                next_seq = chunk.chunk_seq + 1
        except SourceError as err:
            status, error = "failed", str(err)
        except Exception as err:  # one bad source must not stop the others
            status, error = "failed", f"{source.uri}: internal error: {type(err).__name__}: {str(err).splitlines()[0]}"
        info = {**job, "video_seconds": video_seconds, "chunks": next_seq}
        marker = EndMarker(source.stream_id, next_seq - 1, status, error, info).to_bytes()

        def finish():
            pipe = self.r.pipeline(transaction=True)
            self.q.publish(self.keys.frames, marker, pipe)
            pipe.hset(key, "finished", "1")
            pipe.execute()

        retrying(finish)
        return status

    def _publish(self, chunk: FrameChunk, key: str, video_seconds: float, duration: float | None,
                 reference) -> None:
        payload = chunk.to_bytes()
        position = {"next_chunk_seq": chunk.chunk_seq + 1, "t_end": chunk.t_end, "video_seconds": video_seconds}
        if reference is not None:
            position["gate_ref"] = reference_to_text(reference)

        def run():
            pipe = self.r.pipeline(transaction=True)
            self.q.publish(self.keys.frames, payload, pipe)
            pipe.hset(key, mapping=position)
            pipe.hset(self.keys.ingest(chunk.stream_id),
                      mapping={"decoded_s": chunk.t_end, "duration": "" if duration is None else duration})
            pipe.execute()

        retrying(run)


class EncoderStage(Stage):
    """SigLIP on frame chunks, batching whole chunks across streams up to encoder.batch_size frames."""

    role = "encoders"

    def __init__(self, cfg, redis_url, name):
        super().__init__(cfg, redis_url, name)
        from pipeline.build import build_processor

        # SigLIP and the temporal encoder's per-frame projection (pixel shuffle + Linear): the
        # temporal owner receives projected grids in encoder.output_dtype, several times smaller
        self.processor = build_processor(cfg, log=None, parts=("encoder", "temporal"))
        self.chunks_per_batch = max(1, cfg.encoder.batch_size // cfg.decode.chunk_frames)

    def tick(self) -> None:
        msgs = self.q.consume([self.keys.frames], count=self.chunks_per_batch, block_ms=200)
        chunks, outputs, good = [], [], []
        for msg in msgs:
            try:
                m = parse(msg.data, FrameChunk, EndMarker)
                if isinstance(m, EndMarker):
                    outputs.append((self.keys.tokens(m.stream_id), msg.data))
                else:
                    chunks.append(m)
                good.append(msg)
            except (ValueError, KeyError, TypeError) as err:
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
        if chunks:
            # one batch of only the frames that need encoding, across chunks and streams
            grids = self.processor.encode_projected(np.concatenate([c.frames for c in chunks]))  # (E, h, w, D)
            start, wire = 0, self.cfg.encoder.output_dtype
            for c in chunks:
                tokens = Tokens(ChunkInfo.of(c), to_wire(grids[start : start + len(c.frames)], wire), wire, c.mask)
                start += len(c.frames)
                outputs.append((self.keys.tokens(c.stream_id), tokens.to_bytes()))
        for stream in {s for s, _ in outputs}:
            self.wait_for_room(stream)
        if good:
            self.handoff(good, outputs)


class TemporalStage(Stage):
    """Owns streams: applies each stream's chunks in chunk_seq order (reorder buffer),
    runs the temporal encoder and pooling, checkpoints the state with every chunk.
    In offline mode it keeps each chunk on disk and scans the whole file at its end."""

    role = "temporal"

    def __init__(self, cfg, redis_url, name, index: int, data_dir: str | None = None):
        super().__init__(cfg, redis_url, name)
        import tempfile

        from pipeline.build import build_processor

        self.index = index
        self.processor = build_processor(cfg, log=None, parts=("temporal",))
        self.buffers: dict[str, dict[int, tuple]] = {}  # stream -> chunk_seq -> (msg, ChunkInfo, grids, mask)
        self.ends: dict[str, tuple] = {}  # stream -> (msg, EndMarker)
        self.states: dict = {}
        self.offline = cfg.temporal.mode == "offline"
        default_spill = Path(data_dir) / "spill" if data_dir else Path(tempfile.gettempdir()) / "vidstorm-spill"
        self.spill_dir = Path(cfg.temporal.offline_spill_dir or default_spill)
        self._beat = 0.0

    def _streams(self) -> list[str]:
        return sorted(m.decode() for m in self.r.smembers(self.keys.owner(self.index)))

    def _state(self, stream_id: str):
        from pipeline.processor import StreamState

        if stream_id not in self.states:
            blob = self.r.get(self.keys.state(stream_id))
            self.states[stream_id] = StreamState.from_bytes(blob) if blob else StreamState(stream_id)
        return self.states[stream_id]

    def tick(self) -> None:
        streams = self._streams()
        if not streams:
            time.sleep(0.2)
            return
        for msg in self.q.consume([self.keys.tokens(s) for s in streams], count=4, block_ms=200):
            try:
                m = parse(msg.data, Tokens, EndMarker)
            except ValueError as err:
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
                continue
            stream_id = m.stream_id if isinstance(m, EndMarker) else m.info.stream_id
            if isinstance(m, Tokens) and m.info.thumbnail_error:  # garbage in one field: the chunk still counts
                print(f"{self.name}: {stream_id!r} chunk {m.info.chunk_seq}: dropping its thumbnail: "
                      f"{m.info.thumbnail_error}", flush=True)
            state = self._state(stream_id)
            if isinstance(m, EndMarker):
                self.ends[stream_id] = (msg, m)
            elif m.info.chunk_seq < state.next_chunk_seq:
                self.q.ack(msg)  # already applied before a restart: a duplicate
            else:
                try:
                    grids = m.grids()
                except ValueError as err:
                    print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
                    continue
                self.buffers.setdefault(stream_id, {})[m.info.chunk_seq] = (msg, m.info, grids, m.encode_mask)
        for stream_id in list(self.buffers) + list(self.ends):
            self._drain(stream_id)

    def _drain(self, stream_id: str) -> None:
        state = self._state(stream_id)
        buffer = self.buffers.get(stream_id, {})
        while state.next_chunk_seq in buffer:
            msg, info, tokens, mask = buffer[state.next_chunk_seq]
            info = replace(info, frames_encoded=encoded_count(mask, info.n_valid))
            if self.offline:  # on disk before the ack: the whole-file scan at the end reads it
                from pipeline.models.offline import save_projected
                from pipeline.reuse import advance

                steps, last_grid = advance(tokens, mask, state.last_grid)
                save_projected(self._offline_input(stream_id, info.chunk_seq), steps, info.header())
                outputs, temporal_state = [], None
            else:
                pooled, temporal_state, last_grid = self.processor.temporal_projected(tokens, mask, state)
                outputs = [(self.keys.pooled, Pooled.of(info, pooled).to_bytes())]
            # The state moves on only once the handoff has committed: if it raises, the chunk is
            # still pending in Redis and in the buffer, and is applied again from the old state.
            advanced = replace(state, temporal=temporal_state, last_grid=last_grid,
                               next_chunk_seq=info.chunk_seq + 1)
            blob = advanced.to_bytes()
            if outputs:
                self.wait_for_room(self.keys.pooled)
            self.handoff(msg, outputs, extra=lambda pipe, k=self.keys.state(stream_id), b=blob: pipe.set(k, b))
            buffer.pop(info.chunk_seq)
            self.states[stream_id] = state = advanced
        end = self.ends.get(stream_id)
        if end and end[1].last_chunk_seq < state.next_chunk_seq:
            marker = self._offline_outputs(stream_id, end) if self.offline else end[0].data
            msg, _ = self.ends.pop(stream_id)

            def over(pipe):  # the stream is over for this owner: stop listening to it, in the same transaction
                pipe.srem(self.keys.owner(self.index), stream_id)
                pipe.delete(self.keys.offline(stream_id))

            self.handoff(msg, [(self.keys.pooled, marker)], extra=over)
            self.buffers.pop(stream_id, None)
            self.states.pop(stream_id, None)
            if self.offline:
                shutil.rmtree(self._offline_input(stream_id, 0).parent, ignore_errors=True)

    # --- offline mode ---

    def _offline_input(self, stream_id: str, chunk_seq: int) -> Path:
        """Where a chunk's projected tokens wait for the end of its file (one folder per stream and prefix)."""
        import hashlib

        from pipeline.names import check_name

        prefix = hashlib.sha256(self.keys.p.encode()).hexdigest()[:8]
        folder = self.spill_dir / f"{check_name(stream_id, 'stream id')}.{prefix}.inputs"
        return folder / f"chunk-{chunk_seq:08d}.safetensors"

    def _offline_outputs(self, stream_id: str, end: tuple) -> bytes:
        """The whole file's scan; each chunk's pooled tokens handed on in order, each in one transaction
        with the count handed on (a new owner hands on only the rest). Returns the end marker to pass on."""
        from pipeline.models.offline import read_projected_header

        msg, marker = end
        key = self.keys.offline(stream_id)
        emitted = int(retrying(lambda: self.r.get(key)) or 0)
        paths = [self._offline_input(stream_id, seq) for seq in range(marker.last_chunk_seq + 1)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            error = (f"{marker.job.get('source', stream_id)}: the offline scan's buffered chunks are gone "
                     f"({missing[0]} is missing; the temporal owner moved to a machine without them): "
                     "ingest the file again, with temporal.offline_spill_dir on storage every worker shares")
            return marker.failed(emitted - 1, error).to_bytes()
        t = self.cfg.temporal
        handed = emitted
        try:
            with self.processor.offline_scan(t.offline_spill_mb, self.spill_dir, on_step=self._heartbeat) as scan:
                for path in paths:
                    scan.add_file(path)
                for seq, pooled in enumerate(self.processor.offline_pooled(scan)):
                    if seq < emitted:
                        continue  # handed on before a restart
                    info = ChunkInfo.from_header(read_projected_header(paths[seq])[1])
                    self.wait_for_room(self.keys.pooled)
                    self.handoff([], [(self.keys.pooled, Pooled.of(info, pooled).to_bytes())],
                                 extra=lambda pipe, n=seq + 1: pipe.set(key, n))
                    handed = seq + 1
        except VidstormError as err:  # e.g. a spill folder that cannot be written: the stream fails, in one line
            return marker.failed(handed - 1, str(err)).to_bytes()
        return msg.data

    def _heartbeat(self) -> None:
        """A long whole-file scan hands nothing on: show the supervisor it is alive (not stalled)."""
        now = time.monotonic()
        if now - self._beat > 1.0:
            self._beat = now
            retrying(lambda: self.r.hincrby(self.keys.progress, f"{self.name}:offline-scan", 1))


class SummarizerStage(Stage):
    """The LLM: a caption per pooled chunk, and the roll-ups the writer asks for."""

    role = "summarizers"

    def __init__(self, cfg, redis_url, name):
        super().__init__(cfg, redis_url, name)
        from pipeline.build import build_processor

        self.processor = build_processor(cfg, log=None, parts=("temporal", "llm"))

    def tick(self) -> None:
        for msg in self.q.consume([self.keys.pooled, self.keys.rollup], count=1, block_ms=200):
            try:
                m = parse(msg.data, Pooled, EndMarker, RollupRequest)
            except ValueError as err:
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
                continue
            if isinstance(m, EndMarker):
                out = msg.data
            elif isinstance(m, Pooled):
                if m.info.thumbnail_error:  # garbage in one field: the caption still counts, without a picture
                    print(f"{self.name}: {m.info.stream_id!r} chunk {m.info.chunk_seq}: dropping its "
                          f"thumbnail: {m.info.thumbnail_error}", flush=True)
                out = encode_record(self._segment(m))
            else:
                out = encode_record(self._summary(m))
            self.wait_for_room(self.keys.results)
            self.handoff(msg, [(self.keys.results, out)])

    def _segment(self, m: Pooled) -> Segment:
        i = m.info
        return self.processor.segment(
            torch.from_numpy(m.pooled.copy()), stream_id=i.stream_id, chunk_seq=i.chunk_seq, t_start=i.t_start,
            t_end=i.t_end, n_frames=i.n_valid, source=i.source, wall_clock=i.wall_clock, gap_before=i.gap_before,
            thumbnail=i.thumbnail, frames_encoded=i.frames_encoded)

    def _summary(self, r: RollupRequest) -> Summary:
        return self.processor.summary(stream_id=r.stream_id, level=r.level, seq=r.seq, t_start=r.t_start,
                                      t_end=r.t_end, texts=list(r.texts), wall_clock=r.wall_clock)


class WriterStage(Stage):
    """Stores results idempotently and drives the roll-ups from what is stored, with
    the same windows as --local: window w of a stream closes when a later chunk
    arrives or the stream ends; the stream summary follows its last window."""

    role = "writer"

    def __init__(self, cfg, redis_url, name, store_root: str):
        super().__init__(cfg, redis_url, name)
        from pipeline.store import Store

        self.store = Store(store_root)
        self.window_seconds = cfg.summary.window_seconds
        self.views: dict[str, dict] = {}
        self._replanned = 0.0

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
        rows = [dict(row, wall_clock=_unix(row["wall_clock"])) for row in prefix]
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
        from pipeline.ingest import JobResult

        row = JobResult.from_job(
            end.job, stream_id=stream_id, status=end.status, error=end.error, chunks=end.last_chunk_seq + 1,
            segments=len(view["chunks"]), summaries=len(view["summaries"]), finished_at=time.time(),
        ).row()
        self.store.write_job(row)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.done, stream_id, json.dumps(row))
        pipe.srem(self.keys.active, stream_id)
        pipe.execute()
        self.views.pop(stream_id, None)


def ingest_progress(r, prefix: str, now: float | None = None, streams=None) -> list[dict]:
    """The streams a distributed ingest is running (queue prefix `prefix`; or `streams`, finished
    ones too), each with pipeline.progress.figures: video seconds stored of the total, x real time, ETA."""
    from pipeline.progress import figures

    keys, now = Keys(prefix), time.time() if now is None else now
    streams = sorted(m.decode() for m in r.smembers(keys.active)) if streams is None else sorted(streams)
    pipe = r.pipeline(transaction=False)
    for stream_id in streams:
        pipe.hgetall(keys.ingest(stream_id))
    out = []
    for stream_id, raw in zip(streams, pipe.execute()):
        h = {k.decode(): v.decode() for k, v in raw.items()}

        def num(name, default=None):
            try:
                return float(h[name]) if h.get(name) not in (None, "") else default
            except ValueError:
                return default

        start = num("position_at_start", 0.0)
        position = max(num("done_s", start), start)
        elapsed = now - num("started_at", now)
        out.append({"stream_id": stream_id, "source": h.get("source", ""),
                    **figures(position, num("duration"), start, elapsed), "decoded_s": num("decoded_s")})
    return out


def _unix(value):
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def configure_threads(threads: int = 0) -> None:
    """Ray leaves actors that reserve no CPUs with one thread; give torch the node's cores."""
    import torch  # only the stages that run models pay for importing torch

    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


def store_root(data_dir: str) -> str:
    return str(Path(data_dir) / "store")
