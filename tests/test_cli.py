"""The `vidstorm` console script: resolved config out, one clear line on a mistake."""

import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True)


def test_config_prints_resolved_yaml():
    done = _run("config", "decode.fps=3")
    assert done.returncode == 0, done.stderr
    assert "fps: 3.0" in done.stdout


def test_bad_key_is_one_line_and_exit_2():
    done = _run("config", "decode.fsp=3")
    assert done.returncode == 2
    assert done.stderr.strip() == "vidstorm: error: command line: unknown config key 'decode.fsp'"
    assert "Traceback" not in done.stderr
