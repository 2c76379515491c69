"""Queries over the Parquet store: filters and keywords through DuckDB, meaning through a vector index.

A StoreQuery copies every column but the embeddings into in-memory DuckDB tables, one row
per key (segments: stream_id, chunk_seq, level; summaries: stream_id, seq, level; jobs:
job_id, the latest updated_at wins), so a query scans memory, not files. `refresh()` reads
only the Parquet files it has not read before; a long-lived server calls it from a thread
while queries run. Compaction merges files without changing rows, so the rows of a merged
file whose keys are already loaded are skipped (the first stored row of a key wins), and
the rows of files it removed stay.

Text embeddings go to a VectorIndex per table (pipeline/store/index.py), opened by the
first meaning-based search (or `open_index()`); each row's `vid` is its id there. The
index is saved under <store>/_index/, beside the table folders (Store never lists it),
with the keys and files it covers, so a restart reads only the embeddings of new files.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.dataset as ds

from pipeline.store import index as vector_index
from pipeline.store.index import VectorIndex
from pipeline.store.schema import LISTED, SCHEMAS, STREAM_KEYS, TEXT_DIM
from pipeline.store.sql import limit_clause, query_words, segment_filters, where_clause

INDEX_DIR = "_index"
TABLES = ("segments", "summaries", "jobs")
ROW_KEYS = {table: ("stream_id", *key) for table, key in STREAM_KEYS.items()}  # a row's key across streams
EMBEDDINGS = ("text_embedding", "visual_embedding")
# Thumbnails stay in the Parquet files: in memory each segment has only whether it has one and where
# it is (file, row), so GET .../thumbnail.jpg reads one row group of one file.
THUMBNAIL_PLACE = [pa.field("has_thumbnail", pa.bool_()), pa.field("_file_name", pa.string()),
                   pa.field("_file_row", pa.int64())]
SAVE_EVERY = 10000  # vectors added since the last save; and at least a tenth of the index


def _columns(table: str) -> list[pa.Field]:
    """The stored columns kept in memory: all but the embeddings and the thumbnails."""
    return [f for f in SCHEMAS[table] if f.name not in (*EMBEDDINGS, "thumbnail")]


def _thumbnail_flags(path: Path) -> np.ndarray:
    """Which rows of a segments file hold a thumbnail, from the row groups' null counts where they
    settle it (all or none), else by reading that row group's thumbnail column."""
    meta = pq.read_metadata(path)
    flags = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        column = next((group.column(c) for c in range(group.num_columns)
                       if group.column(c).path_in_schema == "thumbnail"), None)
        stats = column.statistics if column is not None else None
        if column is None or (stats is not None and stats.has_null_count and stats.null_count == group.num_rows):
            flags.append(np.zeros(group.num_rows, bool))
        elif stats is not None and stats.has_null_count and stats.null_count == 0:
            flags.append(np.ones(group.num_rows, bool))
        else:
            data = pq.ParquetFile(path).read_row_group(g, columns=["thumbnail"]).column(0)
            flags.append(data.is_valid().to_numpy(zero_copy_only=False))
    return np.concatenate(flags) if flags else np.zeros(0, bool)


