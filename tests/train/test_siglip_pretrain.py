"""The toy SigLIP: its rendered pairs, its sigmoid loss, the pretrain command, and the image-VLM built on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import SiglipTowerConfig
from pipeline.train import siglip_pretrain as sp
from pipeline.train import synthqa as sq

ROOT = Path(__file__).resolve().parents[2]
TINY = SiglipTowerConfig(image_size=32, patch_size=8, hidden=32, layers=1, heads=2, intermediate=64, text_hidden=32,
                         text_layers=1)
TINY_ARGS = ["train.siglip.image_size=32", "train.siglip.patch_size=8", "train.siglip.hidden=32",
             "train.siglip.layers=1", "train.siglip.heads=2", "train.siglip.intermediate=64",
             "train.siglip.text_hidden=32", "train.siglip.text_layers=1"]


def _vidstorm(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "actors.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_sigmoid_loss_equals_the_papers_formula():
    """-1/|B| sum_i sum_j log 1/(1 + exp(z_ij (-t x_i.y_j - b))), written out pair by pair."""
    tok = sp.word_tokenizer()
    model = sp.build_model(TINY, len(tok), seed=3)
    images, captions, _, _ = sp.render_pairs(6, TINY.image_size, seed=5)
    captions[4] = captions[1]  # two images with one caption: both pairs positive
    out = model(input_ids=sp.tokenize(tok, captions), pixel_values=sp.pixels(images))
    got = sp.sigmoid_loss(out.logits_per_image, sp.same_caption(captions))

    x = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    y = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    t, b = model.logit_scale.exp(), model.logit_bias
    total = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if captions[i] == captions[j] else -1.0
            total += torch.log(1 / (1 + torch.exp(z * (-t * (x[i] @ y[j]) - b))))
    expected = -total / 6
    torch.testing.assert_close(got, expected.reshape(()), rtol=1e-5, atol=1e-5)
    assert sp.same_caption(captions).sum() == 6 + 2
    # the loss sees which pairs are positive: swapping a caption changes it
    assert not torch.allclose(got, sp.sigmoid_loss(out.logits_per_image, torch.eye(6, dtype=torch.bool)))


def test_rendered_stills_show_what_their_captions_say():
    rng = np.random.default_rng(11)
    for _ in range(20):
        image, caption, truth = sp.render_pair(rng, 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        for colour, kind, x, y in truth:
            assert f"a {colour} {kind}" in caption
            pixel = image[int(y * 128), int(x * 128)].astype(int)  # the shape's centre has its colour
            assert np.abs(pixel - np.array(sq.COLOURS[colour])).max() < 90, (caption, pixel)
        assert sp.still_caption(truth).count(" and ") == len(truth) - 1
    truth = [("red", "circle", 0.8, 0.5), ("blue", "square", 0.2, 0.5)]
    assert sp.still_caption(truth) == "a blue square and a red circle"  # left to right
    assert sp.where(10, 10, 100, 100) == "at the top left" and sp.where(50, 50, 100, 100) == "in the middle"


def test_patch_labels_name_the_shape_under_each_patch():
    """The dense head's targets: a patch labelled with a shape's class shows that shape's colour, a
    background patch the grey background; every shape of a still is labelled somewhere."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        image, caption, truth, labels = sp.render_group(rng, 128, grid=16)[0]
        assert labels.shape == (16, 16) and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, *(sp.patch_class(c, k) for c, k, *_ in truth)}, caption
        level = np.median(image.reshape(-1, 3), axis=0)  # the grey background
        on_shape = (np.abs(image - level).max(axis=2) > 60).reshape(16, 8, 16, 8)  # pixels of some shape
        covered = on_shape.mean(axis=(1, 3))
        assert covered[labels == 0].max() < 0.45, caption  # background patches: mostly background
        for colour, kind, *_ in truth:
            mine = labels == sp.patch_class(colour, kind)
            assert covered[mine].min() > 0.15, caption  # at least 0.3 of each is the shape (before resizing)
            cells = image.reshape(16, 8, 16, 8, 3).transpose(0, 2, 1, 3, 4)[mine]  # (n, 8, 8, 3)
            shown = cells[on_shape.transpose(0, 2, 1, 3)[mine]]  # their shape pixels
            assert np.abs(shown.mean(axis=0) - sq.COLOURS[colour]).max() < 60, caption
    assert len({sp.patch_class(c, k) for c in sq.COLOURS for k in sq.SHAPES}) == len(sq.COLOURS) * len(sq.SHAPES)
    square = sq.ShapeSpec("square", "red", (255, 0, 0), 16.0, 1.0, 16, (16.0, 0.0), (16.0, 0.0), 0)
    expected = np.zeros((4, 4), np.uint8)
    expected[0, 1] = sp.patch_class("red", "square")  # a 16 px square exactly on one 16 px patch
    np.testing.assert_array_equal(sp.patch_labels([square], 64, 64, 4), expected)


