"""`vidstorm ingest --local` with temporal.mode=offline: a real file scanned whole (spilled to disk), then
captioned per chunk; the first segment sees the end of the file; a crash resumes; live sources refused."""

import numpy as np
import pytest
import torch

from pipeline.build import build_processor
from pipeline.config import load_config
from pipeline.decode import Source, VideoDecoder
from pipeline.ingest import LocalIngest
from pipeline.processor import visual_embedding, wire_round
from pipeline.store import Store
from pipeline.store.query import StoreQuery
from pipeline.synth import write_clip


@pytest.fixture(scope="module")
def offline(tiny_overrides):
    """(config, processor) in offline mode, activations spilled to disk from the first byte."""
    cfg = load_config(None, [*tiny_overrides, "temporal.mode=offline", "temporal.offline_spill_mb=0"])
    return cfg, build_processor(cfg, log=None)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "cam.mp4", seconds=40, fps=4)  # 5 chunks of 8 frames


def _embeddings(data, stream_id="cam"):
    rows = Store(data / "store").stream_rows("segments", stream_id, ["chunk_seq", "visual_embedding"])
    return [np.asarray(r["visual_embedding"]) for r in sorted(rows, key=lambda r: r["chunk_seq"])]


@pytest.fixture(scope="module")
def whole_pass(offline, clip):
    """The reference: every chunk's grid concatenated, one bidirectional pass, pooled per chunk."""
    _, processor = offline
    decoder = VideoDecoder(Source(str(clip), "cam"), size=processor.encoder.image_size, fps=1.0, chunk_frames=8,
                           pad_multiple=processor.reducer.frames_per_group)
    grids = [processor.encode(chunk.frames) for chunk in decoder.chunks()]
    with torch.inference_mode():  # projected per frame and rounded to encoder.output_dtype, as ingest does
        temporal = processor.connector.temporal
        projected = wire_round(temporal.project(torch.cat(grids)[None]), processor.output_dtype)
        out, _ = temporal.forward_projected(projected)
        pooled = [processor.reducer(part) for part in torch.split(out[0], [len(g) for g in grids])]
    return [visual_embedding(p) for p in pooled]


class Recorder:
    """The processor, keeping the offline scans it hands out (to look at their spill counters)."""

    def __init__(self, inner):
        self.inner, self.scans = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def offline_scan(self, *args, **kwargs):
        self.scans.append(self.inner.offline_scan(*args, **kwargs))
        return self.scans[-1]


def test_a_file_is_scanned_whole_spilled_and_stored_like_one_pass(tmp_path, offline, clip, whole_pass):
    cfg, processor = offline
    recorder = Recorder(processor)
    job = LocalIngest(cfg, recorder, tmp_path, log=lambda m: None).run(Source(str(clip), "cam"))
    assert job.status == "done", job.error
    assert (job.chunks, job.segments) == (5, 5)

    (scan,) = recorder.scans
    assert scan.store.files_written > 0 and scan.store.peak == 0  # every activation went to disk...
    assert (tmp_path / "spill").is_dir() and list((tmp_path / "spill").iterdir()) == []  # ...and is gone

    stored = _embeddings(tmp_path)
    assert len(stored) == len(whole_pass) == 5
    reuse = Store(tmp_path / "store").stream_rows("segments", "cam", ["frames_encoded", "frames_reused", "n_frames"])
    assert all(r["frames_reused"] == 0 and r["frames_encoded"] == r["n_frames"] for r in reuse)  # every frame moves
    for got, want in zip(stored, whole_pass):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    q = StoreQuery(tmp_path / "store")
    assert [s["chunk_seq"] for s in q.segments("cam")] == [0, 1, 2, 3, 4]
    assert {s["level"] for s in q.summaries()} == {"window", "stream"}


def test_the_first_chunk_changes_with_only_the_last_frame(offline, tiny_processor):
    """Offline pooled tokens of chunk 0 depend on the source's last frame; chunk by chunk they cannot."""
    _, processor = offline
    size = processor.encoder.image_size
    frames = np.random.default_rng(0).integers(0, 255, (24, size, size, 3), np.uint8)
    changed = frames.copy()
    changed[-1] = 255 - changed[-1]
    first = {}
    for name, source in (("frames", frames), ("changed", changed)):
        grids = [processor.encode(part) for part in np.split(source, 3)]
        with processor.offline_scan(1024, None) as scan:
            for grid in grids:
                scan.add(grid)
            first[name, "offline"] = next(processor.offline_pooled(scan))
        with torch.inference_mode():  # the default mode, chunk by chunk
            first[name, "chunked"], _ = tiny_processor.connector.pool(grids[0], tiny_processor.reducer)
    assert (first["frames", "offline"] - first["changed", "offline"]).abs().max() > 1e-6
    torch.testing.assert_close(first["frames", "chunked"], first["changed", "chunked"], rtol=0, atol=0)


class CrashWhileCaptioning:
    def __init__(self, inner, chunk_seq):
        self.inner, self.chunk_seq, self.crashed = inner, chunk_seq, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step_pooled(self, chunk, pooled, state, temporal_state=None, **kwargs):
        if chunk.chunk_seq == self.chunk_seq and not self.crashed:
            self.crashed = True
            raise RuntimeError("worker died")
        return self.inner.step_pooled(chunk, pooled, state, temporal_state, **kwargs)


def test_a_crash_while_captioning_resumes_after_the_last_stored_chunk(tmp_path, offline, clip, whole_pass):
    cfg, processor = offline
    said = []
    runner = LocalIngest(cfg, CrashWhileCaptioning(processor, 3), tmp_path, log=said.append)
    first = runner.run(Source(str(clip), "cam"))
    assert first.status == "failed" and "worker died" in first.error and first.segments == 3
    second = runner.run(Source(str(clip), "cam"))
    assert second.status == "done" and second.segments == 5 and second.chunks == 5  # the whole stream (JobResult)
    assert any("resuming after chunk 2" in s for s in said)
    assert [s["chunk_seq"] for s in StoreQuery(tmp_path / "store").segments("cam")] == [0, 1, 2, 3, 4]
    for got, want in zip(_embeddings(tmp_path), whole_pass):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert list((tmp_path / "spill").iterdir()) == []


def test_a_live_source_is_refused_in_one_line(tmp_path, offline):
    cfg, processor = offline
    said = []
    camera = Source("rtsp://127.0.0.1:9/cam", "cam", live=True)
    job = LocalIngest(cfg, processor, tmp_path, log=said.append).run(camera)
    assert job.status == "failed"
    assert job.error == ("rtsp://127.0.0.1:9/cam: temporal.mode=offline scans whole files and cannot run on a live "
                         "source; ingest it with temporal.mode=chunk_bidirectional (same weights)")
    assert said == [f"vidstorm: error: {job.error}"]
