"""pipeline.clip: cuts of real files made here with PyAV, decoded back frame by frame.

Every source frame carries its index in binary as a row of black or white 16x16 blocks (block b is
bit b), which survives compression: a decoded frame says which source frame it shows.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.clip import ClipError, cut_clip

FPS, WIDTH, HEIGHT = 10, 160, 120
BITS, BLOCK = 10, 16  # 10 blocks of 16 px across the top: frame indices up to 1023
HALF_FRAME = 0.5 / FPS


def frame_image(index: int) -> np.ndarray:
    """(H, W, 3) uint8: the index blocks on a background whose brightness also moves."""
    img = np.full((HEIGHT, WIDTH, 3), 40 + (index * 7) % 180, dtype=np.uint8)
    for bit in range(BITS):
        img[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = 255 if (index >> bit) & 1 else 0
    return img


def frame_index(rgb: np.ndarray) -> int:
    return sum(1 << bit for bit in range(BITS) if rgb[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK].mean() > 128)


def write_video(path: Path, *, seconds: float = 12.0, keyint: int = FPS, codec: str = "libx264",
                bframes: bool = False, audio: bool = False) -> Path:
    """A 160x120 10 fps clip with a keyframe every `keyint` frames; with audio: a 16 kHz AAC tone."""
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=FPS)
        video.width, video.height = WIDTH, HEIGHT
        video.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":  # ultrafast has no B-frames; medium does (a pyramid of them)
            video.options = {"preset": "medium" if bframes else "ultrafast", "qp": "12",
                             "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"}
        sound = out.add_stream("aac", rate=16000) if audio else None
        if sound is not None:
            sound.layout = "mono"
        samples = 16000 // FPS
        for index in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(frame_image(index), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(video.encode(frame))
            if sound is not None:
                t = np.arange(index * samples, (index + 1) * samples) / 16000
                wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, samples)
                tone = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
                tone.sample_rate, tone.pts, tone.time_base = 16000, index * samples, Fraction(1, 16000)
                out.mux(sound.encode(tone))
        out.mux(video.encode())
        if sound is not None:
            out.mux(sound.encode())
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        sound = out.add_stream("aac", rate=16000)
        sound.layout = "mono"
        tone = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="flt", layout="mono")
        tone.sample_rate, tone.pts, tone.time_base = 16000, 0, Fraction(1, 16000)
        out.mux(sound.encode(tone))
        out.mux(sound.encode())
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clip-sources")
    return {
        "short_gop": write_video(folder / "short_gop.mp4"),  # keyframe every 1 s
        "long_gop": write_video(folder / "long_gop.mp4", keyint=1000),  # keyframe only at 0
        "bframes": write_video(folder / "bframes.mp4", bframes=True),
        "mjpeg": write_video(folder / "mjpeg.avi", codec="mjpeg"),  # every frame a keyframe, not for MP4
        "audio": write_video(folder / "audio.mp4", audio=True),
        "audio_only": write_audio_only(folder / "audio_only.m4a"),
    }


def decode_frames(path: Path) -> list[tuple[float, int, np.ndarray]]:
    """(time, index read from the pixels, rgb) for every frame of the first video stream."""
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            frames.append((float(frame.time), frame_index(rgb), rgb))
        return frames


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.sample_rate


def audio_packets(path: Path) -> set[bytes]:
    with av.open(str(path)) as container:
        return {bytes(packet) for packet in container.demux(audio=0) if packet.size}


def top_level_boxes(path: Path) -> list[str]:
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[at + 8 : at + 16])[0]
        boxes.append(kind.decode("latin-1"))
        at += size if size else len(data)
    return boxes


def test_copy_cut_starts_at_the_keyframe_and_holds_every_frame_before_until(sources, tmp_path):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["short_gop"], 3.4, 6.25, out)
    frames = decode_frames(out)
    assert info.copied
    assert info.start == pytest.approx(3.0, abs=HALF_FRAME)  # the keyframe at or before 3.4
    assert info.end == pytest.approx(6.3, abs=HALF_FRAME)  # just after the frame at 6.2
    assert info.bytes == out.stat().st_size
    assert [index for _, index, _ in frames] == list(range(30, 63))
    assert frames[0][0] + info.start == pytest.approx(3.0, abs=HALF_FRAME)
    assert frames[-1][0] + info.start == pytest.approx(6.2, abs=HALF_FRAME)
    source = decode_frames(sources["short_gop"])
    source_frame = next(rgb for t, _, rgb in source if abs(t - info.start) < HALF_FRAME)
    assert np.array_equal(frames[0][2], source_frame)  # the same bits, decoded the same way


def test_copy_cut_with_b_frames_misses_no_frame_before_until(sources, tmp_path):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["bframes"], 3.4, 6.25, out)
    frames = decode_frames(out)
    times = [t for t, _, _ in frames]
    indices = [index for _, index, _ in frames]
    assert info.copied and info.start == pytest.approx(3.0, abs=HALF_FRAME)
    assert times == sorted(times) and times[0] == pytest.approx(0.0, abs=HALF_FRAME)
    assert set(range(30, 63)) <= set(indices)
    assert len([index for index in indices if index >= 63]) <= 1  # at most the anchor those B-frames need
    assert all(t + info.start == pytest.approx(index / FPS, abs=HALF_FRAME) for t, index, _ in frames)
    assert info.end == pytest.approx(times[-1] + info.start + 1 / FPS, abs=HALF_FRAME)


def test_far_keyframe_makes_an_exact_reencoded_cut(sources, tmp_path):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["long_gop"], 4.0, 7.0, out)
    frames = decode_frames(out)
    indices = [index for _, index, _ in frames]
    assert not info.copied
    assert abs(indices[0] - 40) <= 1 and abs(indices[-1] - 69) <= 1
    assert indices == list(range(indices[0], indices[-1] + 1))
    assert info.start == pytest.approx(indices[0] / FPS, abs=HALF_FRAME)
    assert info.end == pytest.approx((indices[-1] + 1) / FPS, abs=HALF_FRAME)
    assert np.diff([t for t, _, _ in frames]) == pytest.approx(1 / FPS)  # the source's timing
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.video[0].format.name == "yuv420p"


def test_copy_slack_decides_between_copy_and_reencode(sources, tmp_path):
    copied = cut_clip(sources["short_gop"], 3.5, 5.0, tmp_path / "copied.mp4", copy_slack_s=0.5)
    exact = cut_clip(sources["short_gop"], 3.5, 5.0, tmp_path / "exact.mp4", copy_slack_s=0.2)
    assert copied.copied and decode_frames(tmp_path / "copied.mp4")[0][1] == 30
    assert not exact.copied and decode_frames(tmp_path / "exact.mp4")[0][1] == 35


def test_codec_mp4_cannot_hold_is_reencoded_to_h264(sources, tmp_path):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["mjpeg"], 2.0, 4.0, out)
    assert not info.copied
    assert [index for _, index, _ in decode_frames(out)] == list(range(20, 40))
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_until_past_the_end_is_clamped_to_the_end(sources, tmp_path):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["short_gop"], 10.5, 100.0, out)
    assert info.end == pytest.approx(12.0, abs=HALF_FRAME)
    assert decode_frames(out)[-1][1] == 119


@pytest.mark.parametrize("slack", [1.0, 0.0], ids=["copy", "reencode"])
def test_clip_is_a_faststart_mp4(sources, tmp_path, slack):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["short_gop"], 3.4, 6.0, out, copy_slack_s=slack)
    boxes = top_level_boxes(out)
    assert info.copied == (slack > 0)
    assert boxes[0] == "ftyp" and "moov" in boxes and "mdat" in boxes
    assert boxes.index("moov") < boxes.index("mdat")  # a browser can start playing before the end


@pytest.mark.parametrize("slack", [1.0, 0.0], ids=["copy", "reencode"])
def test_audio_is_kept(sources, tmp_path, slack):
    out = tmp_path / "clip.mp4"
    info = cut_clip(sources["audio"], 3.4, 6.0, out, copy_slack_s=slack)
    with av.open(str(out)) as container:
        assert [s.codec_context.codec.canonical_name for s in container.streams.audio] == ["aac"]
    assert info.copied == (slack > 0)
    assert audio_seconds(out) == pytest.approx(info.end - info.start, abs=0.15)
    if info.copied:  # AAC goes into MP4 as it is: the very packets of the source
        assert audio_packets(out) <= audio_packets(sources["audio"])


BAD_REQUESTS = [  # (source, since, until, keywords, what the message must say)
    ("rtsp://camera.local/stream1", 1.0, 2.0, {}, "is a live stream: only files can be cut"),
    ("https://example.com/video.mp4", 1.0, 2.0, {}, "is a live stream"),
    ("missing.mp4", 1.0, 2.0, {}, r"missing\.mp4: no such file"),
    ("not_video.mp4", 1.0, 2.0, {}, r"not_video\.mp4: not a readable video"),
    ("audio_only", 0.0, 0.5, {}, r"audio_only\.m4a: has no video stream"),
    ("short_gop", -1.0, 2.0, {}, "since=-1 s is negative"),
    ("short_gop", 3.0, 3.0, {}, "until=3 s is not after since=3 s"),
    ("short_gop", 3.0, 2.0, {}, "until=2 s is not after since=3 s"),
    ("short_gop", float("nan"), 2.0, {}, "must be finite"),
    ("short_gop", 1.0, float("inf"), {}, "must be finite"),
    ("short_gop", 0.0, 11.0, {"max_seconds": 10.0}, "is longer than the limit of 10 s"),
    ("short_gop", 12.0, 13.0, {}, r"since=12 s is outside the source \(it lasts 12.00 s\)"),
    ("short_gop", 50.0, 60.0, {}, "outside the source"),
]


@pytest.mark.parametrize("source, since, until, keywords, message", BAD_REQUESTS)
def test_bad_request_raises_clip_error_and_writes_nothing(sources, tmp_path, source, since, until, keywords,
                                                          message):
    (tmp_path / "not_video.mp4").write_text("this is text, not video\n")
    source = sources.get(source) or (source if "://" in source else tmp_path / source)
    clips = tmp_path / "clips"
    clips.mkdir()
    with pytest.raises(ClipError, match=message):
        cut_clip(source, since, until, clips / "clip.mp4", **keywords)
    assert list(clips.iterdir()) == []  # neither the clip nor its temp file


def test_failed_cut_leaves_an_existing_clip_as_it_was(sources, tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"the previous clip")
    with pytest.raises(ClipError, match="outside the source"):
        cut_clip(sources["short_gop"], 20.0, 21.0, out)
    assert out.read_bytes() == b"the previous clip"
    assert list(tmp_path.iterdir()) == [out]


def test_missing_output_folder_is_a_clip_error(sources, tmp_path):
    with pytest.raises(ClipError, match="output folder does not exist"):
        cut_clip(sources["short_gop"], 1.0, 2.0, tmp_path / "nowhere" / "clip.mp4")
