"""Arrow/Parquet store of segments, summaries and jobs, and queries over it (DuckDB)."""

from pipeline.store.parquet import Store

__all__ = ["Store"]
