"""Parquet dataset writer: partitioned by stream and date, append-only, idempotent.

    <root>/segments/stream=<id>/date=<YYYY-MM-DD>/part-<time>-<uuid>.parquet

Files get unique names and appear atomically (written aside, then renamed).
A row whose key (stream_id, seq, level) is already stored is dropped, so a
replayed chunk or a second ingest of the same source never adds a row.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import urllib.parse
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.schema import SCHEMAS, STREAM_KEYS
from pipeline.types import Segment, Summary


def _ts(seconds: float | None):
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def _stream_dir(stream_id: str) -> str:
    return "stream=" + urllib.parse.quote(stream_id, safe="")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._keys: dict[tuple[str, str], set] = {}  # (table, stream_id) -> stored keys

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def files(self, table: str, stream_id: str | None = None) -> list[Path]:
        base = self.table_dir(table)
        if stream_id is not None:
            base = base / _stream_dir(stream_id)
        return sorted(base.rglob("*.parquet")) if base.is_dir() else []

    # --- keys already stored, loaded once per stream ---

    def stream_rows(self, table: str, stream_id: str, columns: list[str]) -> list[dict]:
        """`columns` of every stored row of one stream (only its own partition is read)."""
        rows = []
        for path in self.files(table, stream_id):
            rows += pq.read_table(path, columns=columns).to_pylist()
        return rows

    def stored_keys(self, table: str, stream_id: str) -> set:
        cache_key = (table, stream_id)
        if cache_key not in self._keys:
            cols = list(STREAM_KEYS[table])
            rows = self.stream_rows(table, stream_id, cols)
            self._keys[cache_key] = {tuple(row[c] for c in cols) for row in rows}
        return self._keys[cache_key]

    # --- writing ---

    def _write(self, table: str, stream_id: str, rows: list[dict], date: str) -> Path:
        folder = self.table_dir(table) / _stream_dir(stream_id) / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        staging = folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), staging)
        os.replace(staging, folder / name)
        return folder / name

    def write_records(self, records: list) -> int:
        """Append segments and summaries not already stored. Returns rows written."""
        written = 0
        for table, kind in (("segments", Segment), ("summaries", Summary)):
            by_stream: dict[str, list] = {}
            for rec in records:
                if isinstance(rec, kind):
                    by_stream.setdefault(rec.stream_id, []).append(rec)
            for stream_id, recs in by_stream.items():
                written += self._write_new(table, stream_id, recs)
        return written

    def _write_new(self, table: str, stream_id: str, recs: list) -> int:
        stored = self.stored_keys(table, stream_id)
        rows, keys = [], set()
        for rec in recs:
            row = asdict(rec)
            key = tuple(row[k] for k in STREAM_KEYS[table])
            if key in stored or key in keys:
                continue
            keys.add(key)
            for name in ("visual_embedding", "text_embedding"):
                if name in row:
                    row[name] = np.asarray(row[name], dtype=np.float32).tolist()
            row["wall_clock"], row["created_at"] = _ts(row["wall_clock"]), _ts(row["created_at"] or time.time())
            rows.append(row)
        if not rows:
            return 0
        first = recs[0]
        date = dt.datetime.fromtimestamp(first.wall_clock or first.created_at or time.time(), dt.timezone.utc)
        self._write(table, stream_id, rows, date.strftime("%Y-%m-%d"))
        stored.update(keys)
        return len(rows)

    def write_job(self, job: dict) -> None:
        """Append one row of a job's life (running, then done or failed)."""
        self._write_dated("jobs", job, ("started_at", "finished_at", "window"))

    def write_alert(self, alert: dict) -> None:
        """Append one row of an alert's delivery (retrying, then delivered or failed) to alerts/date=<day>/."""
        self._write_dated("alerts", alert, ("wall_clock", "delivered_at", "created_at"))

    def _write_dated(self, table: str, record: dict, times: tuple[str, ...]) -> None:
        row = {name: record.get(name) for name in SCHEMAS[table].names}
        for name in times:
            row[name] = _ts(record.get(name))
        row["updated_at"] = _ts(time.time())
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        folder = self.table_dir(table) / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        pq.write_table(pa.Table.from_pylist([row], schema=SCHEMAS[table]), folder / f".{name}.tmp")
        os.replace(folder / f".{name}.tmp", folder / name)

    # --- compaction ---

    def compact(self) -> dict:
        """Merge each partition's files into one (duplicates dropped). Returns counts."""
        before = after = 0
        for table in ("segments", "summaries", "jobs", "alerts"):
            base = self.table_dir(table)
            if not base.is_dir():
                continue
            for folder in sorted({p.parent for p in base.rglob("*.parquet")}):
                parts = sorted(folder.glob("part-*.parquet"))
                before += len(parts)
                if len(parts) < 2:
                    after += len(parts)
                    continue
                merged = pa.concat_tables([pq.read_table(p, schema=SCHEMAS[table]) for p in parts])
                if table in STREAM_KEYS:
                    merged = _drop_duplicate_keys(merged, ("stream_id", *STREAM_KEYS[table]))
                name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                pq.write_table(merged, folder / f".{name}.tmp")
                os.replace(folder / f".{name}.tmp", folder / name)
                for p in parts:
                    p.unlink()
                after += 1
        return {"files_before": before, "files_after": after}


def _drop_duplicate_keys(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    seen, keep = set(), []
    columns = [table.column(k).to_pylist() for k in keys]
    for i, key in enumerate(zip(*columns)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return table.take(pa.array(keep, type=pa.int64()))
