"""`vidstorm config`, `vidstorm ingest` (--local or through Ray + Redis) and `vidstorm describe`."""

from __future__ import annotations

import sys

from pipeline.errors import VidstormError

from actors.cli.common import _emit_json, _is_override, _span


def cmd_config(args) -> int:
    from pipeline.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_ingest(args) -> int:
    import datetime as dt
    from pathlib import Path

    from pipeline.config import load_config, to_yaml
    from pipeline.decode import expand_sources

    overrides = [a for a in args.sources if _is_override(a)]
    cfg = load_config(args.config, overrides)
    sources, errors = expand_sources([a for a in args.sources if a not in overrides], args.stream)
    # the models' imports (torch: ~1.5 s) only once the config and a --stream id have been checked
    from pipeline.build import build_processor, untrained_notice
    from pipeline.ingest import LocalIngest
    from pipeline.jobs.result import JobResult

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
        from actors.runtime.watch import LocalWatch

        with LocalWatch(cfg, data, store, log=log) as watch:
            runner = LocalIngest(cfg, build_processor(cfg, log=log), data, log=log, watch=watch)
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
