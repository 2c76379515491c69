"""The recurrent temporal encoder: HF-compatible mixer, chunked == full pass, state round trip, modes."""

import pytest
import torch
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer

from pipeline.models.temporal import (
    MambaMixer,
    MixerState,
    TemporalEncoder,
    TemporalState,
    pixel_shuffle_down,
)

VISION_DIM = 8


def _encoder(mode, seed=0, **kw):
    torch.manual_seed(seed)
    enc = TemporalEncoder(VISION_DIM, d_model=16, n_layers=2, mode=mode, d_state=4, **kw).eval()
    # Random (not init-time) SSM parameters, so every path of the mixer is exercised.
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.randn_like(p) * 0.5)
            elif name.endswith(".D"):
                p.copy_(torch.randn_like(p))
    return enc


def _frames(t, h=4, w=4, seed=1):
    return torch.randn(t, h, w, VISION_DIM, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seq_len", [1, 5, 37])
def test_mixer_matches_transformers_mamba_mixer(seq_len):
    config = MambaConfig(hidden_size=24, state_size=8, conv_kernel=4, expand=2, use_conv_bias=True, use_bias=False)
    hf = HFMambaMixer(config, layer_idx=0).eval()
    with torch.no_grad():
        hf.A_log.copy_(torch.randn_like(hf.A_log))
        hf.D.copy_(torch.randn_like(hf.D))
        hf.dt_proj.bias.copy_(torch.randn_like(hf.dt_proj.bias))
    ours = MambaMixer(24, d_state=8, d_conv=4, expand=2, dt_rank=hf.time_step_rank)
    ours.load_state_dict(hf.state_dict())  # strict: same names and shapes
    x = torch.randn(2, seq_len, 24)
    with torch.no_grad():
        expected = hf(x)
        got, state = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert state.conv.shape == (2, 48, 3) and state.ssm.shape == (2, 48, 8)


@pytest.mark.parametrize("splits", [[1] * 12, [1, 5, 17, 1, 40], [7, 7, 7, 7, 7, 8, 1], [63, 1]])
def test_stream_chunks_of_any_size_equal_one_pass(splits):
    enc = _encoder("stream")
    seq = torch.randn(1, sum(splits), 16)
    with torch.no_grad():
        full, full_state = enc.forward_tokens(seq)
        state, outs = None, []
        for piece in torch.split(seq, splits, dim=1):
            out, state = enc.forward_tokens(piece, state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)
    for a, b in zip(state.layers, full_state.layers):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.conv, b.conv)
    assert state.tokens_seen == sum(splits)


def test_stream_frame_chunks_equal_one_pass_and_resume_from_bytes():
    enc = _encoder("stream")
    frames = _frames(10)
    with torch.no_grad():
        full, _ = enc(frames)
        first, state = enc(frames[:3])
        mid, state = enc(frames[3:4], state)

        blob = state.to_bytes()
        assert isinstance(blob, bytes) and b"pickle" not in blob
        fresh = _encoder("stream", seed=99)
        fresh.load_state_dict(enc.state_dict())
        restored = TemporalState.from_bytes(blob)
        rest, end_state = fresh(frames[4:], restored)

    assert restored.frames_seen == 4 and restored.tokens_seen == 4 * 4
    torch.testing.assert_close(torch.cat([first, mid, rest]), full, rtol=1e-5, atol=1e-5)
    assert end_state.frames_seen == 10


def test_state_bytes_reject_garbage():
    with pytest.raises(ValueError):
        TemporalState.from_bytes(b"\x00garbage")
    with pytest.raises(ValueError):
        TemporalState.from_bytes((10**6).to_bytes(8, "little") + b"{}")


@pytest.mark.parametrize("mode,first_frame_changes", [("stream", False), ("chunk_bidirectional", True), ("offline", True)])
def test_only_bidirectional_modes_see_the_future(mode, first_frame_changes):
    enc = _encoder(mode)
    frames = _frames(6)
    changed = frames.clone()
    changed[-1] += 1.0
    with torch.no_grad():
        a, _ = enc(frames)
        b, _ = enc(changed)
    diff = (a[0] - b[0]).abs().max().item()
    assert (diff > 1e-4) == first_frame_changes, diff
    assert (a[-1] - b[-1]).abs().max() > 1e-4  # the changed frame itself always changes


def test_chunk_bidirectional_carries_forward_state():
    """The forward direction continues across chunks, so chunk 2 depends on chunk 1."""
    enc = _encoder("chunk_bidirectional")
    frames = _frames(8)
    other_past = _frames(4, seed=7)
    with torch.no_grad():
        _, state_a = enc(frames[:4])
        _, state_b = enc(other_past)
        out_a, _ = enc(frames[4:], state_a)
        out_b, _ = enc(frames[4:], state_b)
        out_none, _ = enc(frames[4:], None)
    assert (out_a - out_b).abs().max() > 1e-4
    assert (out_a - out_none).abs().max() > 1e-4


