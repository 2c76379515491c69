"""The encoder stage (real Redis, no Ray): it runs SigLIP only on the frames a decoder kept, projects
them, and queues 16-bit projected grids: at least 4x fewer bytes per chunk than fp32 SigLIP grids."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from pipeline.queue.keys import Keys
from actors.runtime import EncoderStage
from pipeline.messages import Tokens, parse
from pipeline.queue.redis_streams import PAYLOAD
from pipeline.types import FrameChunk, unpack
from helpers.configs import queue_config


def _chunk(stream_id, frames, mask=None):
    chunk = FrameChunk(stream_id, 0, frames, np.arange(len(frames), dtype=np.float64), float(len(frames)))
    return chunk if mask is None else chunk.gated(mask)


def _tokens(stage, keys, stream_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stage.r.xlen(keys.tokens(stream_id)):
        stage.tick()
    ((_, fields),) = stage.r.xrange(keys.tokens(stream_id))
    return fields[PAYLOAD]


@pytest.mark.parametrize("wire", ["fp16", "bf16"])
def test_tokens_messages_are_projected_16_bit_and_4x_smaller(redis_url, tiny_overrides, tiny_processor, wire):
    cfg = queue_config(tiny_overrides, f"encoder.output_dtype={wire}")
    keys = Keys(cfg.queue.prefix)
    stage = EncoderStage(cfg, redis_url, "encoder-0")
    frames = np.random.default_rng(0).integers(0, 255, (8, 56, 56, 3), np.uint8)
    stage.q.publish(keys.frames, _chunk("cam", frames).to_bytes())
    payload = _tokens(stage, keys, "cam")

    siglip_fp32 = tiny_processor.encode(frames).numpy().nbytes  # what the queue carried before: (8, 4, 4, 32) fp32
    meta, arrays = unpack(payload)
    assert arrays["tokens"].shape == (8, 2, 2, 32) and arrays["tokens"].itemsize == 2
    assert len(payload) <= siglip_fp32 / 4  # the whole message, header included
    message = parse(payload, Tokens)
    tokens, mask = message.grids(), message.encode_mask
    assert mask.all()
    with torch.inference_mode():  # exactly the projection --local computes (both round through `wire`)
        want = tiny_processor.connector.project(tiny_processor.encode(frames))
    from pipeline.processor import wire_round

    torch.testing.assert_close(tokens, wire_round(want, wire), rtol=0, atol=0)
    assert (tokens - want).abs().max() > 0  # and it is 16-bit: rounded


def test_only_the_frames_a_decoder_kept_are_encoded_and_sent(redis_url, tiny_overrides, tiny_processor):
    cfg = queue_config(tiny_overrides)
    keys = Keys(cfg.queue.prefix)
    stage = EncoderStage(cfg, redis_url, "encoder-0")
    seen = []
    real = stage.processor.encoder.encode
    stage.processor.encoder.encode = lambda frames: seen.append(len(frames)) or real(frames)
    frames = np.random.default_rng(1).integers(0, 255, (8, 56, 56, 3), np.uint8)
    mask = np.array([1, 0, 0, 0, 1, 0, 0, 0], bool)
    stage.q.publish(keys.frames, _chunk("cam", frames, mask).to_bytes())
    stage.q.publish(keys.frames, _chunk("still", frames[:1].repeat(8, 0), np.eye(8, dtype=bool)[0]).to_bytes())
    cam, still = _tokens(stage, keys, "cam"), _tokens(stage, keys, "still")
    assert sum(seen) == 3  # one batch of the kept frames, across both streams' chunks
    message = parse(cam, Tokens)
    tokens, got_mask = message.grids(), message.encode_mask
    assert tokens.shape[0] == 2 and got_mask.tolist() == mask.tolist()
    torch.testing.assert_close(tokens, tiny_processor.encode_projected(frames[mask]), rtol=0, atol=0)
    assert parse(still, Tokens).grids().shape[0] == 1


def test_a_mask_that_does_not_match_its_frames_is_refused(tiny_processor):
    frames = np.zeros((2, 56, 56, 3), np.uint8)
    bad = FrameChunk("cam", 0, frames, np.arange(8, dtype=np.float64), 8.0,
                     encode_mask=np.array([1, 0, 0, 0, 0, 0, 0, 0], bool))  # one marked, two frames sent
    with pytest.raises(ValueError, match="encode_mask marks 1 of 8 steps but 2 frames came"):
        FrameChunk.from_bytes(bad.to_bytes())
