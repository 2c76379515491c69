"""StoreQuery over real Parquet files: filters, keywords, cursor pages, refresh, and the vector index."""

import datetime as dt
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store import Store
from pipeline.store.index import VectorIndex
from pipeline.store.query import INDEX_DIR, StoreQuery
from pipeline.store.schema import JOBS
from pipeline.types import Segment, Summary

DIM = 384


def _segment(stream, seq, caption="", vector=None, wall=None):
    vector = np.zeros(DIM, np.float32) if vector is None else vector
    return Segment(stream, seq, seq * 16.0, (seq + 1) * 16.0, caption, np.ones(4, np.float32), vector, 16, "fp1",
                   source=f"{stream}.mp4", wall_clock=wall, created_at=time.time())


def _clustered(n, seed=0, centres=40):
    """n unit vectors around a few random centres, like captions of recurring scenes."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(centres, DIM))
    x = centre[rng.integers(0, centres, n)] + 0.6 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vector_store(root, n=2000, streams=4):
    """n segments over `streams` streams with clustered embeddings. Returns {(stream, seq): vector}."""
    vectors = _clustered(n)
    per = n // streams
    store, truth = Store(root), {}
    for s in range(streams):
        rows = [_segment(f"cam{s}", i, f"scene {i}", vectors[s * per + i]) for i in range(per)]
        store.write_records(rows)
        truth.update({(f"cam{s}", i): vectors[s * per + i] for i in range(per)})
    return truth


def _exact(truth, query, k, keep=lambda key: True):
    keys = [key for key in truth if keep(key)]
    scores = np.stack([truth[key] for key in keys]) @ query
    return [keys[i] for i in np.argsort(-scores)[:k]]


def _keys(hits):
    return [(h["stream_id"], h["seq"]) for h in hits]


# --- filters, keywords, pages ---


def test_filters_keyword_and_stream_check(tmp_path):
    noon = dt.datetime(2026, 1, 2, 12, tzinfo=dt.timezone.utc).timestamp()
    Store(tmp_path).write_records(
        [_segment("lobby", 0, "A red car parks.", wall=noon), _segment("lobby", 1, "A RED bike passes a car."),
         _segment("lobby", 2, "Nothing happens."), _segment("yard", 0, "A red_bus sign.")]
    )
    q = StoreQuery(tmp_path)
    assert [r["chunk_seq"] for r in q.segments("lobby", q="red CAR")] == [0, 1]
    assert [(r["stream_id"], r["chunk_seq"]) for r in q.segments(q="car")] == [("lobby", 0), ("lobby", 1)]
    assert [r["stream_id"] for r in q.segments(q="d_b")] == ["yard"]  # `_` is itself, not a wildcard (red bike)
    assert [r["chunk_seq"] for r in q.segments("lobby", since=20, q="a")] == [1, 2]
    (row,) = q.segments(since="2026-01-02T11:00:00")
    assert row["wall_clock"] == dt.datetime.fromtimestamp(noon, dt.timezone.utc)
    assert q.has_stream("yard") and not q.has_stream("nope")
    with pytest.raises(ValueError, match="after"):
        q.segments(since="1:00", until=10)


def test_cursor_pages_return_every_row_exactly_once(tmp_path):
    store = Store(tmp_path)
    for stream in ("b", "a", "c/1"):
        store.write_records([_segment(stream, i, f"{'even' if i % 2 == 0 else 'odd'} scene") for i in range(23)])
    q = StoreQuery(tmp_path)
    for filters in ({}, {"q": "even"}, {"since": 100, "until": 250}):
        everything = [(r["stream_id"], r["chunk_seq"]) for r in q.segments(**filters)]
        pages, after = [], None
        while True:
            page = q.segments(limit=5, after=after, **filters)
            pages += [(r["stream_id"], r["chunk_seq"]) for r in page]
            if len(page) < 5:
                break
            after = pages[-1]
        assert pages == everything and len(set(pages)) == len(pages) > 5


def test_jobs_filters_and_files_from_before_the_named_job_columns(tmp_path):
    old_schema = pa.schema([f for f in JOBS if f.name not in ("job_name", "run_id", "window", "trigger", "attempts")])
    folder = tmp_path / "jobs" / "date=2026-01-01"
    folder.mkdir(parents=True)
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    pq.write_table(pa.Table.from_pylist([{"job_id": "old", "status": "done", "started_at": when, "updated_at": when}],
                                        schema=old_schema), folder / "part-0-old.parquet")
    store = Store(tmp_path)
    store.write_job({"job_id": "r1", "job_name": "nightly", "status": "running", "started_at": time.time()})
    store.write_job({"job_id": "r1", "job_name": "nightly", "status": "done", "started_at": time.time() - 5})
    store.write_job({"job_id": "r2", "job_name": "nightly", "status": "failed", "started_at": time.time()})
    q = StoreQuery(tmp_path)
    assert [j["job_id"] for j in q.jobs()] == ["r2", "r1", "old"]  # newest first
    assert q.jobs()[2]["job_name"] is None
    assert [j["job_id"] for j in q.jobs(name="nightly", status="done")] == ["r1"]
    assert len(q.jobs(name="nightly", limit=1)) == 1 and q.jobs(name="other") == []


def test_segments_from_before_the_model_columns_read_as_none_and_compact(tmp_path):
    from pipeline.store.schema import SEGMENTS

    store = Store(tmp_path)
    new = _segment("cam", 1, "new")
    new.model = "smollm2 + siglip + storm:random init"
    new.untrained = "STORM temporal module + projector (untrained)"
    store.write_records([new])
    (folder,) = {p.parent for p in (tmp_path / "segments").rglob("*.parquet")}
    old_schema = pa.schema([f for f in SEGMENTS if f.name not in ("model", "untrained")])
    old = {"stream_id": "cam", "chunk_seq": 0, "t_start": 0.0, "t_end": 16.0, "caption": "old",
           "level": "chunk", "visual_embedding": [1.0], "text_embedding": [0.0] * DIM, "n_frames": 16,
           "config_fingerprint": "fp0"}
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema), folder / "part-0-old.parquet")
    rows = [(r["caption"], r["model"], r["untrained"]) for r in StoreQuery(tmp_path).segments("cam")]
    assert rows == [("old", None, None), ("new", new.model, new.untrained)]
    assert store.compact() == {"files_before": 2, "files_after": 1}  # old and new files merged into one
    assert [(r["caption"], r["model"], r["untrained"]) for r in StoreQuery(tmp_path).segments("cam")] == rows


# --- refresh ---


def test_refresh_loads_new_files_and_skips_compacted_duplicates(tmp_path):
    store = Store(tmp_path)
    store.write_records([_segment("cam", i, f"c{i}") for i in range(3)])
    q = StoreQuery(tmp_path)
    store.write_records([_segment("cam", 3, "c3"), _segment("new", 0, "n0")])
    assert len(q.segments()) == 3 and not q.has_stream("new")  # not before a refresh
    assert q.refresh() == 2
    assert len(q.segments()) == 5 and q.has_stream("new")
    # a duplicate key that slipped in later: the first stored row stays
    Store(tmp_path)._write("segments", "cam", [_segment_row("cam", 1, "late duplicate")], "2026-01-01")
    stats = store.compact()
    assert stats["files_after"] < stats["files_before"]
    assert q.refresh() == 0
    assert [r["caption"] for r in q.segments("cam")] == ["c0", "c1", "c2", "c3"]
    assert q.refresh() == 0  # nothing new: nothing read


def _segment_row(stream, seq, caption):
    from dataclasses import asdict

    row = asdict(_segment(stream, seq, caption))
    row["text_embedding"], row["visual_embedding"] = row["text_embedding"].tolist(), row["visual_embedding"].tolist()
    row["created_at"] = dt.datetime.now(dt.timezone.utc)
    return row


def test_compaction_adds_no_vectors_and_a_vanished_file_is_listed_again(tmp_path, monkeypatch):
    vectors = _clustered(20, seed=7)
    store = Store(tmp_path)
    store.write_records([_segment("cam", i, "", vectors[i]) for i in range(10)])
    store.write_records([_segment("cam", i, "", vectors[i]) for i in range(10, 20)])
    q = StoreQuery(tmp_path)
    q.open_index()
    store.compact()  # one merged file, every row already loaded

    def no_reading(*args):
        raise AssertionError("read the embeddings of rows already indexed")

    monkeypatch.setattr(StoreQuery, "_vectors", no_reading)
    assert q.refresh() == 0 and q.index_info()["segments"]["n"] == 20
    monkeypatch.undo()
    store.write_records([_segment("cam", 20, "", vectors[0])])
    scan, calls = StoreQuery._scan, []

    def vanishing_once(self, *args):
        calls.append(args)
        if len(calls) == 1:
            raise FileNotFoundError("removed by a compaction")
        return scan(self, *args)

    monkeypatch.setattr(StoreQuery, "_scan", vanishing_once)
    assert q.refresh() == 1 and len(q.segments()) == 21
    assert _keys(q.search(vectors[0], k=2)) in ([("cam", 0), ("cam", 20)], [("cam", 20), ("cam", 0)])


def test_refresh_in_a_thread_while_queries_run(tmp_path):
    store = Store(tmp_path)
    store.write_records([_segment("cam", 0, "c0", _clustered(1)[0])])
    q = StoreQuery(tmp_path)
    q.open_index()
    errors, done = [], threading.Event()

    def writer():
        try:
            for i in range(1, 40):
                store.write_records([_segment("cam", i, f"c{i}", _clustered(1, seed=i)[0])])
                q.refresh()
                if i % 10 == 0:
                    store.compact()
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        rows = q.segments("cam")
        assert [r["chunk_seq"] for r in rows] == list(range(len(rows)))
        indexed = q.index_info()["segments"]["n"]
        assert min(3, indexed) <= len(q.search(_clustered(1, seed=99)[0], k=3)) <= 3
    thread.join()
    assert not errors and q.refresh() == 0
    assert len(q.segments("cam")) == 40 and q.index_info()["segments"]["n"] == 40


# --- meaning-based search ---


def test_ivf_search_equals_exact_search_with_every_list_probed(tmp_path):
    truth = _vector_store(tmp_path)
    queries = _clustered(20, seed=1)
    ivf = StoreQuery(tmp_path, index_min_vectors=1000, index_nprobe=10**6)
    for query in queries:
        assert _keys(ivf.search(query, k=10)) == _exact(truth, query, 10)
    info = ivf.index_info()["segments"]
    assert info["kind"] == "ivf" and info["n"] == 2000 and 1 < info["nlist"] < 2000


def test_ivf_recall_with_few_lists_probed(tmp_path):
    truth = _vector_store(tmp_path)
    queries = _clustered(30, seed=2)
    q = StoreQuery(tmp_path, index_min_vectors=1000, index_nprobe=8)
    found = [len(set(_keys(q.search(v, k=10))) & set(_exact(truth, v, 10))) for v in queries]
    assert sum(found) / (10 * len(queries)) >= 0.9
    assert q.index_info()["segments"]["nlist"] > 4 * 8  # so the probe is far from exhaustive


def test_search_honours_filters_on_both_paths(tmp_path):
    truth = _vector_store(tmp_path)
    query = _clustered(1, seed=3)[0]
    # exact_limit=100: a stream (500 rows) goes through the IVF with an id bitmap; 2 lists probed at first
    q = StoreQuery(tmp_path, index_min_vectors=1000, index_nprobe=2, exact_limit=100)
    few = q.search(query, stream="cam1", since=16 * 490, k=10)  # seq 490..499: exact scan
    assert _keys(few) == _exact(truth, query, 10, lambda key: key[0] == "cam1" and key[1] >= 490)
    many = q.search(query, stream="cam2", since=160, until=2400, k=10)  # seq 10..150: IVF + bitmap
    assert len(many) == 10 and all(h["stream_id"] == "cam2" and 10 <= h["seq"] <= 150 for h in many)
    strict = q.search(query, stream="cam3", since=16 * 380, k=50)  # 120 rows: probing widens until 50 are found
    assert len(strict) == 50 and all(h["stream_id"] == "cam3" and h["seq"] >= 380 for h in strict)
    exact = StoreQuery(tmp_path, index_min_vectors=1000, index_nprobe=10**6, exact_limit=100)
    assert _keys(exact.search(query, stream="cam2", since=160, until=2400, k=10)) == _exact(
        truth, query, 10, lambda key: key[0] == "cam2" and 10 <= key[1] <= 150)


def test_summaries_are_ranked_with_segments(tmp_path):
    vectors = _clustered(4, seed=4)
    Store(tmp_path).write_records(
        [_segment("cam", i, f"c{i}", vectors[i]) for i in range(3)]
        + [Summary("cam", "window", 0, 0.0, 48.0, "the window", vectors[3], "fp1", created_at=time.time())]
    )
    hits = StoreQuery(tmp_path).search(vectors[3], k=4)
    assert [(h["level"], h["text"]) for h in hits][0] == ("window", "the window")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and len(hits) == 4
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_saved_index_is_reloaded_without_retraining(tmp_path, monkeypatch):
    truth = _vector_store(tmp_path)
    query = _clustered(1, seed=5)[0]
    first = StoreQuery(tmp_path, index_min_vectors=1000, index_nprobe=8)
    expected = _keys(first.search(query, k=10))
    assert (tmp_path / "_index" / "segments").is_dir()
    store = Store(tmp_path)
    listed = [p.relative_to(tmp_path) for table in ("segments", "summaries", "jobs") for p in store.files(table)]
    assert listed and not any(INDEX_DIR in p.parts for p in listed)
    store.write_records([_segment("late", 0, "late", query)])  # a file the saved index does not cover
    store.compact()  # and every covered file replaced by a merged one

    def no_training(self, seed=0):
        raise AssertionError("retrained instead of loading the saved index")

    monkeypatch.setattr(VectorIndex, "rebuilt", no_training)
    second = StoreQuery(tmp_path, index_min_vectors=1000, index_nprobe=8)
    hits = second.search(query, k=11)
    assert hits[0]["stream_id"] == "late" and _keys(hits[1:]) == expected
    assert second.index_info()["segments"] == {**first.index_info()["segments"], "n": len(truth) + 1}


def test_index_grows_with_refresh_and_retrains_when_four_times_larger(tmp_path):
    vectors = _clustered(2500, seed=6)
    store = Store(tmp_path)
    store.write_records([_segment("cam", i, "", vectors[i]) for i in range(600)])
    q = StoreQuery(tmp_path, index_min_vectors=500, index_nprobe=10**6)
    q.open_index()
    trained = q._indexes["segments"]
    assert trained.kind == "ivf" and trained.trained_on == 600
    store.write_records([_segment("cam", i, "", vectors[i]) for i in range(600, 1000)])
    q.refresh()
    assert q._indexes["segments"] is trained and trained.n == 1000  # added, not retrained
    assert _keys(q.search(vectors[900], k=1)) == [("cam", 900)]
    store.write_records([_segment("cam", i, "", vectors[i]) for i in range(1000, 2500)])
    q.refresh()
    assert q._indexes["segments"].trained_on == 2500
    assert _keys(q.search(vectors[2400], k=1)) == [("cam", 2400)]


def test_an_unreadable_file_is_said_once_and_skipped(tmp_path, capsys):
    store = Store(tmp_path)
    store.write_records([_segment("cam", 0, "a red car", _clustered(1)[0])])
    q = StoreQuery(tmp_path)
    bad = tmp_path / "segments" / "stream=cam" / "date=2026-11-20" / "part-0-garbage.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"not parquet at all")
    store.write_records([_segment("cam", 1, "a blue van", _clustered(2)[1])])
    assert q.refresh() == 1  # the good new file still arrives
    q.refresh()
    said = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert len(said) == 1 and str(bad) in said[0]
    assert [r["caption"] for r in q.segments()] == ["a red car", "a blue van"]
    assert len(q.search(_clustered(2)[1], k=5)) == 2  # and search opens its index past the bad file


def test_a_stream_with_only_summaries_exists(tmp_path):
    Store(tmp_path).write_records([Summary("lobby", "period", 0, 0.0, 60.0, "quiet", np.zeros(DIM, np.float32), "fp")])
    q = StoreQuery(tmp_path)
    assert q.has_stream("lobby") and not q.has_stream("garage")
