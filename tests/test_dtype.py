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


def test_frozen_linears_held_in_bf16_give_the_same_logits_and_gradients_under_autocast():
    """Training under bf16 autocast holds the frozen LLM's Linear weights in bf16 (autocast re-casts a frozen
    fp32 weight at every call). The products are the same: logits and the adapters' gradients equal, bit for
    bit; the tied head and input embedding, and every trainable tensor, stay fp32."""
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models.lora import apply_lora, lora_parameters

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    held = LlamaForCausalLM(config).eval().requires_grad_(False)
    apply_lora(held, 2, 4.0, seed=0)
    with torch.no_grad():
        for p in lora_parameters(held):
            p.normal_(0, 0.1)  # adapters off their no-op start, so they take part in the products
    cast = copy.deepcopy(held)
    assert auto.frozen_linears_to_bf16(cast) == 7 * 2  # q k v o gate up down in each of 2 layers
    assert cast.lm_head.weight.dtype == cast.get_input_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.requires_grad for p in lora_parameters(cast))
    assert {p.dtype for n, p in cast.named_parameters() if n.endswith("base.weight")} == {torch.bfloat16}
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    grads = []
    for model in (held, cast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids).logits
        logits.float().logsumexp(-1).sum().backward()
        grads.append((logits, [p.grad for p in lora_parameters(model)]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
