"""STORM's trainable parts as a model: the temporal module between the frozen image encoder and the frozen
LLM (pipeline/models/checkpoint.py saves and loads them).

  mlp  (the first checkpoints, a plain SigLIP + any LLM): downsample + Linear into d_model, the
       Mamba layers, a final norm and an MLP projector into the LLM.
  vlm  (the paper's connector on a pretrained VLM, models/vlm.py): the VLM's own connector into the
       LLM's space, then the Mamba layers there, no projector. A fresh module is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pipeline.errors import CheckpointError
from pipeline.models.projector import Projector
from pipeline.models.temporal import TemporalEncoder


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
