"""`dtype: auto` on a CPU: fp32 where bf16 is not native; where it is, bf16 only if a measured pass
is faster, measured once and cached; bf16 SigLIP keeps pooled tokens within the stated tolerance."""

import json

import numpy as np
import pytest
import torch

from pipeline.models import dtype as auto
from pipeline.models.siglip import SiglipEncoder
from pipeline.models.summarizer import Summarizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDSTORM_CACHE", str(tmp_path))
    return tmp_path / "dtype.json"


def _cpu(monkeypatch, *flags):
    monkeypatch.setattr(auto, "cpu_info", lambda: ("Test CPU", frozenset(flags)))


def test_auto_is_fp32_where_bf16_is_not_native(monkeypatch, cache, tiny_siglip, tiny_llm):
    _cpu(monkeypatch, "avx2", "avx512f")  # AVX-512 without its bf16 extension
    encoder = SiglipEncoder(str(tiny_siglip), "cpu", "auto", 8, -1)
    llm = Summarizer(str(tiny_llm), "cpu", "auto", 4)
    assert encoder.dtype == llm.dtype == torch.float32
    assert next(encoder.model.parameters()).dtype == next(llm.model.parameters()).dtype == torch.float32
    assert not cache.exists()  # nothing measured


def test_auto_measures_once_per_model_and_machine(monkeypatch, cache, tiny_siglip):
    _cpu(monkeypatch, "avx512f", "avx512_bf16")
    runs = []
    real = auto._best_of
    monkeypatch.setattr(auto, "_best_of", lambda fn, repeats=3: runs.append(1) or real(fn, repeats))
    first = SiglipEncoder(str(tiny_siglip), "cpu", "auto", 8, -1)
    (entry,) = json.loads(cache.read_text()).values()
    assert len(runs) == 2 and entry["fp32_s"] > 0 and entry["bf16_s"] > 0  # fp32, then bf16
    assert first.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[entry["dtype"]]
    assert next(first.model.parameters()).dtype == first.dtype
    second = SiglipEncoder(str(tiny_siglip), "cpu", "auto", 8, -1)
    assert len(runs) == 2 and second.dtype == first.dtype  # read from the cache, not measured again
    SiglipEncoder(str(tiny_siglip), "cpu", "auto", 8, -2)  # fewer layers: another model to time
    assert len(runs) == 4 and len(json.loads(cache.read_text())) == 2


def test_bf16_siglip_keeps_pooled_tokens_within_tolerance(monkeypatch, cache, tiny_siglip, tiny_processor):
    _cpu(monkeypatch, "avx512_bf16")
    monkeypatch.setattr(auto, "MIN_GAIN", 1e9)  # whatever the timing: take bf16
    bf16 = SiglipEncoder(str(tiny_siglip), "cpu", "auto", 8, -1)
    fp32 = SiglipEncoder(str(tiny_siglip), "cpu", "fp32", 8, -1)
    assert bf16.dtype == torch.bfloat16 and bf16.dtype_name == "bf16"
    frames = np.random.default_rng(0).integers(0, 255, (8, 56, 56, 3), np.uint8)
    pooled = {}
    for name, encoder in (("bf16", bf16), ("fp32", fp32)):
        with torch.inference_mode():
            grid = tiny_processor.connector.project(encoder.encode(frames))
            pooled[name] = tiny_processor.connector.pool_projected(grid, tiny_processor.reducer)[0]
    assert not torch.equal(pooled["bf16"], pooled["fp32"])  # it did compute in bf16
    cos = torch.nn.functional.cosine_similarity(pooled["bf16"].flatten(0, -2), pooled["fp32"].flatten(0, -2), dim=-1)
    assert cos.min() > 0.99


def test_a_damaged_cache_is_measured_again(monkeypatch, cache, tiny_siglip):
    _cpu(monkeypatch, "amx_bf16")
    cache.write_text("{not json")
    SiglipEncoder(str(tiny_siglip), "cpu", "auto", 8, -1)
    assert len(json.loads(cache.read_text())) == 1
