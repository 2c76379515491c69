"""`vidstorm train` / `eval` on a VLM base: the temporal module (in the LLM's space, identity at init)
trains on video, the VLM stays as it was, and the checkpoint holds only what changed + the base's id."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from helpers.vlm_config import vlm_overrides
from pipeline.build import build_processor
from pipeline.config import load_config
from pipeline.train.loop import build_models, train


def _caption_set(qa_set, path, n=4):
    rows = [json.loads(line) for line in (qa_set / "train.jsonl").read_text().splitlines()][:n]
    path.write_text("".join(json.dumps({"video": str(qa_set / r["video"]), "caption": r["caption"]}) + "\n"
                            for r in rows))
    return path


def test_training_on_a_vlm_base_moves_only_the_temporal_module(vlm_smollm2, qa_set, tmp_path, capsys):
    """The base's LLM is the real SmolLM2 (frozen): a tiny random LLM cannot be steered through its inputs."""
    ref = str(vlm_smollm2)
    data = _caption_set(qa_set, tmp_path / "four.jsonl")
    out = tmp_path / "ckpt"
    train_args = {"data": f"[{data}]", "out": out, "steps": 12, "batch_size": 4, "lr": 6e-3, "warmup_steps": 1,
                  "eval_every": 1000, "save_every": 12, "stage": "sft", "trainable": "[temporal]", "seed": 0}
    cfg = load_config(None, vlm_overrides(ref, *(f"train.{k}={v}" for k, v in train_args.items())))
    models = build_models(cfg, torch.device("cpu"), log=None)
    llm_before = {k: v.clone() for k, v in models.vlm.llm.model.state_dict().items()}
    base_before = {k: v.clone() for k, v in models.connector.base_connector.state_dict().items()}
    losses = []
    train(cfg, log=lambda m: None, on_step=losses.append, models=models)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    for name, value in models.vlm.llm.model.state_dict().items():  # the VLM's LLM: frozen
        assert torch.equal(value, llm_before[name]), name
    for name, value in models.connector.base_connector.state_dict().items():  # its connector: frozen
        assert torch.equal(value, base_before[name]), name

    saved = load_file(str(out / "model.safetensors"))
    assert saved and all(k.startswith("temporal.") for k in saved), sorted(saved)[:3]
    assert json.loads((out / "storm_config.json").read_text())["base"] == ref
    out_proj = [v for k, v in saved.items() if k.endswith("out_proj.weight")]
    assert out_proj and any(v.abs().sum() > 0 for v in out_proj)  # it left the identity

    # ingest loads base + checkpoint: the trained module, the VLM's own connector
    ingest = build_processor(load_config(None, vlm_overrides(ref, f"temporal.checkpoint={out}")), log=None,
                             parts=("encoder", "temporal"))
    for name, value in ingest.connector.temporal.state_dict().items():
        assert torch.equal(value, models.connector.temporal.state_dict()[name].cpu()), name
    x = torch.randn(1, 8, 4, 4, ingest.connector.spec.llm_hidden)
    assert not torch.allclose(ingest.connector.temporal.forward_projected(x)[0], x, atol=1e-4)

    # eval reads the same model and answers the QA set's questions
    from actors.cli import main

    code = main(["eval", "--data", str(qa_set / "val.jsonl"), *vlm_overrides(ref, f"temporal.checkpoint={out}")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] > 0 and 0.0 <= result["accuracy"] <= 1.0


def test_training_the_vlms_connector_too_saves_it_and_ingest_loads_it(tiny_vlms, qa_set, tmp_path):
    """LLaVA-OneVision, `trainable: [temporal, projector]`: the VLM's MLP is trained and travels with the
    checkpoint; without `projector` it would come from the base (the test above)."""
    ref = str(tiny_vlms["llava_onevision"])
    out = tmp_path / "ckpt"
    train_args = {"data": f"[{_caption_set(qa_set, tmp_path / 'two.jsonl', n=2)}]", "out": out, "steps": 3,
                  "batch_size": 2, "lr": 1e-2, "warmup_steps": 1, "eval_every": 1000, "save_every": 3,
                  "stage": "sft", "trainable": "[temporal,projector]"}
    cfg = load_config(None, vlm_overrides(ref, *(f"train.{k}={v}" for k, v in train_args.items())))
    models = build_models(cfg, torch.device("cpu"), log=None)
    before = {k: v.clone() for k, v in models.connector.base_connector.state_dict().items()}
    train(cfg, log=lambda m: None, models=models)
    saved = load_file(str(out / "model.safetensors"))
    mlp = {k for k in saved if k.startswith("base_connector.")}
    assert mlp and all(k.startswith(("temporal.", "base_connector.")) for k in saved)
    assert any(not torch.equal(saved[f"base_connector.{k}"], v) for k, v in before.items())  # it moved
    ingest = build_processor(load_config(None, vlm_overrides(ref, f"temporal.checkpoint={out}")), log=None,
                             parts=("encoder", "temporal"))
    for name, value in ingest.connector.base_connector.state_dict().items():
        assert torch.equal(value, saved[f"base_connector.{name}"]), name
