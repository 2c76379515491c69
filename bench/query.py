"""Query latency through the HTTP API on a store of synthetic segments (default 1,000,000).

1. store: 200 streams x 5000 chunks of 16 s (about 22 h each), captions from 2000
   templates (a scene lasts a few chunks), text embeddings = real MiniLM embeddings of
   the templates + small noise, renormalised; one window summary per 300 s and one per
   stream. Written with pyarrow in the Store's layout and cached under bench/.cache/.
2. index: StoreQuery loads the store and builds the IVF index once (index_build_s); it
   is saved under the store, so the server only loads it.
3. server: `vidstorm serve --data DIR` as a subprocess; server_start_s is until GET
   /streams answers, first_search_s the first /search (it opens the saved index).
4. latency, sequential requests from one client after a warm-up: ~200 filtered segment
   queries (stream + time range, stream + keyword, time range only, cursor pages) and
   ~200 searches (with and without a stream filter). Targets: p95 <= 100 ms for
   segments, p95 <= 250 ms for search.
5. recall_at_10: /search answers vs an exact scan of every stored vector.

--direct runs the same mix against StoreQuery in this process (no HTTP), for profiling.
Last line: one JSON object with p95_ms_segments, p95_ms_search and the rest.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pipeline.queue.server import free_port  # noqa: E402
from pipeline.store.schema import SEGMENTS, SUMMARIES, TEXT_DIM  # noqa: E402

CHUNK_S, WINDOW_S, NOISE = 16.0, 300.0, 0.02
START = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)

SUBJECTS = ["A man", "A woman", "Two people", "A child", "A delivery driver", "A security guard", "A cyclist",
            "A group of teenagers", "An elderly couple", "A dog", "A red car", "A white van", "A city bus",
            "A forklift", "A police officer", "A jogger", "A black cat", "A pickup truck", "A street cleaner",
            "A woman with a stroller"]
ACTIONS = ["walks across", "waits near", "stops in front of", "runs through", "parks beside", "talks on a phone near",
           "carries boxes into", "slowly leaves", "enters", "looks around", "drops a bag at", "circles",
           "unloads crates at", "sits down by", "argues with someone at", "takes photos of", "queues at",
           "sweeps the ground by", "reverses out of", "hurries past"]
PLACES = ["the parking lot", "the main entrance", "the loading dock", "the bus stop", "the hotel lobby",
          "the crosswalk", "a shop window", "the warehouse door", "the playground", "the gas station",
          "the ticket machine", "the elevator", "the back alley", "the fountain", "the bicycle rack",
          "the reception desk", "the garage ramp", "the fire exit", "the market stalls", "the taxi rank"]
WHEN = ["", " at night", " in the rain", " in bright sunlight", " during rush hour"]

SEARCHES = ["someone riding a bicycle", "a vehicle parked in a loading area", "people waiting for public transport",
            "a pet animal wandering around", "a person carrying packages", "police activity", "a car at night",
            "children playing outside", "an argument between people", "someone cleaning the street",
            "a truck delivering goods", "a person running in the rain", "tourists taking pictures",
            "an old couple sitting", "a suspicious bag left behind", "a stroller near the entrance",
            "a taxi picking up passengers", "someone using the elevator", "a crowd during rush hour",
            "a forklift moving crates"]
KEYWORDS = ["dog", "red car", "police", "rain", "loading dock", "bus stop", "stroller", "night", "forklift",
            "cyclist", "boxes", "taxi"]


# --- the store ---


def templates(count: int = 2000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    combos = rng.choice(len(SUBJECTS) * len(ACTIONS) * len(PLACES) * len(WHEN), size=count, replace=False)
    out = []
    for c in combos:
        c, w = divmod(int(c), len(WHEN))
        c, p = divmod(c, len(PLACES))
        s, a = divmod(c, len(ACTIONS))
        out.append(f"{SUBJECTS[s]} {ACTIONS[a]} {PLACES[p]}{WHEN[w]}.")
    return out


def template_vectors(texts: list[str]) -> np.ndarray:
    path = CACHE / f"query-templates-{len(texts)}.npy"
    if not path.is_file():
        from pipeline.models.text_embed import TextEmbedder

        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, TextEmbedder().embed(texts))
    return np.load(path)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vectors_column(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), TEXT_DIM)


def _write(root: Path, table: str, stream_id: str, columns: dict, schema: pa.Schema) -> None:
    """One file per date partition, as Store lays them out."""
    days = np.array([w.strftime("%Y-%m-%d") for w in columns["wall_clock"]])
    whole = pa.table({name: columns[name] for name in schema.names}, schema=schema)
    for day in np.unique(days):
        folder = root / table / ("stream=" + urllib.parse.quote(stream_id, safe="")) / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(whole.filter(pa.array(days == day)), folder / f"part-0-{stream_id}.parquet")


def build_store(root: Path, n_segments: int, n_streams: int, seed: int = 0) -> dict:
    texts = templates()
    base = template_vectors(texts)  # (2000, 384)
    texts = np.array(texts, dtype=object)
    rng = np.random.default_rng(seed)
    per = n_segments // n_streams
    counts = {"segments": 0, "summaries": 0}
    for s in range(n_streams):
        stream_id = f"cam-{s:03d}"
        seq = np.arange(per)
        change = rng.random(per) < 0.3  # a scene lasts ~3 chunks
        change[0] = True
        scene = rng.integers(0, len(texts), per)[np.maximum.accumulate(np.where(change, seq, 0))]
        vectors = _unit(base[scene] + NOISE * rng.standard_normal((per, TEXT_DIM), dtype=np.float32))
        start = START + dt.timedelta(hours=s % 24)
        t_start = seq * CHUNK_S
        wall = [start + dt.timedelta(seconds=float(t)) for t in t_start]
        _write(root, "segments", stream_id, {
            "stream_id": [stream_id] * per, "chunk_seq": seq, "level": ["chunk"] * per, "t_start": t_start,
            "t_end": t_start + CHUNK_S, "wall_clock": wall, "caption": texts[scene],
            "visual_embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.random(per * 8, dtype=np.float32)), 8).cast(pa.list_(pa.float32())),
            "text_embedding": _vectors_column(vectors), "n_frames": np.full(per, 16, np.int32),
            "config_fingerprint": ["bench"] * per, "source": [f"{stream_id}.mp4"] * per,
            "created_at": [w + dt.timedelta(seconds=20) for w in wall],
        }, SEGMENTS)
        counts["segments"] += per
        counts["summaries"] += _write_summaries(root, stream_id, scene, vectors, texts, wall, t_start)
    return counts


def _write_summaries(root, stream_id, scene, vectors, texts, wall, t_start) -> int:
    window = (t_start // WINDOW_S).astype(int)
    rows = {name: [] for name in SUMMARIES.names}
    for w in np.unique(window):
        inside = np.flatnonzero(window == w)
        common = np.bincount(scene[inside]).argsort()[::-1][:2]
        _add_summary(rows, stream_id, "window", int(w), t_start[inside[0]], t_start[inside[-1]] + CHUNK_S,
                     wall[inside[0]], "In this part: " + " Then ".join(texts[c] for c in common),
                     vectors[inside].mean(0))
    _add_summary(rows, stream_id, "stream", 0, 0.0, t_start[-1] + CHUNK_S, wall[0],
                 f"A day of {stream_id}: people, vehicles and deliveries come and go.", vectors.mean(0))
    rows["text_embedding"] = _vectors_column(_unit(np.stack(rows["text_embedding"])))
    _write(root, "summaries", stream_id, rows, SUMMARIES)
    return len(rows["seq"])


def _add_summary(rows, stream_id, level, seq, t0, t1, wall, text, vector) -> None:
    for name, value in (("stream_id", stream_id), ("level", level), ("seq", seq), ("t_start", float(t0)),
                        ("t_end", float(t1)), ("wall_clock", wall), ("text", text), ("text_embedding", vector),
                        ("config_fingerprint", "bench"), ("created_at", wall)):
        rows[name].append(value)


def prepared_store(n_segments: int, n_streams: int) -> tuple[Path, dict]:
    """The cached data dir (store + saved index) and how long building it took."""
    data = CACHE / f"query-{n_segments}"
    done = data / "built.json"
    if done.is_file():
        return data, {**json.loads(done.read_text()), "cached": True}
    import shutil

    from pipeline.store.query import StoreQuery

    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    counts = build_store(data / "store", n_segments, n_streams)
    built = {"store_build_s": time.perf_counter() - t, **counts}
    print(f"store        {counts['segments']} segments + {counts['summaries']} summaries written in "
          f"{built['store_build_s']:.0f}s", flush=True)
    t = time.perf_counter()
    query = StoreQuery(data / "store")
    built["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    query.open_index()
    built["index_build_s"] = time.perf_counter() - t
    built["index"] = query.index_info()["segments"]
    del query
    gc.collect()
    done.write_text(json.dumps(built))
    return data, {**built, "cached": False}


# --- the query mix ---


def query_mix(n: int, n_streams: int, per_stream: int, seed: int = 1) -> tuple[list, list]:
    """(segment requests, search requests); a request is (path, params), a page chain ("pages", params)."""
    rng = np.random.default_rng(seed)
    hours = per_stream * CHUNK_S / 3600
    segments, searches = [], []

    def stream():
        return f"cam-{rng.integers(n_streams):03d}"

    while len(segments) < n:
        kind = len(segments) % 4
        since = float(rng.uniform(0, (hours - 1) * 3600))
        if kind == 0:  # one stream, an hour of video
            segments.append(("/segments", {"stream": stream(), "since": f"{since:.0f}", "until": f"{since + 3600:.0f}",
                                           "limit": 100}))
        elif kind == 1:  # one stream, a keyword
            segments.append(("/segments", {"stream": stream(), "q": str(rng.choice(KEYWORDS)), "limit": 50}))
        elif kind == 2:  # every stream, ten minutes of wall-clock time
            t0 = START + dt.timedelta(seconds=since)
            segments.append(("/segments", {"since": t0.isoformat(), "until": (t0 + dt.timedelta(minutes=10)).isoformat(),
                                           "limit": 100}))
        else:  # four pages of a stream (or of everything, from the middle), following next_cursor
            params = {"stream": stream()} if rng.random() < 0.5 else {"since": f"{since:.0f}"}
            segments.append(("pages", {**params, "limit": 100}))
    while len(searches) < n:
        params = {"q": str(rng.choice(SEARCHES)), "k": 10}
        if len(searches) % 2:
            params["stream"] = stream()
        searches.append(("/search", params))
    return segments, searches


class HttpClient:
    def __init__(self, base: str):
        import httpx

        self.http = httpx.Client(base_url=base, timeout=120)

    def get(self, path: str, params: dict) -> dict:
        reply = self.http.get(path, params=params)
        reply.raise_for_status()
        return reply.json()


class DirectClient:
    """The same requests answered by StoreQuery in this process (no HTTP, no JSON)."""

    def __init__(self, query, embedder):
        self.query, self.embedder = query, embedder

    def get(self, path: str, params: dict) -> dict:
        p = dict(params)
        if path == "/search":
            vector = self.embedder.embed([p.pop("q")])[0]
            return {"items": self.query.search(vector, p.get("stream"), k=p["k"])}
        after = tuple(json.loads(p.pop("cursor"))) if "cursor" in p else None
        limit = p.pop("limit")
        rows = self.query.segments(p.get("stream"), p.get("since"), p.get("until"), limit + 1, q=p.get("q"),
                                   after=after)
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = json.dumps([rows[-1]["stream_id"], rows[-1]["chunk_seq"]]) if more else None
        return {"items": rows, "next_cursor": cursor}


def timed(client, requests: list) -> list[float]:
    """Milliseconds per request; a page chain counts each of its pages."""
    out = []
    for path, params in requests:
        chain = 4 if path == "pages" else 1
        path = "/segments" if path == "pages" else path
        for _ in range(chain):
            t = time.perf_counter()
            reply = client.get(path, params)
            out.append((time.perf_counter() - t) * 1000)
            if not reply.get("next_cursor"):
                break
            params = {**params, "cursor": reply["next_cursor"]}
    return out


def exact_top(store: Path, queries: np.ndarray, k: int = 10) -> list[list[tuple]]:
    """Top-k (stream_id, level, seq) per query over every stored segment and summary vector."""
    best = [[] for _ in queries]
    for table, seq in (("segments", "chunk_seq"), ("summaries", "seq")):
        for path in sorted((store / table).rglob("*.parquet")):
            part = pq.read_table(path, columns=["stream_id", "level", seq, "text_embedding"])
            x = part.column("text_embedding").combine_chunks().flatten().to_numpy().reshape(-1, TEXT_DIM)
            scores = x @ queries.T  # (rows, queries)
            keys = list(zip(part.column("stream_id").to_pylist(), part.column("level").to_pylist(),
                            part.column(seq).to_pylist()))
            for j in range(len(queries)):
                top = np.argsort(-scores[:, j])[:k]
                best[j] = sorted(best[j] + [(float(scores[i, j]), keys[i]) for i in top], reverse=True)[:k]
    return [[key for _, key in row] for row in best]


# --- the server ---


def start_server(data: Path, port: int) -> tuple[subprocess.Popen, float]:
    import httpx

    env = {k: v for k, v in os.environ.items() if k != "VIDSTORM_API_TOKEN"}
    t = time.perf_counter()
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "vidstorm"), "serve", "--data", str(data), "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while time.perf_counter() - t < 900:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/streams", timeout=5).status_code == 200:
                return proc, time.perf_counter() - t
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("bench: the server did not answer GET /streams within 900 s")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description="query latency benchmark")
    parser.add_argument("--segments", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200, help="of each kind")
    parser.add_argument("--direct", action="store_true", help="StoreQuery in this process instead of HTTP")
    args = parser.parse_args()

    data, built = prepared_store(args.segments, args.streams)
    if built["cached"]:
        print(f"store        cached at {data} ({built['segments']} segments + {built['summaries']} summaries)")
    print(f"index        {built['index']} built in {built['index_build_s']:.1f}s "
          f"(tables loaded in {built['load_s']:.1f}s)", flush=True)
    segment_requests, search_requests = query_mix(args.queries, args.streams, args.segments // args.streams)

    from pipeline.models.text_embed import TextEmbedder

    embedder = TextEmbedder()
    server, start_s = None, 0.0
    if args.direct:
        from pipeline.store.query import StoreQuery

        t = time.perf_counter()
        client = DirectClient(StoreQuery(data / "store"), embedder)
        start_s = time.perf_counter() - t
    else:
        port = free_port()
        server, start_s = start_server(data, port)
        client = HttpClient(f"http://127.0.0.1:{port}")
    try:
        t = time.perf_counter()
        client.get("/search", {"q": "warm-up", "k": 10})
        first_search_s = time.perf_counter() - t
        print(f"server       ready in {start_s:.1f}s, first search {first_search_s:.1f}s", flush=True)
        timed(client, segment_requests[:20] + search_requests[:20])  # warm-up
        load_before = os.getloadavg()[0]  # others' work on the machine shows up in the tail latencies
        seg_ms = timed(client, segment_requests)
        search_ms = timed(client, search_requests)
        load_after = os.getloadavg()[0]
        server_rss = rss_mb(server.pid) if server else rss_mb(os.getpid())
        answers = [client.get("/search", {"q": text, "k": 10})["items"] for text in SEARCHES]
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    exact = exact_top(data / "store", embedder.embed(SEARCHES))
    recall = float(np.mean([len({(h["stream_id"], h["level"], h["seq"]) for h in got} & set(want)) / 10
                            for got, want in zip(answers, exact)]))

    print(f"segments     {len(seg_ms)} requests: p50 {pct(seg_ms, 50):.1f} ms  p95 {pct(seg_ms, 95):.1f} ms "
          f"(target <= 100)")
    print(f"search       {len(search_ms)} requests: p50 {pct(search_ms, 50):.1f} ms  p95 {pct(search_ms, 95):.1f} ms "
          f"(target <= 250)   recall@10 {recall:.3f} over {len(SEARCHES)} queries")
    print(f"server       RSS {server_rss:.0f} MB")
    print(json.dumps({
        "p50_ms_segments": round(pct(seg_ms, 50), 2),
        "p95_ms_segments": round(pct(seg_ms, 95), 2),
        "p50_ms_search": round(pct(search_ms, 50), 2),
        "p95_ms_search": round(pct(search_ms, 95), 2),
        "n_segments": built["segments"],
        "n_summaries": built["summaries"],
        "recall_at_10": round(recall, 4),
        "index_build_s": round(built["index_build_s"], 1),
        "index_nlist": built["index"]["nlist"],
        "index_nprobe": built["index"]["nprobe"],
        "store_load_s": round(built["load_s"], 1),
        "store_build_s": round(built["store_build_s"], 1),
        "cached_store": built["cached"],
        "server_start_s": round(start_s, 1),
        "first_search_s": round(first_search_s, 2),
        "server_rss_mb": round(server_rss),
        "via": "direct" if args.direct else "http",
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
    }))


if __name__ == "__main__":
    main()
