"""`vidstorm train` / `vidstorm eval` on tiny models: the loss falls, the prompt is masked, broken
samples are skipped and counted, Ctrl-C + --resume continues, a checkpoint changes ingest, eval
scores a known model right."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.train.data import read_jsonl
from pipeline.train.loop import build_models, train
from pipeline.train.model import IGNORE, cross_entropy_reference

ROOT = Path(__file__).resolve().parents[2]


def vidstorm(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, **kwargs)


def _overrides(tiny_overrides, qa_set, out, **train):
    settings = {"data": f"[{qa_set / 'train.jsonl'}]", "out": out, "steps": 30, "batch_size": 4, "lr": 3e-3,
                "warmup_steps": 2, "eval_every": 1000, "save_every": 10, "seed": 0, **train}
    return [*tiny_overrides, *(f"train.{k}={v}" for k, v in settings.items())]


@pytest.fixture(scope="module")
def overfit(tiny_overrides, qa_set, tmp_path_factory):
    """A tiny model trained to near zero loss on 8 questions: a model whose answers we know.

    sft with the LLM trainable: a tiny *random* LLM cannot be steered through its inputs alone."""
    small = qa_set / "small.jsonl"
    rows = [json.loads(line) for line in (qa_set / "train.jsonl").read_text().splitlines()][:8]
    small.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "caption"}) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("overfit") / "ckpt"
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, out, steps=120, data=f"[{small}]", batch_size=8,
                                       save_every=120, stage="sft", trainable="[temporal,projector,llm]",
                                       lr_llm=3e-3, sample_s=2))  # trained on the view eval uses (s=2)
    losses = []
    metrics = train(cfg, log=lambda m: None, should_stop=lambda: False, on_step=losses.append)
    return {"cfg": cfg, "out": out, "losses": losses, "metrics": metrics, "data": small, "rows": rows}


def test_loss_goes_down_on_a_tiny_overfit_set(overfit):
    losses = overfit["losses"]
    assert len(losses) == 120
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)


def test_align_with_the_frozen_smollm2_lowers_the_loss_and_leaves_the_llm_unchanged(tiny_overrides, qa_set,
                                                                                     tmp_path):
    from pipeline.models.summarizer import Summarizer

    small = tmp_path / "four.jsonl"
    rows = [json.loads(line) for line in (qa_set / "train.jsonl").read_text().splitlines()][:4]
    small.write_text("".join(json.dumps({"video": str(qa_set / r["video"]), "caption": r["caption"]}) + "\n"
                             for r in rows))
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, tmp_path / "ckpt", steps=30, data=f"[{small}]",
                                       save_every=30, warmup_steps=1, stage="align") + ["summarizer.model=smollm2"])
    models = build_models(cfg, torch.device("cpu"), log=None)
    before = {k: v.clone() for k, v in models.connector.state_dict().items()}
    losses = []
    train(cfg, log=lambda m: None, on_step=losses.append, models=models)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    fresh = Summarizer("smollm2", device="cpu", dtype="fp32").model.state_dict()
    for name, value in models.vlm.llm.model.state_dict().items():  # align: the LLM is frozen
        assert torch.equal(value, fresh[name]), name
    changed = [k for k, v in models.connector.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("temporal.layers") for k in changed) and any(k.startswith("projector") for k in changed)


def test_warmup_trains_the_temporal_encoder_alone_and_its_checkpoint_seeds_the_next_stage(tiny_overrides, qa_set,
                                                                                           tmp_path):
    from safetensors.torch import load_file

    from pipeline.train.warmup import HEAD_NAME

    cfg = load_config(None, _overrides(tiny_overrides, qa_set, tmp_path / "warm", steps=150, batch_size=8,
                                       save_every=150, stage="warmup"))
    models = build_models(cfg, torch.device("cpu"), log=None)
    before = {k: v.clone() for k, v in models.connector.state_dict().items()}
    losses = []
    metrics = train(cfg, log=lambda m: None, on_step=losses.append, models=models)
    lines = [json.loads(line) for line in (qa_set / "train.jsonl").read_text().splitlines()]
    assert all("caption" in r for r in lines)  # every line is a question and a caption: both train the head
    assert metrics["samples"] == sum("options" in r for r in lines) + len(lines) > len(lines)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    changed = {k for k, v in models.connector.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("temporal.layers") for k in changed)
    assert not any(k.startswith("projector") for k in changed)  # the LLM side waits for the next stage
    assert (tmp_path / "warm" / HEAD_NAME).is_file()  # for --resume; ingest never reads it
    # the next stage starts from the warm temporal encoder (input statistics included)
    nxt = load_config(None, _overrides(tiny_overrides, qa_set, tmp_path / "next", steps=1, stage="sft",
                                       trainable="[projector]", init_from=tmp_path / "warm"))
    seeded = build_models(nxt, torch.device("cpu"), log=None)
    warm = load_file(str(tmp_path / "warm" / "model.safetensors"))
    for name, value in seeded.connector.temporal.state_dict().items():
        assert torch.equal(value, warm[f"temporal.{name}"]), name
    assert not any(p.requires_grad for p in seeded.connector.temporal.parameters())


def test_warmup_on_captions_learns_their_words(tiny_overrides, qa_set, tmp_path):
    """Captions alone warm the encoder up: a sigmoid per vocabulary word (is it in the caption?);
    validation reads back the words of each caption among the head's top-k."""
    from pipeline.train.warmup import words_of

    rows = [json.loads(line) for line in (qa_set / "train.jsonl").read_text().splitlines()]
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"video": str(qa_set / r["video"]), "caption": r["caption"]}) + "\n"
                                for r in rows))
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, tmp_path / "w", steps=150, batch_size=8,
                                       save_every=150, eval_every=150, stage="warmup", data=f"[{captions}]",
                                       val_data=captions, val_samples=0))
    models = build_models(cfg, torch.device("cpu"), log=None)
    losses = []
    metrics = train(cfg, log=lambda m: None, on_step=losses.append, models=models)
    assert metrics["samples"] == len(rows)
    head = models.warmup.head
    assert {"moves", "appears"} <= set(head.words) and not head.options
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    # the words it picks are the caption's: far above what the word frequencies alone give
    assert metrics["val_caption_words"] > 0.8, metrics
    sample = models.cache.get(qa_set / rows[0]["video"])
    with torch.no_grad():
        pooled = models.vlm.visual([sample], project=False)[0].float()
        logits = head.word_logits(pooled)
    truth = words_of(rows[0]["caption"]) & set(head.words)
    top = {w for w, i in head.words.items() if i in set(logits.topk(len(truth)).indices.tolist())}
    assert len(top & truth) >= len(truth) - 1, (top, truth)


