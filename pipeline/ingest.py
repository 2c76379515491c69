"""Local ingestion: sources -> decoder -> StreamProcessor -> store, one process, no Ray.

Each source is one job with a row in the jobs table (running, then done or
failed). A bad source costs only its own job: its error is one line and the
other sources still run. After every chunk the stream's state is checkpointed
next to the store, so an interrupted ingest resumes where it stopped.

With temporal.mode=offline a file is scanned whole first (every chunk's SigLIP grid,
then the layer-by-layer bidirectional scan, spilling to disk past
temporal.offline_spill_mb), then captioned chunk by chunk as in the other modes. A live
source never ends, so offline mode refuses it with one line (the job fails, the others go on).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

from pipeline.config import Config, fingerprint
from pipeline.decode import Source, SourceError, VideoDecoder, check_offline_source, content_fingerprint
from pipeline.progress import figures as progress_figures, hms, line as progress_line
from pipeline.errors import VidstormError
from pipeline.jobs.result import JobResult, counts_of
from pipeline.processor import StreamProcessor, StreamState, encoded_count
from pipeline.reuse import advance
from pipeline.store import Store
from pipeline.store.query import StoreQuery


class Cancelled(Exception):
    """The run this ingest belongs to was cancelled."""


class Ingested:
    """What finished ingest jobs hold. A file was ingested with a config when a finished job has
    its content fingerprint and that config fingerprint, and its stream id or its path: the same
    file reached again under another stream id is not summarised twice; another file with the
    same bytes is a file of its own. Live sources are never "ingested": they go on.
    """

    def __init__(self, store_root):
        query = StoreQuery(store_root, tables=("jobs",))
        rows = query.jobs(status="done")
        query.close()
        self._known: dict[tuple[str, str], set[str]] = {}  # (content, config) -> stream ids and paths
        for row in rows:
            if row["kind"] == "ingest" and row["content_fingerprint"]:
                ids = self._known.setdefault((row["content_fingerprint"], row["config_fingerprint"]), set())
                ids.update({row["stream_id"], os.path.realpath(row["source"] or "")})

    def holds(self, source: Source, content_fp: str, config_fp: str) -> bool:
        ids = None if source.live else self._known.get((content_fp, config_fp))
        return bool(ids) and (source.stream_id in ids or os.path.realpath(source.uri) in ids)

    def pending(self, sources: list[Source], config_fp: str, log=None) -> list[Source]:
        """The sources not ingested yet with this config, each with its content fingerprint: the one
        "skip if already ingested" rule of --local, the distributed runtime and job runs (a skipped
        source is one log line)."""
        out = []
        for source in sources:
            source = fingerprinted(source)
            if self.holds(source, source.content_fp, config_fp):
                if log:
                    log(f"{source.stream_id}: already ingested with this config; nothing to do")
                continue
            out.append(source)
        return out


def fingerprinted(source: Source) -> Source:
    """`source` with its content fingerprint ("" for a live source or one that is not a local file),
    computed once."""
    if source.content_fp is not None:
        return source
    fp = content_fingerprint(source.uri) if not source.live and os.path.isfile(source.uri) else ""
    return replace(source, content_fp=fp)


class LocalProgress:
    """One live line per source on a terminal; a closing line per source otherwise."""

    def __init__(self, stream=sys.stderr):
        self.out = stream
        self.tty = stream.isatty()

    def update(self, job: JobResult, frames: int, duration: float | None, t_video: float,
               t_start: float = 0.0):
        """t_video: where the stream now is in the source; t_start: where this run started (a resume)."""
        if not self.tty:
            return
        elapsed = max(time.time() - job.started_at, 1e-6)
        text = progress_line(job.stream_id, progress_figures(t_video, duration, t_start, elapsed))
        text += f"  {frames / elapsed:5.1f} frames/s"
        self.out.write("\r" + text[:150].ljust(150))
        self.out.flush()

    def done(self, job: JobResult, run_seconds: float | None = None):
        """run_seconds: the video this run went through (less than the stream's after a resume)."""
        if self.tty:
            self.out.write("\r" + " " * 150 + "\r")
        elapsed = (job.finished_at or time.time()) - job.started_at
        run_seconds = job.video_seconds if run_seconds is None else run_seconds
        if job.status == "done":
            self.out.write(
                f"{job.stream_id}: {job.chunks} chunks, {hms(job.video_seconds)} of video in {elapsed:.1f}s "
                f"({run_seconds / max(elapsed, 1e-6):.2f}x real time), "
                f"{job.segments} segments + {job.summaries} summaries stored\n"
            )
        self.out.flush()


class LocalIngest:
    """Runs jobs one after another in this process."""

    def __init__(self, cfg: Config, processor: StreamProcessor, data_dir: str | Path, progress=None, log=print,
                 should_stop=lambda: False, watch=None):
        self.cfg, self.processor = cfg, processor
        self.watch = watch  # has observe(records): the watch rules, matched as records are stored
        self.should_stop = should_stop  # checked between chunks: a cancelled run stops at the next one
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir / "store")
        self.state_dir = self.data_dir / "state"
        self.progress = progress or LocalProgress()
        self.log = log
        self.config_fp = fingerprint(cfg)

    def _state_path(self, stream_id: str) -> Path:
        from pipeline.names import check_name

        return self.state_dir / f"{check_name(stream_id, 'stream id')}.{self.config_fp}.state"

    def _load_state(self, stream_id: str) -> StreamState | None:
        path = self._state_path(stream_id)
        if not path.is_file():
            return None
        try:
            return StreamState.from_bytes(path.read_bytes())
        except ValueError:
            self.log(f"warning: ignoring unreadable checkpoint {path}")
            return None

    def _save_state(self, state: StreamState) -> None:
        path = self._state_path(state.stream_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(state.to_bytes())
        os.replace(tmp, path)


    def run(self, source: Source, tags: dict | None = None) -> JobResult:
        """Ingest one source as one job; `tags` (job_name, run_id) mark it as part of a job run."""
        job = JobResult(uuid.uuid4().hex[:12], source.uri, source.stream_id, config_fingerprint=self.config_fp,
                        **(tags or {}))
        self._counts = None  # the stream's whole-stream counts after its last stored chunk (counts_of)
        try:
            source = fingerprinted(source)
            job.content_fingerprint = source.content_fp
            if source.content_fp and not Ingested(self.store.root).pending([source], self.config_fp, self.log):
                job.status = "skipped"
                return job
            self.store.write_job(job.row())
            self._ingest(source, job)
            job.status = "done"
        except Cancelled:
            at = self._counts["chunks"] if self._counts else job.chunks
            job.status, job.error = "cancelled", f"{source.uri}: cancelled at chunk {at}"
        except (SourceError, VidstormError, ValueError) as err:
            job.status, job.error = "failed", str(err)
        except Exception as err:  # a bug must not take the other sources down
            first_line = (str(err).strip().splitlines() or [""])[0]
            job.status, job.error = "failed", f"{source.uri}: internal error: {type(err).__name__}: {first_line}"
        job.finished_at = time.time()
        run_seconds = job.video_seconds
        job.counted(self._counts)
        self._counts = None
        if job.status in ("done", "failed", "cancelled"):
            self.store.write_job(job.row())
        if job.status == "failed":
            self.log(f"vidstorm: error: {job.error}")
        self.progress.done(job, run_seconds)
        return job

    def _ingest(self, source: Source, job: JobResult) -> None:
        if self.cfg.temporal.mode == "offline":
            return self._ingest_offline(source, job)
        d = self.cfg.decode
        state = None if source.live else self._load_state(source.stream_id)
        self._counts = counts_of(state) if state else None  # a resume that fails at once still counts what is stored
        start_at = state.t_end if state and state.t_end is not None else 0.0
        decoder = VideoDecoder.for_config(
            source, d, self.processor.encoder.image_size, self.processor.reducer.frames_per_group,
            start_at=start_at, first_chunk_seq=state.next_chunk_seq if state else 0,
        )
        if state:
            self.log(f"{source.stream_id}: resuming at chunk {state.next_chunk_seq} ({start_at:.1f}s)")
        frames = 0
        for chunk in decoder.chunks():
            self._check_cancel()
            if chunk.gap_before:
                self.log(f"{source.stream_id}: the source was away {chunk.gap_before:.1f} s and is back (gap recorded)")
            # the segment is stored (and watched) before any window summary it makes due is written
            records, state = self.processor.step(chunk, state, on_segment=lambda seg: self._store([seg], job))
            self._store(records, job)
            self._counts = counts_of(state)
            job.chunks += 1
            frames += chunk.n_valid
            job.video_seconds += chunk.t_end - chunk.t_start
            if not source.live:
                self._save_state(state)
            self.progress.update(job, frames, decoder.duration, chunk.t_end, start_at)
        records, state = self.processor.finish(state)
        self._store(records, job)
        self._counts = counts_of(state)
        self._state_path(source.stream_id).unlink(missing_ok=True)

    def _ingest_offline(self, source: Source, job: JobResult) -> None:
        """Every chunk's grid into one whole-file scan, then a caption per chunk as `step` does. A crash
        while captioning resumes after the last stored chunk (the file is scanned again); a file cut
        short keeps the chunks decoded before the cut, and its job still fails."""
        check_offline_source(source, "offline")
        t = self.cfg.temporal
        state = self._load_state(source.stream_id) or StreamState(source.stream_id)
        self._counts = counts_of(state) if state.next_chunk_seq else None
        if state.next_chunk_seq:
            self.log(f"{source.stream_id}: resuming after chunk {state.next_chunk_seq - 1} "
                     "(the file is scanned again)")
        decoder = VideoDecoder.for_config(source, self.cfg.decode, self.processor.encoder.image_size,
                                          self.processor.reducer.frames_per_group)
        chunks, encoded_counts, frames, cut = [], [], 0, None
        reference, last = None, None  # static-frame reuse over the whole file (the scan starts afresh)
        spill_dir = t.offline_spill_dir or self.data_dir / "spill"
        with self.processor.offline_scan(t.offline_spill_mb, spill_dir, on_step=self._check_cancel) as scan:
            try:
                for chunk in decoder.chunks():
                    self._check_cancel()
                    mask, reference = self.processor.gate(chunk.frames, reference)
                    encoded = self.processor.encode_projected(chunk.frames[mask])
                    steps, last = advance(encoded, mask, last)
                    scan.add_projected(steps)
                    encoded_counts.append(encoded_count(mask, chunk.n_valid))
                    chunks.append(replace(chunk, frames=chunk.frames[:0].copy()))  # its times, not its pixels
                    job.chunks += 1
                    frames += chunk.n_valid
                    job.video_seconds += chunk.t_end - chunk.t_start
                    self.progress.update(job, frames, decoder.duration, chunk.t_end)
            except SourceError as err:
                cut = err
            for chunk, n_encoded, pooled in zip(chunks, encoded_counts, self.processor.offline_pooled(scan)):
                self._check_cancel()
                if self.processor.is_next(chunk, state):
                    records, state = self.processor.step_pooled(chunk, pooled, state, frames_encoded=n_encoded)
                    self._store(records, job)
                    self._counts = counts_of(state)
                    self._save_state(state)
        if cut is not None:
            raise cut
        records, state = self.processor.finish(state)
        self._store(records, job)
        self._counts = counts_of(state)
        self._state_path(source.stream_id).unlink(missing_ok=True)

    def _check_cancel(self) -> None:
        if self.should_stop():
            raise Cancelled()  # the state checkpoint stays: a later run resumes here

    def _store(self, records: list, job: JobResult) -> None:
        self.store.write_records(records)
        if self.watch is not None:
            self.watch.observe(records)
        job.segments += sum(1 for r in records if getattr(r, "level", "") == "chunk")
        job.summaries += sum(1 for r in records if getattr(r, "level", "") != "chunk")
