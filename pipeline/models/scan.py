"""Selective scan (Mamba's S6 recurrence) with an explicit initial state.

The recurrence, per channel d and state index n:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t       (B, D, N)
    y_t = C_t . h_t + D * u_t,  then gated by silu(z_t)

Three implementations share one signature (layout follows mamba_ssm):

    u, delta, z: (B, D, L)    A: (D, N)    B, C: (B, N, L)    D: (D,)
    initial_state: (B, D, N) or None  ->  y: (B, D, L), last_state: (B, D, N)

The two pure-PyTorch ones are differentiable in every input, the initial state
included, with the same gradients; they compute in fp32 (fp64 for fp64 inputs)
and return y in u's dtype.

- `selective_scan_ref`: one Python step per token. Slow, obviously right; the
  reference the tests compare against.
- `selective_scan_blocked`: block-parallel pure PyTorch. Tokens are cut into
  blocks; the recurrence runs inside all blocks at once (a loop over positions
  within a block, vectorised across blocks), then block-start states are carried
  block to block, then a second pass adds each block's carried-in state as it
  decays. Loop count is ~3*sqrt(L) instead of L, each step works on a cache-sized
  slice in place, and it only multiplies by decays <= 1, so it is as stable as
  the reference. Its gradient is written by hand (in-place buffers cannot go
  through autograd): with a_t = exp(delta_t * A) and g_t = dLoss/dh_t over every
  path, the adjoint is the same kind of linear scan, run backwards in time,

      g_t = a_{t+1} * g_{t+1} + dy_t * C_t,     g_L = dy_L * C_L + dLoss/dh_L

  so the same blocked scheme computes it (~sqrt(L) steps, decays <= 1). Then,
  per token, with h_t recomputed from the saved inputs:

      du_t     = delta_t * (g_t . B_t)
      ddelta_t = u_t * (g_t . B_t) + sum_n A * (a_t * h_{t-1} * g_t)
      dA       = sum_{b,t} delta_t * (a_t * h_{t-1} * g_t)
      dB_t     = sum_d g_t * delta_t * u_t          dC_t = sum_d h_t * dy_t
      dh_0     = a_1 * g_1

  The bias, softplus, D skip and gate are plain autograd around it. Under
  no_grad / inference_mode (or when nothing needs a gradient) only the forward
  routine runs, unchanged.
- `selective_scan_mamba_ssm`: the CUDA kernel from mamba-ssm, which starts from a
  zero state. The scan is linear in its initial state, so the carried state is
  honoured exactly by adding C_t . (exp(sum_{i<=t} delta_i A) * h_0) afterwards.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

ScanFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

# Bounds the (L, B, D, N) intermediates of the blocked scan: longer inputs are cut
# into segments of this many tokens with the state carried between them.
MAX_SEGMENT_TOKENS = 4096


def _compute_dtype(u):
    """fp32 for fp32 and narrower inputs, fp64 for fp64 ones."""
    return torch.promote_types(u.dtype, torch.float32)


def _discretize_inputs(delta, delta_bias, delta_softplus, dtype=torch.float32):
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
):
    """Per-token reference loop. Shapes: see module docstring."""
    batch, d_inner, seq_len = u.shape
    dtype = _compute_dtype(u)
    delta = _discretize_inputs(delta, delta_bias, delta_softplus, dtype)
    A = A.to(dtype)
    h = (
        initial_state.to(dtype).clone()
        if initial_state is not None
        else u.new_zeros(batch, d_inner, A.shape[1], dtype=dtype)
    )
    ys = []
    for t in range(seq_len):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        drive = delta[:, :, t, None] * B[:, None, :, t].to(dtype) * u[:, :, t, None].to(dtype)
        h = decay * h + drive
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t].to(dtype)))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, d_inner, 0, dtype=dtype)
    return _finish(y, u, D, z, u.dtype), h


def _block_layout(seq_len, block_len):
    """(block, n_blocks): ~sqrt(L) positions per block unless block_len is given."""
    block = block_len or max(1, math.isqrt(seq_len - 1) + 1)
    return block, -(-seq_len // block)


def _pos_major(x, block, n_blocks):
    """(B, X, L) -> (block, nb, B, X): [pos] is position `pos` of every block, contiguous.

    Token l = k * block + pos. The tail is zero-padded: delta = 0 means decay 1 and no
    input, so padding leaves the state unchanged (and, run backwards, the adjoint too).
    """
    pad = n_blocks * block - x.shape[-1]
    if pad:
        x = F.pad(x, (0, pad))
    return x.reshape(x.shape[0], x.shape[1], n_blocks, block).permute(3, 2, 0, 1).contiguous()


def _token_major(x_p, seq_len):
    """(block, nb, B, X) -> (B, X, L): the inverse of `_pos_major`, padding dropped."""
    block, n_blocks, batch, width = x_p.shape
    return x_p.permute(2, 3, 1, 0).reshape(batch, width, n_blocks * block)[..., :seq_len]


def _blocked_inputs(u, delta, B, C, block_len):
    """The scan's inputs in position-major blocks, zero-padded to whole blocks (forward and backward
    share it): block, n_blocks, delta and delta*u (Lb, nb, B, D, 1), B (Lb, nb, B, 1, N), C (Lb, nb, B, N)."""
    block, n_blocks = _block_layout(u.shape[-1], block_len)
    delta_p = _pos_major(delta, block, n_blocks)[..., None]
    drive_p = _pos_major(delta * u, block, n_blocks)[..., None]
    B_p = _pos_major(B, block, n_blocks)[:, :, :, None, :]
    return block, n_blocks, delta_p, drive_p, B_p, _pos_major(C, block, n_blocks)


def _blocked_segment(u, delta, A, B, C, h0, block_len):
    """Block-parallel scan of one segment, before the D skip and z gate.

    u, delta: (B, D, L), A: (D, N), B, C: (B, N, L), h0: (B, D, N), all one dtype
    returns y: (B, D, L), last state (B, D, N)

    Every working buffer is one (nb, B, D, N) slice reused in place: on CPU the cost
    of this scan is memory traffic and page faults, not arithmetic, so no
    (L, B, D, N) tensor is ever materialised.
    """
    batch, d_inner, seq_len = u.shape
    n_state = A.shape[1]
    # 1. position-major blocked layout, zero-padded to whole blocks
    block, n_blocks, delta_p, drive_p, B_p, C_p = _blocked_inputs(u, delta, B, C, block_len)
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


def _blocked_segment_backward(u, delta, A, B, C, h0, dy, dh, block_len):
    """Gradients of `_blocked_segment` for (u, delta, A, B, C, h0), maths in the module docstring.

    dy: (B, D, L) gradient of y, dh: (B, D, N) of the last state.

    Only the inputs are saved by the forward pass. The states are recomputed here into
    one (L, B, D, N) buffer (bounded: a segment is at most MAX_SEGMENT_TOKENS long);
    the adjoint g never is materialised: like the states it is carried into every block
    first, then swept through one (nb, B, D, N) slice at a time, last position first.
    """
    batch, d_inner, seq_len = u.shape
    n_state = A.shape[1]
    # 1. the forward's position-major layout, plus dy
    block, n_blocks, delta_p, drive_p, B_p, C_p = _blocked_inputs(u, delta, B, C, block_len)
    C_p = C_p[:, :, :, None, :]  # (Lb, nb, B, 1, N)
    dy_p = _pos_major(dy, block, n_blocks)[..., None]  # (Lb, nb, B, D, 1)
    decay = u.new_empty(n_blocks, batch, d_inner, n_state)
    block_decay = torch.exp(delta_p.sum(dim=0) * A)  # (nb, B, D, N)

    # 2. states: block-start states as in the forward, then every h_t into one buffer
    h = torch.zeros_like(decay)  # (nb, B, D, N)
    for pos in range(block):
        torch.mul(delta_p[pos], A, out=decay).exp_()
        h.mul_(decay).addcmul_(drive_p[pos], B_p[pos])
    starts = torch.empty_like(h)
    carry = h0
    for k in range(n_blocks):
        starts[k] = carry
        carry = torch.addcmul(h[k], block_decay[k], carry)
    states = u.new_empty(block, n_blocks, batch, d_inner, n_state)  # (Lb, nb, B, D, N)
    prev = starts
    for pos in range(block):
        torch.mul(delta_p[pos], A, out=decay).exp_()
        torch.mul(prev, decay, out=states[pos]).addcmul_(drive_p[pos], B_p[pos])
        prev = states[pos]

    # 3. adjoint inside every block at once, last position first, from zero;
    #    after position 0 it is multiplied by a_t: what the block sends to the token before it
    g = torch.zeros_like(decay)  # (nb, B, D, N)
    for pos in reversed(range(block)):
        g.addcmul_(dy_p[pos], C_p[pos])
        torch.mul(delta_p[pos], A, out=decay).exp_()
        g.mul_(decay)

    # 4. carry the adjoint across blocks, right to left: ends[k] enters block k's last position
    ends = torch.empty_like(g)
    carry = dh
    for k in reversed(range(n_blocks)):
        ends[k] = carry
        carry = torch.addcmul(g[k], block_decay[k], carry)

    # 5. sweep positions last to first with the true g_t, h_t, h_{t-1}; collect the gradients
    d_drive_p = u.new_empty(block, n_blocks, batch, d_inner)  # d(delta * u)
    d_decay_p = u.new_empty(block, n_blocks, batch, d_inner)  # sum_n A * a_t h_{t-1} g_t
    dB_p = u.new_empty(block, n_blocks, batch, n_state)
    dC_p = u.new_empty(block, n_blocks, batch, n_state)
    dA_acc = torch.zeros_like(decay)  # sum over positions of delta_t * a_t h_{t-1} g_t
    q = torch.empty_like(decay)
    g = ends
    for pos in reversed(range(block)):
        g.addcmul_(dy_p[pos], C_p[pos])  # g_t
        torch.mul(delta_p[pos], A, out=decay).exp_()
        torch.mul(g, decay, out=q).mul_(states[pos - 1] if pos else starts)  # a_t h_{t-1} g_t
        d_drive_p[pos] = torch.einsum("kbdn,kbn->kbd", g, B_p[pos, :, :, 0])
        dB_p[pos] = torch.einsum("kbdn,kbd->kbn", g, drive_p[pos, ..., 0])
        dC_p[pos] = torch.einsum("kbdn,kbd->kbn", states[pos], dy_p[pos, ..., 0])
        dA_acc.addcmul_(q, delta_p[pos])
        torch.sum(q.mul_(A), dim=-1, out=d_decay_p[pos])
        g.mul_(decay)  # a_t g_t: into the token before

    # 6. back to (B, X, L); the chain rule through drive = delta * u
    d_drive = _token_major(d_drive_p, seq_len)
    du = d_drive * delta
    ddelta = d_drive * u + _token_major(d_decay_p, seq_len)
    dA = dA_acc.sum(dim=(0, 1))
    return du, ddelta, dA, _token_major(dB_p, seq_len), _token_major(dC_p, seq_len), g[0].clone()


class _BlockedSegmentScan(torch.autograd.Function):
    """`_blocked_segment` with its hand-written reverse pass (its in-place buffers can't be traced)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block_len):
        ctx.save_for_backward(u, delta, A, B, C, h0)
        ctx.block_len = block_len
        return _blocked_segment(u, delta, A, B, C, h0, block_len)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        grads = _blocked_segment_backward(*ctx.saved_tensors, dy, dh, ctx.block_len)
        return (*grads, None)


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
    dtype = _compute_dtype(u)
    delta = _discretize_inputs(delta, delta_bias, delta_softplus, dtype)
    A = A.to(dtype)
    h = (
        initial_state.to(dtype)
        if initial_state is not None
        else u.new_zeros(batch, d_inner, A.shape[1], dtype=dtype)
    )
    u_c, B, C = u.to(dtype), B.to(dtype), C.to(dtype)
    # Under no_grad / inference_mode the plain forward runs; otherwise the autograd.Function.
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u_c, delta, A, B, C, h))
    scan_segment = _BlockedSegmentScan.apply if needs_grad else _blocked_segment
    ys = []
    for start in range(0, seq_len, MAX_SEGMENT_TOKENS):
        seg = slice(start, start + MAX_SEGMENT_TOKENS)
        y_seg, h = scan_segment(u_c[..., seg], delta[..., seg], A, B[..., seg], C[..., seg], h, block_len)
        ys.append(y_seg)
    y = torch.cat(ys, dim=-1) if ys else u_c.new_zeros(batch, d_inner, 0)
    return _finish(y, u, D, z, u.dtype), h


