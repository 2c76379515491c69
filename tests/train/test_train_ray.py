"""`vidstorm train` on Ray Train (TorchTrainer, gloo on CPU): two workers finish; a worker killed
mid-run makes Ray restart the group, which resumes from the last reported checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.runtime.train import storage_dir
from test_train import ROOT, _overrides
from pipeline.train.synthrender import write_dataset


@pytest.fixture(scope="module")
def qa_set(tmp_path_factory, cheap_render):
    out = tmp_path_factory.mktemp("qa-ray")
    write_dataset(out, 12, seed=5, **cheap_render)
    return out


def _registered(out: Path) -> int:
    """The newest step Ray has stored a checkpoint of (0 if none yet)."""
    run = storage_dir(out) / "train"
    if not (run / "checkpoint_manager_snapshot.json").is_file():
        return 0
    steps = []
    for path in run.glob("checkpoint_*/train_state.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except (OSError, ValueError, KeyError):  # being copied
            pass
    return max(steps, default=0)


def _start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "actors.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def _finish(proc, timeout):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # everything this test started, Ray's processes included
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def test_two_workers_finish_and_save(tiny_overrides, qa_set, tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", *_overrides(tiny_overrides, qa_set, out, steps=6, save_every=3, batch_size=2),
            "train.num_workers=2", "train.threads=1"]
    log = _finish(_start(args), timeout=400)
    assert json.loads(log.strip().splitlines()[-1])["step"] == 6, log[-3000:]
    assert json.loads((out / "train_state.json").read_text())["step"] == 6
    pids = sorted((storage_dir(out) / "workers").glob("rank-*.pid"))
    assert [p.name for p in pids] == ["rank-0.pid", "rank-1.pid"]
    assert pids[0].read_text() != pids[1].read_text()  # two processes trained


def test_a_killed_worker_resumes_from_the_last_checkpoint(tiny_overrides, qa_set, tmp_path):
    out = tmp_path / "ckpt"
    steps = 60
    args = ["train", *_overrides(tiny_overrides, qa_set, out, steps=steps, save_every=4, batch_size=2),
            "train.num_workers=2", "train.threads=1", "train.max_failures=2"]
    proc = _start(args)
    try:
        state = out / "train_state.json"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # Ray registers a reported checkpoint
            if state.is_file() and json.loads(state.read_text())["step"] >= 8 and _registered(out) >= 4:
                break  # asynchronously: kill only once one is in its storage
            time.sleep(0.2)
        killed_at = json.loads(state.read_text())["step"]
        assert killed_at < steps, "the run ended before a worker could be killed"
        victim = int((storage_dir(out) / "workers" / "rank-1.pid").read_text())
        os.kill(victim, signal.SIGKILL)
    except BaseException:
        _finish(proc, timeout=1)
        raise
    log = _finish(proc, timeout=400)
    final = json.loads(log.strip().splitlines()[-1])
    assert final["step"] == steps, log[-3000:]
    # the restarted group resumed from a checkpoint saved at or after the kill point, not from 0
    assert final["resumed_from"] >= 4, final
    assert f"at step {final['resumed_from']}" in log
    assert int((storage_dir(out) / "workers" / "rank-1.pid").read_text()) != victim
