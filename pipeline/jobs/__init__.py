"""Named jobs: specs (YAML), their cron windows, the Redis board that hands windows to schedulers,
and what a run of each kind does (ingest new files, digest a period)."""
