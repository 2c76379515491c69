"""The block-parallel scan equals the per-token reference loop; the fast-path state correction is exact."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.models.scan import (
    resolve_scan_impl,
    selective_scan_blocked,
    selective_scan_ref,
    add_initial_state,
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


def _zero_state_and_true_scans():
    """A scan from zero and the same scan from a random h0 (what the correction must bridge)."""
    args = _inputs(2, 12, 8, 33)
    h0 = torch.randn(2, 12, 8)
    plain = {k: v for k, v in args.items() if k not in ("D", "z")}
    y_zero, h_zero = selective_scan_ref(**plain)
    y_true, h_true = selective_scan_ref(**plain, initial_state=h0)
    delta = F.softplus(args["delta"] + args["delta_bias"][:, None])
    return args, h0, delta, (y_zero, h_zero), (y_true, h_true)


def test_state_correction_makes_zero_state_scan_exact():
    """What the mamba-ssm path does: zero-state kernel + linear correction == scan from h0."""
    args, h0, delta, (y_zero, h_zero), (y_true, h_true) = _zero_state_and_true_scans()
    dy, dh = state_contribution(delta, args["A"], args["C"], h0)
    torch.testing.assert_close(y_zero + dy, y_true, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_zero + dh, h_true, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("segment", [1, 5, 32, 33, 1000])
def test_state_correction_in_bounded_segments_equals_the_scan_from_h0(segment):
    """The correction runs in segments (intermediates (B, D, segment, N), never (B, D, L, N))."""
    args, h0, delta, (y_zero, h_zero), (y_true, h_true) = _zero_state_and_true_scans()
    y, h = add_initial_state(y_zero, h_zero, delta, args["A"], args["C"], h0, segment=segment)
    torch.testing.assert_close(y, y_true, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_true, rtol=1e-5, atol=1e-5)


def test_a_zero_state_needs_no_correction_and_gets_none(monkeypatch):
    import pipeline.models.scan as scan

    def boom(*args, **kwargs):
        raise AssertionError("correction computed for a zero state")

    args = _inputs(1, 4, 2, 9)
    y, h = torch.randn(1, 4, 9), torch.randn(1, 4, 2)
    monkeypatch.setattr(scan, "state_contribution", boom)
    for state in (None, torch.zeros(1, 4, 2)):  # the first chunk of every stream
        y2, h2 = scan.add_initial_state(y, h, args["delta"], args["A"], args["C"], state)
        assert y2 is y and h2 is h
    with pytest.raises(AssertionError, match="zero state"):
        scan.add_initial_state(y, h, args["delta"], args["A"], args["C"], torch.ones(1, 4, 2))


def test_the_temporal_actor_reserves_a_gpu_share_when_the_cluster_has_gpus():
    from actors.runtime import actor_gpus
    from pipeline.config import load_config

    w = load_config(None, []).workers
    assert actor_gpus(w, has_gpus=True) == {"encoder": 1.0, "summarizer": 1.0, "temporal": 0.25}
    assert actor_gpus(w, has_gpus=False) == {"encoder": 0.0, "summarizer": 0.0, "temporal": 0.0}
    pinned = load_config(None, ["workers.gpus_per_temporal=1", "workers.gpus_per_encoder=0.5"]).workers
    assert actor_gpus(pinned, has_gpus=False)["temporal"] == 1.0
    assert actor_gpus(pinned, has_gpus=True)["encoder"] == 0.5


def test_scan_impl_is_chosen_once_and_visibly():
    assert resolve_scan_impl("auto", "cpu") == "torch"
    assert resolve_scan_impl("loop") == "loop"
    with pytest.raises(ValueError, match="unknown scan"):
        resolve_scan_impl("fast")


# --- gradients: the blocked scan's hand-written backward equals autograd through the loop ---

GRAD_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _grads(scan_fn, args, seed=5, **kw):
    """Gradients of a random linear function of (y, last_state) for every tensor input."""
    leaves = {k: (v.detach().clone().requires_grad_() if torch.is_tensor(v) else v) for k, v in args.items()}
    y, h = scan_fn(**leaves, **kw)
    g = torch.Generator().manual_seed(seed)
    w_y = torch.randn(y.shape, generator=g, dtype=y.dtype)
    w_h = torch.randn(h.shape, generator=g, dtype=h.dtype)
    ((y * w_y).sum() + (h * w_h).sum()).backward()
    return y.detach(), h.detach(), {k: v.grad for k, v in leaves.items() if torch.is_tensor(v)}


def _assert_grads_equal(got, expected, rtol, atol, may_be_zero=()):
    (y, h, grads), (y_ref, h_ref, grads_ref) = got, expected
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(h, h_ref, rtol=rtol, atol=atol)
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert grads_ref[name] is not None, name
        assert name in may_be_zero or grads_ref[name].abs().max() > 0, f"{name}: reference gradient is zero"
        assert grads[name] is not None, f"no gradient for {name}"
        torch.testing.assert_close(
            grads[name], grads_ref[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}"
        )


def _inputs64(batch, d_inner, n_state, seq_len, with_state, seed=0):
    args = _inputs(batch, d_inner, n_state, seq_len, seed)
    args = {k: (v.double() if torch.is_tensor(v) else v) for k, v in args.items()}
    g = torch.Generator().manual_seed(seed + 100)
    h0 = torch.randn(batch, d_inner, n_state, generator=g, dtype=torch.float64)
    return dict(args, initial_state=h0 if with_state else None)


@pytest.mark.parametrize("seq_len", [1, 2, 7, 16, 50])
@pytest.mark.parametrize("batch,d_inner,n_state", [(1, 8, 4), (2, 12, 8)])
@pytest.mark.parametrize("with_state", [False, True])
def test_blocked_gradients_equal_reference_loop(seq_len, batch, d_inner, n_state, with_state):
    """float64, so the two must agree to rounding: L=1, whole blocks (16) and a padded tail (2, 7, 50)."""
    args = _inputs64(batch, d_inner, n_state, seq_len, with_state)
    got = _grads(selective_scan_blocked, args)
    expected = _grads(selective_scan_ref, args)
    if not with_state:
        assert "initial_state" not in got[2]
    # one token from a zero state: the decay multiplies zero, so dA is truly 0
    may_be_zero = ("A",) if seq_len == 1 and not with_state else ()
    _assert_grads_equal(got, expected, rtol=1e-10, atol=1e-10, may_be_zero=may_be_zero)


@pytest.mark.parametrize("block_len", [1, 3, 8, 64])
def test_blocked_gradients_any_block_length(block_len):
    args = _inputs64(2, 16, 8, 45, with_state=True, seed=3)
    got = _grads(selective_scan_blocked, args, block_len=block_len)
    _assert_grads_equal(got, _grads(selective_scan_ref, args), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("segment_tokens", [16, 20])  # 16+16+16+2, and 20+20+10 (a padded last block)
@pytest.mark.parametrize("with_state", [False, True])
def test_segmented_gradients_equal_reference_loop(monkeypatch, segment_tokens, with_state):
    """Segments carry the state forward and the adjoint backward."""
    import pipeline.models.scan as scan

    monkeypatch.setattr(scan, "MAX_SEGMENT_TOKENS", segment_tokens)
    args = _inputs64(2, 8, 4, 50, with_state)
    got = _grads(scan.selective_scan_blocked, args)
    _assert_grads_equal(got, _grads(selective_scan_ref, args), rtol=1e-10, atol=1e-10)


def test_blocked_gradients_fp32_and_bf16():
    """The model's dtypes: fp32 agrees tightly; bf16 inputs get gradients in bf16."""
    args = dict(_inputs(2, 24, 16, 130, seed=7), initial_state=torch.randn(2, 24, 16))
    got = _grads(selective_scan_blocked, args)
    _assert_grads_equal(got, _grads(selective_scan_ref, args), rtol=1e-4, atol=1e-4)
    bf16 = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in args.items()}
    y, h, grads = _grads(selective_scan_blocked, bf16)
    assert y.dtype == grads["u"].dtype == torch.bfloat16 and grads["A"].dtype == torch.float32
    _, _, grads_ref = _grads(selective_scan_ref, bf16)
    for name in GRAD_INPUTS:
        torch.testing.assert_close(grads[name].float(), grads_ref[name].float(), rtol=2e-2, atol=2e-2)


