"""Names from users and the network never touch a path unvalidated: stream ids (CLI), job names
(CLI, job spec files, HTTP). Each entry point is tried with '..', '/', NUL, newline and very long names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from actors.server.app import create_app
from pipeline.decode import expand_sources, slug
from pipeline.jobs.spec import parse_spec
from pipeline.names import BadName, check_name
from pipeline.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]
BAD = ["..", "../x", "../../etc/passwd", "a/b", "/abs", "a\nb", "cam\n", "a\x00b", ".hidden", "-rf", "", "a" * 300]
ARGV_BAD = [b for b in BAD if "\x00" not in b and b]  # argv cannot carry NUL; empty is argparse's own case


def vidstorm(*args):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.mark.parametrize("name", BAD)
def test_check_name_refuses_every_trick(name):
    with pytest.raises(BadName, match="not allowed"):
        check_name(name, "stream id")


def test_good_names_and_slugs_pass():
    for name in ["cam-01", "lobby.east_2", "A" * 128]:
        assert check_name(name) == name
    for text in ["../../x", "a\nb", "é" * 400, "...", "x" * 500]:
        assert check_name(slug(text)) == slug(text)  # every derived stream id is safe


def test_cli_stream_ids_are_checked_before_any_state_file(tmp_path):
    clip = write_clip(tmp_path / "cam.mp4", seconds=2, fps=2)
    for name in ARGV_BAD:
        result = vidstorm("ingest", str(clip), "--local", f"--stream={name}", "--data", str(tmp_path / "data"))
        assert result.returncode == 2, (name, result.stderr)
        assert "stream id" in result.stderr and "not allowed" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "state").exists()
    with pytest.raises(BadName):
        expand_sources([str(clip)], "a\x00b")


def test_cli_job_names_are_checked(tmp_path):
    data = tmp_path / "data"
    for name in [n for n in ARGV_BAD if not n.startswith("-")]:  # argparse reads '-rf' as an option itself
        for args in (["add", name, "--kind", "ingest", "--cron", "0 2 * * *", "--source", str(tmp_path)],
                     ["show", name], ["run", name, "--local"]):
            result = vidstorm("jobs", *args, "--data", str(data))
            assert result.returncode == 2, (name, args, result.stderr)
            assert "not allowed" in result.stderr and "Traceback" not in result.stderr, result.stderr
    written = list(tmp_path.rglob("*.yaml"))
    assert written == [], written


@pytest.mark.parametrize("name", BAD)
def test_job_spec_files_with_bad_names_are_refused(name):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="name"):
        parse_spec({"name": name, "kind": "ingest", "schedule": "0 2 * * *", "sources": ["/footage"]}, "x.yaml")


def test_http_job_names_are_checked(tmp_path, text_embedder):
    asked = []
    app = create_app(tmp_path / "store", None, text_embedder, run_requester=lambda name: asked.append(name) or "r1")
    assert TestClient(app).post("/jobs/nightly/run").status_code == 400  # no X-Vidstorm-Request header
    client = TestClient(app, headers={"X-Vidstorm-Request": "1"})
    for raw in ["..", "%2E%2E", "a%2Fb", "a%0Ab", "cam%0A", "a%00b", ".hidden", "a" * 300]:
        answer = client.post(f"/jobs/{raw}/run")
        assert answer.status_code in (400, 404, 405), (raw, answer.status_code)
    assert asked == []  # no bad name reached the job board
    assert client.post("/jobs/nightly/run").status_code == 202 and asked == ["nightly"]
