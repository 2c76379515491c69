"""Low-rank adapters (LoRA) on the LLM's linear layers: the part of `sft` that teaches a frozen
LLM to read visual tokens, small enough to ship next to the STORM parts.

    y = W x + (alpha / r) * B (A x)        W frozen; A (r, in), B (out, r) trained; B starts at 0

So an adapter that has not trained yet changes nothing. The adapters act only on prompts that
carry visual tokens (captions, answers about a clip); text-only calls (the roll-up summaries)
run the LLM as it was. They save as `lora.safetensors` in a STORM checkpoint folder, with their
rank, alpha and target layers in its metadata; ingest applies them when it finds the file.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from pipeline.errors import CheckpointError

LORA_NAME = "lora.safetensors"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update, on while `enabled`."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.enabled:
            return y
        return y + (x @ self.lora_a.to(x.dtype).t() @ self.lora_b.to(x.dtype).t()) * self.scale


def apply_lora(model: nn.Module, rank: int, alpha: float, targets=DEFAULT_TARGETS, seed: int = 0) -> list[str]:
    """Wrap every nn.Linear whose attribute name is in `targets`; returns the wrapped module names.

    Seeded, so every worker of a distributed run starts from the same adapters."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    wrapped = []
    try:
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                if child_name in targets and isinstance(child, nn.Linear):
                    setattr(module, child_name, LoRALinear(child, rank, alpha))
                    wrapped.append(f"{name}.{child_name}" if name else child_name)
    finally:
        torch.random.set_rng_state(generator_state)
    if not wrapped:
        raise ValueError(f"no linear layer named {', '.join(targets)} in {type(model).__name__}")
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in lora_layers(model) for p in (m.lora_a, m.lora_b)]


@contextlib.contextmanager
def lora_enabled(model: nn.Module, enabled: bool):
    """Adapters on (or off) for the calls inside; restored after."""
    layers = lora_layers(model)
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = enabled
    try:
        yield
    finally:
        for m, was in zip(layers, before):
            m.enabled = was


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if name.endswith((".lora_a", ".lora_b"))}


def save_lora(model: nn.Module, folder: Path, rank: int, alpha: float, targets) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / LORA_NAME
    meta = {"format": "vidstorm.lora.v1", "rank": str(rank), "alpha": str(alpha), "targets": json.dumps(list(targets))}
    save_file(lora_state(model), str(path), metadata=meta)
    return path


def load_lora(model: nn.Module, folder: Path) -> dict:
    """Apply the adapters saved in `folder` to `model` (an LLM without adapters); returns their settings.

    Adapters trained for another LLM (other layer names or shapes) are one clear error."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(folder) / LORA_NAME
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        rank, alpha, targets = int(meta["rank"]), float(meta["alpha"]), tuple(json.loads(meta["targets"]))
        state = load_file(str(path))
    except (OSError, KeyError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"LLM adapters {path} cannot be read: {str(err)[:160]}") from None
    if lora_layers(model):
        raise CheckpointError(f"the LLM already carries adapters; cannot add {path}")
    apply_lora(model, rank, alpha, targets)
    own = lora_state(model)
    if set(own) != set(state) or any(own[k].shape != state[k].shape for k in own):
        missing = sorted(set(own) ^ set(state))
        first = missing[0] if missing else next(k for k in own if own[k].shape != state[k].shape)
        raise CheckpointError(f"LLM adapters {path} do not fit this LLM (first mismatch: {first}); "
                              "they were trained for another summarizer.model")
    model.load_state_dict(state, strict=False)
    return {"rank": rank, "alpha": alpha, "targets": targets}
