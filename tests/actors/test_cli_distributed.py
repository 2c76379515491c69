"""`vidstorm ingest` without --local: embedded Redis + Ray, started and stopped by the command."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.store.query import StoreQuery
from pipeline.synth import write_clip

ROOT = Path(__file__).resolve().parents[2]


def _processes(pattern):
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def _redis_alive(data) -> bool:
    import os

    pid_file = data / "redis" / "redis-server.pid"
    assert pid_file.is_file(), "the embedded redis-server records its PID"
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{int(pid_file.read_text())}/status").read_text().find("State:\tZ") < 0


def _cmd(data, *args):
    return [sys.executable, "-m", "actors.cli", "ingest", *args, "--data", str(data), "workers.decoders=1"]


def test_default_ingest_runs_through_ray_and_redis_and_cleans_up(tmp_path, tiny_overrides):
    """... and the writer matches the watch rules: one alert per stored segment of the rule's stream,
    delivered by the writer's notifier before the command ends; none for a rule of another stream."""
    from helpers.receiver import Receiver

    good = write_clip(tmp_path / "yard.mp4", seconds=20, fps=5)
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    data = tmp_path / "data"
    rays_before = len(_processes("raylet"))
    with Receiver() as rx:
        (data / "watch").mkdir(parents=True)
        for name, stream in (("yard-all", "yard"), ("never", "elsewhere")):
            (data / "watch" / f"{name}.yaml").write_text(
                f"name: {name}\nquery: anything\nmin_score: -1\nstreams: [{stream}]\nnotify: ['webhook:{rx.url}']\n")
        done = subprocess.run(_cmd(data, str(good), str(bad), *tiny_overrides), capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        alerts = rx.accepted()
    assert sorted((a["rule"], a["seq"]) for a in alerts) == [("yard-all", 0), ("yard-all", 1), ("yard-all", 2)]
    assert len(rx.requests) == 3  # each once
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vidstorm: error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "not a readable video" in errors[0]
    assert "yard: 3 chunks" in done.stderr
    q = StoreQuery(data / "store")
    assert [r["chunk_seq"] for r in q.segments("yard")] == [0, 1, 2]
    assert {j["status"] for j in q.jobs() if j["stream_id"] == "broken"} == {"failed"}
    assert (data / "redis" / "appendonly.aof").exists() or (data / "redis" / "appendonlydir").exists()
    assert not _redis_alive(data)  # our redis-server is gone
    assert len(_processes("raylet")) == rays_before  # and so is our Ray


def test_ctrl_c_stops_redis_and_ray(tmp_path, tiny_overrides):
    clip = write_clip(tmp_path / "long.mp4", seconds=120, fps=2)
    data = tmp_path / "data"
    rays_before = len(_processes("raylet"))
    # SIGINT at its default in the child even where this suite runs with it ignored (a background job)
    proc = subprocess.Popen(_cmd(data, str(clip), *tiny_overrides), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((data / "store" / "segments").rglob("*.parquet")):
        time.sleep(0.2)  # wait until it is really working: the first segment is stored
    assert _redis_alive(data), "redis-server should be running mid-ingest"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130, proc.stderr.read()
    assert not _redis_alive(data)
    assert len(_processes("raylet")) == rays_before
