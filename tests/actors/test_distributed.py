"""Ray actors + Redis Streams, for real: same rows as --local, and nothing lost or doubled when
workers die or Redis restarts in the middle of a run."""

import hashlib
import threading
import time

import numpy as np
import pytest
import ray

from actors.runtime import Cluster, DistributedIngest
from pipeline.queue.keys import Keys
from pipeline.config import load_config
from pipeline.decode import Source
from pipeline.ingest import LocalIngest
from pipeline.store import Store
from pipeline.store.query import StoreQuery
from pipeline.synth import write_clip, write_static_camera
from helpers.configs import queue_config

CHUNKS = 10  # an 80 s clip at 1 fps in 8-frame chunks


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        # a still camera with two walks: static-frame reuse (encoder.static_threshold, on by default)
        # decides per stream in the decoders, the temporal owner fills in the reused grids
        "cam-a": write_static_camera(folder / "cam-a.mp4", seconds=80, fps=4, width=640, height=360,
                                     events=[(12.5, 27.5), (50.5, 57.5)], noise=3.0),
        "cam-b": write_clip(folder / "cam-b.mp4", seconds=30, fps=5, width=256, height=144),
        "cam-c": write_clip(folder / "cam-c.mp4", seconds=20, fps=6, start=3.0),
    }


class Close:
    """A stored vector that compares equal to another within float tolerance."""

    __hash__ = None

    def __init__(self, value):
        self.value = np.asarray(value, np.float32)

    def __eq__(self, other):
        return (isinstance(other, Close) and self.value.shape == other.value.shape
                and bool(np.allclose(self.value, other.value, rtol=1e-4, atol=1e-5)))

    def __repr__(self):
        return f"Close({self.value[:3]}...)"


def _rows(store_root):
    """Every stored row's key -> its values. A segment carries its visual embedding (the mean of its
    pooled tokens): a 6-token caption from a tiny LLM can survive a dropped temporal state, it cannot."""
    q = StoreQuery(store_root)
    store = Store(store_root)
    embeddings, thumbnails = {}, {}
    for stream_id in {r["stream_id"] for r in q.segments()}:
        stored = store.stream_rows("segments", stream_id, ["chunk_seq", "visual_embedding", "thumbnail",
                                                           "frames_encoded", "frames_reused"])
        assert len(stored) == len({row["chunk_seq"] for row in stored}), "a segment (and its thumbnail) twice"
        for row in stored:
            embeddings[(stream_id, row["chunk_seq"])] = (Close(row["visual_embedding"]), row["frames_encoded"],
                                                         row["frames_reused"])
            assert row["thumbnail"] and row["thumbnail"][:2] == b"\xff\xd8", "a segment without its thumbnail"
            thumbnails[(stream_id, row["chunk_seq"])] = hashlib.sha256(row["thumbnail"]).hexdigest()[:16]
    segments = {(r["stream_id"], r["chunk_seq"]): (r["t_start"], r["t_end"], r["caption"],
                                                   embeddings[(r["stream_id"], r["chunk_seq"])],
                                                   thumbnails[(r["stream_id"], r["chunk_seq"])])
                for r in q.segments()}
    summaries = {(r["stream_id"], r["level"], r["seq"]): (r["t_start"], r["t_end"], r["text"])
                 for r in q.summaries()}
    return segments, summaries


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clips, tiny_overrides, tiny_processor):
    """What --local stores for each clip."""
    data = tmp_path_factory.mktemp("local")
    runner = LocalIngest(load_config(None, tiny_overrides), tiny_processor, data, log=lambda m: None)
    for stream_id, path in clips.items():
        assert runner.run(Source(str(path), stream_id)).status == "done"
    return _rows(data / "store")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_overrides):
    cfg = load_config(None, tiny_overrides)
    with Cluster(cfg, tmp_path_factory.mktemp("cluster"), log=lambda m: None) as c:
        yield c


def _config(tiny_overrides, *extra):
    return queue_config(tiny_overrides, "queue.reclaim_idle_s=1", "queue.max_in_flight=2", "workers.decoders=1",
                        *extra)


