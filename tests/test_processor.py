"""StreamProcessor: captions per chunk, hierarchical roll-ups, and state that moves between processes."""

import pytest

from pipeline.decode import Source, VideoDecoder
from pipeline.processor import StreamState
from pipeline.synth import write_clip
from pipeline.types import Segment, Summary


def _chunks(path, processor):
    return list(VideoDecoder(Source(str(path), "cam"), size=processor.encoder.image_size, fps=1.0,
                             chunk_frames=8, pad_multiple=processor.reducer.frames_per_group).chunks())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "cam.mp4", seconds=40, fps=4)


def _run(processor, chunks, state=None):
    records = []
    for chunk in chunks:
        out, state = processor.step(chunk, state)
        records += out
    return records, state


def test_captions_windows_and_stream_summary(tiny_processor, clip):
    chunks = _chunks(clip, tiny_processor)
    assert len(chunks) == 5  # 40 s at 1 fps, 8-frame chunks
    records, state = _run(tiny_processor, chunks)
    final, _ = tiny_processor.finish(state)
    segments = [r for r in records if isinstance(r, Segment)]
    summaries = [r for r in records + final if isinstance(r, Summary)]
    assert [s.chunk_seq for s in segments] == [0, 1, 2, 3, 4]
    assert all(s.caption and s.text_embedding.shape == (384,) for s in segments)
    assert segments[0].visual_embedding.shape == (32,)
    # 16 s windows over chunks starting at 0, 8, 16, 24, 32 -> windows [0,1], [2,3], [4]
    windows = [s for s in summaries if s.level == "window"]
    assert [(w.seq, w.t_start, w.t_end) for w in windows] == [(0, 0.0, 16.0), (1, 16.0, 32.0), (2, 32.0, 40.0)]
    (whole,) = [s for s in summaries if s.level == "stream"]
    assert (whole.t_start, whole.t_end) == (0.0, 40.0) and whole.text


def test_state_round_trip_resumes_identically(tiny_processor, clip):
    chunks = _chunks(clip, tiny_processor)
    straight, _ = _run(tiny_processor, chunks)
    first, state = _run(tiny_processor, chunks[:2])
    moved = StreamState.from_bytes(state.to_bytes())  # e.g. to another worker
    assert moved.next_chunk_seq == 2 and moved.temporal.frames_seen == 16
    rest, _ = _run(tiny_processor, chunks[2:], moved)
    resumed = first + rest
    assert [type(r).__name__ for r in resumed] == [type(r).__name__ for r in straight]
    for a, b in zip(resumed, straight):
        assert (a.caption if isinstance(a, Segment) else a.text) == (b.caption if isinstance(b, Segment) else b.text)
        assert abs(a.text_embedding - b.text_embedding).max() < 1e-5


def test_replayed_chunk_is_ignored_and_a_gap_is_refused(tiny_processor, clip):
    chunks = _chunks(clip, tiny_processor)
    _, state = _run(tiny_processor, chunks[:2])
    out, same = tiny_processor.step(chunks[1], state)
    assert out == [] and same.next_chunk_seq == 2
    with pytest.raises(ValueError, match="chunk 3 arrived before chunk 2"):
        tiny_processor.step(chunks[3], state)


def test_hierarchical_summary_of_many_items(tiny_processor):
    calls = []
    real = tiny_processor.summarizer.summarize

    def counting(texts, prompt):
        calls.append(len(texts))
        return real(texts, prompt)

    tiny_processor.summarizer.summarize = counting
    try:
        tiny_processor.summarize([f"caption {i}" for i in range(40)], "Summarize:")
    finally:
        tiny_processor.summarizer.summarize = real
    assert calls == [16, 16, 8, 3]  # groups of 16, then the group summaries


def test_a_state_saved_before_the_counts_were_kept_gets_counts_from_what_it_holds():
    """Job rows count the whole stream from the state (JobResult): a checkpoint written before the state
    kept its counts fills them from its position, its window summaries and its times, not zeros."""
    from pipeline.types import pack, unpack

    state = StreamState("cam", next_chunk_seq=3, t0=0.0, t_end=24.0,
                        window_summaries=[{"seq": 0, "t_start": 0.0, "t_end": 16.0, "text": "a"}])
    meta, arrays = unpack(state.to_bytes())
    old = pack({k: v for k, v in meta.items() if k not in ("summaries", "video_seconds")}, arrays)
    legacy = StreamState.from_bytes(old)
    assert (legacy.next_chunk_seq, legacy.summaries, legacy.video_seconds) == (3, 1, 24.0)
    fresh = StreamState.from_bytes(StreamState("cam").to_bytes())
    assert (fresh.summaries, fresh.video_seconds) == (0, 0.0)