def test_warmup_without_questions_or_known_words_is_one_clear_error(tiny_overrides, qa_set, tmp_path):
    captions = tmp_path / "captions.jsonl"  # one caption: no word is seen twice, so nothing to learn
    row = json.loads((qa_set / "train.jsonl").read_text().splitlines()[0])
    captions.write_text(json.dumps({"video": str(qa_set / row["video"]), "caption": row["caption"]}) + "\n")
    result = vidstorm("train", "--local", *_overrides(tiny_overrides, qa_set, tmp_path / "w", stage="warmup",
                                                      data=f"[{captions}]"))
    assert result.returncode != 0
    assert "needs multiple-choice samples" in result.stderr and "Traceback" not in result.stderr


def test_grid_cache_on_disk_is_reused_and_keyed_by_what_the_grids_depend_on(tiny_overrides, qa_set, tmp_path):
    from pipeline.train.data import FeatureCache

    cfg = load_config(None, _overrides(tiny_overrides, qa_set, tmp_path / "x", grid_cache=tmp_path / "grids"))
    models = build_models(cfg, torch.device("cpu"), log=None)
    clip = sorted((qa_set / "clips").glob("*.mp4"))[0]
    first = models.cache.get(clip)
    files = list((tmp_path / "grids").glob("*.safetensors"))
    assert len(files) == 1

    class NoEncoder:  # a second run must read the file, not encode again
        image_size = models.encoder.image_size

        def encode(self, frames):
            raise AssertionError("encoded again")

    c = models.cache
    again = FeatureCache(NoEncoder(), c.fps, c.chunk_frames, c.pad_multiple, c.max_chunks, disk=c.disk, key=c.key)
    assert torch.equal(again.get(clip), first)
    other = FeatureCache(models.encoder, c.fps, c.chunk_frames, c.pad_multiple, c.max_chunks, disk=c.disk,
                         key=c.key + "other weights")
    assert torch.equal(other.get(clip), first) and len(list((tmp_path / "grids").glob("*.safetensors"))) == 2
    files[0].write_bytes(b"torn")  # a broken file is encoded again, not an error
    fresh = FeatureCache(models.encoder, c.fps, c.chunk_frames, c.pad_multiple, c.max_chunks, disk=c.disk, key=c.key)
    assert torch.equal(fresh.get(clip), first)


