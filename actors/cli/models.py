"""Models and data: `vidstorm train`, `eval`, `pretrain-siglip`, `build-vlm`, `synth-data`, `synth-stills`,
`demo-assets`, `demo-report`."""

from __future__ import annotations

import sys

from pipeline.errors import VidstormError

from actors.cli.common import _emit_json


def cmd_demo_assets(args) -> int:
    """Build what the demo needs offline: a random SigLIP-B/16 and a generated 1-minute clip."""
    from pathlib import Path

    from pipeline.models.siglip import build_random_siglip
    from pipeline.synth import write_clip

    data = Path(args.data)
    model = data / "models" / "siglip-b16-224-random"
    if not (model / "model.safetensors").is_file():
        build_random_siglip(model)
    clip = data / "clips" / "generated-1min.mp4"
    if not clip.is_file():
        write_clip(clip, seconds=60, fps=10)
    print(f"model {model}\nclip  {clip}")
    return 0


def cmd_pretrain_siglip(args) -> int:
    """Pretrain the toy SigLIP with its sigmoid loss; prints the zero-shot check as one JSON line."""
    from pipeline.config import load_config

    from pipeline.train.toy import pretrain_siglip

    cfg = load_config(args.config, [*args.overrides, "train.stage=siglip"])
    _emit_json(pretrain_siglip(cfg), one_line=True)
    return 0


def cmd_synth_stills(args) -> int:
    """Render still image-caption pairs of the family (PNG + stills.jsonl) for aligning an image-VLM."""
    from pathlib import Path

    from pipeline.train.siglip_pretrain import write_stills

    _emit_json(write_stills(Path(args.out), args.n, args.size, args.seed), one_line=True)
    return 0


def cmd_build_vlm(args) -> int:
    """A SmolVLM-format checkpoint: a SigLIP's tower + pixel shuffle + Linear + the real SmolLM2."""
    from pathlib import Path

    from pipeline.models.vlm_build import build_random_vlm

    for name, folder in (("--tower", args.tower), ("--connector", args.connector)):
        if folder and not (Path(folder) / "model.safetensors").is_file():
            raise VidstormError(f"{name} {folder}: no model.safetensors there")
    path = build_random_vlm(args.out, "smolvlm-tiny-smollm2", seed=args.seed, text_from="smollm2",
                            tower_from=args.tower, connector_from=args.connector or None)
    print(path)
    return 0


def cmd_train(args) -> int:
    """Train the STORM parts: Ray Train by default, --local in this process (Ctrl-C saves, --resume continues)."""
    import signal
    from pathlib import Path

    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if cfg.train.stage == "siglip":
        from pipeline.train.toy import pretrain_siglip

        _emit_json(pretrain_siglip(cfg), one_line=True)
        return 0
    if args.resume and not (Path(cfg.train.out) / "train_state.json").is_file():
        raise VidstormError(f"--resume: {cfg.train.out or 'train.out'} holds no saved training state")
    if not args.local:
        from actors.runtime.train import train_on_ray

        metrics = train_on_ray(cfg, resume=args.resume, log=log)
    else:
        from pipeline.train.loop import Worker, train

        interrupted = []

        def on_sigint(signum, frame):  # first Ctrl-C: finish the step, save, stop; second: stop now
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(signum)
            log("interrupt: saving a checkpoint after this step (Ctrl-C again to stop at once)")

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            resume_from = Path(cfg.train.out) if args.resume else None
            metrics = train(cfg, Worker(resume_from=resume_from), log=log, should_stop=lambda: bool(interrupted))
        finally:
            signal.signal(signal.SIGINT, previous)
        if metrics.get("stopped"):
            _emit_json(metrics, one_line=True)
            return 130
    _emit_json(metrics, one_line=True)
    return 0


def cmd_eval(args) -> int:
    """Answer a QA JSONL's multiple-choice questions with the configured model; table, then one JSON line."""
    import torch

    from pipeline.build import caption_prompt, vlm_base
    from pipeline.config import load_config
    from pipeline.models.siglip import resolve_device
    from pipeline.train.data import read_jsonl
    from pipeline.train.evaluate import evaluate, table
    from pipeline.train.loop import build_models

    cfg = load_config(args.config, args.overrides)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if not cfg.temporal.checkpoint and not vlm_base(cfg):
        log("note: temporal.checkpoint is empty, so the STORM parts are untrained (expect chance accuracy)")
    models = build_models(cfg, resolve_device(cfg.encoder.device), log=log, training=False)
    models.connector.eval()
    data = read_jsonl(args.data, caption_prompt(cfg), cfg.train.qa_prompt)
    for problem in data.problems:
        log(f"skipped: {problem}")
    if not any(s.is_choice for s in data.samples):
        raise VidstormError(f"{args.data}: no multiple-choice questions (question + options + answer) to answer")
    with torch.no_grad():
        result = evaluate(models.eval_vlm, models.cache, data.samples, log=log)
    for media, problem in models.cache.failed.items():
        log(f"skipped: {media}: {problem}")
    result["skipped"] += len(data.problems)
    print(table(result))
    _emit_json(result, one_line=True)
    return 0


def cmd_synth_data(args) -> int:
    """Render the synthetic temporal-QA family (MP4 + JSONL, train/val/test)."""
    from pipeline.train.synthqa import FPS_RANGE, SIZE_RANGE
    from pipeline.train.synthrender import write_dataset

    splits = tuple(float(x) for x in args.splits.split(",")) if args.splits else (0.8, 0.1, 0.1)
    summary = write_dataset(args.out, args.n, args.seed, splits=splits, size_range=tuple(args.size or SIZE_RANGE),
                            fps_range=tuple(args.fps or FPS_RANGE), shape_questions=args.shape_questions)
    _emit_json(summary, one_line=True)
    return 0


def cmd_demo_report(args) -> int:
    """Stored captions of synth-data clips next to the truth, and a meaning query for one of them."""
    import json
    from pathlib import Path

    from pipeline.models.text_embed import TextEmbedder
    from pipeline.store.query import StoreQuery
    from pipeline.train.toy import caption_right

    jsonl = Path(args.jsonl)
    truth = {str((jsonl.parent / r["video"]).resolve()): r for r in map(json.loads, jsonl.read_text().splitlines())}
    query = StoreQuery(Path(args.data) / "store")
    by_source = {str(Path(row["source"]).resolve()): row for row in query.segments() if row["chunk_seq"] == 0}
    right = {"direction": [0, 0], "order": [0, 0]}
    print(f"{'clip':<16}{'ok':<4}{'stored caption':<44}expected")
    for source, row in sorted(truth.items()):
        stored = by_source.get(source, {}).get("caption", "(not stored)")
        ok = caption_right(row["caption"], stored)
        right[row["task"]][0] += ok
        right[row["task"]][1] += 1
        print(f"{Path(source).stem:<16}{'yes' if ok else 'no':<4}{stored[:42]:<44}{row['caption']}")
    print("captions right: " + ", ".join(f"{task} {a}/{n}" for task, (a, n) in right.items() if n))
    target = next((src for src, r in sorted(truth.items()) if r["task"] == "direction" and src in by_source), None)
    if target:
        caption, wanted = truth[target]["caption"], by_source[target]["stream_id"]
        hits = query.search(TextEmbedder().embed([caption])[0], k=3)
        found = bool(hits) and hits[0]["stream_id"] == wanted
        print(f'query "{caption}": top hit {"is" if found else "is NOT"} {wanted}')
        for hit in hits:
            print(f"  {hit['score']:.3f} {hit['stream_id']:<24} {hit['level']:<7} {hit['text']}")
    return 0
