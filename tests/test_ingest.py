"""`vidstorm ingest --local` end to end: real files, real Parquet, clean failures, resume, live streams."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.config import load_config
from pipeline.decode import Source
from pipeline.ingest import LocalIngest
from pipeline.queue.server import free_port
from pipeline.store.query import StoreQuery
from pipeline.synth import write_clip

from test_decode import BIKES, _bad_inputs

ROOT = Path(__file__).resolve().parents[1]


def vidstorm(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_bad_sources_fail_cleanly_while_good_ones_are_stored(tmp_path, tiny_overrides):
    good, bad = _bad_inputs(tmp_path)
    data = tmp_path / "data"
    args = ["ingest", str(good), *map(str, bad), str(tmp_path / "no-such-folder"), "tcp://127.0.0.1:9",
            str(BIKES), "--local", "--data", str(data), *tiny_overrides, "decode.open_timeout=0.5"]
    done = vidstorm(*args)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("vidstorm: error:")]
    assert len(errors) == len(bad) + 2, done.stderr
    for path, problem in bad.items():
        assert any(str(path) in e and problem in e for e in errors), (path, errors)
    assert "Traceback" not in done.stderr
    assert "vidstorm: 7 of 9 sources failed" in done.stderr

    q = StoreQuery(data / "store")
    # a file cut short keeps what could be decoded before the cut; its job still fails
    assert {s["stream_id"] for s in q.streams()} == {"good", "bikes", "cut-faststart"}
    assert max(r["t_end"] for r in q.segments("cut-faststart")) < 30
    jobs = q.jobs()
    (cut_job,) = [j for j in jobs if j["stream_id"] == "cut-faststart"]
    assert cut_job["status"] == "failed" and "truncated" in cut_job["error"]
    failed = [j for j in jobs if j["status"] == "failed"]
    assert len(failed) == 7 and all(j["error"] for j in failed)
    assert sum(j["status"] == "done" for j in jobs) == 2

    # the same command again adds no rows
    counts = (len(q.segments()), len(q.summaries()))
    again = vidstorm(*args)
    assert again.returncode == 1
    assert "already ingested" in again.stderr
    q = StoreQuery(data / "store")
    assert (len(q.segments()), len(q.summaries())) == counts

    listed = json.loads(vidstorm("segments", "--json", "--stream", "good", "--data", str(data)).stdout)
    assert [r["chunk_seq"] for r in listed] == [0, 1]
    assert {"stream_id", "chunk_seq", "t_start", "t_end", "caption"} <= set(listed[0])
    assert listed[1]["t_start"] == 8.0 and listed[1]["t_end"] == 12.0


class CrashAt:
    """A processor whose step fails once at one chunk: a crash halfway through a job."""

    def __init__(self, inner, chunk_seq):
        self.inner, self.chunk_seq, self.crashed = inner, chunk_seq, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, chunk, state, **kwargs):
        if chunk.chunk_seq == self.chunk_seq and not self.crashed:
            self.crashed = True
            raise RuntimeError("worker died")
        return self.inner.step(chunk, state, **kwargs)


def _embeddings(data, stream_id):
    """Each stored segment's visual embedding (the mean of its pooled tokens), in chunk order."""
    from pipeline.store import Store

    rows = Store(data / "store").stream_rows("segments", stream_id, ["chunk_seq", "visual_embedding"])
    return [np.asarray(r["visual_embedding"]) for r in sorted(rows, key=lambda r: r["chunk_seq"])]


