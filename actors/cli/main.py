"""The `vidstorm` command line: its parser and main(). The composition root: it unpacks the config tree."""

from __future__ import annotations

import argparse
import sys

from pipeline import __version__
from pipeline.errors import VidstormError

from actors.cli.common import _add_config_args, _data_arg
from actors.cli.ingest import cmd_config, cmd_describe, cmd_ingest
from actors.cli.jobs import cmd_jobs, cmd_scheduler, cmd_serve
from actors.cli.models import (cmd_build_vlm, cmd_demo_assets, cmd_demo_report, cmd_eval, cmd_pretrain_siglip,
                               cmd_synth_data, cmd_synth_stills, cmd_train)
from actors.cli.store import cmd_clip, cmd_compact, cmd_query, cmd_segments, cmd_summaries
from actors.cli.watch import cmd_alerts, cmd_watch


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

    _watch_parsers(sub)

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


def _watch_parsers(sub) -> None:
    watch = sub.add_parser("watch", help="alert rules: add | list | show NAME | remove NAME | test NAME | deliver")
    w_sub = watch.add_subparsers(dest="watch_command", required=True)

    def args_of(p):
        p.add_argument("--config", metavar="FILE", help="YAML overrides (see configs/)")
        _data_arg(p)

    add = w_sub.add_parser("add", help="register a rule (written to DATA/watch/NAME.yaml)")
    add.add_argument("name")
    add.add_argument("--query", required=True, help="what to look for, e.g. 'a person at the door'")
    add.add_argument("--keyword", action="store_true", help="match every word of the query, not its meaning")
    add.add_argument("--stream", action="append", help="only this stream (repeat; default every stream)")
    add.add_argument("--min-score", type=float, default=0.5, help="meaning: least cosine similarity (default 0.5)")
    add.add_argument("--cooldown", default="0s", help="matches within this of the last alert merge into it (60s, 5m)")
    add.add_argument("--level", action="append", choices=["chunk", "window", "stream", "period"],
                     help="what to match: chunk captions (default), window / stream / period summaries (repeat)")
    add.add_argument("--notify", action="append", required=True, help="webhook:URL or mqtt:TOPIC (repeat)")
    add.add_argument("--force", action="store_true", help="replace an existing rule")
    for name, text in (("list", "the rules"), ("show", "a rule and its recent alerts"),
                       ("remove", "remove a rule added with `watch add`"),
                       ("test", "which stored segments a rule matches (--send: a test alert to its targets)"),
                       ("deliver", "deliver the alerts waiting in the outbox")):
        p = w_sub.add_parser(name, help=text)
        if name in ("show", "remove", "test"):
            p.add_argument("name")
        if name in ("list", "show", "test"):
            p.add_argument("--json", action="store_true")
        if name in ("show", "test"):
            p.add_argument("--limit", type=int, default=20)
        if name == "test":
            p.add_argument("--send", action="store_true", help="send one test alert to each target")
        if name == "deliver":
            p.add_argument("--wait", type=float, default=60.0, help="give up after this many seconds (default 60)")
        args_of(p)
    args_of(add)
    watch.set_defaults(func=cmd_watch, overrides=[])

    alerts = sub.add_parser("alerts", help="alerts of the watch rules, newest first")
    alerts.add_argument("--rule")
    alerts.add_argument("--stream")
    alerts.add_argument("--status", choices=["retrying", "delivered", "failed"])
    alerts.add_argument("--limit", type=int, default=50)
    alerts.add_argument("--json", action="store_true")
    _data_arg(alerts)
    alerts.set_defaults(func=cmd_alerts)


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
    if args.command in ("jobs", "watch"):
        target = "overrides"
    if extra and (target is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, target).extend(extra)
    from pipeline.secrets import mask_secrets

    try:
        return args.func(args)
    except (VidstormError, ValueError) as err:  # ValueError: bad query parameters and the like
        print(f"vidstorm: error: {mask_secrets(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidstorm: interrupted", file=sys.stderr)
        return 130
