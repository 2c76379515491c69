"""Checkpoints of the trainable STORM parts (the model: pipeline/models/storm.py).

STORM trains only what sits between the frozen SigLIP and the frozen LLM. A `vlm` checkpoint holds the
Mamba layers (and the connector only if it was trained) plus the base's id; an `mlp` one the whole
connector. They save as `model.safetensors` + `storm_config.json` and load back; a checkpoint built for
another geometry is one clear error, never a half-loaded model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.models.storm import StormConnector, StormSpec

CONFIG_NAME = "storm_config.json"
WEIGHTS_NAME = "model.safetensors"


BASE_PREFIX = "base_connector."


def save_storm(model: StormConnector, folder: str | Path) -> Path:
    """What was trained: the mlp form whole; the vlm form's Mamba layers (+ the VLM's connector only if it
    was trained). The base VLM itself is never copied: its id is in the config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if model.base_trained or not k.startswith(BASE_PREFIX)}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "vidstorm.storm.v1"})
    (folder / CONFIG_NAME).write_text(json.dumps(asdict(model.spec), indent=2, sort_keys=True))
    return folder


def read_spec(folder: str | Path) -> StormSpec:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"STORM checkpoint {folder} has no {CONFIG_NAME}")
    try:
        return StormSpec(**json.loads(path.read_text()))
    except (TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"STORM checkpoint {path} is not a valid config: {err}") from None


def load_storm(folder: str | Path, expected: StormSpec, mode: str, scan_impl: str = "torch",
               base_connector: nn.Module | None = None) -> StormConnector:
    """Load a checkpoint that must match `expected` (from the config and the models)."""
    folder = Path(folder)
    found = read_spec(folder)
    diffs = [
        f"{k}={getattr(found, k)} (config wants {getattr(expected, k)})"
        for k in asdict(expected)
        if k not in StormSpec.GEOMETRY_ONLY and getattr(found, k) != getattr(expected, k)
    ]
    if diffs:
        raise CheckpointError(f"STORM checkpoint {folder} does not match the configured model: {', '.join(diffs)}")
    model = StormConnector(found, mode, scan_impl, base_connector)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"STORM checkpoint {folder} has no {WEIGHTS_NAME}")
    state = load_file(str(weights))
    model.base_trained = any(k.startswith(BASE_PREFIX) for k in state)
    if base_connector is None:  # a stage that only scans: the connector's tensors are not its business
        state = {k: v for k, v in state.items() if not k.startswith(BASE_PREFIX)}
    own = model.state_dict()
    required = {k for k in own if not k.startswith(BASE_PREFIX)}  # the VLM's connector comes from the VLM
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        first = (missing or unexpected or bad_shape)[0]
        raise CheckpointError(
            f"STORM checkpoint {weights} does not fit: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(bad_shape)} mis-shaped tensors (first: {first})"
        )
    model.load_state_dict(state, strict=False)
    return model


def build_connector(
    temporal_cfg, vision_dim: int, llm_hidden: int, device: str | torch.device = "cpu", log=print,
    base: str = "", base_connector: nn.Module | None = None,
) -> StormConnector:
    """The configured STORM parts: loaded from temporal.checkpoint, else seeded random init.

    `base` (a VLM id) selects the vlm form: the module in the LLM's space (d_model = llm_hidden) after
    the VLM's connector (`base_connector`, only where frames are projected), the identity when fresh;
    `temporal.adapter_dim` runs its Mamba layers narrower, between Down and Up (TemporalEncoder).
    The scan implementation is decided here, once, and said out loud.
    """
    from pipeline.models.scan import resolve_scan_impl

    scan_impl = resolve_scan_impl(temporal_cfg.scan_impl, device)
    spec = StormSpec(
        vision_dim=vision_dim,
        llm_hidden=llm_hidden,
        d_model=llm_hidden if base else temporal_cfg.d_model,
        n_layers=temporal_cfg.n_layers,
        d_state=temporal_cfg.d_state,
        d_conv=temporal_cfg.d_conv,
        expand=temporal_cfg.expand,
        bidirectional=temporal_cfg.mode != "stream",
        downsample=1 if base else temporal_cfg.downsample,
        connector="vlm" if base else "mlp",
        base=base,
        adapter_dim=temporal_cfg.adapter_dim if base else 0,
        center_frames=bool(base),
    )
    if temporal_cfg.adapter_dim and not base and log:
        log(f"temporal.adapter_dim={temporal_cfg.adapter_dim} ignored: it applies to a VLM base only")
    if temporal_cfg.checkpoint:
        model = load_storm(temporal_cfg.checkpoint, spec, temporal_cfg.mode, scan_impl, base_connector)
        origin = temporal_cfg.checkpoint
    else:
        torch.manual_seed(temporal_cfg.seed)
        model = StormConnector(spec, temporal_cfg.mode, scan_impl, base_connector)
        origin = ("identity (each block's output projection zero: the VLM as it is, before video training)"
                  if base else f"random init (seed {temporal_cfg.seed}; untrained)")
    if log:
        log(f"temporal encoder: {temporal_cfg.mode}, {spec.n_layers} layers, scan={scan_impl}, weights: {origin}")
    return model.to(device).eval().requires_grad_(False)
