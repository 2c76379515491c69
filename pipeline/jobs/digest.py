"""Digest: roll a period's stored segments up into one period summary per stream.

A segment belongs to the period in which its footage was recorded (wall_clock: live sources,
and files whose creation_time tag says when they were shot) or, when that is unknown, in
which it was stored (created_at).
The summary is stored as level "period" with seq = the period's start in unix seconds, so
running the same digest again adds nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import duckdb

from pipeline.processor import summarize_hierarchical
from pipeline.store import Store
from pipeline.types import Summary


def period_captions(store_root: str | Path, start: dt.datetime, end: dt.datetime,
                    streams: list[str] | None = None) -> dict[str, list[dict]]:
    """stream_id -> its segments in [start, end), in chunk order, one row per key."""
    store = Store(store_root)
    # Files sit in date=<day> folders named after the same time: read only the days around the period.
    first, last = (start - dt.timedelta(days=1)).date(), (end + dt.timedelta(days=1)).date()
    files = [f for f in store.files("segments") if _day(f) is None or first <= _day(f) <= last]
    if not files:
        return {}
    listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    where = "coalesce(wall_clock, created_at) >= ? AND coalesce(wall_clock, created_at) < ? AND level = 'chunk'"
    params: list = [start, end]
    if streams:
        where += f" AND stream_id IN ({', '.join('?' for _ in streams)})"
        params += list(streams)
    rows = duckdb.connect().execute(
        "SELECT stream_id, chunk_seq, t_start, t_end, caption FROM "
        f"read_parquet([{listing}], hive_partitioning = false, union_by_name = true) WHERE {where} "
        "QUALIFY row_number() OVER (PARTITION BY stream_id, chunk_seq ORDER BY created_at) = 1 "
        "ORDER BY stream_id, chunk_seq",
        params,
    ).fetchall()
    out: dict[str, list[dict]] = {}
    for stream_id, chunk_seq, t_start, t_end, caption in rows:
        out.setdefault(stream_id, []).append(
            {"chunk_seq": chunk_seq, "t_start": t_start, "t_end": t_end, "caption": caption})
    return out


def _day(path: Path) -> dt.date | None:
    for part in path.parts:
        if part.startswith("date="):
            try:
                return dt.date.fromisoformat(part[5:])
            except ValueError:
                return None
    return None


def digest_period(store_root: str | Path, start: dt.datetime, end: dt.datetime, summarizer, embedder,
                  prompt: str, max_items_per_prompt: int, config_fingerprint: str,
                  streams: list[str] | None = None, should_stop=lambda: False) -> dict:
    """Write one period summary per stream that has segments in [start, end). Returns counts."""
    store = Store(store_root)
    by_stream = period_captions(store_root, start, end, streams)
    written = segments = 0
    for stream_id, items in by_stream.items():
        if should_stop():
            break
        seq = int(start.timestamp())
        if (seq, "period") in store.stored_keys("summaries", stream_id):
            continue  # digested by an earlier attempt of this run
        text = summarize_hierarchical(summarizer, [i["caption"] for i in items], prompt, max_items_per_prompt)
        summary = Summary(
            stream_id=stream_id, level="period", seq=seq,
            t_start=items[0]["t_start"], t_end=items[-1]["t_end"], text=text,
            text_embedding=embedder.embed([text])[0], config_fingerprint=config_fingerprint,
            wall_clock=start.timestamp(), created_at=time.time(),
        )
        written += store.write_records([summary])
        segments += len(items)
    return {"streams": len(by_stream), "summaries": written, "segments": segments}
