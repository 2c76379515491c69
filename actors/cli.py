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


def _emit_json(rows) -> None:
    import json

    print(json.dumps(rows, default=_json_default, indent=1))


def _json_default(value):
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _span(row) -> str:
    from pipeline.ingest import _hms

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
    from pipeline.ingest import LocalIngest

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
        store.write_job({"job_id": uuid.uuid4().hex[:12], "kind": "ingest", "source": err.source,
                         "stream_id": "", "status": "failed", "error": str(err), "started_at": now,
                         "finished_at": now, "chunks": 0, "segments": 0, "summaries": 0})
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


def _ingest_distributed(cfg, sources, data, log) -> int:
    """Through Ray actors and Redis Streams (embedded or a cluster). Returns failures."""
    from actors.runtime import Cluster, DistributedIngest
    from pipeline.ingest import _hms

    with Cluster(cfg, data, log=log) as cluster:
        ingest = DistributedIngest(cluster, cfg, log=log)
        try:
            rows = ingest.run(sources)
        finally:
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
        print(f"{row['stream_id'][:28]:28s} #{row['chunk_seq']:<4d} {_span(row)}  {row['caption']}")
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


def cmd_compact(args) -> int:
    from pathlib import Path

    from pipeline.store import Store

    stats = Store(Path(args.data) / "store").compact()
    print(f"compacted: {stats['files_before']} files -> {stats['files_after']}")
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

    summaries = sub.add_parser("summaries", help="a stream's summaries, whole stream first")
    summaries.add_argument("stream")
    summaries.add_argument("--level", choices=["stream", "period", "window"])
    summaries.add_argument("--json", action="store_true")
    _data_arg(summaries)
    summaries.set_defaults(func=cmd_summaries)

    compact = sub.add_parser("compact", help="merge small Parquet files, dropping duplicates")
    _data_arg(compact)
    compact.set_defaults(func=cmd_compact)

    serve = sub.add_parser("serve", help="the HTTP query service (FastAPI + uvicorn)")
    _add_config_args(serve)
    serve.add_argument("--host", help="address to bind (default api.host; 127.0.0.1 only without a token)")
    serve.add_argument("--port", type=int, help="port (default api.port)")
    _data_arg(serve)
    serve.set_defaults(func=cmd_serve)

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
    target = {"ingest": "sources", "config": "overrides", "serve": "overrides"}.get(args.command)
    if extra and (target is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, target).extend(extra)
    try:
        return args.func(args)
    except VidstormError as err:
        print(f"vidstorm: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # bad query parameters and the like
        print(f"vidstorm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidstorm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