class StoreQuery:
    """Segments, summaries and jobs of the store at `root`, loaded now and on `refresh()`.

    index_min_vectors, index_nprobe: StoreConfig's (exact scan below that size, IVF above).
    exact_limit: a search filter that leaves at most this many rows is scanned exactly.
    tables: the tables to load (the others stay empty): a caller that needs only the jobs
        does not read millions of segments.
    """

    def __init__(self, root: str | Path, index_min_vectors: int = 50000, index_nprobe: int = 32,
                 exact_limit: int = 20000, tables: tuple[str, ...] = TABLES):
        self.root = Path(root)
        self.tables = tables
        self.index_params = {"min_vectors": index_min_vectors, "nprobe": index_nprobe, "exact_limit": exact_limit}
        self.db = duckdb.connect()
        self.db.execute("SET TimeZone = 'UTC'")
        self._lock = threading.RLock()  # the tables and indexes: queries, and the apply step of a refresh
        self._refresh_lock = threading.Lock()  # one refresh (or index opening) at a time
        self._files: dict[str, set[str]] = {table: set() for table in TABLES}  # relative to root
        self._bad: set[str] = set()  # files that are not readable Parquet, said once and skipped
        self._indexes: dict[str, VectorIndex] | None = None
        self._keys: dict[str, list[pa.Table]] = {}  # per table: the key of each vector id, in id order
        self._unsaved: dict[str, int] = {}
        self._streams: list[dict] | None = None  # streams(), until new segments come
        self._stream_ids: set[str] = set()
        for table in TABLES:
            fields = (_columns(table) + (THUMBNAIL_PLACE if table == "segments" else [])
                      + ([pa.field("vid", pa.int64())] if table in ROW_KEYS else []))
            with self._registered(_empty=pa.schema(fields).empty_table()):
                self.db.execute(f"CREATE TABLE {table} AS SELECT * FROM _empty")
        self.refresh()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # --- loading ---

    def refresh(self) -> int:
        """Load the rows of Parquet files not read before. Returns how many rows were new."""
        with self._refresh_lock:
            added = sum(self._refresh_table(table) for table in self.tables)
            if self._indexes is not None:
                self._grow_indexes()
            return added

    def _refresh_table(self, table: str) -> int:
        for _attempt in range(5):
            files = self._unread(table, self._files[table])
            if not files:
                return 0
            try:
                return self._load(table, files)
            except FileNotFoundError:  # compaction removed one after the listing: list again
                continue
        raise RuntimeError(f"files under {self.root / table} kept vanishing while being read")

    def _load(self, table: str, files: list[str]) -> int:
        data = self._scan(table, files, [f.name for f in _columns(table)])
        if table == "jobs":
            with self._lock:
                self._merge_jobs(data.drop_columns(["_file", "_row"]))
                self._files[table].update(files)
            return data.num_rows
        key = list(ROW_KEYS[table])
        kept = self._first_per_key(table, data.select([*key, "created_at"]), loaded=False)
        rows = data.take(kept)
        if table == "segments":
            rows = self._thumbnail_places(files, rows)
        vids = pa.nulls(len(kept), pa.int64())
        if self._indexes is not None and len(kept):
            vectors = self._vectors(table, files, rows)  # before any change: a vanished file retries cleanly
            with self._lock:
                vids = pa.array(self._add_vectors(table, vectors, rows.select(key)))
        with self._lock:
            with self._registered(_batch=rows.drop_columns(["_file", "_row"]).append_column("vid", vids)):
                self.db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch ORDER BY {', '.join(key)}")
            self._files[table].update(files)
            if table == "segments":
                self._streams = None
        return len(kept)

    def _thumbnail_places(self, files: list[str], rows: pa.Table) -> pa.Table:
        file_of, row_of = rows.column("_file").to_numpy(), rows.column("_row").to_numpy()
        flags = {i: _thumbnail_flags(self.root / files[i]) for i in np.unique(file_of)}
        has = np.array([flags[f][r] if r < len(flags[f]) else False for f, r in zip(file_of, row_of)], bool)
        names = pa.array([files[f] for f in file_of], pa.string())
        return (rows.append_column("has_thumbnail", pa.array(has)).append_column("_file_name", names)
                .append_column("_file_row", pa.array(row_of, pa.int64())))

    def _unread(self, table: str, skip: set[str]) -> list[str]:
        base = self.root / table
        listed = sorted(str(p.relative_to(self.root)) for p in base.rglob("*.parquet")) if base.is_dir() else []
        return [f for f in listed if f not in skip and f not in self._bad and self._readable(f)]

    def _readable(self, name: str) -> bool:
        """A file that is not Parquet (truncated, overwritten, ...) is said once and left out,
        instead of failing every refresh and every search from then on."""
        try:
            pq.read_metadata(self.root / name)
            return True
        except FileNotFoundError:
            return False  # compacted away since the listing
        except (OSError, pa.ArrowException) as err:
            self._bad.add(name)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            print(f"vidstorm: warning: skipping unreadable Parquet file {self.root / name}: {reason}",
                  file=sys.stderr, flush=True)
            return False

    def _scan(self, table: str, files: list[str], columns: list[str]) -> pa.Table:
        """The rows of `files` in order, plus _file (index into files) and _row (row in that file).
        Files written with an older schema get nulls for the columns they lack."""
        if not files:
            data = pa.schema([SCHEMAS[table].field(c) for c in columns]).empty_table()
            return data.append_column("_file", pa.array([], pa.int32())).append_column("_row", pa.array([], pa.int64()))
        dataset = ds.dataset([str(self.root / f) for f in files], schema=SCHEMAS[table], format="parquet")
        data = dataset.to_table(columns=[*columns, "__fragment_index"]).rename_columns([*columns, "_file"])
        file_of = data.column("_file").to_numpy()
        first = np.searchsorted(file_of, np.arange(len(files)))  # each file's first row
        return data.append_column("_row", pa.array(np.arange(len(file_of)) - first[file_of]))

    def _vectors(self, table: str, files: list[str], rows: pa.Table) -> np.ndarray:
        """(len(rows), 384) text embeddings of `rows` (with _file, _row), reading only the files they are in."""
        file_of, row_of = rows.column("_file").to_numpy(), rows.column("_row").to_numpy()
        out = np.empty((len(file_of), TEXT_DIM), np.float32)
        wanted = np.unique(file_of)
        for start in range(0, len(wanted), 64):  # a few hundred MB at a time
            group = wanted[start : start + 64]
            part = self._scan(table, [files[i] for i in group], ["text_embedding"])
            matrix = _matrix(part.column("text_embedding"))
            first = np.searchsorted(part.column("_file").to_numpy(), np.arange(len(group)))
            mine = np.isin(file_of, group)
            out[mine] = matrix[first[np.searchsorted(group, file_of[mine])] + row_of[mine]]
        return out

    def _first_per_key(self, table: str, keys: pa.Table, loaded: bool, known: pa.Table | None = None) -> np.ndarray:
        """Positions in `keys` (key columns + created_at) of the rows whose key is loaded already
        (loaded=False: is not) and is not in `known`; of each key the first by created_at, in order."""
        key = ROW_KEYS[table]
        match = lambda other: " AND ".join(f"{other}.{c} = b.{c}" for c in key)  # noqa: E731
        conditions = [f"{'' if loaded else 'NOT '}EXISTS (SELECT 1 FROM {table} t WHERE {match('t')})"]
        tables = {"_keys": keys.append_column("_pos", pa.array(np.arange(keys.num_rows, dtype=np.int64)))}
        if known is not None:
            conditions.append(f"NOT EXISTS (SELECT 1 FROM _known k WHERE {match('k')})")
            tables["_known"] = known
        with self._lock, self._registered(**tables):
            return self.db.execute(
                f"SELECT _pos FROM _keys b WHERE {' AND '.join(conditions)} "
                f"QUALIFY row_number() OVER (PARTITION BY {', '.join(key)} ORDER BY created_at, _pos) = 1 "
                "ORDER BY _pos"
            ).fetchnumpy()["_pos"]

    def _merge_jobs(self, data: pa.Table) -> None:
        with self._registered(_batch=data):
            self.db.execute(
                "CREATE OR REPLACE TEMP TABLE _jobs AS SELECT * FROM "
                "(SELECT * FROM jobs UNION ALL BY NAME SELECT * FROM _batch) "
                "QUALIFY row_number() OVER (PARTITION BY job_id ORDER BY updated_at DESC NULLS LAST) = 1"
            )
        self.db.execute("DELETE FROM jobs")
        self.db.execute("INSERT INTO jobs BY NAME SELECT * FROM _jobs")
        self.db.execute("DROP TABLE _jobs")

    @contextmanager
    def _registered(self, **tables: pa.Table):
        for name, table in tables.items():
            self.db.register(name, table)
        try:
            yield
        finally:
            for name in tables:
                self.db.unregister(name)

    # --- the vector indexes ---

    def open_index(self) -> None:
        """Give every loaded row its text embedding in a vector index: from the saved index where it
        covers the files, else read from Parquet (and trained, if large). The first search does it."""
        with self._refresh_lock:
            if self._indexes is not None:
                return
            opened = {table: self._open_vectors(table) for table in ROW_KEYS}
            with self._lock:
                self._indexes = {table: index for table, (index, _) in opened.items()}
                self._keys = {table: [keys] for table, (_, keys) in opened.items()}
            self._grow_indexes()

    def _open_vectors(self, table: str) -> tuple[VectorIndex, pa.Table]:
        key = list(ROW_KEYS[table])
        params = self.index_params if table == "segments" else {**self.index_params, "min_vectors": None}
        saved = vector_index.load(self.root / INDEX_DIR / table, TEXT_DIM, **params)
        if saved is None:
            index, keys, covered = VectorIndex(TEXT_DIM, **params), SCHEMAS[table].empty_table().select(key), set()
        else:
            index, keys, covered = saved
        known = keys.append_column("vid", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
        for _attempt in range(5):
            try:  # loaded rows the saved index lacks: in files it does not cover (others come with refresh)
                files = self._unread(table, covered)
                fresh = self._scan(table, files, [*key, "created_at"])
                need = self._first_per_key(table, fresh.select([*key, "created_at"]), loaded=True, known=known)
                rows = fresh.take(need)
                vectors = self._vectors(table, files, rows)
                break
            except FileNotFoundError:
                continue
        else:
            raise RuntimeError(f"files under {self.root / table} kept vanishing while being read")
        with self._lock:
            vids = index.add(vectors)
            known = pa.concat_tables([known, rows.select(key).append_column("vid", pa.array(vids))])
            by = ", ".join(key)
            with self._registered(_all=known):
                self.db.execute(f"CREATE OR REPLACE TABLE _{table}_new AS SELECT t.* EXCLUDE (vid), a.vid FROM "
                                f"{table} t LEFT JOIN _all a USING ({by}) ORDER BY {by}")
                self.db.execute(f"DROP TABLE {table}")
                self.db.execute(f"ALTER TABLE _{table}_new RENAME TO {table}")
            self._unsaved[table] = len(vids)
        return index, known.drop_columns(["vid"])

    def _add_vectors(self, table: str, vectors: np.ndarray, keys: pa.Table) -> np.ndarray:
        vids = self._indexes[table].add(vectors)
        self._keys[table].append(keys)
        self._unsaved[table] += len(vids)
        return vids

    def _grow_indexes(self) -> None:
        """Retrain an index that outgrew its training (while queries use the old one), save when much changed."""
        for table in ROW_KEYS:
            index = self._indexes[table]
            rebuild = index.needs_rebuild()
            if rebuild:
                index = index.rebuilt()
                with self._lock:
                    self._indexes[table] = index
            if rebuild or self._unsaved[table] >= max(SAVE_EVERY, index.n // 10):
                self._save_index(table)

    def _save_index(self, table: str) -> None:
        """Write the table's index under <store>/_index/ (skipped on a read-only store)."""
        with self._lock:
            keys = pa.concat_tables(self._keys[table])
            self._keys[table] = [keys]
            index, files = self._indexes[table], sorted(self._files[table])
        try:
            vector_index.save(self.root / INDEX_DIR / table, index, keys, files)
        except OSError:
            return
        self._unsaved[table] = 0

    def index_info(self) -> dict:
        """{table: {"kind": "exact"|"ivf", "n": vectors, "nlist": lists or 0, "nprobe"}}; {} before open_index()."""
        with self._lock:
            return {table: {"kind": index.kind, "n": index.n, "nlist": index.ivf.nlist if index.ivf else 0,
                            "nprobe": index.nprobe}
                    for table, index in (self._indexes or {}).items()}

    # --- filters ---

    def _rows(self, sql: str, params: list) -> list[dict]:
        with self._lock:
            cursor = self.db.execute(sql, params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    # --- queries ---

    def streams(self) -> list[dict]:
        with self._lock:
            if self._streams is None:
                self._streams = self._rows(
                    "SELECT stream_id, count(*) AS segments, min(t_start) AS t_start, max(t_end) AS t_end, "
                    "max(created_at) AS last_update FROM segments GROUP BY stream_id ORDER BY stream_id",
                    [],
                )
                self._stream_ids = {row["stream_id"] for row in self._streams}
            return [dict(row) for row in self._streams]

    def thumbnail(self, stream_id: str, chunk_seq: int) -> bytes | None:
        """The JPEG stored with a chunk's segment, or None (no such segment, or none stored)."""
        with self._lock:
            found = self.db.execute(
                "SELECT _file_name, _file_row FROM segments WHERE stream_id = ? AND chunk_seq = ? AND level = 'chunk' "
                "AND has_thumbnail", [stream_id, int(chunk_seq)]).fetchall()
        if not found:
            return None
        name, row = found[0]
        try:
            return _row_value(self.root / name, int(row), "thumbnail")
        except FileNotFoundError:  # compacted since it was loaded: the merged file holds the same row
            from pipeline.store.parquet import _stream_dir

            folder = self.root / "segments" / _stream_dir(stream_id)
            table = ds.dataset(str(folder), format="parquet", schema=SCHEMAS["segments"]).to_table(
                columns=["thumbnail"], filter=(ds.field("chunk_seq") == int(chunk_seq)) & (ds.field("level") == "chunk")
                & ds.field("thumbnail").is_valid())
            return table.column(0)[0].as_py() if table.num_rows else None

    def stream_source(self, stream_id: str) -> str | None:
        """The source (file path or live URL) a stream's segments came from (its latest segment's)."""
        with self._lock:
            found = self.db.execute("SELECT source FROM segments WHERE stream_id = ? ORDER BY chunk_seq DESC LIMIT 1",
                                    [stream_id]).fetchall()
        return found[0][0] if found and found[0][0] else None

    def latest_thumbnails(self) -> dict[str, int]:
        """stream_id -> chunk_seq of its latest segment that has a thumbnail."""
        with self._lock:
            rows = self.db.execute("SELECT stream_id, max(chunk_seq) FROM segments WHERE has_thumbnail "
                                   "GROUP BY stream_id").fetchall()
        return {stream: int(seq) for stream, seq in rows}

    def has_stream(self, stream_id: str) -> bool:
        """A stream with segments, or with summaries only (e.g. rows written by a digest)."""
        with self._lock:
            self.streams()
            if stream_id in self._stream_ids:
                return True
            return bool(self.db.execute("SELECT 1 FROM summaries WHERE stream_id = ? LIMIT 1", [stream_id]).fetchall())

    def segments(self, stream=None, since=None, until=None, limit=None, q=None, after=None) -> list[dict]:
        """Segments in (stream_id, chunk_seq) order. q: caption holds every word (any case);
        after: a (stream_id, chunk_seq) cursor, rows strictly after it."""
        clauses, params = segment_filters(stream, since, until, q, after)
        sql = (
            f"SELECT {', '.join(LISTED['segments'])}, has_thumbnail FROM segments{where_clause(clauses)} "
            "ORDER BY stream_id, chunk_seq"
        )
        return self._rows(sql + limit_clause(limit), params)

    def summaries(self, stream=None, level=None) -> list[dict]:
        clauses, params = segment_filters(stream)
        if level:
            clauses.append("level = ?")
            params.append(level)
        order = "CASE level WHEN 'stream' THEN 0 WHEN 'period' THEN 1 ELSE 2 END"
        return self._rows(
            f"SELECT {', '.join(LISTED['summaries'])} FROM summaries{where_clause(clauses)} "
            f"ORDER BY stream_id, {order}, seq",
            params,
        )

    def jobs(self, name=None, status=None, limit=None) -> list[dict]:
        """The latest state of each job, newest first; only runs of job `name` / in `status` when given."""
        clauses, params = [], []
        for column, value in (("job_name", name), ("status", status)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT * FROM jobs{where_clause(clauses)} ORDER BY started_at DESC NULLS LAST, job_id"
        return self._rows(sql + limit_clause(limit), params)

    def keyword(self, text: str, stream=None, since=None, until=None, limit=20) -> list[dict]:
        """Case-insensitive match of every word, over captions and summaries."""
        clauses, params = segment_filters(stream, since, until)
        words = query_words(text)
        out = []
        for table, column, seq, level, thumb in (("segments", "caption", "chunk_seq", "'chunk'", "has_thumbnail"),
                                                 ("summaries", "text", "seq", "level", "FALSE")):
            match = [f"contains(lower({column}), ?)" for _ in words]
            out += self._rows(
                f"SELECT stream_id, {level} AS level, {seq} AS seq, t_start, t_end, {column} AS text, "
                f"{thumb} AS has_thumbnail "
                f"FROM {table}{where_clause(clauses + match)} ORDER BY stream_id, t_start{limit_clause(limit)}",
                params + words,
            )
        return out[:limit]

    def search(self, query_vector: np.ndarray, stream=None, since=None, until=None, k=10) -> list[dict]:
        """Captions and summaries ranked by cosine similarity to an embedded query, best first."""
        clauses, params = segment_filters(stream, since, until)
        if self._indexes is None:
            self.open_index()
        hits = []
        with self._lock:
            for table in ROW_KEYS:
                ids = None
                if clauses:  # the filter's rows, searched exactly when few, through the IVF when many
                    ids = self.db.execute(f"SELECT vid FROM {table}{where_clause(clauses + ['vid IS NOT NULL'])}",
                                          params).fetchnumpy()["vid"]
                scores, vids = self._indexes[table].search(query_vector, int(k), ids)
                hits += self._hits(table, scores, vids)
        hits.sort(key=lambda hit: -hit["score"])
        return hits[:k]

    def _hits(self, table: str, scores: np.ndarray, vids: np.ndarray) -> list[dict]:
        if not len(vids):
            return []
        seq, level, text, thumb = (("chunk_seq", "'chunk'", "caption", "has_thumbnail") if table == "segments"
                                   else ("seq", "level", "text", "FALSE"))
        rows = self._rows(
            f"SELECT stream_id, {level} AS level, {seq} AS seq, t_start, t_end, {text} AS text, "
            f"{thumb} AS has_thumbnail, vid "
            f"FROM {table} WHERE vid IN ({', '.join(str(int(v)) for v in vids)})",
            [],
        )
        score = dict(zip(vids.tolist(), scores.tolist()))
        for row in rows:
            row["score"] = score[row.pop("vid")]
        return rows


def _row_value(path: Path, row: int, column: str):
    """One value of a Parquet file, reading only the row group that holds the row."""
    reader = pq.ParquetFile(path)
    for g in range(reader.metadata.num_row_groups):
        n = reader.metadata.row_group(g).num_rows
        if row < n:
            return reader.read_row_group(g, columns=[column]).column(0)[row].as_py()
        row -= n
    return None


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column of float32 -> (n, 384) array (a stored null becomes zeros, never found)."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        array = pa.array([v if v is not None else [0.0] * TEXT_DIM for v in array.to_pylist()], type=array.type)
    return array.flatten().to_numpy(zero_copy_only=False).reshape(-1, TEXT_DIM)
