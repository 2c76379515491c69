"""Queries over the Parquet store with DuckDB: filters, keywords, and meaning-based search.

Rows are read through views that keep one row per key, so a query never shows a
duplicate even while a compaction is half done.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import duckdb
import numpy as np

from pipeline.store.schema import SCHEMAS

VIEWS = {
    "segments": "PARTITION BY stream_id, chunk_seq, level ORDER BY created_at",
    "summaries": "PARTITION BY stream_id, seq, level ORDER BY created_at",
    "jobs": "PARTITION BY job_id ORDER BY updated_at DESC",
}


def parse_time(text: str | float | None) -> tuple[str, float | dt.datetime] | None:
    """'90', '1:30', '01:02:03.5' -> ('video', seconds); an ISO date/time -> ('wall', datetime)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return "video", float(text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return "video", float(text)
    if re.fullmatch(r"(\d+:){1,2}\d+(\.\d+)?", text):
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
        return "video", seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use seconds, H:MM:SS, or an ISO date-time") from None
    return "wall", when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


class StoreQuery:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.db = duckdb.connect()
        for table, order in VIEWS.items():
            self._view(table, order)

    def _view(self, table: str, order: str) -> None:
        files = sorted((self.root / table).rglob("*.parquet")) if (self.root / table).is_dir() else []
        if files:
            listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
            source = f"read_parquet([{listing}], hive_partitioning = false, union_by_name = true)"
        else:  # an empty table with the right columns
            cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {f.name}" for f in SCHEMAS[table])
            source = f"(SELECT {cols} WHERE false)"
        self.db.execute(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * EXCLUDE (rn) FROM "
            f"(SELECT *, row_number() OVER ({order}) AS rn FROM {source}) WHERE rn = 1"
        )

    # --- filters ---

    @staticmethod
    def _where(stream=None, since=None, until=None):
        """Rows of `stream` that overlap [since, until] (video seconds or wall-clock times)."""
        clauses, params = [], []
        if stream:
            clauses.append("stream_id = ?")
            params.append(stream)
        since, until = parse_time(since), parse_time(until)
        if since and until and since[0] == until[0] and since[1] > until[1]:
            raise ValueError("--since is after --until")
        if since:
            clauses.append("t_end > ?" if since[0] == "video" else "wall_clock >= ?")
            params.append(since[1])
        if until:
            clauses.append("t_start <= ?" if until[0] == "video" else "wall_clock <= ?")
            params.append(until[1])
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _rows(self, sql: str, params: list) -> list[dict]:
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def streams(self) -> list[dict]:
        return self._rows(
            "SELECT stream_id, count(*) AS segments, min(t_start) AS t_start, max(t_end) AS t_end, "
            "max(created_at) AS last_update FROM segments GROUP BY stream_id ORDER BY stream_id",
            [],
        )

    def segments(self, stream=None, since=None, until=None, limit=None) -> list[dict]:
        where, params = self._where(stream, since, until)
        sql = (
            "SELECT stream_id, chunk_seq, t_start, t_end, wall_clock, caption, n_frames, source, "
            f"config_fingerprint, created_at FROM segments{where} ORDER BY stream_id, chunk_seq"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._rows(sql, params)

    def summaries(self, stream=None, level=None) -> list[dict]:
        where, params = self._where(stream)
        if level:
            where += (" AND" if where else " WHERE") + " level = ?"
            params.append(level)
        order = "CASE level WHEN 'stream' THEN 0 WHEN 'period' THEN 1 ELSE 2 END"
        return self._rows(
            f"SELECT stream_id, level, seq, t_start, t_end, wall_clock, text FROM summaries{where} "
            f"ORDER BY stream_id, {order}, seq",
            params,
        )

    def jobs(self) -> list[dict]:
        return self._rows("SELECT * FROM jobs ORDER BY started_at", [])

    def keyword(self, text: str, stream=None, since=None, until=None, limit=20) -> list[dict]:
        """Case-insensitive match of every word, over captions and summaries."""
        words = [w for w in re.findall(r"\w+", text.lower()) if w]
        where, params = self._where(stream, since, until)
        out = []
        for table, col in (("segments", "caption"), ("summaries", "text")):
            clauses = [f"lower({col}) LIKE ?" for _ in words]
            cond = where + ((" AND " if where else " WHERE ") + " AND ".join(clauses) if clauses else "")
            seq = "chunk_seq" if table == "segments" else "seq"
            level = "'chunk'" if table == "segments" else "level"
            out += self._rows(
                f"SELECT stream_id, {level} AS level, {seq} AS seq, t_start, t_end, {col} AS text "
                f"FROM {table}{cond} ORDER BY stream_id, t_start LIMIT {int(limit)}",
                params + [f"%{w}%" for w in words],
            )
        return out[:limit]

    def search(self, query_vector: np.ndarray, stream=None, since=None, until=None, k=10) -> list[dict]:
        """Rank captions and summaries by cosine similarity to an embedded query."""
        where, params = self._where(stream, since, until)
        vec = [float(x) for x in np.asarray(query_vector, dtype=np.float32)]
        dim = len(vec)
        union = (
            "SELECT stream_id, 'chunk' AS level, chunk_seq AS seq, t_start, t_end, caption AS text, "
            "text_embedding, wall_clock FROM segments UNION ALL "
            "SELECT stream_id, level, seq, t_start, t_end, text, text_embedding, wall_clock FROM summaries"
        )
        return self._rows(
            f"SELECT stream_id, level, seq, t_start, t_end, text, "
            f"array_cosine_similarity(text_embedding::FLOAT[{dim}], ?::FLOAT[{dim}]) AS score "
            f"FROM ({union}){where} ORDER BY score DESC LIMIT {int(k)}",
            [vec] + params,
        )


def _duck_type(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_fixed_size_list(arrow_type):
        return f"FLOAT[{arrow_type.list_size}]"
    if pa.types.is_list(arrow_type):
        return "FLOAT[]"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ"
    return {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER", "double": "DOUBLE"}.get(str(arrow_type), "VARCHAR")