def test_a_crashed_ingest_resumes_where_it_stopped(tmp_path, tiny_overrides, tiny_processor):
    cfg = load_config(None, tiny_overrides)
    clip = write_clip(tmp_path / "cam.mp4", seconds=40, fps=4)
    said = []
    straight = LocalIngest(cfg, tiny_processor, tmp_path / "straight", log=said.append)
    whole = straight.run(Source(str(clip), "cam"))
    assert whole.status == "done" and whole.chunks == 5

    flaky = LocalIngest(cfg, CrashAt(tiny_processor, 3), tmp_path / "resumed", log=said.append)
    first = flaky.run(Source(str(clip), "cam"))
    assert first.status == "failed" and "worker died" in first.error
    second = flaky.run(Source(str(clip), "cam"))
    assert second.status == "done"
    # the job row counts the whole stream, as the distributed writer's does (JobResult): not the 2 chunks
    # this run captioned, and the summaries the first run never got to are there too
    counts = lambda j: (j.chunks, j.segments, j.summaries, round(j.video_seconds, 6))  # noqa: E731
    assert counts(second) == counts(whole) and whole.segments == 5 and whole.summaries >= 2
    stored = {r["job_id"]: r for r in StoreQuery(tmp_path / "resumed" / "store").jobs()}
    assert stored[second.job_id]["chunks"] == 5 and stored[second.job_id]["segments"] == 5
    assert any("resuming at chunk 3" in s for s in said)

    a, b = StoreQuery(tmp_path / "straight" / "store"), StoreQuery(tmp_path / "resumed" / "store")
    key = lambda r: (r["chunk_seq"], r["t_start"], r["t_end"], r["caption"])  # noqa: E731
    assert [key(r) for r in a.segments()] == [key(r) for r in b.segments()]
    skey = lambda r: (r["level"], r["seq"], r["t_start"], r["t_end"], r["text"])  # noqa: E731
    assert [skey(r) for r in a.summaries()] == [skey(r) for r in b.summaries()]
    # a 6-token caption can survive a lost temporal state; the pooled tokens' mean cannot
    straight_emb = _embeddings(tmp_path / "straight", "cam")
    assert len(straight_emb) == 5
    for x, y in zip(straight_emb, _embeddings(tmp_path / "resumed", "cam")):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # ...and this check can fail: a resume that kept its position but dropped the temporal state
    lossy = LocalIngest(cfg, CrashAt(tiny_processor, 3), tmp_path / "lossy", log=said.append)
    assert lossy.run(Source(str(clip), "cam")).status == "failed"
    load = lossy._load_state

    def reset(stream_id):
        state = load(stream_id)
        state.temporal = None
        return state

    lossy._load_state = reset
    assert lossy.run(Source(str(clip), "cam")).status == "done"
    same = [np.allclose(x, y, rtol=1e-5, atol=1e-6)
            for x, y in zip(straight_emb, _embeddings(tmp_path / "lossy", "cam"))]
    assert all(same[:3]) and not all(same[3:]), same


def test_retraining_into_the_same_checkpoint_folder_is_a_new_model(tmp_path, tiny_overrides):
    """'Already ingested' hashes the weights, not the folder's name (nor only the path)."""
    from pipeline.build import build_processor
    from pipeline.config import fingerprint
    from pipeline.models.checkpoint import build_connector, save_storm
    from pipeline.models.siglip import vision_geometry
    from pipeline.models.summarizer import llm_hidden_size

    ckpt = tmp_path / "storm"
    base = load_config(None, tiny_overrides)
    vision_dim, hidden = vision_geometry(base.encoder.model)[1], llm_hidden_size(base.summarizer.model)

    def train_into(seed):
        cfg = load_config(None, [*tiny_overrides, f"temporal.seed={seed}"])
        save_storm(build_connector(cfg.temporal, vision_dim, hidden, log=None), ckpt)

    train_into(1)
    cfg = load_config(None, [*tiny_overrides, f"temporal.checkpoint={ckpt}"])
    clip = write_clip(tmp_path / "cam.mp4", seconds=8, fps=4)
    first = LocalIngest(cfg, build_processor(cfg, log=None), tmp_path / "data", log=lambda m: None)
    assert first.run(Source(str(clip), "cam")).status == "done"
    again = LocalIngest(cfg, build_processor(cfg, log=None), tmp_path / "data", log=lambda m: None)
    assert again.run(Source(str(clip), "cam")).status == "skipped"  # same weights: nothing to do
    before = fingerprint(cfg)
    train_into(2)  # new weights, same folder, same config text
    assert fingerprint(cfg) != before
    retrained = LocalIngest(cfg, build_processor(cfg, log=None), tmp_path / "data", log=lambda m: None)
    assert retrained.run(Source(str(clip), "cam")).status == "done"
    assert fingerprint(load_config(None, [*tiny_overrides, f"temporal.checkpoint={ckpt}", "encoder.dtype=bf16"])) \
        != fingerprint(cfg)  # a dtype changes the numbers too


