"""STORM checkpoints round-trip exactly; a mismatched one is a clear error."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import StormConnector, StormSpec, load_storm, save_storm

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
