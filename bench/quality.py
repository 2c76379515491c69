"""The toy STORM table: the paper's ablations on synthetic temporal QA, trained and tested in one run.

    python bench/quality.py [--n 1500] [--test 300] [--out DIR]

Rows (same data, same frozen encoder, same recipe and steps, same seed):
  baseline_100  no Mamba (pixel shuffle + Linear + 2-layer MLP, VILA-style), 100% of the tokens
  baseline_12   no Mamba, temporal pooling k=4, test-time sampling s=2: 12.5%
  storm_100     STORM bidirectional, 100%
  storm_25      STORM + temporal pooling k=4: 25%
  storm_12      STORM + pooling k=4 + test-time sampling s=2: 12.5% (the storm_25 weights)
  stream_12     STORM `stream` mode (one direction, state carried), 12.5%, trained with its test-time
                sampling (train.sample_s=2): a causal scan's first pooled frame has not seen the second half
  image_vlm_12  configs/toy.yaml's image-VLM (pretrained toy SigLIP + connector + frozen SmolLM2) with the
                temporal module at identity: 12.5% of its tokens, no video training (what STORM starts from)

Each row is trained with the previous toy model's recipe (pipeline/train/warmup.py; README, "The toy model"):
(1) `warmup` on the direction questions, (2) `warmup` on every question and caption from (1),
the encoder's pooled tokens read by a choice head with no LLM pass; (3) `sft` of the projector
and the LM from (2), the warm encoder frozen. Sampling is training-free, as in the paper: the
bidirectional 12.5% rows are trained with pooling only and sample every second pooled frame at test time;
stream_12 is trained with that sampling (TRAIN_SAMPLING below).
To fit 2 CPU cores, (3) uses a small LM trained alongside (a 4-layer Llama with SmolLM2's
tokenizer), not the frozen SmolLM2 of configs/toy.yaml; the encoder is the previous toy model's small
random frozen SigLIP. Every row reads the same SigLIP grids (each clip's frames padded to 8 by
repeating the last). Train/validation clips and the test split are rendered over the whole
family (96-480 px, 10-30 fps) with different seeds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.train.toy import TOY_SIGLIP, build_small_lm  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.models.siglip import build_random_siglip  # noqa: E402
from pipeline.train.data import read_jsonl  # noqa: E402
from pipeline.train.evaluate import evaluate  # noqa: E402
from pipeline.train.loop import build_models, train  # noqa: E402
from pipeline.train.synthrender import write_dataset  # noqa: E402

# name: (mamba layers, temporal mode, pooling k, test-time sampling s)
ROWS = {
    "baseline_100": (0, "chunk_bidirectional", 1, 1),
    "baseline_12": (0, "chunk_bidirectional", 4, 2),
    "storm_100": (2, "chunk_bidirectional", 1, 1),
    "storm_25": (2, "chunk_bidirectional", 4, 1),
    "storm_12": (2, "chunk_bidirectional", 4, 2),
    "stream_12": (2, "stream", 4, 2),
}
# rows trained with their test-time sampling; the others are trained with pooling only (sampling is training-free).
# A causal scan's tokens of a chunk's first pooled frame have not seen its second half: trained on both pooled
# frames, stream_12 learnt to read direction and order from the second and lost them at test
TRAIN_SAMPLING = {"stream_12": 2}
IMAGE_VLM_ROW = "image_vlm_12"  # not trained here: configs/toy.yaml's VLM, the temporal module at identity
SHARES_WEIGHTS = {"storm_12": "storm_25"}  # test-time sampling needs no training of its own
# the first toy model's temporal geometry and decoding (d_conv 17: the conv spans one frame)
TOY_GEOMETRY = ["temporal.d_model=128", "temporal.expand=1", "temporal.d_state=8", "temporal.d_conv=17",
                "decode.fps=1.0", "decode.chunk_frames=8", "train.max_chunks=1"]
GRID_TOKENS = 16  # 8x8 SigLIP patches after the 2x2 pixel shuffle, per frame
FRAMES = 8


def row_overrides(name: str, work: Path, lm: Path, siglip: Path) -> list[str]:
    layers, mode, k, s = ROWS[name]
    return [
        f"encoder.model={siglip}", "encoder.select_layer=-1", f"summarizer.model={lm}", "summarizer.system_prompt=''",
        f"temporal.n_layers={layers}", f"temporal.mode={mode}", f"pooling.temporal_k={k}", f"pooling.sample_s={s}",
        *TOY_GEOMETRY, "train.autocast=fp32", f"train.sample_s={TRAIN_SAMPLING.get(name, 1)}", "train.val_samples=0",
        "train.eval_every=100000",
        f"train.data=[{work / 'data' / 'train.jsonl'}]",
    ]


def stages(name: str, work: Path, args) -> list[list[str]]:
    """The three runs of a row: warm-up on direction, warm-up on everything, sft of projector + LM."""
    out = work / "ckpt" / name
    warm = ["train.stage=warmup", f"train.batch_size={args.warm_batch}", "train.warmup_steps=20", "train.grad_clip=0"]
    return [
        [*warm, "train.tasks=[direction]", f"train.steps={args.warm1}", "train.lr=0.002",
         f"train.save_every={args.warm1}", f"train.out={out}-w1"],
        [*warm, f"train.init_from={out}-w1", f"train.steps={args.warm2}", "train.lr=0.001",
         f"train.save_every={args.warm2}", f"train.out={out}-w2"],
        ["train.stage=sft", "train.trainable=[projector,llm]", f"train.init_from={out}-w2", "train.lr=0.002",
         "train.lr_llm=0.001", f"train.steps={args.sft}", f"train.batch_size={args.batch}", "train.warmup_steps=20",
         f"train.save_every={args.sft}", f"train.out={out}"],
    ]


def score_row(name: str, cfg, test, k: int, s: int, train_s: float, log, grids: dict | None = None) -> dict:
    """One row's test accuracy: the model `cfg` names (its temporal.checkpoint), the test-time reducer."""
    models = build_models(cfg, torch.device("cpu"), log=None, training=False, grids=grids)
    models.cache.usable(test)  # encodes the clips unless `grids` has them
    models.connector.eval()
    with torch.no_grad():
        result = evaluate(models.eval_vlm, models.cache, test.samples)
    log(f"{name}: accuracy {result['accuracy']:.3f} {result['per_task']} "
        f"consistency {result.get('reversed_consistency')}")
    tokens = (FRAMES // (k * s)) * GRID_TOKENS
    return {**result, "visual_tokens": tokens, "token_share": tokens / (FRAMES * GRID_TOKENS),
            "train_s": round(train_s, 1)}


def image_vlm_config(work: Path):
    """configs/toy.yaml's image-VLM as it is before video training: the temporal module at identity (no
    checkpoint, so no LoRA either), 12.5% of the tokens (pooling k=4, sampling s=2)."""
    if not (ROOT / "models" / "toy-vlm" / "vlm" / "model.safetensors").is_file():
        subprocess.run(["make", "toy-vlm-assets"], cwd=ROOT, check=True)  # assembled from the shipped parts
    return load_config(ROOT / "configs" / "toy.yaml", [
        "temporal.checkpoint=''", "pooling.temporal_k=4", "pooling.sample_s=2", "pooling.spatial_p=1",
        "train.sample_s=2",
        f"train.grid_cache={work / 'grids-image-vlm'}", f"train.data=[{work / 'data' / 'train.jsonl'}]"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="train + val clips")
    parser.add_argument("--test", type=int, default=300, help="test clips")
    parser.add_argument("--warm1", type=int, default=400, help="warm-up steps on direction")
    parser.add_argument("--warm2", type=int, default=800, help="warm-up steps on every question and caption")
    parser.add_argument("--warm-batch", type=int, default=32)
    parser.add_argument("--sft", type=int, default=200, help="sft steps (projector + LM)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", help="keep the work folder here (default: a temporary one)")
    parser.add_argument("--rows", default=",".join([*ROWS, IMAGE_VLM_ROW]),
                        help="comma-separated rows to run (default: all seven)")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS and r != IMAGE_VLM_ROW]
    if unknown or not rows:
        parser.error(f"--rows: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join([*ROWS, IMAGE_VLM_ROW])}")
    rows += [SHARES_WEIGHTS[r] for r in rows if r in SHARES_WEIGHTS and SHARES_WEIGHTS[r] not in rows]
    torch.set_num_threads(os.cpu_count() or 2)
    work = Path(args.out or tempfile.mkdtemp(prefix="vidstorm-quality-"))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    t0 = time.time()
    write_dataset(work / "data", args.n, args.seed, splits=(0.9, 0.1, 0.0))
    write_dataset(work / "test", args.test, args.seed + 1, splits=(0.0, 0.0, 1.0))
    siglip = build_random_siglip(work / "siglip", **TOY_SIGLIP)
    lm = build_small_lm(work / "lm")
    log(f"data + models ready in {time.time() - t0:.0f}s")

    # SigLIP grids, encoded once for every row: padded for the 8-frame group (the 12.5% rows')
    grids: dict = {}
    cfg = load_config(None, row_overrides("baseline_12", work, lm, siglip))
    cache = build_models(cfg, torch.device("cpu"), log=None, grids=grids).cache
    test = read_jsonl(work / "test" / "test.jsonl", cfg.summarizer.caption_prompt, cfg.train.qa_prompt)
    train_set = read_jsonl(work / "data" / "train.jsonl", cfg.summarizer.caption_prompt, cfg.train.qa_prompt)
    cache.usable(train_set)
    cache.usable(test)
    log(f"grids ready in {time.time() - t0:.0f}s")

    results = {}
    for name, (layers, mode, k, s) in ROWS.items():
        if name not in rows:
            continue
        base = row_overrides(name, work, lm, siglip)
        if name not in SHARES_WEIGHTS:
            started = time.time()
            for stage in stages(name, work, args):
                cfg = load_config(None, [*base, *stage])
                train(cfg, log=log, models=build_models(cfg, torch.device("cpu"), log=None, grids=grids))
            train_s = time.time() - started
        else:
            train_s = results[SHARES_WEIGHTS[name]]["train_s"]
        ckpt = work / "ckpt" / SHARES_WEIGHTS.get(name, name)
        cfg = load_config(None, [*base, f"temporal.checkpoint={ckpt}", f"summarizer.model={ckpt / 'llm'}"])
        results[name] = score_row(name, cfg, test, k, s, train_s, log, grids)
    if IMAGE_VLM_ROW in rows:  # the same test clips, read by the image-VLM's own tower
        results[IMAGE_VLM_ROW] = score_row(IMAGE_VLM_ROW, image_vlm_config(work), test, 4, 2, 0.0, log)

    print(f"\n{'row':<14}{'direction':>10}{'order':>8}{'overall':>9}{'reversed':>10}{'tokens':>8}{'share':>8}"
          f"{'train s':>9}")
    for name, r in results.items():
        print(f"{name:<14}{r['per_task'].get('direction', 0):>10.3f}{r['per_task'].get('order', 0):>8.3f}"
              f"{r['accuracy']:>9.3f}{r.get('reversed_consistency', 0):>10.3f}{r['visual_tokens']:>8}"
              f"{r['token_share']:>8.1%}{r['train_s']:>9.0f}")
    print(f"LM: a 4-layer Llama trained alongside (not SmolLM2); {args.n} train+val clips, {args.test} test clips "
          f"of the whole family; per row warm-up {args.warm1} + {args.warm2} steps x {args.warm_batch}, sft "
          f"{args.sft} steps x {args.batch}; total {time.time() - t0:.0f}s")
    summary = {name: r["accuracy"] for name, r in results.items()}
    summary["per_row"] = {name: {k: r[k] for k in ("per_task", "reversed_consistency", "visual_tokens", "train_s", "n")
                                 if k in r} for name, r in results.items()}
    summary["total_s"] = round(time.time() - t0, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