def test_segments_say_what_wrote_them_and_listings_mark_untrained_captions(tmp_path, tiny_overrides):
    """The tiny models: a random SigLIP (marked) and, without a checkpoint, untrained STORM parts."""
    from pipeline.build import build_processor
    from pipeline.config import content_digest
    from pipeline.models.checkpoint import build_connector, save_storm
    from pipeline.models.siglip import vision_geometry
    from pipeline.models.summarizer import llm_hidden_size

    clip, data = write_clip(tmp_path / "cam.mp4", seconds=8, fps=4), tmp_path / "data"
    cfg = load_config(None, tiny_overrides)
    ckpt = tmp_path / "storm"
    save_storm(build_connector(cfg.temporal, vision_geometry(cfg.encoder.model)[1],
                               llm_hidden_size(cfg.summarizer.model), log=None), ckpt)
    trained = load_config(None, [*tiny_overrides, f"temporal.checkpoint={ckpt}"])
    for stream_id, each in (("cam", cfg), ("cam-ckpt", trained)):
        ingest = LocalIngest(each, build_processor(each, log=None), data, log=lambda m: None)
        assert ingest.run(Source(str(clip), stream_id)).status == "done"

    q = StoreQuery(data / "store")
    siglip, llm = cfg.encoder.model, cfg.summarizer.model
    both = "SigLIP (random), STORM temporal module + projector (untrained)"
    untrained = {(r["model"], r["untrained"]) for r in q.segments("cam")}
    assert untrained == {(f"{llm} + {siglip} + storm:random init", both)}
    assert {(r["model"], r["untrained"]) for r in q.segments("cam-ckpt")} == {
        (f"{llm} + {siglip} + storm:{ckpt}@{content_digest(str(ckpt))[:8]}", "SigLIP (random)")}

    listed = json.loads(vidstorm("segments", "--json", "--data", str(data)).stdout)
    assert {(r["stream_id"], r["untrained"]) for r in listed} == {("cam", both),
                                                                   ("cam-ckpt", "SigLIP (random)")}
    assert all(r["model"].startswith(f"{llm} + {siglip} + storm:") for r in listed)
    lines = vidstorm("segments", "--data", str(data)).stdout.splitlines()[1:]
    captions = {(r["stream_id"], r["chunk_seq"]): r["caption"] for r in listed}
    assert len(lines) == len(captions) == 2  # one 8 s chunk each
    for line, ((stream_id, _seq), caption) in zip(lines, sorted(captions.items())):
        parts = both if stream_id == "cam" else "SigLIP (random)"
        assert line.endswith(f"  [untrained: {parts}] {caption}"), line


def test_the_segments_listing_marks_only_untrained_captions(tmp_path):
    from pipeline.store import Store
    from pipeline.types import Segment

    def row(stream_id, caption, untrained):
        return Segment(stream_id, 0, 0.0, 8.0, caption, np.ones(4, np.float32), np.zeros(384, np.float32), 8,
                       "fp", model="smollm2 + siglip + storm:ckpt@1a2b3c4d", untrained=untrained)

    rows = [row("seen", "a red car parks", ""), row("invented", "a blue car leaves", "SigLIP (random)")]
    Store(tmp_path / "data" / "store").write_records(rows)
    lines = vidstorm("segments", "--data", str(tmp_path / "data")).stdout.splitlines()
    assert any(line.endswith("  a red car parks") for line in lines), lines
    assert any(line.endswith("  [untrained: SigLIP (random)] a blue car leaves") for line in lines), lines
    assert sum("untrained" in line for line in lines) == 1


