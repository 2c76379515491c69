"""The typed queue messages: each comes back as it went in, reads what the hand-built messages of earlier
versions put on a queue (a restarted cluster drains them), and refuses garbage with a ValueError naming it."""

import json

import numpy as np
import pytest
import torch

from pipeline.messages import ChunkInfo, EndMarker, Pooled, RollupRequest, Tokens, encode_record, parse
from pipeline.processor import from_wire, to_wire
from pipeline.types import FrameChunk, Segment, pack

INFO = ChunkInfo("cam", 3, 24.0, 32.0, 8, wall_clock=1.7e9, source="a.mp4", gap_before=2.5, thumbnail=b"\xff\xd8jpg")


def test_each_message_comes_back_as_it_went_in():
    grids = torch.randn(2, 2, 2, 16)
    mask = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    tokens = parse(Tokens(INFO, to_wire(grids, "bf16"), "bf16", mask).to_bytes(), Tokens)
    assert tokens.info == INFO and tokens.encode_mask.tolist() == mask.tolist()
    torch.testing.assert_close(tokens.grids(), from_wire(to_wire(grids, "bf16"), "bf16"), rtol=0, atol=0)

    pooled = torch.randn(1, 2, 2, 16)
    counted = ChunkInfo(**{**INFO.__dict__, "frames_encoded": 2})
    back = parse(Pooled.of(counted, pooled).to_bytes(), Pooled)
    assert back.info == counted and back.info.frames_encoded == 2
    np.testing.assert_array_equal(back.pooled, pooled.numpy())
    assert back.visual_embedding.shape == (16,)

    request = RollupRequest("cam", "window", 4, 120.0, 150.0, None, ("a red circle", "a blue square"))
    assert parse(request.to_bytes(), RollupRequest) == request and request.tag == "cam|window|4"
    end = EndMarker("cam", 7, "done", "", {"source": "a.mp4", "chunks": 8})
    assert parse(end.to_bytes(), EndMarker) == end == EndMarker.from_json(end.to_json())
    assert end.failed(3, "boom") == EndMarker("cam", 3, "failed", "boom", end.job)

    segment = Segment(stream_id="cam", chunk_seq=0, t_start=0.0, t_end=8.0, caption="x", n_frames=8, config_fingerprint="f",
                      visual_embedding=np.ones(4, np.float32), text_embedding=np.zeros(4, np.float32))
    stored = parse(encode_record(segment), Segment)
    assert (stored.stream_id, stored.caption) == ("cam", "x")
    np.testing.assert_array_equal(stored.visual_embedding, segment.visual_embedding)


def test_messages_of_earlier_versions_still_parse():
    """The headers the stages built by hand before the messages were typed (same wire)."""
    meta = {"type": "tokens", "stream_id": "cam", "chunk_seq": 0, "t_start": 0.0, "t_end": 1.0, "n_valid": 2,
            "wall_clock": None, "source": "x.mp4", "tokens_dtype": "fp16"}
    old = parse(pack(meta, {"tokens": np.zeros((2, 2, 2, 8), np.float16), "encode_mask": np.ones(2, np.uint8)}),
                Tokens)
    assert old.info == ChunkInfo("cam", 0, 0.0, 1.0, 2, source="x.mp4") and old.grids().shape == (2, 2, 2, 8)
    end = pack({"type": "end", "stream_id": "cam", "last_chunk_seq": -1, "status": "failed", "error": "bad",
                "job": {"source": "x.mp4"}})
    assert parse(end, EndMarker) == EndMarker("cam", -1, "failed", "bad", {"source": "x.mp4"})
    rollup = pack({"type": "rollup", "stream_id": "cam", "level": "stream", "seq": 0, "t_start": 0.0, "t_end": 9.0,
                   "wall_clock": None, "texts": ["one", "two"]})
    assert parse(rollup, RollupRequest).texts == ("one", "two")
    chunk = FrameChunk("cam", 0, np.zeros((2, 8, 8, 3), np.uint8), np.arange(2.0), 2.0)
    assert parse(chunk.to_bytes(), FrameChunk, EndMarker).chunk_seq == 0


@pytest.mark.parametrize("data,expected,message", [
    (pack({"type": "pooled"}), (Tokens,), "unexpected message type 'pooled'"),
    (pack({"type": "nope"}), (Tokens, EndMarker), "unexpected message type 'nope'"),
    (pack({"type": "end", "stream_id": "cam", "status": "done"}), (EndMarker,), "without 'last_chunk_seq'"),
    (pack({"type": "end", "stream_id": "cam", "last_chunk_seq": "7", "status": "done"}), (EndMarker,),
     "last_chunk_seq must be an integer"),
    (pack({"type": "end", "stream_id": "cam", "last_chunk_seq": 1, "status": "done", "job": [1]}), (EndMarker,),
     "job must be an object"),
    (pack({"type": "rollup", "stream_id": "cam", "level": "hour", "seq": 0, "t_start": 0, "t_end": 1,
           "texts": []}), (RollupRequest,), "level must be window or stream"),
    (pack({"type": "rollup", "stream_id": "cam", "level": "window", "seq": 0, "t_start": 0, "t_end": 1,
           "texts": "abc"}), (RollupRequest,), "texts must be a list"),
    (pack({**INFO.header(), "type": "tokens", "tokens_dtype": "fp16"}, {"tokens": np.zeros((8, 2, 2, 4), np.float32)}),
     (Tokens,), "do not match the message's tokens_dtype 'fp16'"),
    (pack({**INFO.header(), "type": "tokens"}, {"tokens": np.zeros((8, 4), np.float32)}), (Tokens,),
     r"tokens must be \(frames, h, w, D\)"),
    (pack({**INFO.header(), "type": "tokens"}, {"tokens": np.zeros((2, 2, 2, 4), np.float32),
                                                  "encode_mask": np.ones(8, np.uint8)}), (Tokens,), "encode_mask marks 8"),
    (pack({**INFO.header(), "n_valid": 0, "type": "pooled"}, {"pooled": np.zeros((1, 2, 2, 4), np.float32)}),
     (Pooled,), "n_valid must be >= 1"),
    (pack({**INFO.header(), "t_start": "soon", "type": "pooled"}, {"pooled": np.zeros((1, 2, 2, 4), np.float32)}),
     (Pooled,), "t_start must be a number"),
    (pack({**INFO.header(), "type": "pooled"}, {}), (Pooled,), "without 'pooled'"),
    (b"\x00\x00\x00\x05{nope", (Tokens,), "not a vidstorm message"),
])
def test_garbage_is_one_value_error_naming_it(data, expected, message):
    with pytest.raises(ValueError, match=message):
        parse(data, *expected)


def test_a_garbled_thumbnail_or_count_does_not_cost_the_chunk():
    pooled = np.zeros((1, 2, 2, 4), np.float32)
    meta = {**INFO.header(), "type": "pooled", "thumbnail": "%%% not base64", "frames_encoded": 99}
    m = parse(pack(meta, {"pooled": pooled}), Pooled)
    assert m.info.thumbnail is None and m.info.thumbnail_error and m.info.frames_encoded is None
    assert m.info.chunk_seq == INFO.chunk_seq
    assert json.loads(json.dumps(m.info.header()))["thumbnail"] is None
