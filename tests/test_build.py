"""provenance(): what every segment records about the model that wrote its caption."""

from pipeline.build import RANDOM_MARKER, provenance
from pipeline.config import content_digest, load_config

BOTH = "SigLIP (random), STORM temporal module + projector (untrained)"


def test_a_random_siglip_without_a_checkpoint_is_untrained_in_both_parts(tmp_path):
    siglip = tmp_path / "siglip"
    siglip.mkdir()
    (siglip / RANDOM_MARKER).write_text("random\n")
    model, untrained = provenance(load_config(None, [f"encoder.model={siglip}", "summarizer.model=smollm2"]))
    assert model == f"smollm2 + {siglip} + storm:random init"
    assert untrained == BOTH


def test_a_pretrained_siglip_without_a_checkpoint_has_untrained_storm_parts(tmp_path):
    cfg = load_config(None, [f"encoder.model={tmp_path}"])  # a folder with no marker, no checkpoint
    assert provenance(cfg)[1] == "STORM temporal module + projector (untrained)"


def test_a_checkpoint_on_a_real_siglip_is_fully_trained_and_named_by_its_weights(tmp_path):
    checkpoint = tmp_path / "storm"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"first weights")
    siglip = "google/siglip-base-patch16-224"  # a hub id: pretrained
    cfg = load_config(None, [f"encoder.model={siglip}", f"temporal.checkpoint={checkpoint}"])
    model, untrained = provenance(cfg)
    digest = content_digest(str(checkpoint))[:8]
    assert untrained == ""
    assert model == f"smollm2 + {siglip} + storm:{checkpoint}@{digest}"
    assert len(digest) == 8 and int(digest, 16) >= 0
    (checkpoint / "model.safetensors").write_bytes(b"retrained weights")  # same folder, another model
    assert provenance(cfg)[0] != model


def test_a_vlm_base_names_itself_and_is_untrained_only_when_random(tiny_vlms, tmp_path):
    from helpers.vlm_config import vlm_overrides
    from pipeline.build import untrained_notice

    ref = tiny_vlms["smolvlm"]  # built with random weights (and marked so)
    cfg = load_config(None, vlm_overrides(ref))
    assert provenance(cfg) == (f"{ref} + storm:identity", "VLM (random)")
    assert "random" in untrained_notice(cfg)
    pretrained = tmp_path / "vlm"  # the same checkpoint without the marker stands for a downloaded one
    import shutil

    shutil.copytree(ref, pretrained)
    (pretrained / RANDOM_MARKER).unlink()
    cfg = load_config(None, vlm_overrides(pretrained))
    assert provenance(cfg) == (f"{pretrained} + storm:identity", "")
    assert untrained_notice(cfg) is None


def test_summarizer_prompt_counts_only_where_it_is_asked(tiny_vlms):
    from helpers.vlm_config import vlm_overrides
    from pipeline.config import fingerprint

    plain = [fingerprint(load_config(None, [f"summarizer.prompt={p}"])) for p in ("a", "b")]
    assert plain[0] == plain[1]  # not a VLM base: stores made before the key existed keep their fingerprint
    on_vlm = [fingerprint(load_config(None, vlm_overrides(tiny_vlms["smolvlm"], f"summarizer.prompt={p}")))
              for p in ("a", "b")]
    assert on_vlm[0] != on_vlm[1]


def test_a_checkpoint_trained_with_other_pooling_says_so(tmp_path):
    import json

    from pipeline.build import untrained_notice
    from pipeline.config import load_config

    ckpt = tmp_path / "storm"
    ckpt.mkdir()
    (ckpt / "train_state.json").write_text(json.dumps({"pooling": {"temporal_k": 2, "spatial_p": 4,
                                                                   "train_sample_s": 1}}))
    same = load_config(None, [f"temporal.checkpoint={ckpt}", "pooling.temporal_k=2", "pooling.spatial_p=4",
                              "pooling.sample_s=1"])
    assert untrained_notice(same) is None or "pooling" not in untrained_notice(same)
    other = load_config(None, [f"temporal.checkpoint={ckpt}"])  # the defaults: k=4, p=1
    line = untrained_notice(other)
    assert "trained with pooling.temporal_k=2 pooling.spatial_p=4" in line and "pooling.temporal_k=4" in line
