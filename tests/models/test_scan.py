"""The block-parallel scan equals the per-token reference loop; the fast-path state correction is exact."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.scan import (
    resolve_scan_impl,
    selective_scan_blocked,
    selective_scan_ref,
    state_contribution,
)


def _inputs(batch, d_inner, n_state, seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, d_inner, seq_len, generator=g),
        delta=torch.randn(batch, d_inner, seq_len, generator=g),
        A=-torch.rand(d_inner, n_state, generator=g) * 8 - 0.05,
        B=torch.randn(batch, n_state, seq_len, generator=g),
        C=torch.randn(batch, n_state, seq_len, generator=g),
        D=torch.randn(d_inner, generator=g),
        z=torch.randn(batch, d_inner, seq_len, generator=g),
        delta_bias=torch.randn(d_inner, generator=g),
        delta_softplus=True,
    )


@pytest.mark.parametrize("seq_len", [1, 2, 7, 16, 49, 130])
@pytest.mark.parametrize("batch,d_inner,n_state", [(1, 8, 4), (2, 24, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_blocked_equals_reference_loop(seq_len, batch, d_inner, n_state, with_state):
    args = _inputs(batch, d_inner, n_state, seq_len)
    h0 = torch.randn(batch, d_inner, n_state) if with_state else None
    y_ref, h_ref = selective_scan_ref(**args, initial_state=h0)
    y, h = selective_scan_blocked(**args, initial_state=h0)
    assert y.shape == (batch, d_inner, seq_len) and h.shape == (batch, d_inner, n_state)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_len", [1, 3, 8, 64])
def test_blocked_any_block_length(block_len):
    args = _inputs(2, 16, 8, 45, seed=3)
    h0 = torch.randn(2, 16, 8)
    y_ref, h_ref = selective_scan_ref(**args, initial_state=h0)
    y, h = selective_scan_blocked(**args, initial_state=h0, block_len=block_len)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def test_initial_state_matters():
    """A scan that ignored its initial state would pass the zero-state grid; this one must not."""
    args = _inputs(1, 8, 4, 10)
    y0, _ = selective_scan_blocked(**args)
    y1, _ = selective_scan_blocked(**args, initial_state=torch.ones(1, 8, 4))
    assert (y0 - y1).abs().max() > 1e-3


def test_long_sequence_segments_carry_state(monkeypatch):
    """Inputs longer than one segment are scanned segment by segment with the state carried."""
    import pipeline.models.scan as scan

    monkeypatch.setattr(scan, "MAX_SEGMENT_TOKENS", 16)
    args = _inputs(1, 8, 4, 50)
    y_ref, h_ref = selective_scan_ref(**args)
    y, h = scan.selective_scan_blocked(**args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def test_state_correction_makes_zero_state_scan_exact():
    """What the mamba-ssm path does: zero-state kernel + linear correction == scan from h0."""
    args = _inputs(2, 12, 8, 33)
    h0 = torch.randn(2, 12, 8)
    plain = {k: v for k, v in args.items() if k not in ("D", "z")}
    y_zero, h_zero = selective_scan_ref(**plain)
    y_true, h_true = selective_scan_ref(**plain, initial_state=h0)
    delta = F.softplus(args["delta"] + args["delta_bias"][:, None])
    dy, dh = state_contribution(delta, args["A"], args["C"], h0)
    torch.testing.assert_close(y_zero + dy, y_true, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_zero + dh, h_true, rtol=1e-5, atol=1e-5)


def test_scan_impl_is_chosen_once_and_visibly():
    assert resolve_scan_impl("auto", "cpu") == "torch"
    assert resolve_scan_impl("loop") == "loop"
    with pytest.raises(ValueError, match="unknown scan"):
        resolve_scan_impl("fast")