def test_pretrain_siglip_with_the_dense_head_learns_patch_classes(tmp_path):
    """train.siglip.dense > 0 trains a per-patch (colour, kind) head beside the sigmoid loss: its loss falls
    (without the dense key there is no such loss line to read)."""
    out = tmp_path / "siglip"
    done = _vidstorm("pretrain-siglip", f"train.out={out}", "train.steps=40", "train.val_data=''",
                     "train.batch_size=32", "train.lr=0.003", "train.siglip.images=256", "train.siglip.dense=1.0",
                     *TINY_ARGS)
    dense = [float(line.split(" dense ")[1].split()[0]) for line in done.stderr.splitlines() if " dense " in line]
    assert len(dense) == 2 and dense[-1] < 0.8 * dense[0], done.stderr  # step 1 and step 40
    assert (out / "model.safetensors").is_file() and (out / "pretrain.json").is_file()


def test_kept_patches_forward_is_the_towers_own_on_those_patches():
    """train.siglip.keep: the tower reads a subset of each image's patches with their own position
    embeddings. All patches kept: exactly SiglipModel's logits; a subset: the encoder, post-layernorm and
    pooling head run on HF's own embeddings (patch + position) of those patches, and nothing else."""
    tok = sp.word_tokenizer()
    model = sp.build_model(TINY, len(tok), seed=2).eval()
    images, captions, _, _ = sp.render_pairs(5, TINY.image_size, seed=9)
    ids, px = sp.tokenize(tok, captions), sp.pixels(images)
    patches = (TINY.image_size // TINY.patch_size) ** 2
    with torch.no_grad():
        whole = model(input_ids=ids, pixel_values=px).logits_per_image
        torch.testing.assert_close(sp.kept_logits(model, ids, px, torch.arange(patches).expand(5, -1)), whole)
        torch.testing.assert_close(sp.kept_logits(model, ids, px, None), whole)
        kept = torch.tensor([[0, 3, 5, 15], [1, 2, 8, 9], [4, 6, 7, 12], [0, 1, 2, 3], [10, 11, 13, 14]])
        vision = model.vision_model
        embedded = vision.embeddings(px)  # HF: patch embedding + position embedding
        rows = torch.stack([embedded[i, kept[i]] for i in range(5)])
        image = vision.head(vision.post_layernorm(vision.encoder(inputs_embeds=rows).last_hidden_state))
        text = model.get_text_features(input_ids=ids)
        text = getattr(text, "pooler_output", text)
        cos = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
        expected = cos * model.logit_scale.exp() + model.logit_bias
        got = sp.kept_logits(model, ids, px, kept)
        torch.testing.assert_close(got, expected)
        assert not torch.allclose(got, whole, atol=1e-3)  # the dropped patches are really gone


def test_keep_patches_keeps_every_shape_patch_then_background():
    rng = np.random.default_rng(4)
    touched = np.zeros((3, 16), bool)
    touched[0, [2, 3, 7]] = True  # fewer than keep: all of them + background
    touched[1, :10] = True  # more than keep: only shape patches
    kept = sp.keep_patches(rng, touched, 6).numpy()
    assert kept.shape == (3, 6)
    assert all(len(set(row)) == 6 and list(row) == sorted(row) for row in kept)
    assert {2, 3, 7} <= set(kept[0]) and touched[1][kept[1]].all() and not touched[2][kept[2]].any()
    # the rendered stills: patches a shape touches (cover 0.02) include those it mostly covers (0.3)
    _, _, _, loose = sp.render_pairs(8, 32, seed=3, grid=4, cover=0.02)
    _, _, _, tight = sp.render_pairs(8, 32, seed=3, grid=4, cover=0.3)
    assert ((tight > 0) <= (loose > 0)).all() and (loose > 0).sum() > (tight > 0).sum()


def test_pretrain_siglip_with_kept_patches_then_whole_images(tmp_path):
    """train.siglip.keep: the steps before the last full_steps see `keep` patches of each image, the rest
    all of them; the loss falls and the folder saved is a whole SigLIP."""
    out = tmp_path / "siglip"
    done = _vidstorm("pretrain-siglip", f"train.out={out}", "train.steps=30", "train.val_data=''",
                     "train.batch_size=32", "train.lr=0.003", "train.siglip.images=256", "train.siglip.keep=6",
                     "train.siglip.full_steps=0.1", *TINY_ARGS)
    lines = [line for line in done.stderr.splitlines() if " loss " in line]
    assert len(lines) == 2 and " patches 6/16 " in lines[0] and " patches 16/16 " in lines[1], done.stderr
    losses = [float(line.split("loss ")[1].split()[0]) for line in lines]
    assert losses[-1] < losses[0]
    assert (out / "model.safetensors").is_file() and json.loads((out / "pretrain.json").read_text())["steps"] == 30


def test_pretrain_siglip_saves_a_siglip_that_encoder_model_loads(tmp_path):
    """A few steps through the CLI: the loss falls, the zero-shot check is printed, and the folder is a SigLIP
    checkpoint the encoder stage loads (the vision tower, its own size and normalisation)."""
    out = tmp_path / "siglip"
    done = _vidstorm("pretrain-siglip", f"train.out={out}", "train.steps=30", "train.val_data=''", "train.batch_size=32", "train.lr=0.003",
                     "train.siglip.images=256", *TINY_ARGS)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result) >= {"colour", "shape", "frames", "steps"} and result["steps"] == 30
    assert 0.0 <= result["colour"] <= 1.0 and result["frames"] > 0
    losses = [float(line.split("loss ")[1].split()[0]) for line in done.stderr.splitlines() if " loss " in line]
    assert len(losses) == 2 and losses[-1] < losses[0]  # step 1 and step 30

    from pipeline.models.siglip import SiglipEncoder

    encoder = SiglipEncoder(str(out), device="cpu", dtype="fp32", select_layer=-1)
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    assert tuple(encoder.encode(frames).shape) == (2, 4, 4, 32)
    assert not (out / "VIDSTORM_RANDOM_WEIGHTS").exists()


