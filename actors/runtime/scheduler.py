"""`vidstorm scheduler` and `vidstorm jobs`: named jobs run at their cron times.

Any number of schedulers may share one Redis: the job board there (pipeline/jobs/board.py)
plans each cron window once and lets exactly one scheduler run it, under a lease the runner
keeps renewing. A scheduler that dies mid-run leaves its window pending; when the lease runs
out another scheduler (or the same one, restarted) takes it and the run continues where it
stopped: files already ingested are skipped by fingerprint, a half-ingested file resumes
(--local: at its last chunk; through Ray: from its start, the store dropping rows it has),
and a digest skips streams it already summarised. Every run is a row in the jobs table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from pipeline.config import Config, SchedulerConfig, fingerprint, load_config
from pipeline.errors import VidstormError
from pipeline.jobs.board import JobBoard
from pipeline.jobs.runs import Run, RunOutcome, ingest_outcome, job_sources, run_row, split_new
from pipeline.jobs.spec import JobSpec
from pipeline.jobs.windows import UTC, period_of
from pipeline.queue.keys import Keys
from pipeline.store import Store


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)


class Heartbeat:
    """Renews a run's lease every lease_s/3 while it runs; `lost` if another owner has it."""

    def __init__(self, board: JobBoard, rid: str, owner: str, lease_s: float):
        self.board, self.rid, self.owner, self.lease_s = board, rid, owner, lease_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"lease-{rid}")

    def _loop(self):
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.board.renew(self.rid, self.owner, self.lease_s):
                    self.lost = True
                    return
            except Exception:  # Redis briefly away: try again next beat; the lease has slack
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Scheduler:
    """Plans due windows and runs the pending ones this scheduler can take. Call tick() or serve()."""

    def __init__(self, specs: dict[str, JobSpec], board: JobBoard, executor, store: Store,
                 settings: SchedulerConfig, clock=utc_now, log=print, owner: str | None = None,
                 reload_specs=None):
        """reload_specs: a callable returning the current specs, read again on every plan, so jobs
        added (`vidstorm jobs add`, a new YAML file) are scheduled without a restart."""
        self.specs, self.board, self.executor, self.store = specs, board, executor, store
        self.reload_specs = reload_specs
        self._reload_error = ""
        self.settings, self.clock, self.log = settings, clock, log
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # A window is on time if it fell due within a poll or two; older ones were missed.
        self.on_time_s = max(2 * settings.poll_s, 60.0)

    def plan_runs(self) -> None:
        """Put every job's windows that fell due on the board (once, whoever looks first)."""
        if self.reload_specs is not None:
            self._reload()
        now = self.clock()
        for spec in self.specs.values():
            _, skipped = self.board.plan_runs(spec, now, self.on_time_s)
            for window in skipped:
                self._record_skipped(spec, window)

    def _reload(self) -> None:
        """Pick up added, changed and removed specs; a spec that no longer loads is said once and
        the jobs keep their last good specs."""
        try:
            specs = self.reload_specs()
        except VidstormError as err:
            if str(err) != self._reload_error:
                self._reload_error = str(err)
                self.log(f"vidstorm scheduler: error: {err} (keeping the jobs as they were)")
            return
        self._reload_error = ""
        for name in sorted(set(specs) - set(self.specs)):
            self.log(f"{name}: new job, {specs[name].kind} at '{specs[name].schedule}' {specs[name].timezone}")
        for name in sorted(set(self.specs) - set(specs)):
            self.log(f"{name}: job removed")
        self.specs = specs

    def run_due(self) -> list[dict]:
        """Run the pending runs no one else holds, oldest window first. Returns their rows."""
        finished = []
        for rid in self.board.pending():
            row = self.run_pending(rid)
            if row is not None:
                finished.append(row)
        return finished

    def tick(self) -> list[dict]:
        self.plan_runs()
        return self.run_due()

    def serve(self, stop: threading.Event) -> None:
        """Plan on a thread of its own, so a long run never makes other jobs' windows late."""
        planner = threading.Thread(target=self._every_poll, args=(self.plan_runs, stop), daemon=True, name="planner")
        planner.start()
        self._every_poll(self.run_due, stop)
        planner.join()

    def _every_poll(self, step, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                step()
            except Exception as err:  # Redis away, a bad spec file...: say it, keep scheduling
                self.log(f"vidstorm scheduler: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            stop.wait(self.settings.poll_s)

    def run_pending(self, rid: str) -> dict | None:
        """Take run `rid` if no one has it and run it here; None if it was not ours to run."""
        info = self.board.info(rid)
        spec = self.specs.get(info.get("job", ""))
        if spec is None:
            return None  # a job this scheduler does not know (another scheduler's specs)
        attempts = self.board.acquire(rid, self.owner, self.settings.lease_s)
        if attempts is None:
            return None
        run = Run(rid, spec, dt.datetime.fromisoformat(info["window"]), info.get("trigger", "cron"), attempts)
        return self._execute(run)

    def _execute(self, run: Run) -> dict:
        started = time.time()
        if run.attempts > self.settings.max_attempts:
            outcome = RunOutcome("failed", f"gave up after {run.attempts - 1} attempts "
                                 f"(last: {self.board.info(run.run_id).get('error') or 'the run crashed'})")
            self.board.finish(run.run_id, self.owner, outcome.status, outcome.error)
            return self._record(run, outcome, started, time.time())
        self._record(run, RunOutcome("running"), started, None)
        self.log(f"{run.run_id}: {run.spec.kind} run started ({run.trigger}, attempt {run.attempts})")
        retry = False
        with Heartbeat(self.board, run.run_id, self.owner, self.settings.lease_s) as beat:
            def should_stop():
                return beat.lost or self.board.cancel_requested(run.run_id)

            try:
                outcome = self.executor.run(run, should_stop)
            except VidstormError as err:  # bad config, missing weights: another attempt would fail the same way
                outcome = RunOutcome("failed", str(err))
            except Exception as err:  # a crash: the window stays pending and is tried again
                outcome = RunOutcome("failed", f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}")
                retry = run.attempts < self.settings.max_attempts
        if beat.lost:
            self.log(f"{run.run_id}: lease lost to another scheduler; leaving the run to it")
            return self._record(run, RunOutcome("failed", "lease lost"), started, time.time())
        self.board.finish(run.run_id, self.owner, "pending" if retry else outcome.status, outcome.error)
        row = self._record(run, outcome, started, time.time())
        self.log(f"{run.run_id}: {outcome.status}" + (f" ({outcome.detail})" if outcome.detail else "")
                 + (f": {outcome.error}" if outcome.error else "") + (" - will retry" if retry else ""))
        return row

    def _record(self, run: Run, outcome: RunOutcome, started: float, finished: float | None) -> dict:
        row = run_row(run.run_id, run.spec.name, run.spec.kind, run.window, run.trigger, run.attempts,
                      outcome.status, started, finished, error=outcome.error, detail=outcome.detail,
                      chunks=outcome.chunks, segments=outcome.segments, summaries=outcome.summaries,
                      video_seconds=outcome.video_seconds, wall_seconds=(finished or time.time()) - started)
        self.store.write_job(row)
        return row

    def _record_skipped(self, spec: JobSpec, window: dt.datetime) -> None:
        from pipeline.jobs.windows import run_id

        rid, now = run_id(spec.name, window), time.time()
        self.store.write_job(run_row(
            rid, spec.name, spec.kind, window, "catch-up", 0, "skipped", now, now,
            error=f"missed while no scheduler ran; not caught up (catch_up={spec.catch_up}, "
                  f"max_catch_up={spec.max_catch_up})"))
        self.log(f"{rid}: skipped (missed while no scheduler ran, catch_up={spec.catch_up})")


class JobExecutor:
    """Does the work of a run: through Ray + Redis (`cluster`), or in this process (cluster=None)."""

    def __init__(self, data_dir: str | Path, config_path: str | None = None, overrides: list[str] = (),
                 cluster=None, log=print):
        self.data_dir = Path(data_dir)
        self.store_root = self.data_dir / "store"
        self.config_path, self.overrides = config_path, list(overrides)
        self.cluster, self.log = cluster, log
        self._processors: dict[str, object] = {}  # --local: models loaded once per config

    def config_for(self, spec: JobSpec) -> Config:
        """The base config (--config, key=value) with the job's own overrides on top."""
        return load_config(self.config_path, self.overrides + list(spec.overrides))

    def run(self, run: Run, should_stop) -> RunOutcome:
        cfg = self.config_for(run.spec)
        if run.spec.kind == "ingest":
            return self._ingest(run, cfg, should_stop)
        return self._digest(run, cfg, should_stop)

    # --- ingest: the job's sources that are not in the store yet ---

    def _ingest(self, run: Run, cfg: Config, should_stop) -> RunOutcome:
        from pipeline.ingest import Ingested

        sources, errors = job_sources(run.spec)
        for err in errors:
            self.log(f"vidstorm: error: {err}")
        new, already = split_new(sources, Ingested(self.store_root), fingerprint(cfg))
        tags = {"job_name": run.spec.name, "run_id": run.run_id}
        rows = []
        if new and self.cluster is None:
            rows = self._ingest_here(new, cfg, tags, should_stop)
        elif new:
            rows = self._ingest_on_cluster(new, cfg, tags, should_stop, run)
        return ingest_outcome(rows, len(sources), len(new), already, errors)

    def _processor(self, cfg: Config):
        from pipeline.build import build_processor

        key = fingerprint(cfg) + cfg.encoder.device + cfg.summarizer.device
        if key not in self._processors:
            self._processors = {key: build_processor(cfg, log=self.log)}  # keep one model set in memory
        return self._processors[key]

    def _ingest_here(self, sources, cfg: Config, tags: dict, should_stop) -> list[dict]:
        from pipeline.ingest import LocalIngest
        from pipeline.store import Store

        from actors.runtime.watch import LocalWatch

        rows = []
        with LocalWatch(cfg, self.data_dir, Store(Path(self.data_dir) / "store"), log=self.log) as watch:
            runner = LocalIngest(cfg, self._processor(cfg), self.data_dir, log=self.log, should_stop=should_stop,
                                 watch=watch)
            for source in sources:
                if should_stop():
                    break
                rows.append(runner.run(source, tags).row())
        if should_stop() and len(rows) < len(sources):
            rows.append({"status": "cancelled"})
        return rows

    def _ingest_on_cluster(self, sources, cfg: Config, tags: dict, should_stop, run: Run) -> list[dict]:
        from actors.runtime import DistributedIngest

        # Queues and actor names of the run's own (the same for every attempt): runs, and plain
        # ingests, sharing a Redis never mix, and a later attempt finds what a crashed one left.
        cfg.queue.prefix = f"{cfg.queue.prefix}-run-{hashlib.sha1(run.run_id.encode()).hexdigest()[:10]}"
        ingest = DistributedIngest(self.cluster, cfg, log=self.log)
        try:
            return ingest.run(sources, tags=tags, should_stop=should_stop, resume=run.attempts > 1)
        finally:  # only a process that died leaves its run's keys behind, for the next attempt
            ingest.shutdown()
            for key in ingest.r.scan_iter(match=Keys(cfg.queue.prefix).everything, count=1000):
                ingest.r.delete(key)

    # --- digest: one period summary per stream ---

    def _digest(self, run: Run, cfg: Config, should_stop) -> RunOutcome:
        start, end = period_of(run.spec, run.window)
        args = (cfg, str(self.store_root), start, end, list(run.spec.streams))
        if self.cluster is None:
            counts = digest_task(*args, should_stop=should_stop)
        else:
            counts = self._digest_on_cluster(args, should_stop)
        if counts is None:
            return RunOutcome("cancelled", "cancelled")
        detail = (f"period {start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC: {counts['streams']} streams, "
                  f"{counts['segments']} segments, {counts['summaries']} period summaries written")
        return RunOutcome("done", detail=detail, segments=counts["segments"], summaries=counts["summaries"])

    def _digest_on_cluster(self, args, should_stop) -> dict | None:
        import ray

        from actors.runtime import worker_env

        gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        env = worker_env(args[0])
        task = ray.remote(num_cpus=0, num_gpus=gpus, max_retries=2, runtime_env={"env_vars": env})(digest_task)
        ref = task.remote(*args)
        while True:
            ready, _ = ray.wait([ref], timeout=1.0)
            if ready:
                return ray.get(ref)
            if should_stop():
                ray.cancel(ref, force=True)
                return None


def digest_task(cfg: Config, store_root: str, start: dt.datetime, end: dt.datetime, streams: list[str],
                should_stop=lambda: False) -> dict | None:
    """Load the LLM and the text embedder, digest the period (a Ray task, or called in process)."""
    from pipeline.jobs.digest import digest_period
    from pipeline.models.summarizer import Summarizer
    from pipeline.models.text_embed import TextEmbedder

    from actors.runtime import configure_threads

    configure_threads(cfg.workers.torch_threads)  # Ray leaves tasks that reserve no CPUs one thread
    s = cfg.summarizer
    summarizer = Summarizer(s.model, s.device, s.dtype, s.max_new_tokens, s.system_prompt)
    counts = digest_period(store_root, start, end, summarizer, TextEmbedder(cfg.store.text_model),
                           cfg.summary.period_prompt, cfg.summary.max_items_per_prompt, fingerprint(cfg),
                           streams or None, should_stop)
    return None if should_stop() else counts


def board_for(cfg: Config, data_dir: str | Path) -> JobBoard | None:
    """The job board of the scheduler(s) of this data directory / cluster, or None if none runs."""
    from pipeline.queue import connect
    from pipeline.queue.server import redis_url_for

    url = redis_url_for(cfg, data_dir)
    return JobBoard(connect(url), cfg.queue.prefix) if url else None


def request_run(cfg: Config, data_dir: str | Path, specs: dict[str, JobSpec], name: str) -> str:
    """Queue a manual run of `name` for the scheduler(s). KeyError: no such job."""
    if name not in specs:
        raise KeyError(name)
    board = board_for(cfg, data_dir)
    if board is None:
        raise VidstormError("no scheduler is running for this data directory: start `vidstorm scheduler`, "
                            "or run the job here with `vidstorm jobs run NAME`")
    now = utc_now()
    rid = board.request(name, now)
    # a row at once, so the run is listed (GET /jobs, `jobs show`) before a scheduler starts it
    Store(Path(data_dir) / "store").write_job(
        run_row(rid, name, specs[name].kind, now, "manual", 0, "pending", now.timestamp()))
    return rid