def test_live_stream_is_ingested_while_it_plays(tmp_path, tiny_overrides):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "live_server.py"), f"tcp://127.0.0.1:{port}?listen=1", "10"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout.readline().strip() == "listening"
        data = tmp_path / "data"
        done = vidstorm("ingest", f"tcp://127.0.0.1:{port}", "--stream", "lobby", "--local", "--data", str(data),
                        *tiny_overrides, "decode.fps=2", "decode.chunk_frames=8", "decode.reconnect_outage=0",
                        timeout=120)
        server_out = server.communicate(timeout=30)[0]
    finally:
        server.kill()
    assert done.returncode == 0, done.stderr
    ended = float(server_out.split("ended", 1)[1])
    rows = StoreQuery(data / "store").segments("lobby")
    # 10 s at 2 fps = 20 frames: chunks of 8, 8 and the partial 4 at the end
    assert [r["chunk_seq"] for r in rows] == [0, 1, 2]
    assert [r["n_frames"] for r in rows] == [8, 8, 4]
    assert rows[0]["wall_clock"] is not None
    # the first segment was stored while the stream was still playing
    assert rows[0]["created_at"].timestamp() < ended - 2
    (whole,) = StoreQuery(data / "store").summaries("lobby", level="stream")
    assert whole["t_end"] >= 9.5


def _live_server(port: int, seconds: float) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "live_server.py"), f"tcp://127.0.0.1:{port}?listen=1",
         str(seconds)], stdout=subprocess.PIPE, text=True,
    )
    assert server.stdout.readline().strip() == "listening"
    return server


def test_live_source_that_drops_reconnects_and_records_the_gap(tmp_path, tiny_overrides):
    """A camera whose server is killed mid-stream and comes back: one stream, a recorded gap, no crash;
    the stream ends only after the configured outage once the server is gone for good."""
    import time

    from fastapi.testclient import TestClient

    from actors.server.app import create_app

    port, data = free_port(), tmp_path / "data"
    first = _live_server(port, 60)
    ingest = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "ingest", f"tcp://127.0.0.1:{port}", "--stream", "lobby", "--local",
         "--data", str(data), *tiny_overrides, "decode.fps=2", "decode.chunk_frames=8",
         "decode.reconnect_outage=8", "decode.reconnect_backoff_max=0.5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    second = None
    try:
        assert first.stdout.readline().startswith("playing")  # the ingest has connected
        time.sleep(6)  # ~12 frames at 2 fps: one whole chunk, then a partial one when the server dies
        first.kill()
        first.wait(timeout=10)
        killed = time.time()
        time.sleep(2)
        second = _live_server(port, 6)
        back = float(second.stdout.readline().split()[1])
        out, err = ingest.communicate(timeout=120)
    finally:
        for proc in (first, second, ingest):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert ingest.returncode == 0, err
    assert "Traceback" not in err
    query = StoreQuery(data / "store")
    rows = query.segments()
    assert {r["stream_id"] for r in rows} == {"lobby"}
    assert [r["chunk_seq"] for r in rows] == list(range(len(rows)))
    gaps = [i for i, r in enumerate(rows) if r["gap_before"]]
    assert len(gaps) == 1, [(r["chunk_seq"], r["t_start"], r["gap_before"]) for r in rows]
    i = gaps[0]
    before, after = rows[i - 1], rows[i]
    assert 1 <= i and before["n_frames"] < 8 and rows[-1]["n_frames"] >= 1  # what came before the drop is kept
    # the gap is the time the camera was away (killed -> back), on the video clock and the wall clock
    assert abs(after["gap_before"] - (back - killed)) < 1.5, (after["gap_before"], back - killed)
    assert abs(after["t_start"] - before["t_end"] - after["gap_before"]) < 1e-3
    wall = (after["wall_clock"] - before["wall_clock"]).total_seconds()
    assert abs(wall - (after["t_start"] - before["t_start"])) < 1e-3
    # the second connection's ~6 s are stored after the gap, and one job ended done
    assert sum(r["n_frames"] for r in rows[i:]) >= 8
    (job,) = query.jobs()
    assert job["status"] == "done" and job["stream_id"] == "lobby"
    (whole,) = query.summaries("lobby", level="stream")
    assert whole["t_end"] >= rows[-1]["t_end"] - 1e-3
    listing = vidstorm("segments", "--data", str(data))
    assert f"gap: source away {after['gap_before']:.1f} s" in listing.stdout
    with TestClient(create_app(data / "store", None, None)) as client:
        items = client.get("/segments").json()["items"]
    assert [x["gap_before"] for x in items] == [r["gap_before"] for r in rows]


