"""STORM checkpoints round-trip exactly; a mismatched one is a clear error."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import load_storm, save_storm
from pipeline.models.storm import StormConnector, StormSpec

SPEC = StormSpec(vision_dim=8, llm_hidden=12, d_model=16, n_layers=2, d_state=4)


def test_round_trip_is_exact(tmp_path):
    model = StormConnector(SPEC, "chunk_bidirectional")
    save_storm(model, tmp_path / "ckpt")
    loaded = load_storm(tmp_path / "ckpt", SPEC, "chunk_bidirectional")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    frames = torch.randn(2, 4, 4, 8)
    with torch.no_grad():
        a, _ = model.temporal(frames)
        b, _ = loaded.temporal(frames)
    assert torch.equal(model.projector(a), loaded.projector(b))


def test_mismatched_geometry_names_the_difference(tmp_path):
    save_storm(StormConnector(SPEC, "chunk_bidirectional"), tmp_path / "ckpt")
    wanted = StormSpec(vision_dim=8, llm_hidden=12, d_model=32, n_layers=2, d_state=4)
    with pytest.raises(CheckpointError, match=r"d_model=16 \(config wants 32\)"):
        load_storm(tmp_path / "ckpt", wanted, "chunk_bidirectional")


def test_mode_that_does_not_fit_the_checkpoint(tmp_path):
    save_storm(StormConnector(SPEC, "chunk_bidirectional"), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="forward-only"):
        load_storm(tmp_path / "ckpt", SPEC, "stream")


def test_tampered_tensors_are_reported_not_half_loaded(tmp_path):
    folder = save_storm(StormConnector(SPEC, "chunk_bidirectional"), tmp_path / "ckpt")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["projector.fc2.weight"] = torch.zeros(3, 3)
    del tensors["temporal.norm_f.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing, 0 unexpected, 1 mis-shaped"):
        load_storm(folder, SPEC, "chunk_bidirectional")


def test_missing_or_broken_config(tmp_path):
    with pytest.raises(CheckpointError, match="no storm_config.json"):
        load_storm(tmp_path, SPEC, "stream")
    (tmp_path / "storm_config.json").write_text(json.dumps({"vision_dim": 8, "colour": "red"}))
    with pytest.raises(CheckpointError, match="not a valid config"):
        load_storm(tmp_path, SPEC, "stream")


def test_build_connector_from_config_seeded_and_from_checkpoint(tmp_path):
    from pipeline.config import load_config
    from pipeline.models.checkpoint import build_connector

    cfg = load_config(None, ["temporal.d_model=16", "temporal.n_layers=2", "temporal.d_state=4"]).temporal
    said = []
    a = build_connector(cfg, vision_dim=8, llm_hidden=12, log=said.append)
    b = build_connector(cfg, vision_dim=8, llm_hidden=12, log=None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert "scan=torch" in said[0] and "untrained" in said[0]

    save_storm(a, tmp_path / "ckpt")
    cfg.checkpoint, cfg.seed = str(tmp_path / "ckpt"), 123
    c = build_connector(cfg, vision_dim=8, llm_hidden=12, log=None)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    with pytest.raises(CheckpointError, match="llm_hidden=12 \\(config wants 64\\)"):
        build_connector(cfg, vision_dim=8, llm_hidden=64, log=None)


def test_vlm_form_round_trip_adapter_and_a_checkpoint_from_before_frame_centring(tmp_path):
    """The VLM form's adapter width and frame centring travel with the checkpoint; one written before
    centring existed (no such fields) loads and computes as it was trained, uncentred; a wrong adapter width
    is named."""
    vlm = dict(vision_dim=8, llm_hidden=16, d_model=16, n_layers=2, d_state=4, connector="vlm")
    spec = StormSpec(**vlm, adapter_dim=8, center_frames=True)
    torch.manual_seed(0)
    model = StormConnector(spec, "chunk_bidirectional")
    with torch.no_grad():
        model.temporal.up.weight.normal_(0, 0.3)
    save_storm(model, tmp_path / "ckpt")
    loaded = load_storm(tmp_path / "ckpt", spec, "chunk_bidirectional")
    x = torch.randn(1, 3, 2, 2, 16)
    with torch.no_grad():
        assert torch.equal(model.temporal.forward_projected(x)[0], loaded.temporal.forward_projected(x)[0])
    with pytest.raises(CheckpointError, match=r"adapter_dim=8 \(config wants 4\)"):
        load_storm(tmp_path / "ckpt", StormSpec(**vlm, adapter_dim=4, center_frames=True), "chunk_bidirectional")

    old = StormConnector(StormSpec(**vlm), "chunk_bidirectional")  # no adapter, no centring
    with torch.no_grad():
        for layer in old.temporal.layers:
            layer.fwd.out_proj.weight.normal_(0, 0.3)
    save_storm(old, tmp_path / "old")
    config = json.loads((tmp_path / "old" / "storm_config.json").read_text())
    del config["adapter_dim"], config["center_frames"]  # as written before these fields
    (tmp_path / "old" / "storm_config.json").write_text(json.dumps(config))
    reloaded = load_storm(tmp_path / "old", StormSpec(**vlm, center_frames=True), "chunk_bidirectional")
    assert not any(layer.center_frames for layer in reloaded.temporal.layers)
    with torch.no_grad():
        assert torch.equal(old.temporal.forward_projected(x)[0], reloaded.temporal.forward_projected(x)[0])
