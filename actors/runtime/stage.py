"""The pipeline's stages as queue workers: decode -> encode -> temporal -> summarize -> write.

Each class is plain Python around pipeline/ objects (runtime/ingest.py makes them Ray
actors; each role is a file beside this one). Stages talk only through Redis Streams:

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

import os
import time
import uuid
from pathlib import Path

from pipeline.config import Config
from pipeline.queue import RedisQueue, connect, retrying
from pipeline.queue.keys import Keys


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


def unix_seconds(value):
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def configure_threads(threads: int = 0) -> None:
    """Ray leaves actors that reserve no CPUs with one thread; give torch the node's cores."""
    import torch  # only the stages that run models pay for importing torch

    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


def store_root(data_dir: str) -> str:
    return str(Path(data_dir) / "store")
