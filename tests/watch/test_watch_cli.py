"""`vidstorm watch add|list|show|test|remove` and `vidstorm alerts`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.store import Store
from pipeline.types import Segment

from helpers.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]


def vs(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_rules_are_added_listed_tested_and_removed(tmp_path, text_embedder):
    data = str(tmp_path / "data")
    captions = ["a red circle moves to the left", "a blue square moves up", "a red circle appears, then a square"]
    vectors = text_embedder.embed(captions)
    Store(tmp_path / "data" / "store").write_records(
        [Segment("cam", i, 4.0 * i, 4.0 * i + 4, c, np.zeros(4, np.float32), v, 4, "fp")
         for i, (c, v) in enumerate(zip(captions, vectors))])
    with Receiver() as rx:
        url = rx.url + "?token=t0psecret"
        added = vs("watch", "add", "red", "--query", "a red circle", "--min-score", "0.6", "--notify",
                   f"webhook:{url}", "--data", data)
        assert added.returncode == 0, added.stderr
        assert (tmp_path / "data" / "watch" / "red.yaml").stat().st_mode & 0o077 == 0  # URLs may hold tokens
        again = vs("watch", "add", "red", "--query", "x", "--notify", "mqtt:a", "--data", data)
        assert again.returncode == 2 and "exists: pass --force" in again.stderr
        listed = vs("watch", "list", "--data", data)
        assert "red" in listed.stdout and "t0psecret" not in listed.stdout and "token=***" in listed.stdout
        shown = vs("watch", "show", "red", "--json", "--data", data)
        assert "t0psecret" not in shown.stdout and json.loads(shown.stdout)["rule"]["min_score"] == 0.6
        tested = vs("watch", "test", "red", "--json", "--data", data)
        assert [r["seq"] for r in json.loads(tested.stdout)] == [0, 2]  # stored segments it matches, best first
        sent = vs("watch", "test", "red", "--send", "--data", data)
        assert sent.returncode == 0 and "sent a test alert" in sent.stdout and "t0psecret" not in sent.stdout
        assert rx.accepted()[0]["type"] == "vidstorm.test" and len(rx.requests) == 1
    down = vs("watch", "test", "red", "--send", "--data", data)  # the receiver is gone: one line, exit 1
    assert down.returncode == 1 and "unreachable" in down.stdout and "t0psecret" not in down.stdout
    bad = vs("watch", "add", "bad", "--query", "x", "--notify", "webhook:http://u:pw@/x", "--data", data)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "pw" not in bad.stderr
    assert "no alerts" in vs("alerts", "--data", data).stdout
    assert vs("watch", "remove", "red", "--data", data).returncode == 0
    gone = vs("watch", "show", "red", "--data", data)
    assert gone.returncode == 2 and "unknown watch rule 'red'" in gone.stderr


def test_a_broken_rule_file_is_one_line_and_ingest_goes_on(tmp_path, tiny_overrides):
    from pipeline.synth import write_clip

    data = tmp_path / "data"
    (data / "watch").mkdir(parents=True)
    (data / "watch" / "broken.yaml").write_text("name: broken\nquery: x\nnotify: ['webhook:ftp://x']\n")
    clip = write_clip(tmp_path / "yard.mp4", seconds=4, fps=4)
    done = vs("ingest", str(clip), "--local", "--data", str(data), *tiny_overrides, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "watch" in line]
    assert len(lines) == 1 and "broken.yaml" in lines[0] and "must start with http" in lines[0], done.stderr
    assert vs("segments", "--data", str(data)).stdout.count("yard") >= 1
