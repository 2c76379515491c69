"""`vidstorm describe FILE`: captions without storing anything, on a VLM base in every temporal mode,
the shipped VLM configs, and bad input as one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.vlm_config import vlm_overrides
from pipeline.synth import write_clip

ROOT = Path(__file__).resolve().parents[1]


def vidstorm(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("describe") / "walk.mp4", seconds=20, fps=5, width=160, height=96)


@pytest.mark.parametrize("mode", ["stream", "chunk_bidirectional", "offline"])
def test_a_video_gets_a_caption_per_chunk_and_nothing_is_stored(clip, tiny_vlms, mode, tmp_path):
    from actors.cli import main  # in-process: one model load per test

    args = ["describe", str(clip), "--json", *vlm_overrides(tiny_vlms["llava_onevision"], f"temporal.mode={mode}")]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
    finally:
        os.chdir(cwd)
    rows = json.loads(out.getvalue())
    assert [(r["t_start"], r["t_end"]) for r in rows] == [(0.0, 8.0), (8.0, 16.0), (16.0, 20.0)]
    assert all(r["caption"] for r in rows)
    assert list(tmp_path.iterdir()) == []  # no store, no state, no spill left behind


def test_lines_read_span_then_caption(clip, tiny_vlms, capsys):
    from actors.cli import main

    assert main(["describe", str(clip), *vlm_overrides(tiny_vlms["smolvlm"])]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert [line.split("  ", 1)[0] for line in lines] == ["0:00:00-0:00:08", "0:00:08-0:00:16", "0:00:16-0:00:20"]
    assert "random" in out.err  # the tiny VLM is marked random: said once, on stderr


def test_the_shipped_vlm_configs_run_on_a_local_checkpoint(clip, tiny_vlms, capsys):
    from actors.cli import main

    for config, family in (("configs/smolvlm2.yaml", "smolvlm"), ("configs/llava-onevision.yaml", "llava_onevision")):
        ref = tiny_vlms[family]
        code = main(["describe", str(clip), "--config", str(ROOT / config), f"encoder.model={ref}",
                     f"summarizer.model={ref}", "summarizer.max_new_tokens=4", "encoder.device=cpu",
                     "summarizer.device=cpu"])
        assert code == 0, capsys.readouterr().err
        assert len(capsys.readouterr().out.strip().splitlines()) == 2  # 20 s in 16-frame chunks


def test_bad_input_is_one_line(tmp_path, tiny_vlms, clip, capsys):
    from actors.cli import main

    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG not really")
    cases = [
        (["describe", str(garbage), *vlm_overrides(tiny_vlms["smolvlm"])], "not a readable image"),
        (["describe", str(tmp_path / "missing.mp4"), *vlm_overrides(tiny_vlms["smolvlm"])], "no such file"),
        (["describe", str(clip), f"encoder.model={tiny_vlms['smolvlm']}"], "set summarizer.model to the same"),
    ]
    for args, problem in cases:
        assert main(args) == 2, args
        out = capsys.readouterr()
        errors = [line for line in out.err.splitlines() if line.startswith("vidstorm: error:")]
        assert len(errors) == 1 and problem in errors[0], out.err
        assert out.out == ""
    # a hub id that cannot be reached (no network here; offline mode answers at once)
    done = vidstorm("describe", str(clip), "--config", "configs/smolvlm2.yaml", env={"HF_HUB_OFFLINE": "1"})
    errors = [line for line in done.stderr.splitlines() if line.startswith("vidstorm: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "cannot load the model config" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
