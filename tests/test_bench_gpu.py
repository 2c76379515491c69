"""bench/gpu.py at tiny sizes on the CPU: the one-command GPU bench runs end to end and says its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_bench_runs_at_tiny_sizes_on_a_cpu(tmp_path):
    env = dict(os.environ, VIDSTORM_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--device", "cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [k for k in result if k.endswith("_error")], result
    assert result["size"] == "tiny" and result["siglip_fps_bf16"] > 0 and result["siglip_batch"] in (4, 8)
    # the blocked scan equals the one-step-per-token reference at fp32 precision
    assert result["temporal_fast_impl"] == "torch" and result["temporal_ms_torch"] > 0
    assert result["temporal_max_rel_err_torch"] < 1e-5
    assert result["e2e_chunks"] == 6 and result["e2e_rtf"] > 0  # 96 s at 1 fps in 16-frame chunks
    assert 0 < result["llm_params_b"] < 0.05  # the tiny Qwen2 shape, its 151,936-token vocabulary included


@pytest.mark.parametrize("vlm", ["smolvlm2-2.2b"])  # llava-ov-7b: the same code, another geometry
def test_the_vlm_gpu_bench_runs_at_tiny_sizes_on_a_cpu(vlm):
    done = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--device", "cpu", "--vlm", vlm], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "vlm_error" not in result, result
    assert result["vlm"] == vlm and result["vlm_video_s"] == 96
    assert result["vlm_rtf_storm12"] > 0 and result["vlm_rtf_full"] > 0
    # 12.5% of the frames reach the LLM: far fewer of its input tokens per minute
    assert result["vlm_llm_tokens_per_min_storm12"] < 0.25 * result["vlm_llm_tokens_per_min_full"]


def test_the_vlm_bench_says_storm_at_init_is_the_vlm():
    done = subprocess.run([sys.executable, "bench/vlm.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for family in ("smolvlm", "llava_onevision"):
        row = result[family]
        assert row["max_abs_diff_tokens"] <= 1e-5 and row["max_abs_diff_logits"] <= 1e-5, row
        assert row["describe_equal"] is True
        assert row["llm_tokens_ratio"] <= 1 / 6, row
