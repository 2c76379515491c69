"""Secrets never printed: a Redis password and an API token given on the command line appear in no
CLI output (text or JSON), in no stored resolved config and in no jobs table row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.secrets import mask_data, mask_secrets
from pipeline.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
PASSWORD, TOKEN = "Redis-Pw-8c1f0e", "Api-Tok-5d2b77"


def vidstorm(*args, timeout=300):
    result = subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=timeout)
    return result, result.stdout + result.stderr


def test_mask_secrets_hides_urls_overrides_and_config_lines():
    text = mask_secrets(f"redis://:{PASSWORD}@h:6379/0 ['api.token={TOKEN}', 'decode.fps=2']\napi:\n  token: {TOKEN}\n")
    assert PASSWORD not in text and TOKEN not in text and "decode.fps=2" in text
    assert mask_data({"token": TOKEN, "overrides": [f"api.token={TOKEN}"], "n": 1}) == \
        {"token": "***", "overrides": ["api.token=***"], "n": 1}


def test_no_command_prints_or_stores_a_secret(tmp_path, tiny_overrides):
    data = tmp_path / "data"
    secrets = [f"redis.url=redis://:{PASSWORD}@127.0.0.1:9/0", f"api.token={TOKEN}"]
    outputs = []

    def run(*args, ok=True):
        result, text = vidstorm(*args)
        assert (result.returncode == 0) == ok, text
        outputs.append(f"{args[0]}: {text}")
        return text

    run("config", *secrets)
    bad = run("config", f"redis.url=http://:{PASSWORD}@127.0.0.1:9/0", ok=False)  # invalid: still masked
    assert "redis.url must start with" in bad
    clip = write_clip(tmp_path / "cam.mp4", seconds=8, fps=4)
    run("ingest", str(clip), "--local", "--data", str(data), *tiny_overrides, f"api.token={TOKEN}")
    run("jobs", "add", "nightly", "--kind", "ingest", "--cron", "0 2 * * *", "--source", str(clip),
        "--data", str(data), *secrets)
    run("jobs", "list", "--data", str(data))
    run("jobs", "list", "--json", "--data", str(data))
    run("jobs", "show", "nightly", "--data", str(data))
    run("jobs", "show", "nightly", "--json", "--data", str(data))
    run("jobs", "run", "nightly", "--local", "--data", str(data), *tiny_overrides)
    run("segments", "--data", str(data), "--json")
    for text in outputs:
        assert PASSWORD not in text and TOKEN not in text, text
    assert any("api.token=***" in text for text in outputs)  # the override is shown, masked

    stored = list((data / "runs").glob("*-config.yaml"))
    assert stored
    for path in stored:  # resolved configs written next to the runs
        assert TOKEN not in path.read_text() and PASSWORD not in path.read_text()
    tables = list((data / "store").rglob("*.parquet"))
    assert any("jobs" in str(p) for p in tables)
    for path in tables:  # every stored row, the jobs table included
        assert TOKEN not in str(pq.read_table(path).to_pylist()) and PASSWORD not in str(pq.read_table(path).to_pylist())
