"""Token reduction: the paper's budgets, exact shapes, and odd grids pooled without loss."""

import pytest
import torch

from pipeline.models.pooling import TokenReducer, spatial_pool, temporal_pool, temporal_sample


def test_paper_setting_keeps_12_5_percent_then_3_125_with_spatial():
    x = torch.randn(32, 8, 8, 16)  # 32 frames of an 8x8 token grid
    kept = TokenReducer(temporal_k=4, sample_s=2, spatial_p=1)(x)
    assert kept.shape == (4, 8, 8, 16)
    assert kept[..., 0].numel() / x[..., 0].numel() == 0.125
    kept_sp = TokenReducer(temporal_k=4, sample_s=2, spatial_p=4)(x)
    assert kept_sp.shape == (4, 4, 4, 16)
    assert kept_sp[..., 0].numel() / x[..., 0].numel() == 0.03125
    assert TokenReducer(4, 2, 4).output_shape(32, 8, 8) == (4, 4, 4)


def test_pool_then_sample_values():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1, 1, 1)
    out = TokenReducer(temporal_k=4, sample_s=2)(x)
    # pooled groups: 1.5, 5.5, 9.5, 13.5; sampling keeps groups 0 and 2
    assert out.flatten().tolist() == [1.5, 9.5]
    assert temporal_pool(x, 4).flatten().tolist() == [1.5, 5.5, 9.5, 13.5]
    assert temporal_sample(x, 5).flatten().tolist() == [0.0, 5.0, 10.0, 15.0]
    # sample_from=1 keeps the last pooled frame of each two (groups 1 and 3)
    assert TokenReducer(temporal_k=4, sample_s=2, sample_from=1)(x).flatten().tolist() == [5.5, 13.5]
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="sample_from must be in 0..1"):
            TokenReducer(temporal_k=4, sample_s=2, sample_from=bad)


def test_sample_from_outside_the_stride_is_one_config_line():
    from pipeline.config import ConfigError, load_config

    assert load_config(None, ["pooling.sample_from=1"]).pooling.sample_from == 1
    with pytest.raises(ConfigError, match=r"pooling.sample_from must be in 0..pooling.sample_s-1 = 1, got 2"):
        load_config(None, ["pooling.sample_from=2"])
    with pytest.raises(ConfigError, match=r"pooling.sample_from=3 is past train.sample_s=2"):
        load_config(None, ["decode.chunk_frames=16", "pooling.sample_s=4", "pooling.sample_from=3", "train.sample_s=2"])
    assert load_config(None, ["pooling.sample_from=1", "train.sample_s=1"]).pooling.sample_from == 1  # trains on all


def test_reducer_from_config_keeps_the_configured_frame_and_trains_on_all_without_sampling():
    """Ingest and eval read the config's reducer; training with train.sample_s=1 keeps every pooled frame,
    so the kept-frame offset must fall back to 0 there (an offset of 1 with s=1 would be out of range)."""
    from pipeline.config import load_config

    x = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1, 1, 1)
    p = load_config(None, ["pooling.sample_from=1", "train.sample_s=1"]).pooling
    test = TokenReducer.from_config(p)
    assert (test.temporal_k, test.sample_s, test.spatial_p, test.sample_from) == (4, 2, 1, 1)
    assert test(x).flatten().tolist() == [5.5]  # the later of the two pooled frames
    train = TokenReducer.from_config(p, sample_s=1)
    assert (train.sample_s, train.sample_from) == (1, 0)
    assert train(x).flatten().tolist() == [1.5, 5.5]


def test_the_default_sample_from_leaves_config_fingerprints_as_they_were():
    """Stores ingested before pooling.sample_from existed are not ingested again: the default is not hashed."""
    from pipeline.config import fingerprint, load_config

    cfg = load_config(None, [])
    assert fingerprint(cfg) == fingerprint(load_config(None, ["pooling.sample_from=0"]))
    assert fingerprint(cfg) != fingerprint(load_config(None, ["pooling.sample_from=1"]))


def test_odd_grid_is_pooled_without_dropping_a_row_or_column():
    x = torch.randn(1, 2, 7, 7, 3)
    out = spatial_pool(x, 4)
    assert out.shape == (1, 2, 4, 4, 3)
    # interior window: mean of its 2x2 block
    torch.testing.assert_close(out[0, 0, 1, 2], x[0, 0, 2:4, 4:6].mean(dim=(0, 1)))
    # last column / row: the half-windows average only the tokens they cover
    torch.testing.assert_close(out[0, 0, 0, 3], x[0, 0, 0:2, 6].mean(dim=0))
    torch.testing.assert_close(out[0, 0, 3, 0], x[0, 0, 6, 0:2].mean(dim=0))
    torch.testing.assert_close(out[0, 1, 3, 3], x[0, 1, 6, 6])
    # every input token contributes: the weighted sum of outputs equals the sum of inputs
    weights = torch.tensor([2.0, 2.0, 2.0, 1.0])
    w2 = (weights[:, None] * weights[None, :])[None, None, :, :, None]
    torch.testing.assert_close((out * w2).sum(dim=(2, 3)), x.sum(dim=(2, 3)))


def test_unbatched_input_and_bad_settings():
    out = TokenReducer(2, 1, 9)(torch.randn(4, 6, 6, 5))
    assert out.shape == (2, 2, 2, 5)
    with pytest.raises(ValueError, match="multiple of 8"):
        TokenReducer(4, 2)(torch.randn(12, 2, 2, 3))
    with pytest.raises(ValueError, match="square"):
        spatial_pool(torch.randn(1, 1, 4, 4, 1), 3)
