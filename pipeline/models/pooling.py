"""Token reduction after the temporal encoder (every token already carries context).

- temporal average pooling: k consecutive frames -> 1
- test-time temporal sampling (training-free): keep every s-th pooled frame
- spatial average pooling: p tokens -> 1, over sqrt(p) x sqrt(p) windows

The paper's best row is k=4, s=2: 12.5% of the visual tokens; p=4 is a further 4x.
Pooling runs first (as the model is trained), sampling on top (at test time only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def temporal_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, h, w, D) -> (B, T/k, h, w, D), averaging k consecutive frames."""
    b, t, h, w, d = x.shape
    if t % k:
        raise ValueError(f"temporal pooling k={k} needs a frame count divisible by {k}, got {t}")
    return x.reshape(b, t // k, k, h, w, d).mean(dim=2)


def temporal_sample(x: torch.Tensor, s: int, offset: int = 0) -> torch.Tensor:
    """(B, T, h, w, D) -> (B, T/s, h, w, D), keeping frames offset, offset + s, offset + 2s, ... (T a
    multiple of s)"""
    return x[:, offset::s]


def spatial_pool(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, T, h, w, D) -> (B, T, ceil(h/r), ceil(w/r), D) with r = sqrt(p).

    Windows that run past an odd edge average only the tokens they cover, so no
    row or column is dropped and edge tokens are not diluted by padding.
    """
    r = math.isqrt(p)
    if r * r != p:
        raise ValueError(f"spatial pooling p must be a square (1, 4, 9, ...), got {p}")
    if r == 1:
        return x
    b, t, h, w, d = x.shape
    pad_h, pad_w = (-h) % r, (-w) % r
    grid = x.permute(0, 1, 4, 2, 3).reshape(b * t, d, h, w)  # (B*T, D, h, w)
    summed = F.avg_pool2d(F.pad(grid, (0, pad_w, 0, pad_h)), r, divisor_override=1)
    ones = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
    counts = F.avg_pool2d(F.pad(ones, (0, pad_w, 0, pad_h)), r, divisor_override=1)
    pooled = summed / counts  # (B*T, D, h', w')
    hp, wp = pooled.shape[-2:]
    return pooled.reshape(b, t, d, hp, wp).permute(0, 1, 3, 4, 2)


@dataclass(frozen=True)
class TokenReducer:
    """Temporal pooling k, test-time sampling s, spatial pooling p, in that order."""

    temporal_k: int = 4
    sample_s: int = 2
    spatial_p: int = 1
    sample_from: int = 0  # which pooled frame of each s is kept: 0 = the first, s - 1 = the last

    def __post_init__(self):
        if not 0 <= self.sample_from < self.sample_s:
            raise ValueError(f"sample_from must be in 0..{self.sample_s - 1}, got {self.sample_from}")

    @classmethod
    def from_config(cls, pooling, sample_s: int | None = None) -> "TokenReducer":
        """The reducer of a `pooling` config section; `sample_s` overrides its test-time sampling (training
        reads `train.sample_s`): with no sampling (1) the first pooled frame is the only one."""
        s = pooling.sample_s if sample_s is None else sample_s
        return cls(pooling.temporal_k, s, pooling.spatial_p, pooling.sample_from if s > 1 else 0)

    @property
    def frames_per_group(self) -> int:
        """Chunk lengths must be a multiple of this so no pool or sample straddles chunks (the config's
        `pooling.frames_per_group` for the test-time reducer)."""
        return self.temporal_k * self.sample_s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(T, h, w, D) or (B, T, h, w, D) -> (.., T/(k*s), ceil(h/r), ceil(w/r), D)."""
        unbatched = x.dim() == 4
        x = x[None] if unbatched else x
        if x.shape[1] % self.frames_per_group:
            raise ValueError(
                f"token reduction k={self.temporal_k}, s={self.sample_s} needs a multiple of "
                f"{self.frames_per_group} frames, got {x.shape[1]}"
            )
        x = temporal_pool(x, self.temporal_k)
        x = temporal_sample(x, self.sample_s, self.sample_from)
        x = spatial_pool(x, self.spatial_p)
        return x[0] if unbatched else x

    def output_shape(self, frames: int, h: int, w: int) -> tuple[int, int, int]:
        r = math.isqrt(self.spatial_p)
        return frames // self.frames_per_group, -(-h // r), -(-w // r)
