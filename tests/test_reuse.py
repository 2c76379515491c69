"""Static-frame reuse (pipeline/reuse.py): SigLIP sees a still scene once per stream, a change again,
and a reused frame gets exactly its reference's grid; one stream never reuses another's."""

import copy

import numpy as np
import pytest
import torch

from pipeline import reuse
from pipeline.decode import Source, VideoDecoder
from pipeline.processor import StreamState, visual_embedding
from pipeline.synth import write_static_camera
from pipeline.types import Segment


class CountingEncoder:
    """The real SigLIP encoder, counting the frames it is given."""

    def __init__(self, inner):
        self.inner, self.frames = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, frames):
        self.frames += len(frames)
        return self.inner.encode(frames)


def _counting(processor, **changes):
    proc = copy.copy(processor)
    proc.encoder = CountingEncoder(processor.encoder)
    for name, value in changes.items():
        setattr(proc, name, value)
    return proc


def _chunks(path, processor, stream_id="cam"):
    return list(VideoDecoder(Source(str(path), stream_id), size=processor.encoder.image_size, fps=1.0,
                             chunk_frames=8, pad_multiple=processor.reducer.frames_per_group).chunks())


def _segments(processor, chunks, state=None):
    segments = []
    for chunk in chunks:
        out, state = processor.step(chunk, state)
        segments += [r for r in out if isinstance(r, Segment)]
    return segments, state


@pytest.fixture(scope="module")
def tiny_processor(tmp_path_factory, tiny_overrides):
    """The test-size models with a SigLIP at 224 px (7x7 patches of 32 px): the gate looks at
    frames at the encoder's size, and real encoders see 224-384 px, where sensor noise averages out."""
    from pipeline.build import build_processor
    from pipeline.config import load_config
    from pipeline.models.siglip import build_random_siglip

    siglip = build_random_siglip(tmp_path_factory.mktemp("siglip") / "siglip-224", hidden_size=32, num_layers=2,
                                 num_heads=2, intermediate_size=64, image_size=224, patch_size=32)
    return build_processor(load_config(None, [*tiny_overrides, f"encoder.model={siglip}"]), log=None)


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    """40 s of a still 640x360 scene with sensor noise (sigma 3 grey levels): 5 chunks of 8 sampled frames."""
    return write_static_camera(tmp_path_factory.mktemp("clips") / "still.mp4", seconds=40, fps=5, width=640,
                               height=360, events=[], noise=3.0)


@pytest.fixture(scope="module")
def walkers(tmp_path_factory):
    """The same kind of scene with two figures walking across from 10.5 s to 19.5 s."""
    return write_static_camera(tmp_path_factory.mktemp("clips") / "walk.mp4", seconds=32, fps=5, width=640,
                               height=360, events=[(10.5, 19.5)], noise=3.0, seed=1)


def test_a_still_scene_is_encoded_once_and_every_step_gets_its_grid(tiny_processor, still):
    assert tiny_processor.static_threshold > 0  # reuse is on by default
    proc = _counting(tiny_processor)
    chunks = _chunks(still, proc)
    segments, state = _segments(proc, chunks)
    assert proc.encoder.frames == 1  # SigLIP ran once for the whole stream
    assert [s.frames_encoded for s in segments] == [1, 0, 0, 0, 0]
    assert [s.frames_reused for s in segments] == [7, 8, 8, 8, 8]
    # every time step got the first frame's projected grid: the same as feeding that grid 8 times a chunk
    first = tiny_processor.encode_projected(chunks[0].frames[:1])
    temporal_state = None
    for chunk, segment in zip(chunks, segments):
        with torch.inference_mode():
            pooled, temporal_state = tiny_processor.connector.pool_projected(
                first.expand(len(chunk.frames), -1, -1, -1), tiny_processor.reducer, temporal_state)
        np.testing.assert_allclose(segment.visual_embedding, visual_embedding(pooled), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.last_grid, first[0].numpy())


def test_reuse_off_encodes_every_frame(tiny_processor, still):
    proc = _counting(tiny_processor, static_threshold=0.0)
    segments, _ = _segments(proc, _chunks(still, proc))
    assert proc.encoder.frames == 40 and all(s.frames_reused == 0 for s in segments)


def test_a_scene_change_is_encoded_and_the_scene_after_it_once(tiny_processor, walkers):
    chunks = _chunks(walkers, tiny_processor)
    frames = np.concatenate([c.frames[: c.n_valid] for c in chunks])
    mask, _ = reuse.gate(frames, None, tiny_processor.static_threshold)
    # frame 0; every second of the walk (11..19: the figures move further each time); the empty
    # scene again at 20, then nothing
    assert np.flatnonzero(mask).tolist() == [0, *range(11, 21)]
    proc = _counting(tiny_processor)
    segments, _ = _segments(proc, chunks)
    assert proc.encoder.frames == 11 == sum(s.frames_encoded for s in segments)
    assert [s.frames_encoded for s in segments] == [1, 5, 5, 0]