def test_offline_ignores_carried_state():
    enc = _encoder("offline")
    frames = _frames(4)
    with torch.no_grad():
        _, state = enc(_frames(4, seed=5))
        a, _ = enc(frames, state)
        b, _ = enc(frames, None)
    torch.testing.assert_close(a, b)


def test_single_image_is_a_one_frame_video():
    enc = _encoder("chunk_bidirectional")
    image = _frames(1, h=6, w=6)
    with torch.no_grad():
        out, state = enc(image)
    assert out.shape == (1, 3, 3, 16)
    assert state.frames_seen == 1 and state.tokens_seen == 9


def test_batched_streams_equal_separate_streams():
    enc = _encoder("stream")
    a, b = _frames(3, seed=1), _frames(3, seed=2)
    with torch.no_grad():
        both, _ = enc(torch.stack([a, b]))
        sep_a, _ = enc(a)
        sep_b, _ = enc(b)
    torch.testing.assert_close(both[0], sep_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], sep_b, rtol=1e-5, atol=1e-5)


def test_loop_and_torch_scan_give_the_same_encoder_output():
    enc = _encoder("chunk_bidirectional")
    frames = _frames(3)
    with torch.no_grad():
        a, _ = enc(frames)
        enc.scan_impl = "loop"
        b, _ = enc(frames)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pixel_shuffle_keeps_every_token_of_an_odd_grid():
    x = torch.arange(1 * 1 * 7 * 7 * 1, dtype=torch.float32).reshape(1, 1, 7, 7, 1)
    y = pixel_shuffle_down(x)
    assert y.shape == (1, 1, 4, 4, 4)
    assert set(x.flatten().tolist()) <= set(y.flatten().tolist())
    # the bottom-right output token holds the last input token
    assert y[0, 0, 3, 3, 0].item() == 48.0


# --- training: gradients through the default torch scan equal those through the loop ---

MIXER_PARAMS = {
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
    "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight",
}


def _random_mixer(seed=0):
    torch.manual_seed(seed)
    mixer = MambaMixer(16, d_state=4, d_conv=4, expand=2).double()
    with torch.no_grad():
        mixer.A_log.copy_(torch.randn_like(mixer.A_log) * 0.5)
        mixer.D.copy_(torch.randn_like(mixer.D))
        mixer.dt_proj.bias.copy_(torch.randn_like(mixer.dt_proj.bias))
    return mixer


def _weights(*tensors, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in tensors]


