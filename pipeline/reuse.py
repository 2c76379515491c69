"""Static-frame reuse: SigLIP runs only on frames where something changed.

Camera footage is mostly a still scene. Before SigLIP, each sampled frame of a stream is
compared with the last frame that was *encoded* for that stream (not the previous frame, so a
slow drift adds up and is encoded once it is large enough):

    thumb  = the frame in grey, area-averaged to GRID x GRID (cheap; sensor noise averages out)
    d_b    = the mean |thumb - reference| of each BLOCK x BLOCK block b of the thumb
    change = max(max_b d_b - median_b d_b, median_b d_b)

A change below `encoder.static_threshold` (grey levels, 0-255) reuses the reference frame's
grid; otherwise the frame is encoded and becomes the reference. The block maximum sees a small
mover in a corner that a whole-frame mean would dilute away; subtracting the median block takes
out the floor sensor noise puts under every block (a mean of absolute values is never 0), and the
median itself sees a change over most of the frame (a cut, the lights). The temporal encoder
still gets one grid per time step, so timing, chunking and state are unchanged.

The decision depends only on the stream's frames and its reference thumb, so `--local`
(StreamState holds the reference) and the distributed decoders (the reference rides in the
stream's decode progress in Redis) make the same choices, and a restarted stage goes on with
the same reference. 0 turns reuse off: every frame is encoded.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where grids are filled (the temporal side), not by the gate
    import torch

GRID = 32  # the thumb is GRID x GRID grey values
BLOCK = 2  # blocks of BLOCK x BLOCK thumb cells: 16 x 16 blocks, each 1/256 of the frame
LUMA = (0.299, 0.587, 0.114)


def version() -> str:
    """What a reuse decision depends on besides the threshold (cached grids are keyed by it)."""
    return f"grid{GRID}-block{BLOCK}-median"


def _bins(n: int) -> tuple[np.ndarray, np.ndarray]:
    """adaptive average pooling's bins of n cells into GRID: [floor(i n / G), ceil((i + 1) n / G))."""
    i = np.arange(GRID)
    return (i * n) // GRID, -((-(i + 1) * n) // GRID)


def thumbs(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> float32 grey thumbs (T, GRID, GRID), values 0-255.

    Adaptive average pooling (torch's adaptive_avg_pool2d bins) in numpy: the decoders gate
    frames without importing torch."""
    grey = np.asarray(frames, np.float32) @ np.asarray(LUMA, np.float32)  # (T, H, W)
    t, h, w = grey.shape
    if h % GRID == 0 and w % GRID == 0:  # equal bins (the encoder's square sizes): block means
        return grey.reshape(t, GRID, h // GRID, GRID, w // GRID).mean(axis=(2, 4), dtype=np.float32)
    table = np.zeros((t, h + 1, w + 1), np.float64)  # summed-area table
    table[:, 1:, 1:] = grey.cumsum(1, dtype=np.float64).cumsum(2)
    (r0, r1), (c0, c1) = _bins(h), _bins(w)
    sums = (table[:, r1][:, :, c1] - table[:, r0][:, :, c1] - table[:, r1][:, :, c0] + table[:, r0][:, :, c0])
    return (sums / ((r1 - r0)[:, None] * (c1 - c0)[None, :])).astype(np.float32)


def change(thumb: np.ndarray, reference: np.ndarray) -> float:
    """How much a frame changed from the reference: the largest block's mean absolute difference."""
    blocks = np.abs(thumb - reference).reshape(GRID // BLOCK, BLOCK, GRID // BLOCK, BLOCK).mean(axis=(1, 3))
    floor = float(np.median(blocks))
    return max(float(blocks.max()) - floor, floor)


def check_reference(reference) -> np.ndarray | None:
    """A reference thumb read back from a checkpoint or Redis: the right shape and finite, else ValueError."""
    if reference is None:
        return None
    ref = np.asarray(reference, np.float32)
    if ref.shape != (GRID, GRID) or not np.isfinite(ref).all():
        raise ValueError(f"static-frame reference must be {GRID}x{GRID} finite values, got shape {ref.shape}")
    return ref


def reference_to_text(reference: np.ndarray) -> str:
    """A reference thumb as text (base64 float32), for a hash field: the distributed decoders keep theirs
    in Redis with their position; --local keeps its reference in the StreamState's arrays."""
    return base64.b64encode(np.asarray(reference, "<f4").tobytes()).decode()


def reference_from_text(text: str | None) -> np.ndarray | None:
    """`reference_to_text` back, or None when there is none or it is not one (the next frame is then simply
    encoded)."""
    if not text:
        return None
    try:
        return check_reference(np.frombuffer(base64.b64decode(text, validate=True), "<f4").reshape(GRID, GRID))
    except ValueError:
        return None


def gate(frames: np.ndarray, reference: np.ndarray | None, threshold: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Which of a chunk's frames to encode: (mask (T,) bool, the reference after the chunk).

    `reference` is the thumb of the stream's last encoded frame (None: nothing encoded yet).
    threshold <= 0 encodes every frame (and keeps no reference)."""
    if threshold <= 0:
        return np.ones(len(frames), bool), None
    small = thumbs(frames)
    mask = np.zeros(len(frames), bool)
    for i, thumb in enumerate(small):
        if reference is None or change(thumb, reference) >= threshold:
            mask[i] = True
            reference = thumb
    return mask, reference


def fill(encoded: torch.Tensor, mask: np.ndarray, last: torch.Tensor | None) -> torch.Tensor:
    """One grid per time step from the encoded frames' grids.

    encoded: (E, ...) grids of the frames mask marks, in order; last: the grid of the stream's
    last encoded frame before this chunk (for leading reused frames). -> (T, ...)."""
    import torch

    mask = np.asarray(mask, bool)
    if mask.ndim != 1 or int(mask.sum()) != encoded.shape[0]:
        raise ValueError(f"static-frame mask marks {int(np.sum(mask))} frames to encode but "
                         f"{encoded.shape[0]} grids came")
    if mask.all():
        return encoded
    if not mask[0] and last is None:
        raise ValueError("a chunk reuses the stream's last encoded frame, but the stream has none "
                         "(its saved state was lost): ingest the stream again from its start")
    source = np.cumsum(mask) - 1  # for each step, the index in `encoded` of its latest encoded frame
    pool = encoded if last is None else torch.cat([last[None].to(encoded.dtype), encoded])
    index = torch.from_numpy(source + (0 if last is None else 1))
    return pool.index_select(0, index)


def advance(encoded: torch.Tensor, mask: np.ndarray,
            last_grid: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray | None]:
    """A chunk's grids, one per time step (`fill`), and the grid the stream's next reused frame gets: its
    last encoded frame's, else `last_grid` still (numpy, as a stream's state keeps it). --local, its
    offline mode and the distributed temporal owner all step a stream through this."""
    import torch

    last = None if last_grid is None else torch.from_numpy(np.asarray(last_grid))
    steps = fill(encoded, mask, last)
    return steps, (encoded[-1].numpy() if len(encoded) else last_grid)
