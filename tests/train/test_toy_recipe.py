"""`make toy-model`'s chain at a tiny scale, through the CLI: a SigLIP pretrained with its sigmoid loss, an image-VLM
built on its tower and aligned on stills (only its connector moves), STORM's temporal module warmed up on video on
top of it (only the module moves), then sft of LoRA adapters from it (only the adapters move), and the result
captions a clip through `describe`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY_SIGLIP = ["train.siglip.image_size=32", "train.siglip.patch_size=8", "train.siglip.hidden=32",
               "train.siglip.layers=1", "train.siglip.heads=2", "train.siglip.intermediate=64",
               "train.siglip.text_hidden=32", "train.siglip.text_layers=1", "train.siglip.images=96",
               "train.siglip.keep=8"]  # the recipe drops tokens (configs/toy.yaml); 8 of 16 here
SHORT = ["train.steps=2", "train.batch_size=2", "train.warmup_steps=0", "train.eval_every=1000", "train.save_every=2",
         "train.val_samples=0", "train.grid_cache=''", "train.autocast=fp32", "summarizer.max_new_tokens=4"]


def _vidstorm(*args):
    done = subprocess.run([sys.executable, "-m", "actors.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_toy_world_recipe_end_to_end(tmp_path, qa_set):
    siglip, stills, init, conn, vlm, warm, storm = (tmp_path / n for n in ("siglip", "stills", "init", "conn", "vlm",
                                                                           "warm", "storm"))
    _vidstorm("pretrain-siglip", "--config", "configs/toy.yaml", f"train.out={siglip}", "train.steps=2",
              "train.batch_size=16", "train.val_data=''", *TINY_SIGLIP)
    _vidstorm("synth-stills", stills, "--n", 6, "--size", 32)
    _vidstorm("build-vlm", init, "--tower", siglip)
    models = [f"encoder.model={init}", f"summarizer.model={init}"]
    _vidstorm("train", "--local", "--config", "configs/toy-vlm.yaml", *models, f"train.data=[{stills / 'stills.jsonl'}]",
              f"train.out={conn}", "train.lr=0.01", *SHORT)
    aligned = load_file(str(conn / "model.safetensors"))
    proj = aligned["base_connector.module.modality_projection.proj.weight"]
    before = load_file(str(init / "model.safetensors"))["model.connector.modality_projection.proj.weight"]
    assert not torch.equal(proj, before)  # the connector trained ...
    assert all(v.abs().sum() == 0 for k, v in aligned.items() if k.endswith("out_proj.weight"))  # ... the module did not

    _vidstorm("build-vlm", vlm, "--tower", siglip, "--connector", conn)
    final = load_file(str(vlm / "model.safetensors"))
    assert torch.equal(final["model.connector.modality_projection.proj.weight"], proj)
    assert not (vlm / "VIDSTORM_RANDOM_WEIGHTS").exists()

    models = [f"encoder.model={vlm}", f"summarizer.model={vlm}"]
    data = [f"train.data=[{qa_set / 'train.jsonl'}]", "train.val_data=''"]
    _vidstorm("train", "--local", "--config", "configs/toy.yaml", *models, *data, "train.stage=warmup",
              "train.init_from=''", f"train.out={warm}", *SHORT)
    warmed = load_file(str(warm / "model.safetensors"))
    assert all(k.startswith("temporal.") for k in warmed)  # the VLM's connector stayed as it was
    assert any(v.abs().sum() > 0 for k, v in warmed.items() if k.endswith("up.weight"))  # the module left the identity
    head = load_file(str(warm / "choice_head.safetensors"))
    assert head["token.weight"].shape == (576, 576)  # on a VLM base: one Linear on the tokens' mean (what the LLM reads)
    done = _vidstorm("train", "--local", "--config", "configs/toy.yaml", *models, *data, f"train.init_from={warm}",
                     f"train.out={storm}", *SHORT)
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 2
    trained = load_file(str(storm / "model.safetensors"))
    assert trained.keys() == warmed.keys() and all(torch.equal(trained[k], warmed[k]) for k in trained)  # sft: frozen
    adapters = load_file(str(storm / "lora.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if k.endswith("lora_b"))  # the adapters trained

    clip = next((qa_set / "clips").glob("*.mp4"))
    done = _vidstorm("describe", clip, "--config", "configs/toy.yaml", *models, f"temporal.checkpoint={storm}",
                     "summarizer.max_new_tokens=4", "--json")
    rows = json.loads(done.stdout)
    assert rows and all(r["caption"] for r in rows)
