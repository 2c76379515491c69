"""The `vidstorm` command line. The composition root: it unpacks the config tree."""

from __future__ import annotations

import argparse
import sys

from pipeline import __version__
from pipeline.errors import VidstormError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML overrides (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, e.g. decode.fps=2")


def cmd_config(args) -> int:
    from pipeline.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="vidstorm-data", metavar="DIR", help="where the store lives")


def _emit_json(rows, one_line: bool = False) -> None:
    """Rows for scripts (indented), or one JSON line (`one_line`: a result a script reads last)."""
    import json

    from pipeline.config import mask_data

    rows = mask_data(json.loads(json.dumps(rows, default=_json_default)))  # no secret leaves in JSON either
    if one_line:
        print(json.dumps(rows, sort_keys=True))
    else:
        print(json.dumps(rows, indent=1))


def _json_default(value):
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _span(row) -> str:
    from pipeline.progress import hms as _hms

    return f"{_hms(row['t_start'])}-{_hms(row['t_end'])}"


def _is_override(arg: str) -> bool:
    import os
    import re

    return re.match(r"^[A-Za-z_][\w.]*=", arg) is not None and not os.path.exists(arg)


def cmd_ingest(args) -> int:
    import datetime as dt
    from pathlib import Path

    from pipeline.build import build_processor, untrained_notice
    from pipeline.config import load_config, to_yaml
    from pipeline.decode import expand_sources
    from pipeline.ingest import JobResult, LocalIngest

    overrides = [a for a in args.sources if _is_override(a)]
    cfg = load_config(args.config, overrides)
    sources, errors = expand_sources([a for a in args.sources if a not in overrides], args.stream)
    if args.stream and len(sources) > 1:
        raise VidstormError("--stream names one stream; it cannot be used with several sources")
    data = Path(args.data)
    runs = data / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (runs / f"{stamp}-config.yaml").write_text(to_yaml(cfg))
    notice = untrained_notice(cfg)
    if notice:
        print(notice, file=sys.stderr)
    from pipeline.store import Store

    store = Store(data / "store")
    for err in errors:  # sources that could not even be listed still get a failed job record
        import time
        import uuid

        print(f"vidstorm: error: {err}", file=sys.stderr)
        now = time.time()
        store.write_job(JobResult(uuid.uuid4().hex[:12], err.source, "", status="failed", error=str(err),
                                  started_at=now, finished_at=now).row())
    failed = len(errors)
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if sources and args.local:
        runner = LocalIngest(cfg, build_processor(cfg, log=log), data, log=log)
        for source in sources:
            if runner.run(source).status == "failed":
                failed += 1
    elif sources:
        failed += _ingest_distributed(cfg, sources, data, log)
    if failed:
        print(f"vidstorm: {failed} of {len(sources) + len(errors)} sources failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_describe(args) -> int:
    """Caption one file (a video chunk by chunk, or a still image) without storing anything."""
    from pipeline.build import build_processor, untrained_notice
    from pipeline.config import load_config
    from pipeline.describe import describe

    cfg = load_config(args.config, args.overrides)
    notice = untrained_notice(cfg)
    if notice:
        print(notice, file=sys.stderr)
    rows = describe(build_processor(cfg, log=lambda msg: print(msg, file=sys.stderr)), args.file, cfg)
    if args.json:
        _emit_json(rows)
    elif len(rows) == 1 and rows[0]["t_end"] == 0.0:  # a still image: its caption alone
        print(rows[0]["caption"])
    else:
        for row in rows:
            print(f"{_span(row)}  {row['caption']}")
    return 0


def _ingest_distributed(cfg, sources, data, log) -> int:
    """Through Ray actors and Redis Streams (embedded or a cluster). Returns failures."""
    from actors.runtime import Cluster, DistributedIngest
    from pipeline.progress import hms as _hms

    from pipeline.progress import ProgressBoard

    board = ProgressBoard()
    with Cluster(cfg, data, log=log) as cluster:
        ingest = DistributedIngest(cluster, cfg, log=log)
        try:
            rows = ingest.run(sources, on_progress=board)
        finally:
            board.clear()
            ingest.shutdown()
    failed = 0
    for row in rows:
        if row["status"] == "failed":
            failed += 1
            log(f"vidstorm: error: {row['error']}")
        else:
            log(f"{row['stream_id']}: {row['chunks']} chunks, {_hms(row['video_seconds'])} of video in "
                f"{row['wall_seconds']:.1f}s ({row['video_seconds'] / max(row['wall_seconds'], 1e-6):.2f}x real time), "
                f"{row['segments']} segments + {row['summaries']} summaries stored")
    return failed


def _query(args):
    from pathlib import Path

    from pipeline.store.query import StoreQuery

    return StoreQuery(Path(args.data) / "store")


def cmd_segments(args) -> int:
    rows = _query(args).segments(args.stream, args.since, args.until, args.limit)
    if args.json:
        _emit_json(rows)
        return 0
    if not rows:
        print("no segments stored" + (f" for stream {args.stream}" if args.stream else ""))
    else:
        print(f"{'stream':28s} {'seq':5s} {'video time':17s} caption")
    for row in rows:
        if row.get("gap_before"):  # a live source that dropped and came back
            print(f"{row['stream_id'][:28]:28s} {'':5s} -- gap: source away {row['gap_before']:.1f} s, reconnected --")
        marker = f"[untrained: {row['untrained']}] " if row.get("untrained") else ""  # invented, not seen
        print(f"{row['stream_id'][:28]:28s} #{row['chunk_seq']:<4d} {_span(row)}  {marker}{row['caption']}")
    return 0


def cmd_summaries(args) -> int:
    rows = _query(args).summaries(args.stream, args.level)
    if args.json:
        _emit_json(rows)
        return 0
    if not rows:
        print(f"no summaries stored for stream {args.stream}")
        return 1
    for row in rows:
        label = row["level"] if row["level"] != "window" else f"window {row['seq']}"
        print(f"[{label}] {_span(row)}\n  {row['text']}")
    return 0


def cmd_query(args) -> int:
    query = _query(args)
    if args.keyword:
        rows = query.keyword(args.text, args.stream, args.since, args.until, limit=args.k)
    else:
        from pipeline.models.text_embed import TextEmbedder

        vector = TextEmbedder().embed([args.text])[0]
        rows = query.search(vector, args.stream, args.since, args.until, k=args.k)
    if args.json:
        _emit_json(rows)
        return 0
    if not rows:
        print("no matches")
    for row in rows:
        score = f"{row['score']:.3f} " if "score" in row else ""
        print(f"{score}{row['stream_id'][:24]:24s} {row['level']:7s} {_span(row)}  {row['text']}")
    return 0


def cmd_clip(args) -> int:
    """An MP4 of a span of a stream's source file, as GET /clip cuts it."""
    from pathlib import Path

    from actors.media import NoClip, clip_source
    from pipeline.clip import cut_clip
    from pipeline.config import load_config
    from pipeline.errors import VidstormError
    from pipeline.store.query import StoreQuery, parse_time

    cfg = load_config(args.config, args.overrides)
    times = []
    for name, text in (("--since", args.since), ("--until", args.until)):
        try:
            parsed = parse_time(text)
        except ValueError as err:
            raise VidstormError(f"{name}: {err}") from None
        if parsed is None or parsed[0] != "video":
            raise VidstormError(f"{name}: give video seconds (90) or H:MM:SS (0:01:30), got {text!r}")
        times.append(parsed[1])
    query = StoreQuery(Path(args.data) / "store", tables=("segments",))
    try:
        source = clip_source(query, args.stream)
    except NoClip as err:
        raise VidstormError(str(err)) from None
    finally:
        query.close()
    info = cut_clip(source, times[0], times[1], args.out, max_seconds=cfg.api.clip_max_seconds)
    how = "stream copy from the keyframe at" if info.copied else "re-encoded from"
    print(f"{args.out}: {info.end - info.start:.2f} s of {args.stream} ({how} {info.start:.2f} s), {info.bytes} bytes")
    return 0


def cmd_compact(args) -> int:
    from pathlib import Path

    from pipeline.store import Store

    stats = Store(Path(args.data) / "store").compact()
    print(f"compacted: {stats['files_before']} files -> {stats['files_after']}")
    return 0


def _jobs_context(args):
    from pipeline.config import load_config
    from pipeline.jobs.spec import load_specs, spec_folders

    cfg = load_config(args.config, args.overrides)
    folders = spec_folders(args.jobs or cfg.scheduler.jobs_dir, args.data)
    return cfg, load_specs(folders), folders


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _scheduler_parts(cfg, args, specs, cluster, reload_specs=None):
    from pathlib import Path

    from actors.scheduler import JobExecutor, Scheduler
    from pipeline.jobs.board import JobBoard
    from pipeline.queue import connect
    from pipeline.store import Store

    board = JobBoard(connect(cluster.redis_url), cfg.queue.prefix)
    executor = JobExecutor(args.data, args.config, args.overrides, cluster=None if args.local else cluster, log=_log)
    return board, Scheduler(specs, board, executor, Store(Path(args.data) / "store"), cfg.scheduler, log=_log,
                            reload_specs=reload_specs)


def cmd_scheduler(args) -> int:
    import threading

    from actors.runtime import Cluster
    from pipeline.config import mask_secrets
    from pipeline.jobs.windows import next_fire

    cfg, specs, folders = _jobs_context(args)
    if not specs:
        raise VidstormError(f"no job specs in {' or '.join(map(str, folders))}: write one (see configs/jobs/) "
                            "or register one with `vidstorm jobs add`")
    from pipeline.jobs.spec import load_specs

    with Cluster(cfg, args.data, log=_log, with_ray=not args.local, join=True) as cluster:
        board, scheduler = _scheduler_parts(cfg, args, specs, cluster, reload_specs=lambda: load_specs(folders))
        now = scheduler.clock()
        for spec in specs.values():
            _log(f"{spec.name}: {spec.kind} at '{spec.schedule}' {spec.timezone}; next {next_fire(spec, now):%Y-%m-%d %H:%M} UTC")
        _log(f"vidstorm scheduler {scheduler.owner}: {len(specs)} jobs, board in {mask_secrets(cluster.redis_url)}, "
             f"runs {'in this process' if args.local else 'on Ray'}; Ctrl-C stops")
        if args.once:
            scheduler.tick()
            return 0
        scheduler.serve(threading.Event())
    return 0


def cmd_jobs(args) -> int:
    return {"list": _jobs_list, "show": _jobs_show, "run": _jobs_run, "cancel": _jobs_cancel,
            "add": _jobs_add}[args.jobs_command](args)


def _runs(args, name=None) -> list[dict]:
    """Runs of named jobs (a run's own row has job_id == run_id), newest first."""
    from pathlib import Path

    from pipeline.store.query import StoreQuery

    query = StoreQuery(Path(args.data) / "store", tables=("jobs",))
    return [r for r in query.jobs(name=name) if r["job_name"] and r["job_id"] == r["run_id"]]


def _when(value) -> str:
    return value.astimezone(__import__("datetime").timezone.utc).strftime("%Y-%m-%d %H:%M") if value else "-"


def _jobs_list(args) -> int:
    from actors.scheduler import utc_now
    from pipeline.jobs.windows import next_fire

    _, specs, folders = _jobs_context(args)
    if not specs:
        print(f"no jobs defined (looked in {', '.join(map(str, folders))})")
        return 0
    last = {}
    for run in _runs(args):  # newest first: keep each job's first
        last.setdefault(run["job_name"], run)
    if args.json:
        _emit_json([{**s.__dict__, "next_run": next_fire(s, utc_now()), "last_run": last.get(n)}
                    for n, s in specs.items()])
        return 0
    print(f"{'job':24s} {'kind':7s} {'schedule':16s} {'time zone':16s} {'next run (UTC)':17s} last run")
    for name, spec in specs.items():
        run = last.get(name)
        seen = f"{run['run_id']} {run['status']}" if run else "never"
        print(f"{name[:24]:24s} {spec.kind:7s} {spec.schedule:16s} {spec.timezone[:16]:16s} "
              f"{next_fire(spec, utc_now()):%Y-%m-%d %H:%M}  {seen}")
    return 0


def _jobs_show(args) -> int:
    _, specs, _ = _jobs_context(args)
    spec = _spec(specs, args.name)
    runs = _runs(args, args.name)[: args.limit]
    if args.json:
        _emit_json({"spec": spec.__dict__, "runs": runs})
        return 0
    from pipeline.config import mask_secrets

    print(f"# {spec.path}\n{mask_secrets(spec.to_yaml())}", end="")
    print(f"runs ({len(runs)} newest):" if runs else "no runs yet")
    for r in runs:
        print(f"  {r['run_id']:36s} {r['trigger'] or '':8s} {r['status']:9s} attempt {r['attempts'] or 0}  "
              f"started {_when(r['started_at'])}  {r['detail'] or ''}{('  ' + r['error']) if r['error'] else ''}")
    return 0


def _spec(specs, name):
    from pipeline.names import JOB_NAME_MAX, check_name

    check_name(name, "job name", JOB_NAME_MAX)
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise VidstormError(f"no job named {name!r} (jobs: {known})")
    return specs[name]


def _jobs_run(args) -> int:
    from actors.runtime import Cluster
    from actors.scheduler import utc_now

    cfg, specs, _ = _jobs_context(args)
    spec = _spec(specs, args.name)
    with Cluster(cfg, args.data, log=_log, with_ray=not args.local, join=True) as cluster:
        board, scheduler = _scheduler_parts(cfg, args, {spec.name: spec}, cluster)
        rid = board.request(spec.name, utc_now())
        row = scheduler.run_pending(rid)
    if row is None:
        print(f"{rid}: taken by a running scheduler; follow it with `vidstorm jobs show {spec.name}`")
        return 0
    return 0 if row["status"] == "done" else 1  # the scheduler's log said how it went


def _jobs_cancel(args) -> int:
    import time
    from pathlib import Path

    from actors.scheduler import board_for
    from pipeline.config import load_config
    from pipeline.store import Store

    cfg = load_config(args.config, args.overrides)
    board = board_for(cfg, args.data)
    if board is None:
        raise VidstormError("no scheduler is running for this data directory (its Redis holds the runs)")
    result = board.cancel(args.run)
    if result == "unknown":
        raise VidstormError(f"no run {args.run!r} (run ids look like NAME@20261121T020000Z)")
    info = board.info(args.run)
    if result == "cancelled" and info.get("owner") is None:  # it never started: record it here
        import datetime as dt

        from pipeline.jobs.runs import run_row

        now = time.time()
        Store(Path(args.data) / "store").write_job(run_row(
            args.run, info.get("job"), None, dt.datetime.fromisoformat(info["window"]), info.get("trigger"), 0,
            "cancelled", now, now, error="cancelled before it started"))
    print({"cancelling": f"{args.run}: cancelling (its scheduler stops it at the next chunk or stream)",
           "cancelled": f"{args.run}: cancelled"}.get(result, f"{args.run}: already {result}"))
    return 0


def _jobs_add(args) -> int:
    from pathlib import Path

    from pipeline.jobs.spec import parse_spec
    from pipeline.names import JOB_NAME_MAX, check_name

    check_name(args.name, "job name", JOB_NAME_MAX)  # before it becomes a file name
    target = Path(args.data) / "jobs" / f"{args.name}.yaml"
    if target.exists() and not args.force:
        raise VidstormError(f"{target} exists: pass --force to replace it")
    sources = [{"path": s, "glob": args.glob} if args.glob else s for s in args.source]
    data = {"name": args.name, "kind": args.kind, "schedule": args.cron, "timezone": args.tz,
            "sources": sources, "overrides": list(args.overrides), "catch_up": args.catch_up,
            "period": args.period, "streams": list(args.stream or [])}
    spec = parse_spec(data, str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(spec.to_yaml())
    print(f"job {spec.name} written to {target}")
    return 0


def cmd_serve(args) -> int:
    from actors.api import serve

    return serve(args)


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
        from actors.train import train_on_ray

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
    from pipeline.train.synthqa import FPS_RANGE, SIZE_RANGE, write_dataset

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidstorm", description="Streaming video understanding with STORM.")
    parser.add_argument("--version", action="version", version=f"vidstorm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="print the resolved config (defaults < --config < key=value)")
    _add_config_args(config)
    config.set_defaults(func=cmd_config)

    ingest = sub.add_parser("ingest", help="decode, encode, caption and store video sources")
    ingest.add_argument("sources", nargs="+", metavar="SOURCE", help="file, folder, live URL, or key=value override")
    ingest.add_argument("--config", metavar="FILE", help="YAML overrides (see configs/)")
    ingest.add_argument("--local", action="store_true",
                        help="run every stage in this process (default: Ray actors + Redis Streams)")
    ingest.add_argument("--stream", help="stream id for a single source (default: from its name)")
    _data_arg(ingest)
    ingest.set_defaults(func=cmd_ingest)

    def filters(p, stream_positional=False):
        if not stream_positional:
            p.add_argument("--stream", help="only this stream")
        p.add_argument("--since", help="video seconds / H:MM:SS, or an ISO date-time")
        p.add_argument("--until", help="video seconds / H:MM:SS, or an ISO date-time")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _data_arg(p)

    describe = sub.add_parser("describe", help="caption a video (a line per chunk) or a still image; stores nothing")
    describe.add_argument("file", help="a video file or an image (png, jpg, ...)")
    describe.add_argument("--json", action="store_true", help='a JSON list of {"t_start", "t_end", "caption"}')
    _add_config_args(describe)
    describe.set_defaults(func=cmd_describe)

    query = sub.add_parser("query", help="search captions and summaries by meaning (or --keyword)")
    query.add_argument("text")
    query.add_argument("--keyword", action="store_true", help="match words instead of meaning")
    query.add_argument("-k", type=int, default=10, help="how many results")
    filters(query)
    query.set_defaults(func=cmd_query)

    segments = sub.add_parser("segments", help="list stored segments")
    segments.add_argument("--limit", type=int)
    filters(segments)
    segments.set_defaults(func=cmd_segments)

    clip = sub.add_parser("clip", help="cut an MP4 of a span of a stream's source file")
    clip.add_argument("stream")
    clip.add_argument("--since", required=True, help="video seconds (90) or H:MM:SS")
    clip.add_argument("--until", required=True, help="video seconds or H:MM:SS")
    clip.add_argument("-o", "--out", required=True, help="the MP4 to write")
    _add_config_args(clip)
    _data_arg(clip)
    clip.set_defaults(func=cmd_clip)

    summaries = sub.add_parser("summaries", help="a stream's summaries, whole stream first")
    summaries.add_argument("stream")
    summaries.add_argument("--level", choices=["stream", "period", "window"])
    summaries.add_argument("--json", action="store_true")
    _data_arg(summaries)
    summaries.set_defaults(func=cmd_summaries)

    compact = sub.add_parser("compact", help="merge small Parquet files, dropping duplicates")
    _data_arg(compact)
    compact.set_defaults(func=cmd_compact)

    def jobs_args(p, overrides=True):
        if overrides:
            _add_config_args(p)
        else:
            p.add_argument("--config", metavar="FILE", help="YAML overrides (see configs/)")
        p.add_argument("--jobs", metavar="DIR", help="job specs folder (default scheduler.jobs_dir); DATA/jobs too")
        _data_arg(p)

    scheduler = sub.add_parser("scheduler", help="run named jobs at their cron times (Ctrl-C stops)")
    jobs_args(scheduler)
    scheduler.add_argument("--local", action="store_true", help="run jobs in this process instead of on Ray")
    scheduler.add_argument("--once", action="store_true", help="plan and run what is due now, then exit")
    scheduler.set_defaults(func=cmd_scheduler)

    jobs = sub.add_parser("jobs", help="named jobs: list | show NAME | run NAME | cancel RUN | add NAME")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    j_list = jobs_sub.add_parser("list", help="jobs, their schedules, next and last runs")
    j_list.add_argument("--json", action="store_true")
    jobs_args(j_list)
    j_show = jobs_sub.add_parser("show", help="a job's spec and its recent runs")
    j_show.add_argument("name")
    j_show.add_argument("--limit", type=int, default=20)
    j_show.add_argument("--json", action="store_true")
    jobs_args(j_show)
    j_run = jobs_sub.add_parser("run", help="run a job now, here (recorded like a scheduled run)")
    j_run.add_argument("name")
    j_run.add_argument("--local", action="store_true", help="in this process instead of on Ray")
    jobs_args(j_run)
    j_cancel = jobs_sub.add_parser("cancel", help="cancel a pending or running run (by run id)")
    j_cancel.add_argument("run")
    jobs_args(j_cancel)
    j_add = jobs_sub.add_parser("add", help="register a job (written to DATA/jobs/NAME.yaml)")
    j_add.add_argument("name")
    j_add.add_argument("--kind", choices=["ingest", "digest"], required=True)
    j_add.add_argument("--cron", required=True, help="5-field cron schedule, e.g. '0 2 * * *'")
    j_add.add_argument("--tz", default="UTC", help="time zone of the schedule (default UTC)")
    j_add.add_argument("--source", action="append", default=[], help="ingest: file, folder or URL (repeat)")
    j_add.add_argument("--glob", help="ingest: only files under the folders matching this, e.g. '**/*.mp4'")
    j_add.add_argument("--catch-up", default="all", choices=["all", "latest", "none"],
                       help="missed windows: run each once (all), only the newest, or none")
    j_add.add_argument("--period", default="day", choices=["day", "hour", "window"], help="digest: period")
    j_add.add_argument("--stream", action="append", help="digest: only this stream (repeat)")
    j_add.add_argument("--force", action="store_true", help="replace an existing spec")
    j_add.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides the job runs with")
    _data_arg(j_add)
    jobs.set_defaults(func=cmd_jobs)

    serve = sub.add_parser("serve", help="the HTTP query service (FastAPI + uvicorn)")
    _add_config_args(serve)
    serve.add_argument("--host", help="address to bind (default api.host; 127.0.0.1 only without a token)")
    serve.add_argument("--port", type=int, help="port (default api.port)")
    serve.add_argument("--jobs", metavar="DIR", help="job specs folder for POST /jobs/NAME/run (default scheduler.jobs_dir)")
    _data_arg(serve)
    serve.set_defaults(func=cmd_serve)

    train = sub.add_parser("train", help="train the STORM parts (Ray Train; --local in this process)")
    _add_config_args(train)
    train.add_argument("--local", action="store_true", help="one process, no Ray (Ctrl-C saves a checkpoint)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in train.out")
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser("pretrain-siglip", help="pretrain a toy SigLIP (sigmoid loss) on rendered image-caption pairs")
    _add_config_args(pre)
    pre.set_defaults(func=cmd_pretrain_siglip)

    stills = sub.add_parser("synth-stills", help="render still image-caption pairs (PNG + stills.jsonl)")
    stills.add_argument("out", metavar="OUT", help="folder to write stills/ and stills.jsonl into")
    stills.add_argument("--n", type=int, default=2000)
    stills.add_argument("--size", type=int, default=128, help="side px (the tower's input size)")
    stills.add_argument("--seed", type=int, default=0)
    stills.set_defaults(func=cmd_synth_stills)

    bvlm = sub.add_parser("build-vlm", help="a SmolVLM-format VLM: a SigLIP tower + connector + the real SmolLM2")
    bvlm.add_argument("out", metavar="OUT", help="folder to save the VLM in")
    bvlm.add_argument("--tower", required=True, metavar="SIGLIP", help="SigLIP folder whose vision tower it takes")
    bvlm.add_argument("--connector", default="", metavar="CKPT",
                      help="STORM checkpoint holding the trained connector (else random, and marked so)")
    bvlm.add_argument("--seed", type=int, default=0)
    bvlm.set_defaults(func=cmd_build_vlm)

    evaluate = sub.add_parser("eval", help="answer multiple-choice questions (JSONL) and score them per task")
    _add_config_args(evaluate)
    evaluate.add_argument("--data", required=True, metavar="FILE.jsonl", help="questions with options and answers")
    evaluate.set_defaults(func=cmd_eval)

    synth = sub.add_parser("synth-data", help="render synthetic temporal-QA clips + JSONL (train/val/test)")
    synth.add_argument("out", metavar="OUT", help="folder to write clips/ and the JSONL files into")
    synth.add_argument("--n", type=int, default=1000, help="clips in all (split 80/10/10)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, nargs=2, metavar=("MIN", "MAX"), help="frame side px (default 96 480)")
    synth.add_argument("--fps", type=int, nargs=2, metavar=("MIN", "MAX"), help="frame rate (default 10 30)")
    synth.add_argument("--splits", help="train,val,test shares (default 0.8,0.1,0.1)")
    synth.add_argument("--shape-questions", action="store_true",
                       help="also ask each direction clip which shape it is (a line of its own)")
    synth.set_defaults(func=cmd_synth_data)

    report = sub.add_parser("demo-report", help="stored captions of synth-data clips next to the truth")
    report.add_argument("jsonl", help="the synth-data JSONL of the ingested clips")
    _data_arg(report)
    report.set_defaults(func=cmd_demo_report)

    assets = sub.add_parser("demo-assets", help="build the offline demo model and clip")
    _data_arg(assets)
    assets.set_defaults(func=cmd_demo_assets)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # positionals may follow options: `ingest a.mp4 --local b.mp4 decode.fps=2`
    target = {"ingest": "sources", "config": "overrides", "serve": "overrides",
              "scheduler": "overrides", "train": "overrides", "eval": "overrides", "clip": "overrides",
              "pretrain-siglip": "overrides",
              "describe": "overrides"}.get(args.command)
    if args.command == "jobs":
        target = "overrides"
    if extra and (target is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, target).extend(extra)
    from pipeline.config import mask_secrets

    try:
        return args.func(args)
    except (VidstormError, ValueError) as err:  # ValueError: bad query parameters and the like
        print(f"vidstorm: error: {mask_secrets(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidstorm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
