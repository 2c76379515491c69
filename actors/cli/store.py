"""Reading the store: `vidstorm segments`, `summaries`, `query`, `clip`, `compact`."""

from __future__ import annotations

from actors.cli.common import _emit_json, _span


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

    from actors.server.media import NoClip, clip_source
    from pipeline.clip import cut_clip
    from pipeline.config import load_config
    from pipeline.errors import VidstormError
    from pipeline.store.query import StoreQuery
    from pipeline.store.sql import parse_time

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