def test_prompt_is_masked_out_of_the_loss(tiny_overrides, qa_set, tmp_path):
    cfg = load_config(None, _overrides(tiny_overrides, qa_set, tmp_path / "x"))
    models = build_models(cfg, torch.device("cpu"), log=None)
    data = read_jsonl(qa_set / "train.jsonl", cfg.summarizer.caption_prompt, cfg.train.qa_prompt)
    batch = data.samples[:3]
    grids = [models.cache.get(s.media) for s in batch]
    vlm = models.vlm
    inputs, mask, labels = vlm.sequences(vlm.visual(grids), [s.prompt for s in batch], [s.answer for s in batch],
                                         grids)
    for row, sample in zip(labels, batch):
        target = vlm.llm.answer_ids(sample.answer)
        kept = row[row != IGNORE]
        assert torch.equal(kept, target)  # only the answer (and end-of-turn) is scored
        first = int((row != IGNORE).nonzero()[0])
        assert (row[:first] == IGNORE).all()
    with torch.no_grad():
        logits = vlm.llm.model(inputs_embeds=inputs, attention_mask=mask).logits
        ours = vlm.loss(grids, [s.prompt for s in batch], [s.answer for s in batch])
        unmasked = labels.clone()
        prompt = (labels == IGNORE) & (mask == 1)
        unmasked[prompt] = 0  # any token id: a loss that scored the prompt would change
        assert torch.allclose(ours, cross_entropy_reference(logits, labels), atol=1e-5)
        assert not torch.allclose(ours, cross_entropy_reference(logits, unmasked), atol=1e-3)


def test_broken_samples_are_skipped_and_counted(tiny_overrides, qa_set, tmp_path):
    good = (qa_set / "train.jsonl").read_text().splitlines()[:4]
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    clips = qa_set / "clips"
    bad = [
        "{not json",
        json.dumps({"video": "missing.mp4", "caption": "x"}),
        json.dumps({"video": "../../etc/passwd\n", "caption": "x"}),
        json.dumps({"video": str(next(clips.iterdir())), "question": "Which way?", "options": ["left", "right"],
                    "answer": "up"}),
        json.dumps({"video": "corrupt.mp4", "caption": "a red circle moves left"}),
        json.dumps({"caption": "no media"}),
    ]
    lines = [good[0], *bad, *good[1:]]
    for i, line in enumerate(good):  # media paths of the good lines, relative to the new file
        row = json.loads(line)
        row["video"] = str(qa_set / row["video"])
        lines[lines.index(line)] = json.dumps(row)
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    done = vidstorm("train", "--local", *_overrides(tiny_overrides, qa_set, tmp_path / "ckpt", steps=2,
                                                     data=f"[{data}]"))
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == len(bad), done.stderr
    for needle in ("not JSON", "media file not found", "control characters", "not one of the options",
                   "corrupt.mp4", "no 'video' or 'image'"):
        assert any(needle in line for line in skipped), (needle, skipped)
    assert "Traceback" not in done.stderr
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["skipped"] == len(bad) and metrics["samples"] == 2 * len(good)


