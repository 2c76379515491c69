"""Summarizers: the LLM, a caption per pooled chunk and the roll-ups the writer asks for."""

from __future__ import annotations

from pipeline.messages import EndMarker, Pooled, RollupRequest, encode_record, parse
from pipeline.types import Segment, Summary

from actors.runtime.stage import Stage


class SummarizerStage(Stage):
    """The LLM: a caption per pooled chunk, and the roll-ups the writer asks for."""

    role = "summarizers"

    def __init__(self, cfg, redis_url, name):
        super().__init__(cfg, redis_url, name)
        from pipeline.build import build_processor

        self.processor = build_processor(cfg, log=None, parts=("temporal", "llm"))

    def tick(self) -> None:
        for msg in self.q.consume([self.keys.pooled, self.keys.rollup], count=1, block_ms=200):
            try:
                m = parse(msg.data, Pooled, EndMarker, RollupRequest)
            except ValueError as err:
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
                continue
            if isinstance(m, EndMarker):
                out = msg.data
            elif isinstance(m, Pooled):
                if m.info.thumbnail_error:  # garbage in one field: the caption still counts, without a picture
                    print(f"{self.name}: {m.info.stream_id!r} chunk {m.info.chunk_seq}: dropping its "
                          f"thumbnail: {m.info.thumbnail_error}", flush=True)
                out = encode_record(self._segment(m))
            else:
                out = encode_record(self._summary(m))
            self.wait_for_room(self.keys.results)
            self.handoff(msg, [(self.keys.results, out)])

    def _segment(self, m: Pooled) -> Segment:
        import torch

        i = m.info
        return self.processor.segment(
            torch.from_numpy(m.pooled.copy()), stream_id=i.stream_id, chunk_seq=i.chunk_seq, t_start=i.t_start,
            t_end=i.t_end, n_frames=i.n_valid, source=i.source, wall_clock=i.wall_clock, gap_before=i.gap_before,
            thumbnail=i.thumbnail, frames_encoded=i.frames_encoded)

    def _summary(self, r: RollupRequest) -> Summary:
        return self.processor.summary(stream_id=r.stream_id, level=r.level, seq=r.seq, t_start=r.t_start,
                                      t_end=r.t_end, texts=list(r.texts), wall_clock=r.wall_clock)
