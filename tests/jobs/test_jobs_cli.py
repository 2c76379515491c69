"""`vidstorm jobs ...` and `vidstorm scheduler` as a user runs them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vidstorm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def one_error_line(done, text):
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("vidstorm: error:") and text in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_register_list_show_and_run_a_job(tmp_path, tiny_overrides):
    data, jobs = str(tmp_path / "data"), str(tmp_path / "no-specs-here")
    added = vidstorm("jobs", "add", "daily", "--kind", "digest", "--cron", "30 6 * * *", "--tz", "Europe/Berlin",
                     "summary.max_items_per_prompt=4", "--data", data)
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "data" / "jobs" / "daily.yaml").is_file()
    listed = vidstorm("jobs", "list", "--json", "--jobs", jobs, "--data", data)
    [job] = json.loads(listed.stdout)
    assert (job["name"], job["kind"], job["timezone"], job["last_run"]) == ("daily", "digest", "Europe/Berlin", None)
    assert job["overrides"] == ["summary.max_items_per_prompt=4"]

    ran = vidstorm("jobs", "run", "daily", "--local", "--jobs", jobs, "--data", data, *tiny_overrides)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "done (period" in ran.stderr and "0 streams" in ran.stderr
    shown = vidstorm("jobs", "show", "daily", "--json", "--jobs", jobs, "--data", data)
    runs = json.loads(shown.stdout)["runs"]
    assert [(r["status"], r["trigger"], r["attempts"]) for r in runs] == [("done", "manual", 1)]
    assert not list((tmp_path / "data" / "redis").glob("*.url"))  # its embedded Redis stopped with it


def test_mistakes_are_one_line(tmp_path):
    data = str(tmp_path / "data")
    one_error_line(vidstorm("jobs", "add", "x", "--kind", "ingest", "--cron", "0 25 * * *", "--source", "/v",
                            "--data", data), "not a 5-field cron expression")
    one_error_line(vidstorm("jobs", "add", "x", "--kind", "ingest", "--cron", "0 2 * * *", "--data", data),
                   "needs sources")
    one_error_line(vidstorm("jobs", "show", "nope", "--jobs", data, "--data", data), "no job named 'nope'")
    one_error_line(vidstorm("jobs", "cancel", "nope@20261121T020000Z", "--data", data), "no scheduler is running")
    one_error_line(vidstorm("scheduler", "--jobs", str(tmp_path), "--data", data), "no job specs in")
    bad = tmp_path / "specs"
    bad.mkdir()
    (bad / "x.yaml").write_text("name: x\nkind: ingest\nschedule: '0 2 * * *'\nsources: [/v]\ntimezone: Nowhere/City\n")
    one_error_line(vidstorm("jobs", "list", "--jobs", str(bad), "--data", data), "unknown time zone 'Nowhere/City'")


def test_scheduler_stops_on_ctrl_c_with_its_redis(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "hourly.yaml").write_text("name: hourly\nkind: digest\nschedule: '0 * * * *'\n")
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "scheduler", "--local", "--jobs", str(specs),
                             "--data", str(tmp_path / "data")], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if ours ignores it
    lines = []
    try:
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            lines.append(proc.stderr.readline())
        redis_pid = int((tmp_path / "data" / "redis" / "redis-server.pid").read_text())
        assert any("hourly: digest at '0 * * * *' UTC; next" in line for line in lines), lines
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.2)
    try:
        os.kill(redis_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