def _assert_same_grads(got: dict, expected: dict, rtol=1e-9, atol=1e-10):
    assert got.keys() == expected.keys()
    for name, ref in expected.items():
        assert ref is not None and ref.abs().max() > 0, f"{name}: the reference gradient is zero"
        assert got[name] is not None, f"{name}: no gradient"
        torch.testing.assert_close(got[name], ref, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("seq_len", [1, 23])
def test_mixer_gradients_torch_scan_equal_loop(seq_len):
    """Every parameter, the input and the carried-in state; the carried-out state is part of the loss."""
    from pipeline.models.scan import selective_scan_blocked, selective_scan_ref

    x0 = torch.randn(2, seq_len, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for scan in (selective_scan_blocked, selective_scan_ref):
        mixer = _random_mixer()
        start = mixer.zero_state(2)
        g = torch.Generator().manual_seed(2)
        conv0 = torch.randn(start.conv.shape, generator=g, dtype=torch.float64).requires_grad_()
        ssm0 = torch.randn(start.ssm.shape, generator=g, dtype=torch.float64).requires_grad_()
        x = x0.clone().requires_grad_()
        out, state = mixer(x, MixerState(conv0, ssm0), scan=scan)
        w_out, w_conv, w_ssm = _weights(out, state.conv, state.ssm)
        ((out * w_out).sum() + (state.conv * w_conv).sum() + (state.ssm * w_ssm).sum()).backward()
        grads = {name: p.grad for name, p in mixer.named_parameters()}
        grads.update(x=x.grad, conv0=conv0.grad, ssm0=ssm0.grad)
        results.append(grads)
    assert MIXER_PARAMS <= results[0].keys()
    _assert_same_grads(results[0], results[1])


def test_encoder_gradients_torch_scan_equal_loop():
    """chunk_bidirectional: forward and backward mixers of every layer, from a carried state."""
    frames = _frames(3).double()
    results = []
    for scan_impl in ("torch", "loop"):
        enc = _encoder("chunk_bidirectional").double().train()
        enc.scan_impl = scan_impl
        with torch.no_grad():
            _, state = enc(_frames(2, seed=4).double())
        x = frames.clone().requires_grad_()
        out, _ = enc(x, state)
        (out * _weights(out)[0]).sum().backward()
        grads = {name: p.grad for name, p in enc.named_parameters()}
        grads["x"] = x.grad
        results.append(grads)
    for layer in range(2):
        for direction in ("fwd", "bwd"):
            assert {f"layers.{layer}.{direction}.{p}" for p in MIXER_PARAMS} <= results[0].keys()
    _assert_same_grads(results[0], results[1])


@pytest.mark.parametrize("scan_impl", ["torch", "loop"])
def test_stream_gradient_through_carried_state_equals_one_pass(scan_impl):
    """A training sample split into two chunks backpropagates through the carried state."""
    seq0 = torch.randn(1, 30, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results = []
    for splits in ([30], [13, 17]):
        enc = _encoder("stream", scan_impl=scan_impl).double().train()
        seq = seq0.clone().requires_grad_()
        state, outs = None, []
        for piece in torch.split(seq, splits, dim=1):
            out, state = enc.forward_tokens(piece, state)
            outs.append(out)
        if len(splits) > 1:
            assert all(s.ssm.requires_grad and s.conv.requires_grad for s in state.layers)
        out = torch.cat(outs, dim=1)
        last = state.layers[-1]
        w_out, w_ssm, w_conv = _weights(out, last.ssm, last.conv)
        ((out * w_out).sum() + (last.ssm * w_ssm).sum() + (last.conv * w_conv).sum()).backward()
        # forward_tokens starts after the input projection: proj.* get no gradient
        grads = {name: p.grad for name, p in enc.named_parameters() if not name.startswith("proj.")}
        grads["seq"] = seq.grad
        results.append(grads)
    _assert_same_grads(results[1], results[0])


def test_carried_state_without_grad_holds_no_graph_and_no_chunk_buffer():
    enc = _encoder("stream")
    seq = torch.randn(1, 40, 16)
    with torch.no_grad():
        _, state = enc.forward_tokens(seq)
    for layer in state.layers:
        assert not layer.ssm.requires_grad and layer.ssm.grad_fn is None
        assert not layer.conv.requires_grad and layer.conv.grad_fn is None
        # a copy of the last d_conv - 1 inputs, not a view into the (B, D_inner, K-1+L) conv input
        assert layer.conv.untyped_storage().nbytes() == layer.conv.numel() * layer.conv.element_size()
    _, state = enc.forward_tokens(seq)  # grad enabled: the state is in the graph, still a small copy
    for layer in state.layers:
        assert layer.ssm.grad_fn is not None and layer.conv.grad_fn is not None
        assert layer.conv.untyped_storage().nbytes() == layer.conv.numel() * layer.conv.element_size()


def test_a_state_from_another_model_is_refused_never_truncated():
    from pipeline.models.temporal import StateMismatch

    enc = _encoder("stream")
    with torch.no_grad():
        _, state = enc(_frames(2))
    restored = TemporalState.from_bytes(state.to_bytes())
    assert restored.meta["model"] == enc.signature()
    with torch.no_grad():
        enc(_frames(2, seed=5), restored)  # its own state: fine

    three = TemporalEncoder(VISION_DIM, d_model=16, n_layers=3, mode="stream", d_state=4).eval()
    with pytest.raises(StateMismatch, match="2 layers, the model 3"):
        three(_frames(2), restored)  # zip() over layers would silently run two of three
    wider = TemporalEncoder(VISION_DIM, d_model=16, n_layers=2, mode="stream", d_state=8).eval()
    with pytest.raises(StateMismatch, match="layer 0 holds"):
        wider(_frames(2), restored)
    retrained = _encoder("stream", seed=9)  # same geometry, other weights
    with pytest.raises(StateMismatch, match="written by model"):
        retrained(_frames(2), restored)
    # loading other weights into an encoder changes its signature
    before = enc.signature()
    enc.load_state_dict(retrained.state_dict())
    assert enc.signature() == retrained.signature() != before


def _llm_space_encoder(mode, seed=0, adapter_dim=0):
    """A module in a VLM's LLM space (no projection, identity at init), moved off the identity."""
    torch.manual_seed(seed)
    enc = TemporalEncoder(16, d_model=16, n_layers=2, mode=mode, d_state=4, d_conv=5, expand=1,
                          in_llm_space=True, adapter_dim=adapter_dim, center_frames=True).eval()
    with torch.no_grad():
        if adapter_dim:
            enc.up.weight.normal_(0, 0.3)
        for layer in enc.layers:
            for mixer in (layer.fwd, layer.bwd):
                if mixer is not None:
                    mixer.out_proj.weight.normal_(0, 0.3)
    return enc


@pytest.mark.parametrize("adapter_dim", [0, 8], ids=["llm-width", "adapter"])
def test_llm_space_module_is_the_identity_at_init_and_its_mixers_read_frames_centred(adapter_dim):
    """Fresh: the VLM's tokens pass unchanged. Trained: a vector added to every token of a frame (what a
    pretrained tower's tokens share: the whole image) reaches the output only through the residual, so
    the mixers see motion under it, not it (README, "The toy model, measured")."""
    x = torch.randn(1, 3, 2, 2, 16, generator=torch.Generator().manual_seed(3)) * 10
    fresh = TemporalEncoder(16, d_model=16, n_layers=2, mode="chunk_bidirectional", d_state=4, in_llm_space=True,
                            adapter_dim=adapter_dim, center_frames=True)
    assert torch.equal(fresh.forward_projected(x)[0], x)
    enc = _llm_space_encoder("chunk_bidirectional", adapter_dim=adapter_dim)
    offset = torch.randn(1, 3, 1, 1, 16, generator=torch.Generator().manual_seed(4)) * 10  # one vector a frame
    with torch.no_grad():
        out, _ = enc.forward_projected(x)
        shifted, _ = enc.forward_projected(x + offset)
        assert not torch.allclose(out, x, atol=1e-3)  # the mixers do write
        torch.testing.assert_close(shifted - offset, out, atol=1e-4, rtol=1e-4)
        if not adapter_dim:
            uncentred = _llm_space_encoder("chunk_bidirectional")  # the same weights, mixers reading x as is
            for layer in uncentred.layers:
                layer.center_frames = False
            a, _ = uncentred.forward_projected(x)
            b, _ = uncentred.forward_projected(x + offset)
            assert not torch.allclose(b - offset, a, atol=1e-2)


@pytest.mark.parametrize("adapter_dim", [0, 8], ids=["llm-width", "adapter"])
def test_llm_space_stream_in_frame_chunks_equals_one_pass(adapter_dim):
    enc = _llm_space_encoder("stream", adapter_dim=adapter_dim)
    x = torch.randn(1, 7, 2, 2, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        whole, _ = enc.forward_projected(x)
        state, parts = None, []
        for piece in torch.split(x, [3, 1, 3], dim=1):
            out, state = enc.forward_projected(piece, state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="whole frames"):
        enc.forward_tokens(x.reshape(1, 28, 16)[:, :6], frame_tokens=4)


@pytest.mark.parametrize("adapter_dim", [0, 8], ids=["llm-width", "adapter"])
def test_a_frozen_identity_module_is_skipped_under_autograd_with_the_same_output_and_gradient(adapter_dim,
                                                                                               monkeypatch):
    """While the VLM's connector aligns under a fresh module (frozen, at the identity), training skips the
    module's branch: the output is the full pass's output (the input itself) and the gradient reaches the
    input unchanged. Without autograd (ingest) the branch runs; a trainable or a trained module always runs."""
    from pipeline.models import temporal

    calls = []
    layer_forward = temporal.TemporalLayer.forward
    monkeypatch.setattr(temporal.TemporalLayer, "forward", lambda self, *a, **k: calls.append(1) or
                        layer_forward(self, *a, **k))
    fresh = TemporalEncoder(16, d_model=16, n_layers=2, mode="chunk_bidirectional", d_state=4, in_llm_space=True,
                            adapter_dim=adapter_dim, center_frames=True)
    assert not fresh.frozen_identity()  # it trains: never skipped
    fresh.requires_grad_(False)
    assert fresh.frozen_identity()
    x = torch.randn(2, 3, 2, 2, 16, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    with torch.no_grad():
        full, full_state = fresh.forward_projected(x)
    assert len(calls) == 2  # without autograd: both layers ran
    out, state = fresh.forward_projected(x)
    assert len(calls) == 2  # under autograd: skipped
    assert torch.equal(out, full) and torch.equal(out, x)
    assert (state.frames_seen, state.tokens_seen) == (full_state.frames_seen, full_state.tokens_seen)
    out.pow(2).sum().backward()
    assert torch.equal(x.grad, 2 * x.detach())

    trained = _llm_space_encoder("chunk_bidirectional", adapter_dim=adapter_dim).requires_grad_(False)
    assert not trained.frozen_identity()
    vision = _encoder("chunk_bidirectional")  # the vision-space module ends in a LayerNorm: never the identity
    vision.zero_outputs()
    assert not vision.requires_grad_(False).frozen_identity()
