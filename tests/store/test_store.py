"""Parquet store: partitioned, idempotent writes, compaction; DuckDB queries: filters, keywords, meaning."""

import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.store import Store
from pipeline.store.query import StoreQuery
from pipeline.store.sql import parse_time
from pipeline.types import Segment, Summary


def _segment(stream, seq, caption, embedder=None, t0=0.0):
    emb = embedder.embed([caption])[0] if embedder else np.zeros(384, np.float32)
    return Segment(stream, seq, t0 + seq * 16.0, t0 + (seq + 1) * 16.0, caption, np.ones(8, np.float32), emb,
                   16, "fp1", source=f"{stream}.mp4", created_at=time.time())


def test_layout_is_partitioned_by_stream_and_date(tmp_path):
    store = Store(tmp_path)
    store.write_records([_segment("cam/1", 0, "a"), _segment("cam2", 0, "b")])
    files = store.files("segments")
    assert len(files) == 2
    assert {f.parent.parent.name for f in files} == {"stream=cam%2F1", "stream=cam2"}
    assert all(f.parent.name.startswith("date=") for f in files)
    table = pq.read_table(files[0])
    assert table.schema.field("text_embedding").type.list_size == 384


def test_writes_are_idempotent_on_stream_seq_level(tmp_path):
    store = Store(tmp_path)
    rows = [_segment("cam", i, f"c{i}") for i in range(3)]
    summary = Summary("cam", "window", 0, 0.0, 48.0, "w", np.zeros(384, np.float32), "fp1", created_at=time.time())
    assert store.write_records(rows + [summary]) == 4
    assert store.write_records(rows + [summary]) == 0
    assert Store(tmp_path).write_records(rows[1:] + [_segment("cam", 3, "c3")]) == 1  # a fresh writer too
    q = StoreQuery(tmp_path)
    assert [r["chunk_seq"] for r in q.segments("cam")] == [0, 1, 2, 3]
    assert len(q.summaries("cam")) == 1


def test_compaction_merges_files_and_keeps_rows(tmp_path):
    store = Store(tmp_path)
    for i in range(5):
        store.write_records([_segment("cam", i, f"c{i}")])
    # a duplicate that slipped past (e.g. two writers): compaction and queries still show one row
    Store(tmp_path)._write("segments", "cam", [_row(_segment("cam", 2, "dup"))], store.files("segments")[0].parent.name[5:])
    assert len(store.files("segments")) == 6
    stats = store.compact()
    assert stats["files_after"] < stats["files_before"]
    assert len(store.files("segments")) == 1
    rows = StoreQuery(tmp_path).segments("cam")
    assert [r["chunk_seq"] for r in rows] == [0, 1, 2, 3, 4] and rows[2]["caption"] == "c2"


def _row(seg):
    from dataclasses import asdict

    import datetime as dt

    row = asdict(seg)
    row["text_embedding"] = row["text_embedding"].tolist()
    row["visual_embedding"] = row["visual_embedding"].tolist()
    row["created_at"] = dt.datetime.now(dt.timezone.utc)
    return row


def test_filters_by_stream_and_time(tmp_path):
    store = Store(tmp_path)
    store.write_records([_segment("a", i, f"a{i}") for i in range(6)] + [_segment("b", i, f"b{i}") for i in range(2)])
    q = StoreQuery(tmp_path)
    assert len(q.segments()) == 8
    assert [r["chunk_seq"] for r in q.segments("a", since=20, until="0:01:00")] == [1, 2, 3]
    assert [r["chunk_seq"] for r in q.segments("a", until=15.9)] == [0]
    assert q.segments("nope") == []
    assert [s["stream_id"] for s in q.streams()] == ["a", "b"]
    with pytest.raises(ValueError, match="after"):
        q.segments(since=50, until=10)


def test_keyword_matches_every_word(tmp_path):
    store = Store(tmp_path)
    store.write_records([_segment("a", 0, "A red car parks."), _segment("a", 1, "A red bike passes a car."),
                         _segment("a", 2, "Nothing happens.")])
    hits = StoreQuery(tmp_path).keyword("RED car")
    assert [h["seq"] for h in hits] == [0, 1]


def test_meaning_search_ranks_bicycles_at_night_first(tmp_path, text_embedder):
    captions = [
        "Two cyclists ride their bicycles down a dark street at night.",
        "A chef chops onions in a restaurant kitchen.",
        "Stock prices are shown on a financial news channel.",
        "A cat sleeps on a sofa next to a window.",
    ]
    store = Store(tmp_path)
    store.write_records([_segment("cam", i, c, text_embedder) for i, c in enumerate(captions)])
    hits = StoreQuery(tmp_path).search(text_embedder.embed(["bikes"])[0], k=4)
    assert hits[0]["text"] == captions[0]
    assert hits[0]["score"] > hits[1]["score"] + 0.1


def test_empty_store_answers_with_nothing(tmp_path):
    q = StoreQuery(tmp_path / "none")
    assert q.segments() == [] and q.summaries() == [] and q.jobs() == [] and q.streams() == []
    assert q.search(np.ones(384, np.float32)) == []


def test_jobs_show_their_latest_state(tmp_path):
    store = Store(tmp_path)
    store.write_job({"job_id": "j1", "status": "running", "started_at": 1.0})
    time.sleep(0.01)
    store.write_job({"job_id": "j1", "status": "done", "started_at": 1.0, "segments": 3})
    (job,) = StoreQuery(tmp_path).jobs()
    assert job["status"] == "done" and job["segments"] == 3


def test_parse_time():
    assert parse_time("90") == ("video", 90.0)
    assert parse_time("1:02:03.5") == ("video", 3723.5)
    kind, when = parse_time("2026-01-02T03:04:05")
    assert kind == "wall" and when.year == 2026 and when.tzinfo is not None
    with pytest.raises(ValueError, match="cannot read time"):
        parse_time("yesterday-ish")