def test_a_stream_never_reuses_another_streams_frames(tiny_processor, still, walkers):
    alone = {name: _segments(tiny_processor, _chunks(path, tiny_processor, name))[0]
             for name, path in (("a", still), ("b", walkers))}
    proc = _counting(tiny_processor)
    streams = {name: _chunks(path, proc, name) for name, path in (("a", still), ("b", walkers))}
    states, together = {"a": None, "b": None}, {"a": [], "b": []}
    for i in range(max(map(len, streams.values()))):  # interleaved chunk by chunk through one processor
        for name in ("a", "b"):
            if i < len(streams[name]):
                out, states[name] = proc.step(streams[name][i], states[name])
                together[name] += [r for r in out if isinstance(r, Segment)]
    assert proc.encoder.frames == 1 + 11  # each stream's own first frame, however they interleave
    for name in ("a", "b"):
        assert [s.frames_encoded for s in together[name]] == [s.frames_encoded for s in alone[name]]
        for x, y in zip(together[name], alone[name]):
            np.testing.assert_array_equal(x.visual_embedding, y.visual_embedding)
    # and the second stream's first frame was not taken for the first one's still scene
    assert together["b"][0].frames_encoded == 1
    assert not np.allclose(together["a"][0].visual_embedding, together["b"][0].visual_embedding, atol=1e-3)


def test_the_reference_moves_with_the_state(tiny_processor, walkers):
    chunks = _chunks(walkers, tiny_processor)
    straight, _ = _segments(tiny_processor, chunks)
    first, state = _segments(tiny_processor, chunks[:2])
    moved = StreamState.from_bytes(state.to_bytes())  # another process resumes the stream
    assert moved.gate_ref.shape == (reuse.GRID, reuse.GRID) and moved.last_grid is not None
    rest, _ = _segments(tiny_processor, chunks[2:], moved)
    for a, b in zip(first + rest, straight):
        assert a.frames_encoded == b.frames_encoded
        np.testing.assert_array_equal(a.visual_embedding, b.visual_embedding)


def test_fill_and_its_refusals():
    encoded = torch.arange(2.0)[:, None] + 10  # two grids, values 10 and 11
    last = torch.tensor([7.0])
    mask = np.array([False, True, False, True, False])
    assert reuse.fill(encoded, mask, last)[:, 0].tolist() == [7, 10, 10, 11, 11]
    assert reuse.fill(encoded[:0], np.zeros(3, bool), last)[:, 0].tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="marks 2 frames to encode but 1 grids came"):
        reuse.fill(encoded[:1], mask, last)
    with pytest.raises(ValueError, match="the stream has none"):
        reuse.fill(encoded, mask, None)
    with pytest.raises(ValueError, match="32x32"):
        reuse.check_reference(np.zeros((4, 4)))
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    assert reuse.gate(frames, None, 0.0)[0].tolist() == [True, True, True]  # 0 = off
    assert reuse.gate(frames, None, 2.0)[0].tolist() == [True, False, False]


def test_a_reference_survives_its_text_form_and_garbage_reads_as_none():
    """The decoders keep their reference in Redis as text; a garbled one means 'encode the next frame'."""
    ref = np.random.default_rng(0).random((reuse.GRID, reuse.GRID), np.float32)
    np.testing.assert_array_equal(reuse.reference_from_text(reuse.reference_to_text(ref)), ref)
    assert reuse.reference_from_text(None) is None and reuse.reference_from_text("") is None
    assert reuse.reference_from_text("%%% not base64") is None
    assert reuse.reference_from_text(reuse.reference_to_text(ref[:4])) is None  # wrong shape
    assert reuse.reference_from_text(reuse.reference_to_text(np.full_like(ref, np.nan))) is None


def test_thumbs_pool_like_torch_adaptive_average_pooling():
    """The gate's thumbs are computed in numpy (decoders never import torch): the same bins and values as
    torch's adaptive_avg_pool2d over the grey frames, for sizes GRID divides and sizes it does not."""
    import torch
    import torch.nn.functional as F

    from pipeline.reuse import GRID, LUMA, thumbs

    rng = np.random.default_rng(3)
    for shape in [(3, 240, 320, 3), (2, 97, 131, 3), (1, 31, 45, 3), (1, GRID, GRID, 3), (2, 384, 384, 3)]:
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        grey = torch.from_numpy(frames).float() @ torch.tensor(LUMA)
        expected = F.adaptive_avg_pool2d(grey[:, None], GRID)[:, 0].numpy()
        got = thumbs(frames)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)