def test_pretrain_siglip_bad_input_is_one_line(tmp_path):
    done = _vidstorm("pretrain-siglip", "train.siglip.patch_size=7", f"train.out={tmp_path}/s", check=False)
    assert done.returncode == 2 and "train.siglip" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = _vidstorm("pretrain-siglip", "train.siglip.dense=-1", f"train.out={tmp_path}/s", check=False)
    assert done.returncode == 2 and "train.siglip.dense must be >= 0" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    for bad, says in (("train.siglip.keep=17", "train.siglip.keep must be 0"),
                      ("train.siglip.full_steps=2", "train.siglip.full_steps must be"),
                      ("train.siglip.keep=4 train.siglip.dense=1", "do not combine")):
        done = _vidstorm("pretrain-siglip", *bad.split(), *TINY_ARGS, f"train.out={tmp_path}/s", check=False)
        assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, bad
    done = _vidstorm("pretrain-siglip", f"train.out={tmp_path}/s", f"train.val_data={tmp_path}/none.jsonl", check=False)
    assert done.returncode == 2 and "none.jsonl" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def toy_siglip(tmp_path_factory):
    tok = sp.word_tokenizer()
    folder = tmp_path_factory.mktemp("toysig") / "siglip"
    sp.save(sp.build_model(TINY, len(tok), seed=1), tok, TINY, folder)
    return folder


def test_build_vlm_carries_the_siglip_tower_and_a_trained_connector(tmp_path, toy_siglip):
    """The image-VLM's tower is the SigLIP's (same patch features), its LLM SmolLM2; with --connector the
    connector is the STORM run's and nothing is marked random."""
    from safetensors.torch import save_file
    from transformers import SiglipVisionModel

    from pipeline.models.vlm import VlmVision, load_vlm

    vlm = tmp_path / "vlm"
    _vidstorm("build-vlm", vlm, "--tower", toy_siglip)
    assert (vlm / "VIDSTORM_RANDOM_WEIGHTS").is_file()
    frames = np.random.default_rng(2).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    tower = VlmVision(str(vlm), device="cpu", dtype="fp32")
    siglip = SiglipVisionModel.from_pretrained(str(toy_siglip))
    with torch.no_grad():
        own = siglip(pixel_values=sp.pixels(frames)).last_hidden_state  # post-layernorm patches
    torch.testing.assert_close(tower.encode(frames).reshape(3, 16, -1).float(), own, rtol=1e-4, atol=1e-4)

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    proj = load_vlm(str(vlm), torch.float32).model.connector.modality_projection.proj.weight
    trained = torch.randn_like(proj)
    save_file({"base_connector.module.modality_projection.proj.weight": trained}, str(ckpt / "model.safetensors"))
    final = tmp_path / "final"
    _vidstorm("build-vlm", final, "--tower", toy_siglip, "--connector", ckpt)
    assert not (final / "VIDSTORM_RANDOM_WEIGHTS").exists()
    got = load_vlm(str(final), torch.float32)
    torch.testing.assert_close(got.model.connector.modality_projection.proj.weight, trained)
    done = _vidstorm("build-vlm", tmp_path / "x", "--tower", tmp_path / "missing", check=False)
    assert done.returncode == 2 and "--tower" in done.stderr and len(done.stderr.strip().splitlines()) == 1
