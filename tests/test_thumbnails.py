"""Thumbnails: the middle sampled frame of each chunk, a small JPEG stored with its segment, once."""

import io
from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.messages import ChunkInfo, decode_record, encode_record, thumbnail_from_text
from pipeline.build import build_processor
from pipeline.config import load_config
from pipeline.decode import Source, VideoDecoder
from pipeline.ingest import LocalIngest
from pipeline.store import Store
from pipeline.store.query import StoreQuery
from pipeline.types import FrameChunk, Segment, check_thumbnail, unpack


def _ramp_clip(path, seconds=20, fps=10, width=320, height=180):
    """Frame i is a flat grey of brightness 10 * (i // fps): the second a thumbnail shows is readable
    from its pixels, whatever the compression does to them."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            img = np.full((height, width, 3), 10 * (i // fps), np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="mjpeg") as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_each_chunk_carries_a_jpeg_of_its_middle_sampled_frame(tmp_path):
    clip = _ramp_clip(tmp_path / "ramp.mp4")  # 20 s at 1 fps sampling, chunks of 8 frames: 8 + 8 + 4
    decoder = VideoDecoder(Source(str(clip), "ramp"), 32, fps=1.0, chunk_frames=8, pad_multiple=4,
                           thumbnail_width=192)
    chunks = list(decoder.chunks())
    assert [c.n_valid for c in chunks] == [8, 8, 4]
    for chunk in chunks:
        picture = _decode_jpeg(chunk.thumbnail)
        assert picture.shape == (108, 192, 3)  # 192 px wide, 16:9 kept (even height)
        middle = chunk.timestamps[(chunk.n_valid - 1) // 2]  # sampled frames at 0, 1, 2, ... s
        assert abs(picture.mean() - 10 * middle) < 3, (chunk.chunk_seq, picture.mean(), middle)
        assert 300 < len(chunk.thumbnail) < 20000
    again = FrameChunk.from_bytes(chunks[0].to_bytes())  # the thumbnail crosses the queue as it was
    assert again.thumbnail == chunks[0].thumbnail
    off = VideoDecoder(Source(str(clip), "ramp"), 32, fps=1.0, chunk_frames=8, pad_multiple=4)
    assert all(c.thumbnail is None for c in off.chunks())


def test_garbage_in_a_thumbnail_field_is_refused_not_stored():
    with pytest.raises(ValueError):
        check_thumbnail(b"GIF89a not a jpeg")
    with pytest.raises(ValueError):
        check_thumbnail(b"\xff\xd8" + bytes(300_000))
    with pytest.raises(ValueError):
        thumbnail_from_text("%%% not base64 %%%")
    assert thumbnail_from_text(None) is None
    info = ChunkInfo("s", 0, 0.0, 1.0, 1, thumbnail=b"\xff\xd8jpeg")
    assert ChunkInfo.from_header(info.header()).thumbnail == b"\xff\xd8jpeg"  # as the tokens/pooled headers carry it
    garbled = ChunkInfo.from_header({**info.header(), "thumbnail": "%%% not base64 %%%"})
    assert garbled.thumbnail is None and garbled.thumbnail_error  # dropped, and why (the caption still counts)
    chunk = FrameChunk("s", 0, np.zeros((4, 8, 8, 3), np.uint8), np.arange(4.0), 4.0, thumbnail=b"\xff\xd8x")
    message = bytearray(chunk.to_bytes())
    message[message.rindex(b"\xff\xd8x")] = 0  # the JPEG marker is gone
    with pytest.raises(ValueError):
        FrameChunk.from_bytes(bytes(message))


def test_local_ingest_stores_one_thumbnail_per_segment_and_a_rerun_or_redelivery_adds_none(tmp_path,
                                                                                           tiny_overrides):
    clip = _ramp_clip(tmp_path / "ramp.mp4", seconds=24)
    cfg = load_config(None, tiny_overrides)
    data = tmp_path / "data"
    runner = LocalIngest(cfg, build_processor(cfg, log=None), data, log=lambda *_: None)
    assert runner.run(Source(str(clip), "ramp")).status == "done"
    q = StoreQuery(data / "store")
    segments = q.segments("ramp")
    assert len(segments) == 3 and all(s["has_thumbnail"] for s in segments)
    for s in segments:
        picture = _decode_jpeg(q.thumbnail("ramp", s["chunk_seq"]))
        assert abs(picture.mean() - 10 * (s["t_start"] + 3)) < 3  # the 4th of 8 frames sampled at 1 fps
    first = q.thumbnail("ramp", 0)

    # a redelivered segment (same key) is dropped by the store, thumbnail and all
    store = Store(data / "store")
    row = decode_record(*unpack(encode_record(replace(_segment_like(segments[0]), thumbnail=b"\xff\xd8other"))))
    assert row.thumbnail == b"\xff\xd8other"  # what the writer gets from the queue
    assert store.write_records([row]) == 0
    assert LocalIngest(cfg, build_processor(cfg, log=None), data, log=lambda *_: None).run(
        Source(str(clip), "ramp")).status == "skipped"
    files = store.files("segments", "ramp")
    stored = sum(len(pq.read_table(f, columns=["thumbnail"])) for f in files)
    assert stored == 3
    # compaction keeps them, and a server that loaded the old file finds the merged one
    store.compact()
    assert q.thumbnail("ramp", 0) == first
    assert StoreQuery(data / "store").thumbnail("ramp", 0) == first
    assert q.thumbnail("ramp", 99) is None


def _segment_like(row):
    return Segment(stream_id=row["stream_id"], chunk_seq=row["chunk_seq"], t_start=row["t_start"],
                   t_end=row["t_end"], caption="again", visual_embedding=np.zeros(4, np.float32),
                   text_embedding=np.zeros(384, np.float32), n_frames=8, config_fingerprint="x")


def test_a_store_written_before_thumbnails_reads_as_none(tmp_path):
    import pyarrow as pa

    from pipeline.store.schema import SEGMENTS

    old = pa.schema([f for f in SEGMENTS if f.name != "thumbnail"])
    folder = tmp_path / "store" / "segments" / "stream=old" / "date=2026-01-01"
    folder.mkdir(parents=True)
    row = {"stream_id": "old", "chunk_seq": 0, "t_start": 0.0, "t_end": 8.0, "caption": "a",
           "visual_embedding": [0.0], "text_embedding": [0.0] * 384, "n_frames": 8, "config_fingerprint": "x",
           "source": "/x.mp4", "wall_clock": None, "created_at": None, "level": "chunk", "gap_before": 0.0}
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "part-1.parquet")
    q = StoreQuery(tmp_path / "store")
    assert q.segments("old")[0]["has_thumbnail"] is False and q.thumbnail("old", 0) is None
    assert q.latest_thumbnails() == {}
