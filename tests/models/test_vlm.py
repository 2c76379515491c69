"""STORM on a pretrained VLM (pipeline/models/vlm.py): both families, tiny random checkpoints saved with
save_pretrained, compared tensor by tensor with the families' own transformers code."""

import json

import numpy as np
import pytest
import torch

from helpers.vlm_config import vlm_overrides
from pipeline.build import build_processor, vlm_base
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_storm
from pipeline.models.summarizer import Summarizer
from pipeline.models.vlm import VlmConnector, VlmVision, load_vlm, vlm_family
from pipeline.models.vlm_build import own_features, own_generate, own_inputs
from pipeline.synth import write_png

FAMILIES = ("smolvlm", "llava_onevision")
PROMPT = "Describe the video briefly."


def _frames(size: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_read_from_the_checkpoint(tiny_vlms, tiny_siglip, family):
    assert vlm_family(str(tiny_vlms[family])) == family
    assert vlm_family(str(tiny_siglip)) is None
    assert vlm_family("smollm2") is None


@pytest.mark.parametrize("family", FAMILIES)
def test_per_frame_tokens_equal_the_familys_own_features(tiny_vlms, family):
    ref = str(tiny_vlms[family])
    encoder, connector = VlmVision(ref, "cpu", "fp32", 4), VlmConnector.from_vlm(ref, torch.float32)
    frames = _frames(encoder.image_size, 5)
    ours = connector(encoder.encode(frames)[None])[0]  # (T, h, w, D)
    theirs = own_features(ref, frames)
    assert ours.shape[0] == 5 and ours.shape[-1] == theirs.shape[-1]
    assert (ours.reshape(-1, ours.shape[-1]) - theirs).abs().max().item() <= 1e-5
    # and each frame on its own gives its own tokens (no frame leaks into another)
    alone = connector(encoder.encode(frames[2:3])[None])[0]
    assert torch.allclose(alone, ours[2:3], atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_frame_logits_equal_the_familys_own_forward(tiny_vlms, family):
    ref = str(tiny_vlms[family])
    cfg = load_config(None, vlm_overrides(ref, "pooling.temporal_k=1", "pooling.sample_s=1"))
    processor = build_processor(cfg, log=None)
    frames = _frames(processor.encoder.image_size, 1, seed=3)
    pooled, _, _ = processor.pool_chunk(_chunk(frames), _state())
    visual = processor.connector.to_llm(pooled)  # (n, D)
    llm = processor.summarizer
    ids, mask = llm.visual_prompt(PROMPT, 1, visual.shape[0], *_one_frame_span(processor))
    with torch.no_grad():
        ours = llm.model(inputs_embeds=llm.splice(ids, mask, visual)[None]).logits
        theirs = load_vlm(ref, torch.float32)(input_ids=ids[None], **own_inputs(ref, frames)).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5
    # the check can fail: another frame gives other logits
    other, _, _ = processor.pool_chunk(_chunk(_frames(processor.encoder.image_size, 1, seed=4)), _state())
    with torch.no_grad():
        moved = llm.model(inputs_embeds=llm.splice(ids, mask, processor.connector.to_llm(other))[None]).logits
    assert (moved - theirs).abs().max().item() > 1e-3


def _one_frame_span(processor):
    """The one-frame prompt each family's own forward takes with its pixel inputs (`own_inputs`): SmolVLM's
    image chat, LLaVA-OneVision's one-frame video."""
    return (None, None) if processor.summarizer.layout.family == "smolvlm" else (0.0, 1.0)


def _chunk(frames):
    from pipeline.types import FrameChunk

    return FrameChunk("s", 0, frames, np.arange(len(frames), dtype=np.float64), float(len(frames)))


def _state():
    from pipeline.processor import StreamState

    return StreamState("s")


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_prints_the_familys_own_generate(tiny_vlms, family, tmp_path, capsys):
    """`vidstorm describe IMAGE` at identity, pooling off == the model's own greedy generate on its chat."""
    from actors.cli import main

    ref = str(tiny_vlms[family])
    encoder = VlmVision(ref, "cpu", "fp32")
    image = _frames(encoder.image_size, 1, seed=11)[0]
    write_png(tmp_path / "still.png", image)
    overrides = vlm_overrides(ref, "pooling.temporal_k=1", "pooling.sample_s=1", "pooling.spatial_p=1",
                              "summarizer.max_new_tokens=12")
    assert main(["describe", str(tmp_path / "still.png"), *overrides]) == 0
    printed = capsys.readouterr().out.strip()

    # the reference: the family's own generate on its chat, image tokens expanded, pixels by hand
    theirs = own_generate(ref, image, PROMPT, 12)
    assert theirs and printed == theirs


@pytest.mark.parametrize("mode", ["stream", "chunk_bidirectional"])
def test_identity_module_is_the_identity_and_still_learns(tiny_vlms, mode):
    cfg = load_config(None, vlm_overrides(tiny_vlms["smolvlm"], f"temporal.mode={mode}"))
    connector = build_processor(cfg, log=None, parts=("encoder", "temporal")).connector
    x = torch.randn(1, 8, 4, 4, connector.spec.llm_hidden)
    out, _ = connector.temporal.forward_projected(x)
    assert torch.equal(out, x)  # exactly, not approximately
    connector.temporal.requires_grad_(True)
    out, _ = connector.temporal.forward_projected(x)
    ((out - x.flip(1)) ** 2).sum().backward()
    out_grads = [layer.fwd.out_proj.weight.grad for layer in connector.temporal.layers]
    assert all(g is not None and g.abs().sum() > 0 for g in out_grads)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_stream_equals_one_pass_in_the_llm_space(tiny_vlms, family):
    """The core property with the new connector (a trained, non-identity module)."""
    cfg = load_config(None, vlm_overrides(tiny_vlms[family], "temporal.mode=stream"))
    processor = build_processor(cfg, log=None, parts=("encoder", "temporal"))
    temporal = processor.connector.temporal
    torch.manual_seed(1)
    for layer in temporal.layers:  # move off the identity, as training would
        torch.nn.init.normal_(layer.fwd.out_proj.weight, std=0.2)
    grids = processor.encoder.encode(_frames(processor.encoder.image_size, 24, seed=5))
    x = processor.connector.project(grids)[None]  # (1, 24, h, w, D)
    whole, _ = temporal.forward_projected(x)
    state, pieces = None, []
    for start in range(0, 24, 8):
        out, state = temporal.forward_projected(x[:, start : start + 8], state)
        pieces.append(out)
    assert not torch.allclose(whole, x, atol=1e-3)  # not the identity any more
    assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-5)


def test_checkpoint_holds_what_changed_and_the_base_id(tiny_vlms, tmp_path):
    ref = str(tiny_vlms["smolvlm"])
    cfg = load_config(None, vlm_overrides(ref))
    connector = build_processor(cfg, log=None, parts=("encoder", "temporal")).connector
    for layer in connector.temporal.layers:
        torch.nn.init.normal_(layer.fwd.out_proj.weight, std=0.1)
    save_storm(connector, tmp_path / "ckpt")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert saved and all(k.startswith("temporal.") for k in saved)  # not the VLM's connector, not the LLM
    spec = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert spec["connector"] == "vlm" and spec["base"] == ref
    loaded = build_processor(load_config(None, vlm_overrides(ref, f"temporal.checkpoint={tmp_path / 'ckpt'}")),
                             log=None, parts=("encoder", "temporal")).connector
    x = torch.randn(1, 8, 4, 4, connector.spec.llm_hidden)
    assert torch.equal(loaded.temporal.forward_projected(x)[0], connector.temporal.forward_projected(x)[0])


def test_a_vlm_needs_the_same_checkpoint_on_both_sides(tiny_vlms, tiny_llm):
    ref = str(tiny_vlms["smolvlm"])
    with pytest.raises(ConfigError, match="summarizer.model"):
        vlm_base(load_config(None, [f"encoder.model={ref}", f"summarizer.model={tiny_llm}"]))
    assert vlm_base(load_config(None, vlm_overrides(ref))) == ref


def test_an_inconsistent_or_unsupported_checkpoint_is_one_clear_error(tiny_vlms, tmp_path):
    import shutil

    from pipeline.errors import WeightsError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_vlms["smolvlm"], broken)
    (broken / "processor_config.json").write_text(json.dumps({"image_seq_len": 99}))
    with pytest.raises(WeightsError, match="image_seq_len=99"):
        Summarizer(str(broken), "cpu", "fp32")
    other = tmp_path / "qwen2-vl"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "vision_config": {}}))
    with pytest.raises(ConfigError, match="qwen2_vl"):
        vlm_base(load_config(None, [f"encoder.model={other}", f"summarizer.model={other}"]))


def test_training_targets_end_on_the_token_generation_stops_on(tiny_vlms):
    llm = Summarizer(str(tiny_vlms["smolvlm"]), "cpu", "fp32")
    stop = llm.model.generation_config.eos_token_id
    assert llm.tokenizer.convert_ids_to_tokens(stop) == "<end_of_utterance>" != llm.tokenizer.eos_token
    assert int(llm.answer_ids("a red car")[-1]) == stop
