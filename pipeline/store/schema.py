"""Arrow schemas of the four tables. Keys: segments (stream_id, chunk_seq, level),
summaries (stream_id, seq, level), jobs (job_id; the latest row of a job wins), alerts (alert_id,
target; the latest row wins)."""

import pyarrow as pa

from pipeline.types import TEXT_DIM, UTC_US, AlertRow, Segment, Summary, arrow_schema

__all__ = ["TEXT_DIM", "SEGMENTS", "SUMMARIES", "JOBS", "ALERTS", "STREAM_KEYS", "LISTED", "SCHEMAS"]

# segments and summaries: the columns are the record dataclasses' fields (pipeline/types.py)
SEGMENTS = arrow_schema(Segment)
SUMMARIES = arrow_schema(Summary)

JOBS = pa.schema(
    [
        ("job_id", pa.string()),
        ("kind", pa.string()),
        ("source", pa.string()),
        ("stream_id", pa.string()),
        ("status", pa.string()),  # running | done | failed | cancelled | skipped
        ("error", pa.string()),
        ("content_fingerprint", pa.string()),
        ("config_fingerprint", pa.string()),
        ("chunks", pa.int64()),
        ("segments", pa.int64()),
        ("summaries", pa.int64()),
        ("video_seconds", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("started_at", UTC_US),
        ("finished_at", UTC_US),
        ("updated_at", UTC_US),
        # Runs of named jobs (`vidstorm jobs`): a run's own row has job_id == run_id; the
        # per-source rows of an ingest run carry its run_id. Empty for plain `vidstorm ingest`.
        ("job_name", pa.string()),
        ("run_id", pa.string()),
        ("window", UTC_US),  # the cron time the run stands for (manual runs: when asked)
        ("trigger", pa.string()),  # cron | catch-up | manual
        ("attempts", pa.int64()),
        ("detail", pa.string()),  # a run's one-line account, e.g. "2 new of 5 files"
    ]
)

ALERTS = arrow_schema(AlertRow)  # watch alerts (pipeline/watch): one row per delivery outcome

STREAM_KEYS = {"segments": ("chunk_seq", "level"), "summaries": ("seq", "level")}  # a row's key within its stream
# what listings (`vidstorm segments`/`summaries`, the API's /segments and /summaries) return of each table
LISTED = {
    "segments": tuple(n for n in SEGMENTS.names
                      if n not in ("visual_embedding", "text_embedding", "level", "thumbnail")),
    "summaries": tuple(n for n in SUMMARIES.names if n not in ("text_embedding", "config_fingerprint", "created_at")),
}
SCHEMAS = {"segments": SEGMENTS, "summaries": SUMMARIES, "jobs": JOBS, "alerts": ALERTS}
