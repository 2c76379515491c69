"""What one run of a named job does, without Ray: the sources an ingest run takes, and the
outcome record both kinds of run report. The executors in actors/runtime/scheduler.py do the work."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.decode import Source, SourceError, _unique_ids, expand_sources, folder_sources, is_url
from pipeline.jobs.spec import JobSpec


@dataclass
class Run:
    run_id: str
    spec: JobSpec
    window: dt.datetime
    trigger: str  # cron | catch-up | manual
    attempts: int = 1


@dataclass
class RunOutcome:
    status: str = "done"  # done | failed | cancelled
    error: str = ""
    detail: str = ""
    chunks: int = 0
    segments: int = 0
    summaries: int = 0
    video_seconds: float = 0.0
    failed_sources: list = field(default_factory=list)

    def add(self, row: dict) -> None:
        """Fold in the final row of one source's ingest job."""
        for name in ("chunks", "segments", "summaries", "video_seconds"):
            setattr(self, name, getattr(self, name) + (row.get(name) or 0))
        if row.get("status") == "failed":
            self.failed_sources.append(row.get("error") or row.get("source", "?"))


def run_row(run_id: str, job_name: str, kind: str | None, window: dt.datetime, trigger: str, attempts: int,
            status: str, started: float, finished: float | None = None, **more) -> dict:
    """The jobs-table row of a run of a named job (its job_id is its run id)."""
    return {"job_id": run_id, "run_id": run_id, "job_name": job_name, "kind": kind, "window": window.timestamp(),
            "trigger": trigger, "attempts": attempts, "status": status, "started_at": started,
            "finished_at": finished, **more}


def job_sources(spec: JobSpec) -> tuple[list[Source], list[SourceError]]:
    """The sources a job names: files, folders (recursive), {path, glob} entries, URLs.

    A folder with nothing (new) in it is not an error for a job: there is just nothing to do.
    """
    sources, errors = [], []
    for entry in spec.sources:
        path, pattern = (entry["path"], entry.get("glob", "**/*")) if isinstance(entry, dict) else (entry, "**/*")
        path = str(path)
        if not is_url(path) and Path(path).is_dir():
            sources += folder_sources(path, pattern)
        else:
            found, bad = expand_sources([path])
            sources += found
            errors += bad
    return _unique_ids(sources), errors


def split_new(sources: list[Source], done_before, config_fp: str) -> tuple[list[Source], int]:
    """(sources not ingested yet with this config, each with its content fingerprint, how many were);
    done_before: pipeline.ingest.Ingested."""
    new = done_before.pending(sources, config_fp)
    return new, len(sources) - len(new)


def ingest_outcome(rows: list[dict], n_found: int, n_new: int, n_already: int, errors: list) -> RunOutcome:
    outcome = RunOutcome()
    for row in rows:
        outcome.add(row)
    failed = [str(e) for e in errors] + outcome.failed_sources
    cancelled = any(row.get("status") == "cancelled" for row in rows)
    outcome.detail = (f"{n_new} new of {n_found} sources, {n_already} already ingested"
                      + (f", {len(failed)} failed" if failed else ""))
    if cancelled:
        outcome.status, outcome.error = "cancelled", "cancelled"
    elif failed:
        outcome.status, outcome.error = "failed", "; ".join(failed)[:2000]
    return outcome
