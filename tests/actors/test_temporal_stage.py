"""The temporal stage advances a stream's state only after its handoff commits: a handoff that fails
leaves the chunk pending, and the chunk is applied again from the old state (real Redis, no Ray)."""

from __future__ import annotations

import time

import redis
import torch

from pipeline.queue.keys import Keys
from actors.runtime import TemporalStage
from pipeline.processor import StreamState
from pipeline.queue.redis_streams import PAYLOAD
from pipeline.types import unpack
from helpers.configs import queue_config


def test_a_failed_handoff_does_not_advance_the_state(redis_url, tiny_overrides, tiny_processor, publish_tokens):
    cfg = queue_config(tiny_overrides, "queue.reclaim_idle_s=0.2")
    keys = Keys(cfg.queue.prefix)
    stage = TemporalStage(cfg, redis_url, "temporal-0", index=0)
    stage.r.sadd(keys.owner(0), "cam")
    tokens = publish_tokens(stage, keys)

    real_handoff, failures = stage.handoff, []

    def flaky(msgs, outputs, extra=None):
        if not failures:  # Redis gone past the retry budget, once, at chunk 0's handoff
            failures.append(1)
            raise redis.ConnectionError("injected: the transaction did not commit")
        return real_handoff(msgs, outputs, extra)

    stage.handoff = flaky
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and stage.r.xlen(keys.pooled) < len(tokens):
        try:
            stage.tick()
        except redis.ConnectionError:
            pass  # Stage.run retries the tick, as here
    assert failures, "the injected failure never happened"
    pooled = [unpack(fields[PAYLOAD]) for _, fields in stage.r.xrange(keys.pooled)]
    assert [m["chunk_seq"] for m, _ in pooled] == [0, 1, 2]  # chunk 0 was not acked as a duplicate

    state, expected = None, []  # the pooled tokens equal one uninterrupted pass
    for grid in tokens:
        with torch.inference_mode():
            out, state = tiny_processor.connector.pool_projected(grid, tiny_processor.reducer, state)
        expected.append(out)
    for (_, arrays), want in zip(pooled, expected):
        torch.testing.assert_close(torch.from_numpy(arrays["pooled"]), want, rtol=1e-5, atol=1e-6)
    saved = StreamState.from_bytes(stage.r.get(keys.state("cam")))
    assert saved.next_chunk_seq == 3
    assert stage.r.xpending(keys.tokens("cam"), "temporal")["pending"] == 0


def test_a_garbled_copy_of_an_applied_chunk_is_acked_not_left_pending(redis_url, tiny_overrides, publish_tokens,
                                                                      capsys):
    """A redelivered duplicate whose arrays no longer parse is a duplicate all the same (its header names a
    chunk already applied): acked at once, as any duplicate is. A garbled chunk not yet applied stays
    pending, with its line, for the dead-letter queue to take."""
    from pipeline.types import pack

    cfg = queue_config(tiny_overrides, "queue.reclaim_idle_s=60")
    keys = Keys(cfg.queue.prefix)
    stage = TemporalStage(cfg, redis_url, "temporal-0", index=0)
    stage.r.sadd(keys.owner(0), "cam")
    publish_tokens(stage, keys)
    sent = [fields[PAYLOAD] for _, fields in stage.r.xrange(keys.tokens("cam"))]
    deadline = time.monotonic() + 60
    while stage.r.xlen(keys.pooled) < 3 and time.monotonic() < deadline:
        stage.tick()
    assert stage.r.xlen(keys.pooled) == 3

    def garbled(data: bytes, **changes) -> bytes:
        meta, arrays = unpack(data)
        return pack({**meta, "tokens_dtype": "fp32", **changes}, arrays)  # fp16 arrays: parse() refuses it

    duplicate = stage.q.publish(keys.tokens("cam"), garbled(sent[1]))
    ahead = stage.q.publish(keys.tokens("cam"), garbled(sent[1], chunk_seq=7))
    capsys.readouterr()
    for _ in range(3):
        stage.tick()
    pending = {p["message_id"] for p in stage.r.xpending_range(keys.tokens("cam"), "temporal", "-", "+", 10)}
    assert duplicate not in pending and ahead in pending, (duplicate, ahead, pending)
    said = capsys.readouterr().out
    assert said.count("skipping malformed message") == 1 and repr(ahead) in said, said
    assert stage.r.xlen(keys.pooled) == 3  # nothing applied twice
