"""Real runs of named jobs: ingest only what is new, finish a killed run on re-run, digest a period.

Real clips decoded by PyAV, tiny real models, a real redis-server, real Parquet; one test
runs both kinds of job on a real local Ray.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from actors.runtime.scheduler import JobExecutor, Scheduler
from pipeline.config import SchedulerConfig
from pipeline.jobs.board import JobBoard
from pipeline.jobs.runs import Run
from pipeline.jobs.spec import parse_spec
from pipeline.queue import connect
from pipeline.store import Store
from pipeline.store.query import StoreQuery
from pipeline.synth import write_clip
from pipeline.types import Segment

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc


def ingest_spec(folder, name="cams", **kw):
    return parse_spec({"name": name, "kind": "ingest", "schedule": "0 2 * * *", "timezone": "UTC",
                       "sources": [{"path": str(folder), "glob": "*.mp4"}], **kw}, "test")


def stored_keys(store_root, table="segments"):
    """Every (stream, seq, level) row in the Parquet files themselves (duplicates would show here)."""
    keys = []
    for path in Store(store_root).files(table):
        t = pq.read_table(path, columns=["stream_id", "chunk_seq" if table == "segments" else "seq", "level"])
        keys += list(zip(*(c.to_pylist() for c in t.columns)))
    return keys


def run_rows(store_root, name):
    return sorted((r for r in StoreQuery(store_root).jobs() if r.get("job_name") == name
                   and r["job_id"] == r["run_id"]), key=lambda r: r["updated_at"])


def test_an_ingest_job_takes_only_files_it_has_not_ingested(tmp_path, module_redis, tiny_overrides):
    clips = tmp_path / "cam1"
    write_clip(clips / "monday.mp4", seconds=16, fps=4)
    write_clip(clips / "tuesday.mp4", seconds=8, fps=4)
    (clips / "notes.txt").write_text("not a video")
    spec, data = ingest_spec(clips), tmp_path / "data"
    executor = JobExecutor(data, overrides=tiny_overrides, log=lambda m: None)
    board = JobBoard(connect(module_redis.url), uuid.uuid4().hex[:6])
    s = Scheduler({spec.name: spec}, board, executor, Store(data / "store"), SchedulerConfig(), log=lambda m: None)
    now = dt.datetime.now(UTC)

    first = s.run_pending(board.request(spec.name, now))
    assert first["status"] == "done" and first["detail"] == "2 new of 2 sources, 0 already ingested"
    write_clip(clips / "wednesday.mp4", seconds=8, fps=4)
    second = s.run_pending(board.request(spec.name, now + dt.timedelta(seconds=1)))
    assert second["status"] == "done" and second["detail"] == "1 new of 3 sources, 2 already ingested"
    third = s.run_pending(board.request(spec.name, now + dt.timedelta(seconds=2)))
    assert third["detail"] == "0 new of 3 sources, 3 already ingested" and third["segments"] == 0
    write_clip(clips / "thursday.mp4", seconds=12, fps=4)  # ingested by hand first, under another stream id
    from pipeline.decode import Source
    from pipeline.ingest import LocalIngest

    LocalIngest(executor.config_for(spec), executor._processor(executor.config_for(spec)), data,
                log=lambda m: None).run(Source(str(clips / "thursday.mp4"), "by-hand"))
    fourth = s.run_pending(board.request(spec.name, now + dt.timedelta(seconds=3)))
    assert fourth["detail"] == "0 new of 4 sources, 4 already ingested"

    keys = stored_keys(data / "store")
    assert len(keys) == len(set(keys)) == 2 + 1 + 1 + 2  # 16, 8, 8 (same bytes as 8: a file of its own), 12 s
    per_source = [r for r in StoreQuery(data / "store").jobs() if r["run_id"] and r["job_id"] != r["run_id"]
                  and r["status"] == "done"]
    assert sorted(r["run_id"] for r in per_source) == sorted([first["run_id"]] * 2 + [second["run_id"]])


def test_a_killed_run_finishes_on_rerun_from_where_it_stopped(tmp_path, tiny_overrides):
    clips, jobs, data = tmp_path / "clips", tmp_path / "jobs", tmp_path / "data"
    write_clip(clips / "a.mp4", seconds=16, fps=4)
    write_clip(clips / "b.mp4", seconds=96, fps=4)  # 12 chunks
    jobs.mkdir()
    (jobs / "cams.yaml").write_text(ingest_spec(clips).to_yaml())
    common = ["--jobs", str(jobs), "--data", str(data), *tiny_overrides, "scheduler.lease_s=2"]
    cmd = [sys.executable, "-m", "actors.cli"]
    first = subprocess.Popen([*cmd, "jobs", "run", "cams", "--local", *common], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    redis_pid = None
    try:
        deadline = time.monotonic() + 240
        while not list((data / "state").glob("clips-b.*.state")):  # b is half done: a checkpoint exists
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        redis_pid = int((data / "redis" / "redis-server.pid").read_text())
        time.sleep(2.2)  # the dead run's lease runs out
        again = subprocess.run([*cmd, "scheduler", "--once", "--local", *common], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "clips-b: resuming at chunk" in again.stderr, again.stderr[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
        if redis_pid:  # the killed command's embedded Redis outlived it; the re-run joined it
            os.kill(redis_pid, signal.SIGTERM)

    runs = run_rows(data / "store", "cams")
    assert (runs[-1]["status"], runs[-1]["attempts"]) == ("done", 2)
    assert runs[-1]["detail"] == "1 new of 2 sources, 1 already ingested"
    keys = stored_keys(data / "store")
    assert len(keys) == len(set(keys))
    assert sorted(seq for sid, seq, _ in keys if sid == "clips-b") == list(range(12))
    assert len([k for k in stored_keys(data / "store", "summaries") if k[0] == "clips-b" and k[2] == "stream"]) == 1


def _segment(stream, seq, when, caption):
    vec = np.random.default_rng(seq).normal(size=384).astype(np.float32)
    return Segment(stream, seq, seq * 8.0, seq * 8.0 + 8, caption, np.zeros(4, np.float32), vec / np.linalg.norm(vec),
                   8, "fp", wall_clock=when.timestamp(), created_at=when.timestamp())


def _digest_store(root, day):
    yesterday = day - dt.timedelta(days=1)
    at = lambda base, h: base + dt.timedelta(hours=h)  # noqa: E731
    Store(root).write_records([
        _segment("gate", 0, at(yesterday, 8), "a van parks at the gate"),
        _segment("gate", 1, at(yesterday, 9), "two people unload boxes"),
        _segment("dock", 0, at(yesterday, 23.5), "a forklift moves pallets"),
        _segment("dock", 1, at(day, 0.5), "the dock is empty"),  # today: not in yesterday's digest
        _segment("lobby", 0, at(day, 1), "someone waits in the lobby"),
    ])


def test_a_digest_job_stores_one_period_summary_per_stream(tmp_path, tiny_overrides):
    day = dt.datetime(2026, 11, 20, tzinfo=UTC)
    _digest_store(tmp_path / "store", day)
    spec = parse_spec({"name": "daily", "kind": "digest", "schedule": "0 2 * * *", "period": "day"}, "test")
    executor = JobExecutor(tmp_path, overrides=tiny_overrides, log=lambda m: None)
    run = Run("daily@20261120T020000Z", spec, day + dt.timedelta(hours=2), "cron")

    outcome = executor.run(run, lambda: False)
    assert (outcome.status, outcome.summaries, outcome.segments) == ("done", 2, 3)
    rows = StoreQuery(tmp_path / "store").summaries(level="period")
    assert sorted((r["stream_id"], r["seq"], r["t_start"], r["t_end"]) for r in rows) == [
        ("dock", int((day - dt.timedelta(days=1)).timestamp()), 0.0, 8.0),
        ("gate", int((day - dt.timedelta(days=1)).timestamp()), 0.0, 16.0)]
    assert all(r["text"].strip() for r in rows)
    again = executor.run(run, lambda: False)  # a re-run of the same window adds nothing
    assert (again.status, again.summaries) == ("done", 0)
    assert len(stored_keys(tmp_path / "store", "summaries")) == 2


def test_both_kinds_of_job_run_on_ray(tmp_path, tiny_overrides):
    from actors.runtime import Cluster
    from pipeline.config import load_config

    clips = tmp_path / "clips"
    write_clip(clips / "yard.mp4", seconds=16, fps=4)
    data = tmp_path / "data"
    cfg = load_config(None, [*tiny_overrides, "workers.decoders=1"])
    with Cluster(cfg, data, log=lambda m: None) as cluster:
        executor = JobExecutor(data, overrides=[*tiny_overrides, "workers.decoders=1"], cluster=cluster,
                               log=lambda m: None)
        now = dt.datetime.now(UTC)
        ingest = executor.run(Run("yard@manual", ingest_spec(clips, name="yard"), now, "manual"), lambda: False)
        assert (ingest.status, ingest.segments, ingest.summaries) == ("done", 2, 2), ingest.error
        # period "window": from the previous cron time (1 January) to the window (now): all of this year
        digest_spec = parse_spec({"name": "d", "kind": "digest", "schedule": "0 0 1 1 *", "period": "window"}, "t")
        digest = executor.run(Run("d@1", digest_spec, dt.datetime.now(UTC), "manual"), lambda: False)
        assert (digest.status, digest.summaries, digest.segments) == ("done", 1, 2), digest.error
        leftover = list(connect(cluster.redis_url).scan_iter(match="vs-run-*"))
    assert leftover == []  # a run's queues are removed when it ends
    rows = [r for r in StoreQuery(data / "store").jobs() if r["stream_id"] == "clips-yard"]
    assert rows[-1]["status"] == "done" and rows[-1]["run_id"] == "yard@manual" and rows[-1]["job_name"] == "yard"


def test_nightly_ingest_then_digest_of_a_camera_file_shot_yesterday(tmp_path, tiny_overrides):
    """A camera file tagged with when it was shot lands in that day's digest, whenever it is ingested."""
    clips, data = tmp_path / "cam9", tmp_path / "data"
    write_clip(clips / "2026-11-19.mp4", seconds=24, fps=4, creation_time="2026-11-19T22:00:00Z")
    executor = JobExecutor(data, overrides=tiny_overrides, log=lambda m: None)
    night = dt.datetime(2026, 11, 20, 2, tzinfo=UTC)
    ingest = executor.run(Run("cam9@1", ingest_spec(clips, name="cam9"), night, "cron"), lambda: False)
    assert (ingest.status, ingest.segments) == ("done", 3)
    digest_spec = parse_spec({"name": "daily", "kind": "digest", "schedule": "30 6 * * *", "period": "day"}, "t")
    wrong_day = executor.run(Run("daily@0", digest_spec, night - dt.timedelta(days=1), "cron"), lambda: False)
    digest = executor.run(Run("daily@1", digest_spec, night + dt.timedelta(hours=4, minutes=30), "cron"),
                          lambda: False)
    assert (wrong_day.summaries, digest.summaries, digest.segments) == (0, 1, 3)
    [row] = StoreQuery(data / "store").summaries("cam9-2026-11-19", level="period")
    assert row["wall_clock"] == dt.datetime(2026, 11, 19, tzinfo=UTC) and (row["t_start"], row["t_end"]) == (0.0, 24.0)
