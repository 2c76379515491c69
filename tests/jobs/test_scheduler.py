"""The scheduler against a real redis-server, with an injected clock.

The executor here only records which scheduler ran which window (the scheduling logic
is under test); real ingest and digest runs are in test_job_runs.py.
"""

import datetime as dt
import threading
import time
import uuid

from actors.runtime.scheduler import Scheduler
from pipeline.config import SchedulerConfig
from pipeline.jobs.board import JobBoard
from pipeline.jobs.runs import RunOutcome
from pipeline.jobs.spec import parse_spec
from pipeline.queue import connect
from pipeline.store import Store
from pipeline.store.query import StoreQuery

UTC = dt.timezone.utc


class Clock:
    def __init__(self, text):
        self.now = dt.datetime.fromisoformat(text).replace(tzinfo=UTC)

    def __call__(self):
        return self.now

    def set(self, text):
        self.now = dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


class Recorder:
    """Records each run; optionally slow, failing, or stopping when asked to."""

    def __init__(self, seconds=0.0, fail_first=0):
        self.calls, self.seconds, self.fail_first = [], seconds, fail_first
        self.lock = threading.Lock()

    def run(self, run, should_stop):
        with self.lock:
            self.calls.append((run.run_id, run.trigger, run.attempts))
            n = len(self.calls)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if should_stop():
                return RunOutcome("cancelled", "cancelled")
            time.sleep(0.02)
        if n <= self.fail_first:
            raise RuntimeError("worker lost")
        return RunOutcome("done", detail="recorded")


def nightly(name=None, **kw):
    data = {"name": name or f"job{uuid.uuid4().hex[:6]}", "kind": "ingest", "schedule": "0 2 * * *",
            "timezone": "UTC", "sources": ["/nowhere"]}
    return parse_spec({**data, **kw}, "test")


def scheduler(module_redis, prefix, specs, executor, clock, tmp_path, **settings):
    board = JobBoard(connect(module_redis.url), prefix)
    cfg = SchedulerConfig(**{"poll_s": 10.0, "lease_s": 5.0, "max_attempts": 3, **settings})
    return Scheduler({s.name: s for s in specs}, board, executor, Store(tmp_path / "store"), cfg, clock=clock,
                     log=lambda m: None)


def runs_table(tmp_path, name):
    return {r["run_id"]: r for r in StoreQuery(tmp_path / "store").jobs() if r.get("job_name") == name
            and r["job_id"] == r["run_id"]}


def test_a_job_fires_at_its_cron_time_and_not_before(module_redis, tmp_path):
    spec, rec, clock = nightly(), Recorder(), Clock("2026-11-20T01:59:00")
    s = scheduler(module_redis, uuid.uuid4().hex[:6], [spec], rec, clock, tmp_path)
    assert s.tick() == [] and rec.calls == []  # first look: nothing due yet
    clock.set("2026-11-20T01:59:59")
    assert s.tick() == []
    clock.set("2026-11-20T02:00:03")
    rows = s.tick()
    assert rec.calls == [(f"{spec.name}@20261120T020000Z", "cron", 1)]
    assert [r["status"] for r in rows] == ["done"]
    clock.set("2026-11-20T02:00:30")
    assert s.tick() == [] and len(rec.calls) == 1  # the same window never runs twice
    row = runs_table(tmp_path, spec.name)[f"{spec.name}@20261120T020000Z"]
    assert (row["status"], row["trigger"], row["attempts"], row["detail"]) == ("done", "cron", 1, "recorded")
    assert row["window"] == dt.datetime(2026, 11, 20, 2, tzinfo=UTC)


def test_windows_missed_while_down_run_once_each_after_restart(module_redis, tmp_path):
    spec, rec, clock = nightly(), Recorder(), Clock("2026-11-17T12:00:00")
    prefix = uuid.uuid4().hex[:6]
    scheduler(module_redis, prefix, [spec], rec, clock, tmp_path).tick()  # seen once, then down for days
    clock.set("2026-11-20T09:30:00")
    restarted = scheduler(module_redis, prefix, [spec], rec, clock, tmp_path)
    restarted.tick()
    assert [c[:2] for c in rec.calls] == [
        (f"{spec.name}@20261118T020000Z", "catch-up"), (f"{spec.name}@20261119T020000Z", "catch-up"),
        (f"{spec.name}@20261120T020000Z", "catch-up")]
    clock.set("2026-11-20T10:00:00")
    scheduler(module_redis, prefix, [spec], rec, clock, tmp_path).tick()  # and again: nothing runs twice
    restarted.tick()
    assert len(rec.calls) == 3
    assert {r["status"] for r in runs_table(tmp_path, spec.name).values()} == {"done"}


