"""The record of one ingest job: the jobs table's row, built the same way by --local and the distributed
writer (no torch here: the writer's process never imports it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields


@dataclass
class JobResult:
    job_id: str
    source: str
    stream_id: str
    status: str = "running"
    error: str = ""
    chunks: int = 0
    segments: int = 0
    summaries: int = 0
    video_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    content_fingerprint: str = ""
    config_fingerprint: str = ""
    kind: str = "ingest"
    job_name: str = ""  # set when the source is part of a run of a named job
    run_id: str = ""

    # The counts (chunks, segments, summaries, video_seconds) are the whole stream's as stored when the job
    # ends, on both paths: a job that resumed an interrupted one counts what the two stored together.
    # --local takes them from the stream's state after its last stored chunk (`counts_of`); the
    # distributed writer from the stored rows of this run's windows and the decoder's position in Redis;
    # a distributed run that ends a stream unfinished (cancelled, stalled) from the stored rows.

    def counted(self, counts: dict | None) -> "JobResult":
        """Set the whole-stream counts (a `counts_of` dict); None leaves this run's."""
        for key, value in (counts or {}).items():
            setattr(self, key, value)
        return self

    def row(self) -> dict:
        """The jobs-table row: every ingest job row (--local, distributed, failed listings) is built here."""
        wall = (self.finished_at or time.time()) - self.started_at
        return {**self.__dict__, "wall_seconds": wall}

    @classmethod
    def from_job(cls, job: dict, **changes) -> "JobResult":
        """A distributed job (the dict the runtime hands to the decoders and the writer) with changes."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in job.items() if k in known and v is not None}, **changes})


def counts_of(state) -> dict:
    """A StreamState's whole-stream counts (pipeline/processor.py), as JobResult.counted takes them."""
    return {"chunks": state.next_chunk_seq, "video_seconds": state.video_seconds, "segments": state.next_chunk_seq,
            "summaries": state.summaries}


def stored_counts(chunks: dict, summaries, window_seconds: float) -> dict:
    """The whole-stream counts from what the store holds for a stream (the distributed path): its
    captioned chunks from the first on with no gap (chunk_seq -> {t_start, t_end}), as --local's state
    counts them, and the summaries (level, seq) of their windows and of the stream. (A store can hold
    summaries of another window length for the same stream id: those are not this stream's now.)"""
    from pipeline.rollup import window_of

    prefix = []
    while len(prefix) in chunks:
        prefix.append(chunks[len(prefix)])
    windows = {window_of(c["t_start"], prefix[0]["t_start"], window_seconds) for c in prefix}
    return {"chunks": len(prefix), "segments": len(prefix),
            "video_seconds": float(sum(c["t_end"] - c["t_start"] for c in prefix)),
            "summaries": sum(1 for level, seq in summaries if (level == "window" and seq in windows)
                             or (level == "stream" and prefix))}
