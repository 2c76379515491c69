"""Meaning-based search over text embeddings: an exact scan while small, a faiss IVF index when large.

Vectors are L2-normalised float32 (MiniLM, 384-d), so inner product = cosine similarity.
Ids are 0..n-1 in the order vectors were added; the caller maps them to rows.

Why IVF (faiss IndexIVFFlat, inner product):
- vs brute force: 1M x 384 float32 is 1.5 GB read on every query: 66 ms with BLAS on both
  cores of our 2-core machine (144 ms on one), growing linearly with the store and holding
  every core for each query. IVF with nlist ~ 4*sqrt(N) lists probes nprobe of them: at 1M,
  32 of 4000 lists is ~8k vectors per query, a few ms on one core.
- vs HNSW: every insert into the graph is itself a search over efConstruction candidates,
  so 1M x 384 on 2 cores would take far longer than IVF (tens of minutes by our estimate;
  not measured), and the links add ~2*M*4 bytes per vector. IVF trains k-means on a sample
  and assigns every vector to its nearest list: 82 s for 1M on this 2-core machine
  (bench/query.py), and adding a new vector is one nearest-centroid lookup, so rows are
  added as they arrive.
  Filters also fit IVF: a bitmap of allowed ids is checked while lists are scanned
  (faiss IDSelectorBitmap), and probing more lists always finds k allowed rows if they
  exist; HNSW's graph walk degrades when a filter cuts most of the graph away.
- IVFFlat keeps full vectors (no quantisation error), so with nprobe = nlist it is
  exact, and with a direct map any vector can be read back for an exact scan of a
  filter's few rows.

Persistence: `save` writes a new folder gen-<ns>/ (faiss.write_index or np.save, the keys
in Arrow IPC, meta.json last) and `load` takes the newest complete one. No pickle.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.feather as feather

FORMAT = 1


def nlist_for(n: int) -> int:
    """IVF lists for n vectors: ~4*sqrt(n), with at least 39 training points per list (faiss' floor)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


class VectorIndex:
    """(n, dim) vectors with ids 0..n-1; top-k by inner product, optionally among given ids.

    min_vectors: from this size on an IVF index is used (None: always exact).
    nprobe: IVF lists probed per query (raised, x4 at a time, when fewer than k allowed rows are found).
    exact_limit: a filter that allows at most this many ids is scanned exactly.
    regrow: retrain once the index holds this many times the vectors it was trained on.
    """

    def __init__(self, dim: int, min_vectors: int | None = 50000, nprobe: int = 32, exact_limit: int = 20000,
                 regrow: float = 4.0):
        self.dim, self.min_vectors, self.nprobe = dim, min_vectors, nprobe
        self.exact_limit, self.regrow = exact_limit, regrow
        self._chunks: list[np.ndarray] = []  # exact mode: (m, dim) blocks in id order
        self._n_exact = 0
        self.ivf: faiss.IndexIVFFlat | None = None
        self.trained_on = 0

    @property
    def n(self) -> int:
        return self.ivf.ntotal if self.ivf is not None else self._n_exact

    @property
    def kind(self) -> str:
        return "ivf" if self.ivf is not None else "exact"

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append (m, dim) vectors. Returns their ids (m,) int64."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        ids = np.arange(self.n, self.n + len(vectors), dtype=np.int64)
        if not len(vectors):
            return ids
        if self.ivf is not None:
            self.ivf.add(vectors)
        else:
            self._chunks.append(vectors)
            self._n_exact += len(vectors)
        return ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) stored vectors."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.ivf is not None:
            return self.ivf.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        return self._matrix()[ids]

    def _matrix(self) -> np.ndarray:
        if len(self._chunks) != 1:  # one block, joined once after adds
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim), np.float32)]
        return self._chunks[0]

    # --- growing ---

    def needs_rebuild(self) -> bool:
        if self.min_vectors is None:
            return False
        if self.ivf is None:
            return self.n >= self.min_vectors
        return self.n >= self.regrow * self.trained_on

    def rebuilt(self, seed: int = 0) -> VectorIndex:
        """A new IVF index over the same vectors, trained on a sample of them. Only reads self,
        so searches can go on meanwhile; the caller swaps the result in."""
        n, nlist = self.n, nlist_for(self.n)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        # 10 k-means iterations on 64 points per list (faiss: 25 on up to 256) keep a 1M build near
        # a minute and a half on 2 cores; bench/query.py reports the recall this gives.
        ivf.cp.niter = 10
        sample = min(n, 64 * nlist)
        ids = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        ivf.train(self.vectors(ids))
        ivf.set_direct_map_type(faiss.DirectMap.Array)  # reconstruct(id) for exact scans of few rows
        for start in range(0, n, 65536):
            ivf.add(self.vectors(np.arange(start, min(n, start + 65536))))
        new = VectorIndex(self.dim, self.min_vectors, self.nprobe, self.exact_limit, self.regrow)
        new.ivf, new.trained_on = ivf, n
        return new

    # --- searching ---

    def search(self, query: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), best first; only among `ids` when given. Returns min(k, allowed) rows.

        Runs on the calling thread only: a one-query search gains little from more, and the
        OpenMP threads faiss would wake spin after each search, taking the cores from the text
        embedder that runs next in a server (its p95 went from 30 to 450 ms at 1M).
        """
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # this thread's setting; a rebuild in another keeps its threads
        try:
            return self._search(query, k, ids)
        finally:
            faiss.omp_set_num_threads(previous)

    def _search(self, query, k, ids):
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query vector has {query.shape[0]} dimensions; the index holds {self.dim}")
        if ids is not None:
            ids = np.asarray(ids, dtype=np.int64)
            ids = ids[(ids >= 0) & (ids < self.n)]
        if k <= 0 or self.n == 0 or (ids is not None and not len(ids)):
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self.ivf is None or (ids is not None and len(ids) <= self.exact_limit):
            return self._exact(query, k, ids)
        return self._probe(query, k, ids)

    def _exact(self, query, k, ids):
        matrix = self._matrix() if ids is None else self.vectors(ids)  # ids is None only without IVF
        # faiss rather than numpy's matmul, whose BLAS threads would spin after it like OpenMP's
        scores, top = faiss.knn(query[None], matrix, min(k, len(matrix)), metric=faiss.METRIC_INNER_PRODUCT)
        scores, top = scores[0], top[0]
        return scores, (top if ids is None else ids[top]).astype(np.int64)

    def _probe(self, query, k, ids):
        nlist = self.ivf.nlist
        want = min(k, self.n if ids is None else len(ids))
        params = faiss.SearchParametersIVF()
        if ids is not None:
            allowed = np.zeros(self.n, dtype=bool)
            allowed[ids] = True
            bitmap = np.packbits(allowed, bitorder="little")  # kept alive for the searches below
            params.sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        nprobe = max(1, self.nprobe)
        while True:
            params.nprobe = min(nprobe, nlist)
            scores, found = self.ivf.search(query[None], k, params=params)
            hit = found[0] >= 0
            if hit.sum() >= want or nprobe >= nlist:  # a strict filter can leave probed lists short of k
                return scores[0][hit], found[0][hit].astype(np.int64)
            nprobe *= 4


# --- persistence ---


def save(folder: Path, index: VectorIndex, keys: pa.Table, files: list[str]) -> Path:
    """Write index + keys (one row per id, in id order) + the files they cover as a new generation."""
    if keys.num_rows != index.n:
        raise ValueError(f"{keys.num_rows} keys for {index.n} vectors")
    folder = Path(folder)
    gen = folder / f"gen-{time.time_ns()}-{os.getpid()}"
    gen.mkdir(parents=True)
    if index.ivf is not None:
        faiss.write_index(index.ivf, str(gen / "vectors.faiss"))
    else:
        np.save(gen / "vectors.npy", index.vectors(np.arange(index.n)))
    feather.write_feather(keys, gen / "keys.arrow", compression="uncompressed")
    meta = {"format": FORMAT, "kind": index.kind, "dim": index.dim, "n": index.n, "trained_on": index.trained_on,
            "files": sorted(files)}
    (gen / "meta.json.tmp").write_text(json.dumps(meta))
    os.replace(gen / "meta.json.tmp", gen / "meta.json")  # the generation is complete from here on
    for old in folder.glob("gen-*"):
        if old != gen and old.name < gen.name:
            shutil.rmtree(old, ignore_errors=True)
    return gen


def load(folder: Path, dim: int, **params) -> tuple[VectorIndex, pa.Table, set[str]] | None:
    """The newest complete generation under `folder`: (index, keys, files covered), or None.
    `params` are VectorIndex's (the current config's, not the saved ones)."""
    gens = sorted(p for p in Path(folder).glob("gen-*") if (p / "meta.json").is_file()) if Path(folder).is_dir() else []
    for gen in reversed(gens):
        try:
            return _load_generation(gen, dim, params)
        except (OSError, ValueError, KeyError, RuntimeError):  # half-deleted or foreign: try an older one
            continue
    return None


def _load_generation(gen: Path, dim: int, params: dict) -> tuple[VectorIndex, pa.Table, set[str]]:
    meta = json.loads((gen / "meta.json").read_text())
    if meta["format"] != FORMAT or meta["dim"] != dim:
        raise ValueError(f"index at {gen} has format {meta['format']}, dim {meta['dim']}")
    index = VectorIndex(dim, **params)
    if meta["kind"] == "ivf":
        index.ivf = faiss.read_index(str(gen / "vectors.faiss"))
        if index.ivf.direct_map.type != faiss.DirectMap.Array:
            index.ivf.make_direct_map(True)
        index.trained_on = meta["trained_on"]
    else:
        index.add(np.load(gen / "vectors.npy"))
    keys = feather.read_table(gen / "keys.arrow", memory_map=False)
    if index.n != meta["n"] or keys.num_rows != meta["n"]:
        raise ValueError(f"index at {gen} is incomplete")
    return index, keys, set(meta["files"])
