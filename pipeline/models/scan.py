"""Selective scan (Mamba's S6 recurrence) with an explicit initial state.

The recurrence, per channel d and state index n:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t       (B, D, N)
    y_t = C_t . h_t + D * u_t,  then gated by silu(z_t)

Three implementations share one signature (layout follows mamba_ssm):

    u, delta, z: (B, D, L)    A: (D, N)    B, C: (B, N, L)    D: (D,)
    initial_state: (B, D, N) or None  ->  y: (B, D, L), last_state: (B, D, N)

- `selective_scan_ref`: one Python step per token. Slow, obviously right; the
  reference the tests compare against.
- `selective_scan_blocked`: block-parallel pure PyTorch. Tokens are cut into
  blocks; the recurrence runs inside all blocks at once (a loop over positions
  within a block, vectorised across blocks), then block-start states are carried
  block to block, then a second pass adds each block's carried-in state as it
  decays. Loop count is ~3*sqrt(L) instead of L, each step works on a cache-sized
  slice in place, and it only multiplies by decays <= 1, so it is as stable as
  the reference.
- `selective_scan_mamba_ssm`: the CUDA kernel from mamba-ssm, which starts from a
  zero state. The scan is linear in its initial state, so the carried state is
  honoured exactly by adding C_t . (exp(sum_{i<=t} delta_i A) * h_0) afterwards.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

ScanFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

# Bounds the (L, B, D, N) intermediates of the blocked scan: longer inputs are cut
# into segments of this many tokens with the state carried between them.
MAX_SEGMENT_TOKENS = 4096


def _discretize_inputs(delta, delta_bias, delta_softplus):
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u.float() * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
):
    """Per-token reference loop. Shapes: see module docstring."""
    batch, d_inner, seq_len = u.shape
    delta = _discretize_inputs(delta, delta_bias, delta_softplus)
    A = A.float()
    h = (
        initial_state.float().clone()
        if initial_state is not None
        else u.new_zeros(batch, d_inner, A.shape[1], dtype=torch.float32)
    )
    ys = []
    for t in range(seq_len):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        drive = delta[:, :, t, None] * B[:, None, :, t].float() * u[:, :, t, None].float()
        h = decay * h + drive
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t].float()))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, d_inner, 0, dtype=torch.float32)
    return _finish(y, u, D, z, u.dtype), h


def _blocked_segment(u, delta, A, B, C, h0, block_len):
    """Block-parallel scan of one segment, before the D skip and z gate.

    u, delta: (B, D, L) fp32, A: (D, N), B, C: (B, N, L), h0: (B, D, N)
    returns y: (B, D, L), last state (B, D, N)

    Every working buffer is one (nb, B, D, N) slice reused in place: on CPU the cost
    of this scan is memory traffic and page faults, not arithmetic, so no
    (L, B, D, N) tensor is ever materialised.
    """
    batch, d_inner, seq_len = u.shape
    n_state = A.shape[1]
    block = block_len or max(1, math.isqrt(seq_len - 1) + 1)  # ~sqrt(L)
    n_blocks = -(-seq_len // block)
    pad = n_blocks * block - seq_len
    if pad:
        # delta = 0 means decay 1 and no input: padding leaves the state unchanged.
        u, delta = F.pad(u, (0, pad)), F.pad(delta, (0, pad))
        B, C = F.pad(B, (0, pad)), F.pad(C, (0, pad))

    # 1. position-major blocked layout: [pos] is position `pos` of every block,
    #    contiguous. Token l = k * block + pos.
    def pos_major(x):  # (B, X, L) -> (block, nb, B, X)
        return x.float().reshape(batch, -1, n_blocks, block).permute(3, 2, 0, 1).contiguous()

    delta_p = pos_major(delta)[..., None]  # (Lb, nb, B, D, 1)
    drive_p = pos_major(delta * u)[..., None]  # (Lb, nb, B, D, 1)
    B_p = pos_major(B)[:, :, :, None, :]  # (Lb, nb, B, 1, N)
    C_p = pos_major(C)  # (Lb, nb, B, N)
    y = u.new_empty(block, n_blocks, batch, d_inner)

    # 2. recurrence inside every block at once, from a zero state
    decay = u.new_empty(n_blocks, batch, d_inner, n_state)
    h = torch.zeros_like(decay)  # (nb, B, D, N)
    for pos in range(block):
        torch.mul(delta_p[pos], A, out=decay).exp_()
        h.mul_(decay).addcmul_(drive_p[pos], B_p[pos])
        y[pos] = torch.einsum("kbdn,kbn->kbd", h, C_p[pos])

    # 3. carry states across blocks: starts[k] is the true state entering block k
    block_decay = torch.exp(delta_p.sum(dim=0) * A)  # (nb, B, D, N)
    starts = torch.empty_like(h)
    carry = h0
    for k in range(n_blocks):
        starts[k] = carry
        carry = torch.addcmul(h[k], block_decay[k], carry)

    # 4. add each block's carried-in state as it decays through the block
    for pos in range(block):
        torch.mul(delta_p[pos], A, out=decay).exp_()
        starts.mul_(decay)
        y[pos] += torch.einsum("kbdn,kbn->kbd", starts, C_p[pos])

    y = y.permute(1, 0, 2, 3).reshape(n_blocks * block, batch, d_inner)[:seq_len].permute(1, 2, 0)
    return y, carry


def selective_scan_blocked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    block_len=None,
):
    """Block-parallel pure-PyTorch scan. Shapes: see module docstring."""
    batch, d_inner, seq_len = u.shape
    delta = _discretize_inputs(delta, delta_bias, delta_softplus)
    A = A.float()
    h = (
        initial_state.float()
        if initial_state is not None
        else u.new_zeros(batch, d_inner, A.shape[1], dtype=torch.float32)
    )
    u32 = u.float()
    ys = []
    for start in range(0, seq_len, MAX_SEGMENT_TOKENS):
        seg = slice(start, start + MAX_SEGMENT_TOKENS)
        y_seg, h = _blocked_segment(u32[..., seg], delta[..., seg], A, B[..., seg], C[..., seg], h, block_len)
        ys.append(y_seg)
    y = torch.cat(ys, dim=-1) if ys else u32.new_zeros(batch, d_inner, 0)
    return _finish(y, u, D, z, u.dtype), h


def state_contribution(delta, A, C, initial_state):
    """What an initial state adds to a zero-state scan's outputs and final state.

    Because the scan is linear in h_0:
        y_t   += C_t . (exp(sum_{i<=t} delta_i A) * h_0)
        h_L   += exp(sum_{i<=L} delta_i A) * h_0
    delta here is already biased and softplus'ed.  Returns (dy: (B, D, L), dh: (B, D, N)).
    """
    cum = torch.cumsum(delta.float()[..., None] * A.float()[None, :, None, :], dim=2)  # (B, D, L, N)
    carried = torch.exp(cum) * initial_state.float()[:, :, None, :]
    dy = torch.einsum("bdln,bnl->bdl", carried, C.float())
    return dy, carried[:, :, -1]


def selective_scan_mamba_ssm(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
):
    """mamba-ssm's CUDA kernel plus the exact initial-state correction."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    y, last = selective_scan_fn(
        u, delta, A, B, C, None, None, delta_bias, delta_softplus, return_last_state=True
    )
    y, last = y.float(), last.float()
    if initial_state is not None:
        dy, dh = state_contribution(_discretize_inputs(delta, delta_bias, delta_softplus), A, C, initial_state)
        y, last = y + dy, last + dh
    return _finish(y, u, D, z, u.dtype), last


def mamba_ssm_available() -> bool:
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception:  # ImportError, or a CUDA build that fails to load
        return False
    return torch.cuda.is_available()


SCAN_IMPLS: dict[str, ScanFn] = {
    "torch": selective_scan_blocked,
    "loop": selective_scan_ref,
    "mamba_ssm": selective_scan_mamba_ssm,
}


def resolve_scan_impl(name: str, device: str | torch.device = "cpu") -> str:
    """Decide once which implementation runs: 'auto' picks mamba_ssm on CUDA if installed."""
    if name == "auto":
        on_cuda = torch.device(device).type == "cuda"
        return "mamba_ssm" if on_cuda and mamba_ssm_available() else "torch"
    if name not in SCAN_IMPLS:
        raise ValueError(f"unknown scan implementation {name!r}; choose auto, {', '.join(SCAN_IMPLS)}")
    if name == "mamba_ssm" and not mamba_ssm_available():
        raise ValueError("temporal.scan_impl=mamba_ssm needs CUDA and `pip install vidstorm[gpu]`")
    return name