def _run(cluster, cfg, data, sources, during=None):
    """Ingest through the cluster; `during(ingest)` runs in a thread once the actors are up."""
    cluster.data_dir = data
    ingest = DistributedIngest(cluster, cfg, log=lambda m: None)
    threads = []

    def on_start(ing):
        if during:
            threads.append(threading.Thread(target=during, args=(ing,), daemon=True))
            threads[-1].start()

    try:
        rows = ingest.run(sources, on_start=on_start)
        for t in threads:
            t.join(timeout=60)
        restarts = sum(loop.restarts for loop in ingest.pipeline.loops)
    finally:
        ingest.shutdown()
    return rows, restarts


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_run_starts_a_decoder_per_stream_up_to_workers_decoders(cluster, clips, tiny_overrides, tmp_path):
    """Each decoder is a process to start: a run of one file starts one, a later run of the same
    DistributedIngest with more streams adds decoders, never more than workers.decoders."""
    cfg = _config(tiny_overrides, "workers.decoders=3")
    cluster.data_dir = tmp_path
    ingest = DistributedIngest(cluster, cfg, log=lambda m: None)
    try:
        first = ingest.run([Source(str(clips["cam-c"]), "cam-c")])
        assert len(ingest.pipeline.decoders) == 1
        second = ingest.run([Source(str(clips[s]), s) for s in ("cam-a", "cam-b")])
        assert len(ingest.pipeline.decoders) == 2
        names = sorted(n for n in ingest.pipeline.actors if "decoder" in n)
        assert names == [f"{cfg.queue.prefix}-decoder-0", f"{cfg.queue.prefix}-decoder-1"]
    finally:
        ingest.shutdown()
    assert [r["status"] for r in first + second] == ["done"] * 3


def test_three_concurrent_streams_store_exactly_what_local_stores(cluster, clips, reference, tiny_overrides,
                                                                  tmp_path):
    cfg = _config(tiny_overrides, "workers.decoders=2")
    sources = [Source(str(p), sid) for sid, p in clips.items()]
    rows, _ = _run(cluster, cfg, tmp_path, sources)
    assert [r["status"] for r in rows] == ["done"] * 3
    assert _rows(tmp_path / "store") == reference
    assert {r["stream_id"]: r["segments"] for r in rows} == {"cam-a": 10, "cam-b": 4, "cam-c": 3}
    encoded = {}
    for (stream_id, _), row in reference[0].items():
        _, n_encoded, n_reused = row[3]
        encoded.setdefault(stream_id, [0, 0])
        encoded[stream_id][0] += n_encoded
        encoded[stream_id][1] += n_reused
    # the still camera: what the gate decides over its frames (every second of its walks and the scene
    # after each; the rest of its 80 s mostly reused), counted the same through Ray as in --local
    from pipeline import reuse
    from pipeline.decode import VideoDecoder

    gate = load_config(None, tiny_overrides).encoder
    decoder = VideoDecoder(Source(str(clips["cam-a"]), "cam-a"), size=56, fps=1.0, chunk_frames=8, pad_multiple=8)
    mask, _ = reuse.gate(np.concatenate([c.frames[: c.n_valid] for c in decoder.chunks()]), None,
                         gate.static_threshold)
    walking = [t for t in range(80) if 12.5 < t < 28 or 50.5 < t < 58]
    assert mask[walking].all() and encoded["cam-a"] == [int(mask.sum()), 80 - int(mask.sum())]
    assert encoded["cam-a"][0] <= 40, encoded  # at least half of the still camera's frames reused
    assert encoded["cam-b"][1] == encoded["cam-c"][1] == 0  # every frame of these moves


def _stage_progress(ing, stream_id):
    """How far each stage has come on a stream, read from Redis."""
    r, keys = ing.r, ing.keys
    decoded = r.hget(keys.decoded(stream_id), "next_chunk_seq")
    state = r.get(keys.state(stream_id))
    applied = 0
    if state:
        from pipeline.processor import StreamState

        applied = StreamState.from_bytes(state).next_chunk_seq
    return int(decoded or 0), applied


def _handed_on(ing, worker):
    """Messages a worker has finished: proof it is at work, not still loading its models."""
    return int(ing.r.hget(ing.keys.progress, worker) or 0)