def test_catch_up_latest_records_older_missed_windows_as_skipped(module_redis, tmp_path):
    spec, rec, clock = nightly(catch_up="latest"), Recorder(), Clock("2026-11-17T12:00:00")
    prefix = uuid.uuid4().hex[:6]
    scheduler(module_redis, prefix, [spec], rec, clock, tmp_path).tick()
    clock.set("2026-11-20T09:30:00")
    scheduler(module_redis, prefix, [spec], rec, clock, tmp_path).tick()
    assert [c[0] for c in rec.calls] == [f"{spec.name}@20261120T020000Z"]
    table = runs_table(tmp_path, spec.name)
    assert {rid: r["status"] for rid, r in table.items()} == {
        f"{spec.name}@20261118T020000Z": "skipped", f"{spec.name}@20261119T020000Z": "skipped",
        f"{spec.name}@20261120T020000Z": "done"}


def test_two_schedulers_on_one_redis_run_each_window_once(module_redis, tmp_path):
    specs = [nightly(schedule="*/10 * * * *"), nightly(schedule="*/15 * * * *")]
    rec, clock, prefix = Recorder(seconds=0.05), Clock("2026-11-20T00:00:30"), uuid.uuid4().hex[:6]
    a = scheduler(module_redis, prefix, specs, rec, clock, tmp_path)
    b = scheduler(module_redis, prefix, specs, rec, clock, tmp_path)
    a.tick(), b.tick()
    for minute in range(1, 121):  # two hours of ticks, both schedulers racing on every one
        clock.now = dt.datetime(2026, 11, 20, 0, 0, 30, tzinfo=UTC) + dt.timedelta(minutes=minute)
        threads = [threading.Thread(target=s.tick) for s in (a, b)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    ran = [c[0] for c in rec.calls]
    assert len(ran) == len(set(ran)) == 12 + 8  # every 10 and every 15 minutes for two hours
    owners = {r["run_id"] for r in runs_table(tmp_path, specs[0].name).values()}
    assert len(owners) == 12


def test_a_run_that_crashes_is_taken_again_and_counts_attempts(module_redis, tmp_path):
    spec, clock, prefix = nightly(), Clock("2026-11-20T01:59:00"), uuid.uuid4().hex[:6]
    rec = Recorder(fail_first=1)
    s = scheduler(module_redis, prefix, [spec], rec, clock, tmp_path, lease_s=1.0)
    s.tick()
    clock.set("2026-11-20T02:00:05")
    assert [r["status"] for r in s.tick()] == ["failed"]  # attempt 1 raised: the window stays pending
    clock.set("2026-11-20T02:00:20")
    assert [r["status"] for r in s.tick()] == ["done"]
    assert [c[2] for c in rec.calls] == [1, 2]
    # A scheduler that dies holding a run (no finish, lease left to expire) loses it to another.
    board = JobBoard(connect(module_redis.url), prefix)
    rid = board.request(spec.name, clock())
    assert board.acquire(rid, "dead-scheduler", lease_s=1.0) == 1
    other = scheduler(module_redis, prefix, [spec], rec, clock, tmp_path, lease_s=1.0)
    assert other.run_pending(rid) is None  # still leased
    time.sleep(1.2)
    assert other.run_pending(rid)["attempts"] == 2


def test_a_run_gives_up_after_max_attempts(module_redis, tmp_path):
    spec, clock, prefix = nightly(), Clock("2026-11-20T01:59:00"), uuid.uuid4().hex[:6]
    s = scheduler(module_redis, prefix, [spec], Recorder(fail_first=10), clock, tmp_path, max_attempts=2)
    s.tick()
    clock.set("2026-11-20T02:00:05")
    s.tick(), s.tick(), s.tick()
    row = runs_table(tmp_path, spec.name)[f"{spec.name}@20261120T020000Z"]
    assert row["status"] == "failed" and row["attempts"] == 2 and "RuntimeError: worker lost" in row["error"]
    assert JobBoard(connect(module_redis.url), prefix).pending() == []


def test_cancel_a_pending_run_and_a_running_one(module_redis, tmp_path):
    spec, clock, prefix = nightly(), Clock("2026-11-20T12:00:00"), uuid.uuid4().hex[:6]
    board = JobBoard(connect(module_redis.url), prefix)
    rid = board.request(spec.name, clock())
    assert board.cancel(rid) == "cancelled"
    rec = Recorder(seconds=30)
    s = scheduler(module_redis, prefix, [spec], rec, clock, tmp_path)
    assert s.tick() == [] and rec.calls == []  # a cancelled run never starts
    clock.set("2026-11-20T12:00:01")
    rid2 = board.request(spec.name, clock())
    done = []
    worker = threading.Thread(target=lambda: done.append(s.run_pending(rid2)))
    worker.start()
    while not rec.calls:
        time.sleep(0.02)
    assert board.cancel(rid2) == "cancelling"
    worker.join(10)
    assert done[0]["status"] == "cancelled" and board.info(rid2)["status"] == "cancelled"
    assert board.cancel("nope@1") == "unknown"


def test_a_long_run_does_not_make_other_jobs_late(module_redis, tmp_path):
    """serve() plans on its own thread: windows falling due during a long run are on time."""
    slow, quick = nightly(schedule="* * * * *"), nightly(schedule="* * * * *", catch_up="none")
    clock, prefix = Clock("2026-11-20T00:00:30"), uuid.uuid4().hex[:6]

    class SlowFirst(Recorder):
        def run(self, run, should_stop):
            self.seconds = 1.5 if run.spec is slow and len(self.calls) == 0 else 0.0
            return super().run(run, should_stop)

    rec = SlowFirst()
    s = scheduler(module_redis, prefix, [slow, quick], rec, clock, tmp_path, poll_s=0.05)
    stop = threading.Event()
    worker = threading.Thread(target=s.serve, args=(stop,))
    worker.start()
    try:
        time.sleep(0.3)
        clock.set("2026-11-20T00:01:00.5")
        while not rec.calls:
            time.sleep(0.01)
        clock.set("2026-11-20T00:02:00.5")  # while the slow run goes on
        time.sleep(0.5)
        clock.set("2026-11-20T00:09:00")
        deadline = time.monotonic() + 10
        while not any(c[0] == f"{quick.name}@20261120T000200Z" for c in rec.calls):
            assert time.monotonic() < deadline, rec.calls
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(10)
    ran = {c[0]: c[1] for c in rec.calls}
    assert ran[f"{quick.name}@20261120T000200Z"] == "cron"  # planned on time, though it ran after the slow one
    assert f"{quick.name}@20261120T000500Z" not in ran  # catch_up none: missed windows stay skipped


def test_jobs_added_or_broken_while_running_are_picked_up_or_said(module_redis, tmp_path):
    from pipeline.jobs.spec import load_specs

    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "a.yaml").write_text("name: a\nkind: digest\nschedule: '0 2 * * *'\n")
    said, rec, clock = [], Recorder(), Clock("2026-11-20T01:30:00")
    s = scheduler(module_redis, uuid.uuid4().hex[:6], load_specs([folder]).values(), rec, clock, tmp_path)
    s.reload_specs, s.log = (lambda: load_specs([folder])), said.append
    s.tick()
    (folder / "b.yaml").write_text("name: b\nkind: digest\nschedule: '*/30 * * * *'\n")
    clock.set("2026-11-20T01:45:00")
    s.tick()  # b is seen (its first look starts from now)
    (folder / "a.yaml").write_text("name: a\nkind: digest\nschedule: 'every night'\n")  # broken mid-run
    clock.set("2026-11-20T02:00:10")
    s.tick(), s.tick()
    assert sorted(c[0].split("@")[0] for c in rec.calls) == ["a", "b"]  # a kept its last good spec
    assert [m for m in said if "new job" in m] == ["b: new job, digest at '*/30 * * * *' UTC"]
    assert len([m for m in said if "not a 5-field cron" in m]) == 1
