"""Reading the Parquet `alerts` table: the latest row of each (alert, target), newest alerts first."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline.store.schema import ALERTS
from pipeline.store.sql import limit_clause, where_clause


def read_alerts(store_root: str | Path, rule: str | None = None, stream: str | None = None,
                status: str | None = None, since: float | None = None, limit: int | None = 100) -> list[dict]:
    """Rows as dicts (times as unix seconds). `since`: only alerts whose latest row was written after it."""
    import duckdb
    import pyarrow.dataset as ds

    files = sorted(str(p) for p in (Path(store_root) / "alerts").rglob("part-*.parquet"))
    if not files:
        return []
    data = ds.dataset(files, schema=ALERTS, format="parquet").to_table()
    clauses, params = [], []
    for column, value in (("rule", rule), ("stream_id", stream), ("status", status)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:  # in whole microseconds, as stored: a row's own time read back is not "after" it
        clauses.append("epoch_us(updated_at) > ?")
        params.append(round(float(since) * 1e6))
    db = duckdb.connect()
    try:
        db.register("alerts_raw", data)
        cursor = db.execute(
            "SELECT * FROM (SELECT * FROM alerts_raw QUALIFY row_number() OVER "
            "(PARTITION BY alert_id, target ORDER BY updated_at DESC, attempts DESC) = 1)"
            f"{where_clause(clauses)} ORDER BY created_at DESC, alert_id, target{limit_clause(limit)}",
            params,
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        db.close()
    return [{k: (v.timestamp() if isinstance(v, dt.datetime) else v) for k, v in row.items()} for row in rows]