@pytest.mark.parametrize("role", ["temporal", "decoder", "encoder", "summarizer", "writer"])
def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(cluster, clips, reference, tiny_overrides,
                                                               tmp_path, role):
    cfg = _config(tiny_overrides)
    seen = {}
    name = f"{cfg.queue.prefix}-writer" if role == "writer" else f"{cfg.queue.prefix}-{role}-0"

    def kill(ing):
        def mid_stream():
            decoded, applied = _stage_progress(ing, "cam-a")
            if role == "decoder":
                return 2 <= decoded <= CHUNKS - 3 and (decoded, applied)
            # the victim must be at work (not still loading its models), with work left to do
            busy = _handed_on(ing, name) >= 2
            return busy and applied <= CHUNKS - 3 and (decoded, applied)

        seen["progress"] = _wait_for(mid_stream)
        ray.kill(ray.get_actor(name, namespace=cfg.ray.namespace), no_restart=False)

    rows, restarts = _run(cluster, cfg, tmp_path, [Source(str(clips["cam-a"]), "cam-a")], during=kill)
    assert rows[0]["status"] == "done", rows
    assert restarts >= 1, "the killed worker's call was never made again"
    segments, summaries = _rows(tmp_path / "store")
    ref_segments, ref_summaries = reference
    assert segments == {k: v for k, v in ref_segments.items() if k[0] == "cam-a"}
    assert summaries == {k: v for k, v in ref_summaries.items() if k[0] == "cam-a"}


def test_redis_restarted_mid_run_loses_and_doubles_nothing(cluster, clips, reference, tiny_overrides, tmp_path):
    assert cluster.redis_server is not None  # the fixture always starts the embedded server
    cfg = _config(tiny_overrides)

    def bounce(ing):
        _wait_for(lambda: 2 <= _stage_progress(ing, "cam-a")[1] <= CHUNKS - 3)
        server = cluster.redis_server
        server.stop()  # SIGTERM to the PID we started; the AOF holds every acknowledged write
        time.sleep(1.0)
        server.start()

    rows, _ = _run(cluster, cfg, tmp_path, [Source(str(clips["cam-a"]), "cam-a")], during=bounce)
    assert rows[0]["status"] == "done"
    segments, summaries = _rows(tmp_path / "store")
    ref_segments, ref_summaries = reference
    assert segments == {k: v for k, v in ref_segments.items() if k[0] == "cam-a"}
    assert summaries == {k: v for k, v in ref_summaries.items() if k[0] == "cam-a"}


def test_malformed_payload_is_dead_lettered_while_the_stream_proceeds(cluster, clips, reference, tiny_overrides,
                                                                       tmp_path):
    cfg = _config(tiny_overrides, "queue.max_deliveries=2")
    keys = Keys(cfg.queue.prefix)

    def poison(ing):
        ing.r.xadd(keys.frames, {b"data": b"\x80\x04garbage, not a frame chunk"})
        ing.r.xadd(keys.pooled, {b"data": b"VST1\x05\x00\x00\x00{bad}"})
        _wait_for(lambda: ing.r.xlen(keys.p + ":dead") >= 2, timeout=45)

    rows, _ = _run(cluster, cfg, tmp_path, [Source(str(clips["cam-c"]), "cam-c")], during=poison)
    assert rows[0]["status"] == "done"
    segments, _ = _rows(tmp_path / "store")
    assert segments == {k: v for k, v in reference[0].items() if k[0] == "cam-c"}
    # the poison went to the dead-letter stream after its retries (the loops ran until shutdown)
    import redis

    r = redis.Redis.from_url(cluster.redis_url)
    dead = r.xrange(keys.p + ":dead")
    origins = sorted(entry[1][b"origin"].decode() for entry in dead)
    assert origins == sorted([keys.frames, keys.pooled]), dead
    assert all(b"delivered 3 times" in entry[1][b"reason"] for entry in dead)


