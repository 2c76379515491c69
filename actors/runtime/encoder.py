"""Encoders: SigLIP + the per-frame projection, FrameChunks -> Tokens on {p}:tokens:<stream>."""

from __future__ import annotations

import numpy as np

from pipeline.messages import ChunkInfo, EndMarker, Tokens, parse
from pipeline.types import FrameChunk

from actors.runtime.stage import Stage


class EncoderStage(Stage):
    """SigLIP on frame chunks, batching whole chunks across streams up to encoder.batch_size frames."""

    role = "encoders"

    def __init__(self, cfg, redis_url, name):
        super().__init__(cfg, redis_url, name)
        from pipeline.build import build_processor

        # SigLIP and the temporal encoder's per-frame projection (pixel shuffle + Linear): the
        # temporal owner receives projected grids in encoder.output_dtype, several times smaller
        self.processor = build_processor(cfg, log=None, parts=("encoder", "temporal"))
        self.chunks_per_batch = max(1, cfg.encoder.batch_size // cfg.decode.chunk_frames)

    def tick(self) -> None:
        msgs = self.q.consume([self.keys.frames], count=self.chunks_per_batch, block_ms=200)
        chunks, outputs, good = [], [], []
        for msg in msgs:
            try:
                m = parse(msg.data, FrameChunk, EndMarker)
                if isinstance(m, EndMarker):
                    outputs.append((self.keys.tokens(m.stream_id), msg.data))
                else:
                    chunks.append(m)
                good.append(msg)
            except (ValueError, KeyError, TypeError) as err:
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
        if chunks:
            # one batch of only the frames that need encoding, across chunks and streams
            from pipeline.processor import to_wire

            grids = self.processor.encode_projected(np.concatenate([c.frames for c in chunks]))  # (E, h, w, D)
            start, wire = 0, self.cfg.encoder.output_dtype
            for c in chunks:
                tokens = Tokens(ChunkInfo.of(c), to_wire(grids[start : start + len(c.frames)], wire), wire, c.mask)
                start += len(c.frames)
                outputs.append((self.keys.tokens(c.stream_id), tokens.to_bytes()))
        for stream in {s for s, _ in outputs}:
            self.wait_for_room(stream)
        if good:
            self.handoff(good, outputs)
