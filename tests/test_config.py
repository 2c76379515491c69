"""Config: defaults < YAML < CLI, and every mistake is one line naming the key and its source."""

import pytest

from pipeline.config import load_config, to_yaml
from pipeline.errors import ConfigError


def test_layers_merge_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("decode:\n  fps: 2.0\n  chunk_frames: 32\ntemporal:\n  mode: stream\n")
    cfg = load_config(path, ["decode.fps=0.5"])
    assert cfg.decode.fps == 0.5  # CLI wins
    assert cfg.decode.chunk_frames == 32  # YAML wins over defaults
    assert cfg.temporal.mode == "stream"
    assert cfg.pooling.temporal_k == 4 and cfg.pooling.sample_s == 2 and cfg.pooling.spatial_p == 1
    assert "chunk_frames: 32" in to_yaml(cfg)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("temporal:\n  n_layer: 3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown config key 'temporal\.n_layer'"):
        load_config(path)


def test_unknown_key_and_bad_type_on_command_line():
    with pytest.raises(ConfigError, match="command line: unknown config key 'decode.fsp'"):
        load_config(None, ["decode.fsp=2"])
    with pytest.raises(ConfigError, match="bad value for 'decode.chunk_frames'"):
        load_config(None, ["decode.chunk_frames=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["decode.fps"])


def test_chunk_length_must_be_a_multiple_of_k_times_s():
    with pytest.raises(ConfigError, match=r"decode.chunk_frames=12 must be a positive multiple of .* = 8"):
        load_config(None, ["decode.chunk_frames=12"])
    assert load_config(None, ["decode.chunk_frames=12", "pooling.temporal_k=3", "pooling.sample_s=1"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("temporal.mode=sideways", "temporal.mode must be one of"),
        ("pooling.spatial_p=3", "pooling.spatial_p must be a square"),
        ("encoder.dtype=fp64", "encoder.dtype must be one of"),
        ("decode.fps=0", "decode.fps must be > 0"),
        ("temporal.scan_impl=magic", "temporal.scan_impl must be one of"),
        ("decode.reconnect_outage=-1", "decode.reconnect_outage must be >= 0"),
        ("decode.reconnect_backoff_max=0", "decode.reconnect_backoff_max > 0"),
        ("decode.read_timeout=0", "decode.open_timeout and decode.read_timeout must be > 0"),
        ("workers.scheduling=everywhere", "workers.scheduling must be default or spread, got 'everywhere'"),
    ],
)
def test_inconsistent_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("decode: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_load_and_every_key_they_set_takes_effect():
    """Each shipped YAML loads, and each value it sets is the value the loaded config holds (a key that
    were silently dropped or renamed would leave the default there)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    paths = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        cfg = load_config(path)
        for key, value in leaves(OmegaConf.to_container(OmegaConf.load(path), resolve=True)):
            held = cfg
            for part in key.split("."):
                held = getattr(held, part)
            held = list(held) if isinstance(held, (list, tuple)) else held
            assert held == value or (isinstance(value, (int, float)) and held == pytest.approx(value)), \
                (path.name, key, value, held)


@pytest.mark.parametrize("override,message", [
    ("temporal.offline_spill_mb=-1", r"command line: temporal.offline_spill_mb must be a number of megabytes >= 0"),
    ("temporal.offline_spill_mb=nan", r"temporal.offline_spill_mb must be a number of megabytes >= 0 .*got nan"),
    ("temporal.offline_spill_mb=lots", r"bad value for 'temporal.offline_spill_mb'"),
    ("temporal.offline_spill_dir=relative/spill", r"temporal.offline_spill_dir must be an absolute folder path"),
])
def test_bad_offline_spill_settings_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["temporal.mode=offline", override])


def test_offline_spill_settings_do_not_change_the_fingerprint(tmp_path):
    from pipeline.config import fingerprint

    cfg = load_config(None, ["temporal.mode=offline", "temporal.offline_spill_mb=0",
                             f"temporal.offline_spill_dir={tmp_path}"])
    assert cfg.temporal.offline_spill_mb == 0.0
    assert fingerprint(cfg) == fingerprint(load_config(None, ["temporal.mode=offline"]))
