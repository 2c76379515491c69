"""Arrow schemas of the three tables. Keys: segments (stream_id, chunk_seq, level),
summaries (stream_id, seq, level), jobs (job_id; the latest row of a job wins)."""

import pyarrow as pa

TEXT_DIM = 384
UTC_US = pa.timestamp("us", tz="UTC")

SEGMENTS = pa.schema(
    [
        ("stream_id", pa.string()),
        ("chunk_seq", pa.int64()),
        ("level", pa.string()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("wall_clock", UTC_US),
        ("caption", pa.string()),
        ("visual_embedding", pa.list_(pa.float32())),
        ("text_embedding", pa.list_(pa.float32(), TEXT_DIM)),
        ("n_frames", pa.int32()),
        ("config_fingerprint", pa.string()),
        ("source", pa.string()),
        ("created_at", UTC_US),
    ]
)

SUMMARIES = pa.schema(
    [
        ("stream_id", pa.string()),
        ("level", pa.string()),
        ("seq", pa.int64()),
        ("t_start", pa.float64()),
        ("t_end", pa.float64()),
        ("wall_clock", UTC_US),
        ("text", pa.string()),
        ("text_embedding", pa.list_(pa.float32(), TEXT_DIM)),
        ("config_fingerprint", pa.string()),
        ("created_at", UTC_US),
    ]
)

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

KEYS = {"segments": ("chunk_seq", "level"), "summaries": ("seq", "level")}
SCHEMAS = {"segments": SEGMENTS, "summaries": SUMMARIES, "jobs": JOBS}
