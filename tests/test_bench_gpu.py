"""bench/gpu.py at tiny sizes on the CPU: the one-command GPU bench runs end to end and says its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
