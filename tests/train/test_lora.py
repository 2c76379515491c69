"""sft with LoRA adapters: only the adapters (and the named STORM parts) learn, the LLM's own weights
stay as they were, the adapters save with the checkpoint, --resume restores them, and ingest applies
them to captions (visual prompts) but not to text-only summaries."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from test_train import _overrides

from pipeline.config import ConfigError, load_config
from pipeline.errors import CheckpointError
from pipeline.models.lora import LORA_NAME, apply_lora, load_lora, lora_enabled, lora_layers, save_lora
from pipeline.train.loop import build_models, train


def test_a_fresh_adapter_changes_nothing_and_trains_only_its_own_weights():
    torch.manual_seed(0)
    block = nn.ModuleDict({"q_proj": nn.Linear(6, 4), "other": nn.Linear(6, 4)})
    x = torch.randn(3, 6)
    before = block["q_proj"](x).detach()
    assert apply_lora(block, rank=2, alpha=4.0) == ["q_proj"]  # only the named layers
    assert torch.equal(block["q_proj"](x), before)  # B starts at zero
    block.requires_grad_(False)
    layer = block["q_proj"]
    layer.lora_a.requires_grad_(True), layer.lora_b.requires_grad_(True)
    block["q_proj"](x).pow(2).sum().backward()
    assert layer.lora_b.grad is not None and layer.lora_b.grad.abs().sum() > 0
    assert layer.base.weight.grad is None
    with torch.no_grad():
        layer.lora_b.normal_()
    expected = before + (x @ layer.lora_a.t() @ layer.lora_b.t()) * 2.0  # alpha / rank
    assert torch.allclose(block["q_proj"](x), expected, atol=1e-6)
    with lora_enabled(block, False):
        assert torch.equal(block["q_proj"](x), before)
    assert layer.enabled


def test_adapters_for_another_llm_are_one_clear_error(tmp_path):
    trained = nn.ModuleDict({"q_proj": nn.Linear(6, 4)})
    apply_lora(trained, 2, 4.0)
    save_lora(trained, tmp_path, 2, 4.0, ["q_proj"])
    with pytest.raises(CheckpointError, match="do not fit this LLM"):
        load_lora(nn.ModuleDict({"q_proj": nn.Linear(8, 4)}), tmp_path)
    (tmp_path / LORA_NAME).write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_lora(nn.ModuleDict({"q_proj": nn.Linear(6, 4)}), tmp_path)


def test_lora_and_llm_together_is_a_config_error(tiny_overrides, qa_set, tmp_path):
    with pytest.raises(ConfigError, match="lora"):
        load_config(None, _overrides(tiny_overrides, qa_set, tmp_path, stage="sft", trainable="[lora,llm]"))


@pytest.fixture(scope="module")
def lora_run(tiny_overrides, qa_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "ckpt"
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, out, steps=20, save_every=10, stage="sft",
                                       trainable="[projector,lora]", lr_lora=1e-2))
    models = build_models(cfg, torch.device("cpu"), log=None)
    fresh = {k: v.clone() for k, v in models.vlm.llm.model.state_dict().items()}
    losses = []
    train(cfg, log=lambda m: None, on_step=losses.append, models=models)
    return {"cfg": cfg, "out": out, "models": models, "fresh": fresh, "losses": losses}


def test_sft_with_lora_trains_the_adapters_and_leaves_the_llm_weights_alone(lora_run):
    models, fresh = lora_run["models"], lora_run["fresh"]
    llm = models.vlm.llm.model
    layers = lora_layers(llm)
    assert len(layers) == 7 * 2  # q k v o gate up down, in each of the tiny LLM's 2 layers
    assert all(layer.lora_b.abs().sum() > 0 for layer in layers)  # every adapter moved off zero
    for name, value in llm.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, fresh[name]), name  # the LLM's own weights: frozen
    assert (lora_run["out"] / LORA_NAME).is_file()
    losses = lora_run["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_resume_restores_the_adapters(lora_run, tiny_overrides, qa_set):
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, lora_run["out"], steps=20, stage="sft",
                                       trainable="[projector,lora]"))
    models = build_models(cfg, torch.device("cpu"), log=None)
    from pipeline.train.loop import load_checkpoint, parameter_groups

    optimizer = torch.optim.AdamW(parameter_groups(models, cfg.train))
    step, _ = load_checkpoint(lora_run["out"], models, optimizer)
    assert step == 20
    saved = lora_run["models"].vlm.llm.model.state_dict()
    for name, value in models.vlm.llm.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_ingest_applies_the_adapters_to_captions_and_not_to_text_summaries(lora_run, tiny_overrides):
    from pipeline.build import build_processor
    from pipeline.models.summarizer import Summarizer

    cfg = load_config(None, [*tiny_overrides, f"temporal.checkpoint={lora_run['out']}"])
    processor = build_processor(cfg, log=None, parts=("temporal", "llm"))
    ours = processor.summarizer
    assert ours.adapters is not None and ours.adapters["rank"] == cfg.train.lora_rank
    plain = Summarizer(cfg.summarizer.model, "cpu", cfg.summarizer.dtype, cfg.summarizer.max_new_tokens,
                       cfg.summarizer.system_prompt)
    before, after = ours.prompt_ids(cfg.summarizer.caption_prompt)
    torch.manual_seed(1)
    visual = torch.randn(4, ours.hidden_size)
    embeds = torch.cat([ours.embed(before), visual, ours.embed(after)])[None]
    with torch.no_grad():
        adapted = ours.model(inputs_embeds=embeds).logits
        original = plain.model(inputs_embeds=embeds).logits
        with lora_enabled(ours.model, False):
            switched_off = ours.model(inputs_embeds=embeds).logits
    assert not torch.allclose(adapted, original, atol=1e-4)  # captions go through the trained adapters
    assert torch.allclose(switched_off, original, atol=1e-6)
    seen = []  # whether the adapters were on, at each call of one adapted layer during generation
    hook = lora_layers(ours.model)[0].register_forward_hook(lambda module, args, out: seen.append(module.enabled))
    text = "Summarize: a red circle moves left; a blue square appears"
    assert ours.summarize([text], "Summarize:") == plain.summarize([text], "Summarize:")
    assert seen and not any(seen)
    seen.clear()
    ours.caption(visual, cfg.summarizer.caption_prompt)
    hook.remove()
    assert seen and all(seen)
    assert all(layer.enabled for layer in lora_layers(ours.model))  # generate restores the switch
    json.dumps(ours.adapters)  # plain settings, for the log and the checkpoint metadata


def test_a_bf16_training_build_holds_the_frozen_llm_in_bf16_and_saves_fp32_adapters(tiny_overrides, qa_set,
                                                                                      tmp_path):
    """train.autocast=bf16: the frozen LLM's Linear weights are held in bf16 (the same products, no cast a
    call; tests/test_dtype.py) and attention is eager; the adapters train and save in fp32; a build for
    eval or ingest keeps the model as loaded."""
    from safetensors.torch import load_file

    from pipeline.models.lora import lora_parameters

    out = tmp_path / "ckpt"
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, out, steps=2, stage="sft", autocast="bf16",
                                       trainable="[projector,lora]", save_every=2))
    models = build_models(cfg, torch.device("cpu"), log=None)
    llm = models.vlm.llm.model
    assert {layer.base.weight.dtype for layer in lora_layers(llm)} == {torch.bfloat16}
    assert llm.get_input_embeddings().weight.dtype == torch.float32
    assert llm.config._attn_implementation == "eager"
    train(cfg, log=lambda m: None, models=models)
    assert all(p.dtype == torch.float32 for p in lora_parameters(llm))
    assert {v.dtype for v in load_file(str(out / LORA_NAME)).values()} == {torch.float32}
    served = build_models(load_config(None, [*tiny_overrides, f"temporal.checkpoint={out}"]), torch.device("cpu"),
                          log=None, training=False).vlm.llm.model
    assert {p.dtype for p in served.parameters()} == {torch.float32}
    assert served.config._attn_implementation != "eager"