def test_blocked_gradcheck():
    """Against finite differences too, not only against the loop."""
    args = _inputs64(1, 3, 2, 5, with_state=True, seed=11)
    leaves = [args[k].detach().clone().requires_grad_() for k in GRAD_INPUTS]

    def fn(*xs):
        return selective_scan_blocked(**dict(args, **dict(zip(GRAD_INPUTS, xs))), block_len=2)

    assert torch.autograd.gradcheck(fn, leaves)


def test_no_grad_forward_is_the_inference_path(monkeypatch):
    """Without a gradient to compute, the in-place forward runs as before, not the autograd.Function."""
    import pipeline.models.scan as scan

    args = _inputs(2, 8, 4, 20)
    tracked = dict(args, u=args["u"].clone().requires_grad_())
    with torch.no_grad():
        y_plain, h_plain = scan.selective_scan_blocked(**tracked)
    y_grad, h_grad = scan.selective_scan_blocked(**tracked)
    assert y_grad.requires_grad and not y_plain.requires_grad
    assert torch.equal(y_plain, y_grad.detach()) and torch.equal(h_plain, h_grad.detach())

    def refuse(*a, **k):
        raise AssertionError("autograd.Function used without grad")

    monkeypatch.setattr(scan._BlockedSegmentScan, "apply", refuse)
    with torch.inference_mode():
        y_inf, _ = scan.selective_scan_blocked(**tracked)
    scan.selective_scan_blocked(**args)  # nothing requires grad
    assert torch.equal(y_inf, y_plain)