def test_live_sources_use_their_own_shorter_chunks(tmp_path, tiny_overrides):
    """decode.live_chunk_frames: a live source is cut into shorter chunks (captions, and alerts, come
    sooner); a file with the same config keeps decode.chunk_frames."""
    port = free_port()
    settings = ["decode.fps=2", "decode.chunk_frames=8", "decode.live_chunk_frames=4", "pooling.sample_s=1",
                "decode.reconnect_outage=0"]
    server = _live_server(port, 6)
    try:
        data = tmp_path / "data"
        done = vidstorm("ingest", f"tcp://127.0.0.1:{port}", "--stream", "door", "--local", "--data", str(data),
                        *tiny_overrides, *settings, timeout=120)
        server.communicate(timeout=30)
    finally:
        server.kill()
    assert done.returncode == 0, done.stderr
    clip = write_clip(tmp_path / "file.mp4", seconds=6, fps=4)
    assert vidstorm("ingest", str(clip), "--local", "--data", str(data), *tiny_overrides, *settings).returncode == 0
    q = StoreQuery(data / "store")
    assert [r["n_frames"] for r in q.segments("door")] == [4, 4, 4]  # 6 s at 2 fps, 4 frames a chunk
    assert [r["n_frames"] for r in q.segments("file")] == [8, 4]
    bad = vidstorm("config", *tiny_overrides, "decode.live_chunk_frames=6")
    assert bad.returncode == 2 and "decode.live_chunk_frames=6 must be 0" in bad.stderr


def test_a_segment_is_stored_before_the_window_summary_it_makes_due(tmp_path, tiny_overrides, tiny_processor):
    """--local stores (and watches) each segment before the LLM writes the window summaries it closes, so
    an alert never waits for a summary."""
    from pipeline.store import Store

    cfg = load_config(None, tiny_overrides)  # 8 frames a chunk at 1 fps, 16 s windows
    clip = write_clip(tmp_path / "cam.mp4", seconds=40, fps=4)
    seen = []

    class Watching:
        def __getattr__(self, name):
            return getattr(tiny_processor, name)

        def summary(self, **kw):
            stored = {r["chunk_seq"] for r in Store(tmp_path / "data" / "store").stream_rows("segments", "cam",
                                                                                           ["chunk_seq"])}
            seen.append((kw["level"], kw["seq"], max(stored)))
            return tiny_processor.summary(**kw)

    watching = Watching()
    runner = LocalIngest(cfg, watching, tmp_path / "data", log=lambda m: None)
    import types

    # the processor's methods call self.summary: bind them to the wrapper so _rollups calls its summary
    for name in ("step", "step_pooled", "after_caption", "_rollups", "finish"):
        setattr(watching, name, types.MethodType(getattr(type(tiny_processor), name), watching))
    assert runner.run(Source(str(clip), "cam")).status == "done"
    windows = [(seq, stored) for level, seq, stored in seen if level == "window"]
    # window 0 (0-16 s) is closed by chunk 2 (16-24 s): chunk 2 is stored when its summary is written
    assert windows[0] == (0, 2) and windows[1] == (1, 4), seen