def test_a_stalled_stream_fails_instead_of_hanging(cluster, clips, tiny_overrides, tmp_path):
    """A chunk that can never be applied (its message is gone) must end the run with a clear error."""
    cfg = _config(tiny_overrides, "queue.stall_timeout_s=4")
    keys = Keys(cfg.queue.prefix)

    def lose_a_chunk(ing):
        # swallow chunk 1 of the stream before any encoder sees it, as a dead-lettered message would be
        while True:
            for entry_id, fields in ing.r.xrange(keys.frames):
                try:
                    from pipeline.types import FrameChunk

                    if FrameChunk.from_bytes(fields[b"data"]).chunk_seq == 1:
                        ing.r.xdel(keys.frames, entry_id)
                        return
                except ValueError:
                    pass
            time.sleep(0.005)

    rows, _ = _run(cluster, cfg, tmp_path, [Source(str(clips["cam-a"]), "cam-a")], during=lose_a_chunk)
    assert rows[0]["status"] == "failed" and "stalled" in rows[0]["error"]
    (job,) = [j for j in StoreQuery(tmp_path / "store").jobs() if j["stream_id"] == "cam-a"]
    assert job["status"] == "failed"


def test_an_interrupted_run_resumes_where_it_stopped(cluster, clips, reference, tiny_overrides, tmp_path):
    """What a job run that died leaves in Redis (decoder position, state, queued messages) is
    picked up by its next attempt: the stream continues, not restarts, and nothing doubles."""
    cfg = _config(tiny_overrides)
    cluster.data_dir = tmp_path
    source = Source(str(clips["cam-a"]), "cam-a")
    summarizer = f"{cfg.queue.prefix}-summarizer-0"
    first = DistributedIngest(cluster, cfg, log=lambda m: None)
    try:  # stop once a few captions are written; the actors die at once, as with a scheduler that died
        rows = first.run([source], should_stop=lambda: _handed_on(first, summarizer) >= 3)
        for actor in first.pipeline.actors.values():
            ray.kill(actor, no_restart=True)
        first.pipeline = None
    finally:
        first.shutdown()
    assert rows[0]["status"] == "cancelled"
    encoder = f"{cfg.queue.prefix}-encoder-0"
    decoded_at, captioned = _stage_progress(first, "cam-a")[0], _handed_on(first, summarizer)
    encoded = _handed_on(first, encoder)

    said, shown = [], []
    second = DistributedIngest(cluster, cfg, log=said.append)
    try:
        rows = second.run([source], resume=True, on_progress=shown.extend)
    finally:
        second.shutdown()
    assert rows[0]["status"] == "done", rows[0]["error"]
    # the job row counts the whole stream, as --local's does (JobResult)
    assert rows[0]["chunks"] == CHUNKS and rows[0]["segments"] == CHUNKS
    assert rows[0]["summaries"] == sum(1 for k in reference[1] if k[0] == "cam-a")
    # progress: this run starts where the stored chunks ended, moves on, and knows the file's length
    assert shown and {r["stream_id"] for r in shown} == {"cam-a"}
    done = [r["done_s"] for r in shown]
    assert done == sorted(done) and done[-1] > done[0] > 0, done
    assert all(r["total_s"] == pytest.approx(80, abs=1) for r in shown)
    moving = [r for r in shown if r["done_s"] > done[0]]
    assert moving and all(r["x_realtime"] > 0 and r["eta_s"] is not None for r in moving)
    # (a killed decoder may have published one more chunk between our look and its death)
    resumed_at = [int(m.rsplit(" ", 1)[1]) for m in said if m.startswith("cam-a: resuming at chunk ")]
    assert len(resumed_at) == 1 and decoded_at <= resumed_at[0] <= decoded_at + 1
    segments, summaries = _rows(tmp_path / "store")
    assert segments == {k: v for k, v in reference[0].items() if k[0] == "cam-a"}
    assert summaries == {k: v for k, v in reference[1].items() if k[0] == "cam-a"}
    # Only what was left was done again, not the stream: at most the messages a killed worker
    # held unacknowledged (max_in_flight=2) are redone. A restart would encode all CHUNKS again.
    assert _handed_on(second, encoder) - encoded <= CHUNKS - encoded + 2 < CHUNKS
    assert _handed_on(second, summarizer) - captioned <= CHUNKS + 6 - captioned + 2