def test_ctrl_c_saves_and_resume_continues_at_the_saved_step(tiny_overrides, qa_set, tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", "--local", *_overrides(tiny_overrides, qa_set, out, steps=400, save_every=1000)]
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        seen = ""
        while "train:" not in seen and time.time() < deadline:  # data loaded: the loop is running
            seen += proc.stderr.readline()
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    saved = json.loads((out / "train_state.json").read_text())["step"]
    assert 0 < saved < 400, saved
    assert json.loads(stdout.strip().splitlines()[-1])["step"] == saved
    weights = (out / "model.safetensors").read_bytes()

    done = vidstorm("train", "--local", "--resume",
                    *_overrides(tiny_overrides, qa_set, out, steps=saved + 3, save_every=1000))
    assert done.returncode == 0, done.stderr
    assert f"resumed from {out} at step {saved}" in done.stderr
    metrics = json.loads(done.stdout.strip().splitlines()[-1])
    assert metrics["step"] == saved + 3 and metrics["resumed_from"] == saved
    assert (out / "model.safetensors").read_bytes() != weights


def test_resume_without_a_saved_state_is_one_clear_line(tiny_overrides, qa_set, tmp_path):
    done = vidstorm("train", "--local", "--resume", *_overrides(tiny_overrides, qa_set, tmp_path / "none"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"vidstorm: error: --resume: {tmp_path / 'none'} holds no saved training state"]


def test_eval_scores_a_known_model_right(overfit, tiny_overrides, tmp_path):
    """The overfit model answers its 8 training questions; eval must say 1.0 on them and 0.0 when
    every answer key is changed to another option."""
    out, data = overfit["out"], overfit["data"]
    trained = [f"temporal.checkpoint={out}", f"summarizer.model={out / 'llm'}"]
    args = ["eval", "--data", str(data), *tiny_overrides, *trained]
    done = vidstorm(*args)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["n"] == 8 and result["accuracy"] == 1.0, done.stdout
    assert set(result["per_task"]) == {r["task"] for r in overfit["rows"]}
    assert "overall" in done.stdout

    wrong = tmp_path / "wrong.jsonl"
    rows = []
    for r in overfit["rows"]:
        r = dict(r, video=str(data.parent / r["video"]))
        r.pop("caption", None)
        r["answer"] = next(o for o in r["options"] if o != r["answer"])
        rows.append(json.dumps(r))
    wrong.write_text("\n".join(rows) + "\n")
    done = vidstorm("eval", "--data", str(wrong), *tiny_overrides, *trained)
    assert json.loads(done.stdout.strip().splitlines()[-1])["accuracy"] == 0.0, done.stdout


def test_trained_checkpoint_loads_into_ingest_and_changes_what_it_stores(overfit, tiny_overrides, qa_set, tmp_path):
    import pyarrow.dataset as ds

    clip = next((qa_set / "clips").iterdir())
    rows = {}
    trained = [f"temporal.checkpoint={overfit['out']}", f"summarizer.model={overfit['out'] / 'llm'}"]
    for name, extra in (("untrained", []), ("trained", trained)):
        data = tmp_path / name
        done = vidstorm("ingest", str(clip), "--local", "--data", str(data), *tiny_overrides, *extra)
        assert done.returncode == 0, done.stderr
        (rows[name],) = ds.dataset(data / "store" / "segments", partitioning="hive").to_table().to_pylist()
    assert f"weights: {overfit['out']}" in done.stderr
    a, b = (torch.tensor(rows[n]["visual_embedding"]) for n in ("untrained", "trained"))
    assert not torch.allclose(a, b, atol=1e-3)  # the trained STORM parts produced the stored tokens
    assert rows["untrained"]["caption"] != rows["trained"]["caption"]


@pytest.mark.parametrize("stored, right", [
    ("A red circle moves left.", True),
    ("The red circle is moving to the left", True),
    ("a red circle moves right", False),
    ("a blue circle moves left", False),
    ("a red square moves left", False),
    ("left: a red circle", False),  # every key word, in order
    ("", False),
])
def test_a_caption_is_right_when_it_names_colour_shape_and_direction(stored, right):
    from pipeline.train.toy import caption_right

    assert caption_right("a red circle moves left", stored) is right


def test_an_order_caption_must_name_both_shapes_in_order():
    from pipeline.train.toy import caption_right

    expected = "a red circle appears, then a blue square"
    assert caption_right(expected, "a red circle appears, then a blue square")
    assert not caption_right(expected, "a blue square appears, then a red circle")


@pytest.mark.parametrize("is_vlm", [True, False], ids=["vlm", "mlp"])
def test_warmup_head_reads_a_vlm_modules_tokens_as_the_llm_can(is_vlm):
    """On a VLM base the head reads what the LLM can read: each token RMS-normalised (so a token's scale
    changes no score), not centred (a vector added to every token does), then one Linear on the tokens'
    mean (README, "The toy model, measured": a centred per-token head taught the module a signal sft could not read).
    The projected (mlp) form's head reads its tokens as they are, through a per-token MLP."""
    from types import SimpleNamespace

    from pipeline.train.data import Sample
    from pipeline.train.warmup import ChoiceHead, WarmupObjective

    torch.manual_seed(0)
    tokens = torch.randn(8, 12)
    offset = torch.randn(1, 12) * 3
    scale = torch.rand(8, 1) * 5 + 0.5
    fake = SimpleNamespace(connector=SimpleNamespace(is_vlm=is_vlm), visual=lambda grids, project: list(grids))
    head = ChoiceHead(12, ["left", "right"], hidden=16, linear=is_vlm)
    objective = WarmupObjective(fake, head)
    sample = Sample(id="a", media=None, prompt="Which way?", answer="left", options=["left", "right"], task="direction")
    plain, scaled, shifted = (objective.scores([x], [sample])[0] for x in (tokens, tokens * scale, tokens + offset))
    assert torch.allclose(plain, scaled, atol=1e-5) == is_vlm
    assert not torch.allclose(plain, shifted, atol=1e-3)
    if is_vlm:  # the direct formula: <W mean_i(x_i / rms(x_i)) + b, E[option]>
        normed = tokens / tokens.pow(2).mean(dim=-1, keepdim=True).add(1e-6).sqrt()
        summary = head.token.weight @ normed.mean(dim=0) + head.token.bias
        assert torch.allclose(plain, head.table.weight[:2] @ summary, atol=1e-5)
