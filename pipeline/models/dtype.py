"""What `dtype: auto` means on this machine.

CUDA: bf16. A CPU: bf16 only where it is native (avx512_bf16 or AMX: oneDNN then runs bf16
matmuls in hardware) *and* a measured forward pass of the model in bf16 beats fp32 by at least
10%; anywhere else fp32 (emulated bf16 is slower, and a small model is bound by per-op
overhead, not arithmetic). The measurement runs once per model geometry, machine and torch
version and is cached in $VIDSTORM_CACHE (default ~/.cache/vidstorm)/dtype.json, under a
file lock so that several workers starting at once measure once and agree.

Stated tolerance (tests/test_dtype.py, bench/perf.py): SigLIP in bf16 keeps the pooled visual
tokens within cosine 0.99 of fp32 (measured 0.9999 on SigLIP-B/16).
"""

from __future__ import annotations

import copy
import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_GAIN = 0.9  # bf16 must take at most this fraction of fp32's time


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of this machine's CPU, from /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware."""
    return any(flag in cpu_info()[1] for flag in NATIVE_BF16_FLAGS)


def cache_path() -> Path:
    return Path(os.environ.get("VIDSTORM_CACHE", Path.home() / ".cache" / "vidstorm")) / "dtype.json"


def _best_of(fn: Callable[[], None], repeats: int = 3) -> float:
    fn()  # warm-up (oneDNN builds its kernels on first use)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def choose_cpu_dtype(model: torch.nn.Module, key: str, run: Callable[[torch.nn.Module], None],
                     log=None) -> tuple[torch.nn.Module, torch.dtype]:
    """`model` (fp32, on the CPU) in the dtype `auto` picks, with that dtype.

    key: the model's geometry (what the timing depends on); run(m): one representative forward."""
    if not native_bf16():
        return model, torch.float32
    name, _ = cpu_info()
    entry_key = f"{key}|{name}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one measurement per key, whoever asks first
        cache = _read(path)
        entry = cache.get(entry_key)
        if entry is None:
            candidate = copy.deepcopy(model).to(torch.bfloat16)
            with torch.inference_mode():
                fp32_s = _best_of(lambda: run(model))
                bf16_s = _best_of(lambda: run(candidate))
            del candidate
            entry = {"dtype": "bf16" if bf16_s <= MIN_GAIN * fp32_s else "fp32", "fp32_s": fp32_s,
                     "bf16_s": bf16_s, "measured_at": time.time()}
            cache[entry_key] = entry
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, path)
            if log:
                log(f"dtype auto: {key}: fp32 {entry['fp32_s'] * 1e3:.1f} ms, bf16 {entry['bf16_s'] * 1e3:.1f} ms "
                    f"-> {entry['dtype']} (cached in {path})")
    if entry["dtype"] == "bf16":
        return model.to(torch.bfloat16), torch.bfloat16
    return model, torch.float32


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: measured again
    return data if isinstance(data, dict) else {}


def frozen_linears_to_bf16(model: torch.nn.Module) -> int:
    """For training under bf16 autocast: hold each frozen Linear's weight (and bias) in bf16; returns how many.

    Autocast casts a Linear's fp32 weight to bf16 at every call and caches the cast only for weights that
    train, so a frozen LLM's weights were cast again at every forward and backward (~10% of a connector
    step of the toy image-VLM). Held in bf16 the products are the same. The output embedding is left as it
    is: SmolLM2 ties it to the input embedding, which must stay in the model's dtype."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    count = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        module.weight.data = module.weight.data.to(torch.bfloat16)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(torch.bfloat16)
        count += 1
    return count
