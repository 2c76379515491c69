"""Offline mode in the distributed stages (real Redis, no Ray): the temporal owner keeps a file's chunks on disk
until its end marker, then hands on the whole-file scan's pooled tokens once each, even when it dies halfway
through handing them on; decoders refuse live sources in one line."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.queue.keys import Keys
from actors.runtime import DecoderStage, TemporalStage
from pipeline.messages import EndMarker
from pipeline.queue.redis_streams import PAYLOAD
from pipeline.types import unpack
from helpers.configs import queue_config


def _config(tiny_overrides, *extra):
    return queue_config(tiny_overrides, "queue.reclaim_idle_s=0.2", "temporal.mode=offline", *extra)


class OwnerDies(Exception):
    pass


def test_offline_owner_hands_on_the_whole_file_scan_once_across_a_crash(tmp_path, tiny_overrides, tiny_processor,
                                                                         redis_url, publish_tokens):
    cfg = _config(tiny_overrides, "temporal.offline_spill_mb=0")
    keys = Keys(cfg.queue.prefix)
    first = TemporalStage(cfg, redis_url, "temporal-0", index=0, data_dir=str(tmp_path))
    first.r.sadd(keys.owner(0), "cam")
    grids = publish_tokens(first, keys)
    first.q.publish(keys.tokens("cam"), EndMarker("cam", 2, "done", "", {"source": "x.mp4"}).to_bytes())

    real_handoff = first.handoff

    def dies_at_chunk_1(msgs, outputs, extra=None):
        if any(unpack(p)[0].get("chunk_seq") == 1 for _, p in outputs):
            raise OwnerDies()  # after chunk 0 was handed on, before chunk 1 was
        return real_handoff(msgs, outputs, extra)

    first.handoff = dies_at_chunk_1
    inputs = tmp_path / "spill"
    with pytest.raises(OwnerDies):
        for _ in range(50):
            first.tick()
    assert first.r.xlen(keys.pooled) == 1  # chunk 0 only: nothing was handed on before the end marker
    assert len(list(inputs.glob("cam.*.inputs/chunk-*.safetensors"))) == 3
    assert first.r.xpending(keys.tokens("cam"), "temporal")["pending"] == 1  # the end marker, held by the dead one

    second = TemporalStage(cfg, redis_url, "temporal-0", index=0, data_dir=str(tmp_path))  # a new owner
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and second.r.xlen(keys.pooled) < 4:
        second.tick()
    out = [unpack(fields[PAYLOAD]) for _, fields in second.r.xrange(keys.pooled)]
    assert [m.get("chunk_seq", m["type"]) for m, _ in out] == [0, 1, 2, "end"]  # each once, in order

    with torch.inference_mode():  # one bidirectional pass over the whole concatenated grid
        whole, _ = second.processor.connector.temporal.forward_projected(torch.cat(grids)[None])
        expected = [second.processor.reducer(part) for part in torch.split(whole[0], [len(g) for g in grids])]
        chunked = second.processor.connector.pool_projected(grids[0], second.processor.reducer)[0]
    for (_, arrays), want in zip(out, expected):
        torch.testing.assert_close(torch.from_numpy(arrays["pooled"].copy()), want, rtol=1e-5, atol=1e-5)
    assert (expected[0] - chunked).abs().max() > 1e-4  # not chunk by chunk

    assert second.r.xpending(keys.tokens("cam"), "temporal")["pending"] == 0
    assert not second.r.sismember(keys.owner(0), "cam") and not second.r.exists(keys.offline("cam"))
    assert list(inputs.iterdir()) == []  # the buffered chunks and every spilled activation are gone


def test_decoders_refuse_a_live_source_in_offline_mode(tmp_path, tiny_overrides, redis_url):
    cfg = _config(tiny_overrides)
    keys = Keys(cfg.queue.prefix)
    decoder = DecoderStage(cfg, redis_url, "decoder-0", image_size=56, pad_multiple=8)
    job = {"source": "rtsp://127.0.0.1:9/cam", "stream_id": "cam", "live": True, "job_id": "j1"}
    assert decoder.decode(job) == "failed"
    ((_, fields),) = decoder.r.xrange(keys.frames)
    meta, _ = unpack(fields[PAYLOAD])
    assert (meta["type"], meta["status"], meta["last_chunk_seq"]) == ("end", "failed", -1)
    assert meta["error"] == ("rtsp://127.0.0.1:9/cam: temporal.mode=offline scans whole files and cannot run on a "
                             "live source; ingest it with temporal.mode=chunk_bidirectional (same weights)")
