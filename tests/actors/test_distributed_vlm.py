"""STORM on a VLM base through Ray + Redis: the same rows as --local, for both families, with a trained
(non-identity) temporal module loaded from a checkpoint on top of the base, and in offline mode."""

import uuid

import pytest
import torch

from actors.runtime import Cluster, DistributedIngest
from helpers.vlm_config import vlm_overrides
from pipeline.build import build_processor
from pipeline.config import load_config
from pipeline.decode import Source
from pipeline.ingest import LocalIngest
from pipeline.models.checkpoint import save_storm
from pipeline.synth import write_clip

from test_distributed import _rows


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vlm-clips")
    return {"walk-a": write_clip(folder / "walk-a.mp4", seconds=20, fps=5, width=160, height=96)}


@pytest.fixture(scope="module")
def trained(tiny_vlms, tmp_path_factory):
    """A SmolVLM-based STORM checkpoint whose temporal module is not the identity (as after training)."""
    cfg = load_config(None, vlm_overrides(tiny_vlms["smolvlm"]))
    connector = build_processor(cfg, log=None, parts=("encoder", "temporal")).connector
    torch.manual_seed(7)
    for layer in connector.temporal.layers:
        for mixer in (layer.fwd, layer.bwd):
            torch.nn.init.normal_(mixer.out_proj.weight, std=0.2)
    return save_storm(connector, tmp_path_factory.mktemp("vlm-ckpt") / "storm")


CASES = {
    "smolvlm-trained": ("smolvlm", ["temporal.mode=chunk_bidirectional"], True),
    "llava-offline": ("llava_onevision", ["temporal.mode=offline"], False),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_vlms):
    cfg = load_config(None, vlm_overrides(tiny_vlms["smolvlm"]))
    with Cluster(cfg, tmp_path_factory.mktemp("vlm-cluster"), log=lambda m: None) as c:
        yield c


@pytest.mark.parametrize("case", list(CASES))
def test_ray_rows_equal_local_rows_on_a_vlm_base(case, cluster, clips, tiny_vlms, trained, tmp_path):
    family, extra, with_checkpoint = CASES[case]
    overrides = vlm_overrides(tiny_vlms[family], *extra, *([f"temporal.checkpoint={trained}"] if with_checkpoint
                                                          else []))
    cfg = load_config(None, overrides)
    sources = [Source(str(p), sid) for sid, p in clips.items()]
    local = tmp_path / "local"
    runner = LocalIngest(cfg, build_processor(cfg, log=None), local, log=lambda m: None)
    assert [runner.run(s).status for s in sources] == ["done"]
    reference = _rows(local / "store")
    assert len(reference[0]) == 3  # 20 s at 1 fps in 8-frame chunks

    cluster.data_dir = tmp_path / "ray"
    ray_cfg = load_config(None, [*overrides, f"queue.prefix=v{uuid.uuid4().hex[:6]}", "workers.decoders=1"])
    ingest = DistributedIngest(cluster, ray_cfg, log=lambda m: None)
    try:
        rows = ingest.run(sources)
    finally:
        ingest.shutdown()
    assert [r["status"] for r in rows] == ["done"]
    assert _rows(tmp_path / "ray" / "store") == reference
