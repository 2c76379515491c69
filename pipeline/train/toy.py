"""The toy family's parts that the CLI, bench/ and tests share: the small random models of the first toy
model (bench/quality.py's rows), the toy SigLIP's pretraining from a config (`vidstorm pretrain-siglip`),
and the rule that grades a stored caption against a clip's truth (`vidstorm demo-report`,
bench/captions.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pipeline.errors import VidstormError

# bench/quality.py's frozen random encoder (the first toy model's): small and seeded, so every machine builds the same one.
TOY_SIGLIP = dict(hidden_size=128, num_layers=1, num_heads=4, intermediate_size=256, image_size=64, patch_size=8,
                  seed=0)


def build_small_lm(path, hidden: int = 128, layers: int = 4, seed: int = 0):
    """A small random Llama with SmolLM2's tokenizer, trained alongside the STORM parts when the frozen
    LLM would make each step too slow (the toy's stage 1, bench/quality.py's rows)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.models.summarizer import resolve_llm

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pretrain_siglip(cfg) -> dict:
    """train.stage=siglip: the toy SigLIP (pipeline/train/siglip_pretrain.py) into train.out."""
    from pipeline.train.siglip_pretrain import pretrain

    t = cfg.train
    if not t.out:
        raise VidstormError("train.out is empty: name the folder the SigLIP is saved in")
    heldout = Path(t.val_data) if t.val_data else None
    if heldout is not None and not heldout.is_file():
        raise VidstormError(f"train.val_data={t.val_data}: no such file (a synth-data JSONL of held-out clips)")
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    return pretrain(Path(t.out), t.siglip, steps=t.steps, batch=t.batch_size, lr=t.lr, seed=t.seed, heldout=heldout,
                    autocast=t.autocast == "bf16", log=log)


def caption_right(expected: str, stored: str) -> bool:
    """Does a stored caption name what the expected one does (colour, shape, direction / order)?"""
    words = lambda text: re.findall(r"[a-z]+", text.lower())  # noqa: E731
    key = [w for w in words(expected) if w not in {"a", "moves", "appears", "then", "the"}]
    found = [w for w in words(stored) if w in set(key)]
    return found[: len(key)] == key  # every key word, in the expected order