def state_contribution(delta, A, C, initial_state, segment: int = 256):
    """What an initial state adds to a zero-state scan's outputs and final state.

    Because the scan is linear in h_0:
        y_t   += C_t . (exp(sum_{i<=t} delta_i A) * h_0)
        h_L   += exp(sum_{i<=L} delta_i A) * h_0
    delta here is already biased and softplus'ed.  Returns (dy: (B, D, L), dh: (B, D, N)).
    Runs in segments of `segment` tokens, carrying the decayed state from one to the next,
    so its intermediates are (B, D, segment, N), never (B, D, L, N): a long chunk cannot OOM.
    """
    h = initial_state.float()
    Af, Cf, df = A.float()[None, :, None, :], C.float(), delta.float()
    dys = []
    for start in range(0, delta.shape[-1], segment):
        cum = torch.cumsum(df[:, :, start : start + segment, None] * Af, dim=2)  # (B, D, l, N)
        carried = torch.exp(cum) * h[:, :, None, :]
        dys.append(torch.einsum("bdln,bnl->bdl", carried, Cf[:, :, start : start + segment]))
        h = carried[:, :, -1]
    dy = torch.cat(dys, dim=-1) if dys else df.new_zeros(df.shape)
    return dy, h


def add_initial_state(y, last, delta, A, C, initial_state, segment: int = 256):
    """A zero-state kernel's (y, last) plus what `initial_state` contributes; nothing to add (and
    nothing computed) for no state or an all-zero one, e.g. the first chunk of every stream."""
    if initial_state is None or not bool(initial_state.any()):
        return y, last
    dy, dh = state_contribution(delta, A, C, initial_state, segment)
    return y + dy, last + dh


def selective_scan_mamba_ssm(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None
):
    """mamba-ssm's CUDA kernel plus the exact initial-state correction."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    y, last = selective_scan_fn(
        u, delta, A, B, C, None, None, delta_bias, delta_softplus, return_last_state=True
    )
    y, last = add_initial_state(y.float(), last.float(),
                                _discretize_inputs(delta, delta_bias, delta_softplus) if initial_state is not None
                                else delta, A, C, initial_state)
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
