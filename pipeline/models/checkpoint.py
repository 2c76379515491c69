"""The trainable STORM parts and their checkpoints.

STORM trains only what sits between the frozen SigLIP and the frozen LLM. Two forms:

  mlp  (the first checkpoints, a plain SigLIP + any LLM): downsample + Linear into d_model, the
       Mamba layers, a final norm and an MLP projector into the LLM.
  vlm  (the paper's connector on a pretrained VLM, models/vlm.py): the VLM's own connector into the
       LLM's space, then the Mamba layers there, no projector. A fresh module is the identity. The
       checkpoint holds the Mamba layers (and the connector only if it was trained) plus the base's id.

They save as `model.safetensors` + `storm_config.json` and load back; a checkpoint built for
another geometry is one clear error, never a half-loaded model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.models.projector import Projector
from pipeline.models.temporal import TemporalEncoder

CONFIG_NAME = "storm_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class StormSpec:
    """Everything that decides the shapes of the trainable parts."""

    vision_dim: int
    llm_hidden: int
    d_model: int = 576
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bidirectional: bool = True
    downsample: int = 2  # pixel shuffle: each token merges downsample x downsample SigLIP patches
    connector: str = "mlp"  # mlp | vlm (module docstring)
    base: str = ""  # vlm: the VLM (hub id or folder) whose connector and LLM the module sits between
    adapter_dim: int = 0  # vlm: the Mamba layers' width between Down and Up (0: the LLM's width, no adapter)
    center_frames: bool = False  # vlm: the Mamba layers read each frame centred (TemporalLayer); older: not

    # recorded, not compared: the same VLM may live in another folder; a checkpoint computes as it was
    # trained (one written before frame centring loads without it)
    GEOMETRY_ONLY = ("base", "center_frames")


class StormConnector(nn.Module):
    """Temporal encoder + projector: (T, H, W, C_vision) -> tokens in the LLM's space."""

    def __init__(self, spec: StormSpec, mode: str, scan_impl: str = "torch", base_connector: nn.Module | None = None):
        super().__init__()
        if (mode != "stream") != spec.bidirectional:
            raise CheckpointError(
                f"temporal.mode={mode} is {'bidirectional' if mode != 'stream' else 'forward-only'} "
                f"but the STORM parts are {'bidirectional' if spec.bidirectional else 'forward-only'}; "
                "use a checkpoint trained for this mode"
            )
        self.spec = spec
        self.temporal = TemporalEncoder(
            spec.vision_dim,
            spec.d_model,
            spec.n_layers,
            mode,
            spec.d_state,
            spec.d_conv,
            spec.expand,
            downsample=spec.downsample,
            scan_impl=scan_impl,
            in_llm_space=spec.connector == "vlm",
            adapter_dim=spec.adapter_dim,
            center_frames=spec.center_frames,
        )
        # vlm: the VLM's connector (frozen unless trained; only the encoder stage and training need it)
        self.base_connector = base_connector
        self.base_trained = False  # save the connector's tensors too (it was trained, or loaded trained)
        self.projector = nn.Identity() if spec.connector == "vlm" else Projector(spec.d_model, spec.llm_hidden)

    @property
    def is_vlm(self) -> bool:
        return self.spec.connector == "vlm"

    def project_batch(self, grids: torch.Tensor) -> torch.Tensor:
        """Vision grids (B, T, H, W, C) -> the Mamba layers' input (B, T, h, w, D)."""
        if not self.is_vlm:
            return self.temporal.project(grids)
        if self.base_connector is None:
            raise ValueError("this STORM module was built without the VLM's connector (a stage that only scans)")
        return self.base_connector(grids.to(self.temporal.device))

    def projected_shape(self, grid: int) -> tuple[int, int, int]:
        """(h, w, D) of one projected frame for a g x g vision grid."""
        if self.is_vlm:
            h = self.base_connector.out_grid(grid) if self.base_connector is not None else grid
            return h, h, self.spec.llm_hidden
        h = -(-grid // self.temporal.downsample)
        return h, h, self.spec.d_model

    def pool(self, grids: torch.Tensor, reducer, state=None):
        """One chunk: SigLIP grids (T, H, W, C) or (B, T, H, W, C) -> pooled (.., T', h', w', D), new state.

        Ingest calls this chunk by chunk; training calls it the same way, so both see one path.
        """
        unbatched = grids.dim() == 4
        x = self.project_batch(grids[None] if unbatched else grids)
        out, new_state = self.temporal.forward_projected(x, state)
        return reducer(out[0] if unbatched else out), new_state

    def project(self, grids: torch.Tensor) -> torch.Tensor:
        """SigLIP grids (T, H, W, C) -> the temporal encoder's input (T, h, w, D): standardise, pixel
        shuffle, Linear. Per frame, so a reused frame's projection is the projection it had."""
        return self.project_batch(grids[None])[0]

    def pool_projected(self, x: torch.Tensor, reducer, state=None):
        """`pool` from projected grids (T, h, w, D): the distributed temporal owner's half."""
        out, new_state = self.temporal.forward_projected(x[None], state)
        return reducer(out[0]), new_state

    def to_llm(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled (B, T', h', w', D) -> visual tokens (B, T'*h'*w', llm_hidden) in scan order."""
        return self.projector(pooled.flatten(-4, -2))

    def pooled_tokens(self, grids: torch.Tensor, reducer, chunk_frames: int) -> torch.Tensor:
        """A whole clip (B, T, H, W, C), T a multiple of chunk_frames, as ingest would feed it:
        chunk by chunk with the recurrent state carried -> pooled tokens (B, n_visual, D) in scan order.
        In offline mode ingest scans a whole file in both directions, which is one pass over the clip."""
        if self.temporal.mode == "offline":
            return self.pool(grids, reducer)[0].flatten(-4, -2)
        state, pooled = None, []
        for start in range(0, grids.shape[1], chunk_frames):
            chunk_pooled, state = self.pool(grids[:, start : start + chunk_frames], reducer, state)
            pooled.append(chunk_pooled)
        return torch.cat(pooled, dim=1).flatten(-4, -2)

    def visual_tokens(self, grids: torch.Tensor, reducer, chunk_frames: int) -> torch.Tensor:
        """pooled_tokens projected into the LLM: (B, n_visual, llm_hidden)."""
        return self.projector(self.pooled_tokens(grids, reducer, chunk_frames))


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
