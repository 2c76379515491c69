"""StreamProcessor: the whole STORM path for one stream, in one process. No Ray, no Redis.

    step(chunk, state) -> (records, state)
        static-frame plan -> SigLIP + projection of the frames that changed (encode_projected)
        -> temporal encoder on one grid per step, state carried (temporal_projected) -> pooling
        -> projector -> LLM caption
    finish(state) -> (records, state)
        flush the open window, then a whole-stream summary

temporal.mode=offline instead scans a whole file before any caption: the caller adds
every chunk's projected grids to `offline_scan()`, then takes `offline_pooled()` chunk by
chunk into `step_pooled()` (caption and roll-up as in `step`).

Captions roll up hierarchically: chunk captions -> a window summary every
`window_seconds` of video -> a stream summary at the end, each level written by
the LLM from the level below. All per-stream state is in StreamState, which the
caller owns and which serialises to bytes (no pickle), so a stream can move
between processes and resume exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline.models.offline import OfflineScan
from pipeline.models.temporal import TemporalState
from pipeline.rollup import rollups_due, window_of
from pipeline.types import FrameChunk, Segment, Summary, pack, unpack


@dataclass
class StreamState:
    stream_id: str
    temporal: TemporalState | None = None
    next_chunk_seq: int = 0
    t0: float | None = None  # start of the first chunk
    t_end: float | None = None  # end of the last chunk processed
    window_index: int = 0
    window_captions: list[dict] = field(default_factory=list)  # {chunk_seq, t_start, t_end, caption, wall}
    window_summaries: list[dict] = field(default_factory=list)  # {seq, t_start, t_end, text}
    # static-frame reuse (pipeline/reuse.py): the thumb of the stream's last encoded frame (the
    # decision's reference; --local only, the distributed decoders keep theirs in Redis) and that
    # frame's projected grid (h, w, D), which a reused frame gets
    gate_ref: np.ndarray | None = None
    last_grid: np.ndarray | None = None
    # what the stream has so far, across resumes: a job row counts the whole stream (JobResult.counted;
    # its chunks and segments are next_chunk_seq: every applied chunk is one captioned segment)
    video_seconds: float = 0.0
    summaries: int = 0

    ARRAYS = ("gate_ref", "last_grid")

    def to_bytes(self) -> bytes:
        header = {k: v for k, v in self.__dict__.items() if k != "temporal" and k not in self.ARRAYS}
        header["type"] = "stream_state"
        arrays = {}
        for k in self.ARRAYS:
            if getattr(self, k) is not None:
                full = np.asarray(getattr(self, k), np.float32)
                half = full.astype(np.float16)  # a grid that came as fp16 (the default) is saved in half the bytes
                arrays[k] = half if np.array_equal(half.astype(np.float32), full) else full
        if self.temporal is not None:
            arrays["temporal"] = np.frombuffer(self.temporal.to_bytes(), dtype=np.uint8)
        return pack(header, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "StreamState":
        from pipeline.reuse import check_reference

        meta, arrays = unpack(data)
        if meta.pop("type", None) != "stream_state":
            raise ValueError("not a stream_state message")
        temporal = TemporalState.from_bytes(arrays["temporal"].tobytes()) if "temporal" in arrays else None
        grids = {k: np.array(arrays[k], np.float32) for k in cls.ARRAYS if k in arrays}
        if "gate_ref" in grids:
            check_reference(grids["gate_ref"])
        if "last_grid" in grids and grids["last_grid"].ndim != 3:
            raise ValueError("stream_state last_grid must be (h, w, D)")
        if "summaries" not in meta and meta.get("next_chunk_seq"):  # saved before the counts were kept
            meta["summaries"] = len(meta.get("window_summaries") or [])
            t0, t_end = meta.get("t0"), meta.get("t_end")
            meta["video_seconds"] = (t_end - t0) if t0 is not None and t_end is not None else 0.0
        try:
            return cls(temporal=temporal, **meta, **grids)
        except TypeError as err:
            raise ValueError(f"stream_state has unexpected fields: {err}") from None


WIRE_TORCH = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FP16_MAX = 65504.0


def wire_round(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """fp32 values as they come out of `dtype` (encoder.output_dtype): what the distributed encoder
    stage sends the temporal owner. --local rounds the same way, so both paths compute on equal inputs.
    fp16 saturates at its largest finite value instead of overflowing to inf."""
    if dtype == "fp32":
        return x.float()
    if dtype == "fp16":
        x = x.clamp(-FP16_MAX, FP16_MAX)
    return x.to(WIRE_TORCH[dtype]).float()


def to_wire(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Projected grids as message bytes: float16 / bfloat16 (as its uint16 bit pattern) / float32."""
    if dtype == "bf16":
        return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if dtype == "fp16":
        return x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16).numpy()
    return x.float().numpy()


def from_wire(arr: np.ndarray, dtype: str) -> torch.Tensor:
    """`to_wire` back to fp32 (ValueError for an array that is not of `dtype`'s kind)."""
    want = {"bf16": np.uint16, "fp16": np.float16, "fp32": np.float32}.get(dtype)
    if want is None or arr.dtype != want:
        raise ValueError(f"tokens of dtype {arr.dtype} do not match the message's tokens_dtype {dtype!r}")
    t = torch.from_numpy(np.array(arr))
    if dtype == "bf16":
        t = t.view(torch.int16).view(torch.bfloat16)
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError("tokens hold non-finite values")
    return t


def visual_embedding(pooled: torch.Tensor) -> np.ndarray:
    """A segment's visual embedding: the mean of its pooled visual tokens, (d_model,) float32."""
    return pooled.float().reshape(-1, pooled.shape[-1]).mean(dim=0).numpy()


def encoded_count(mask: np.ndarray, n_valid: int) -> int:
    """How many of a chunk's real frames (not its padding) went through SigLIP."""
    return int(np.asarray(mask, bool)[:n_valid].sum())


@dataclass(frozen=True)
class RollupSettings:
    window_seconds: float = 300.0
    max_items_per_prompt: int = 16
    window_prompt: str = "Summarize what happens in this part of a video, given captions of its clips in order:"
    stream_prompt: str = "Summarize the whole video in two sentences, given summaries of its parts in order:"


def summarize_hierarchical(summarizer, texts: list[str], prompt: str, limit: int) -> str:
    """More texts than fit one prompt (`limit`) are summarised in groups first, then again."""
    while len(texts) > limit:
        texts = [summarizer.summarize(texts[i : i + limit], prompt) for i in range(0, len(texts), limit)]
    return summarizer.summarize(texts, prompt)


class StreamProcessor:
    """Holds the (shared, stateless) models; the per-stream state is passed in and out."""

    def __init__(self, encoder, connector, reducer, summarizer, embedder, caption_prompt: str,
                 rollup: RollupSettings, config_fingerprint: str, device: str | torch.device = "cpu",
                 static_threshold: float = 0.0, output_dtype: str = "fp32",
                 provenance: tuple[str, str] = ("", "")):
        self.encoder, self.connector, self.reducer = encoder, connector, reducer
        self.provenance = provenance  # (model, untrained) each segment records: build.py provenance()
        self.summarizer, self.embedder = summarizer, embedder
        self.caption_prompt, self.rollup = caption_prompt, rollup
        self.config_fingerprint = config_fingerprint
        self.device = torch.device(device)
        self.static_threshold, self.output_dtype = static_threshold, output_dtype

    # --- the stages, separately callable (the distributed runtime splits them) ---

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, S, S, 3) -> SigLIP patch grid (T, g, g, C)."""
        return self.encoder.encode(frames)

    def gate(self, frames: np.ndarray, reference: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Static-frame reuse: which frames of a chunk SigLIP must see (pipeline/reuse.py)."""
        from pipeline.reuse import gate

        return gate(frames, reference, self.static_threshold)

    @torch.inference_mode()
    def encode_projected(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (E, S, S, 3) -> projected grids (E, h, w, D): SigLIP, then the temporal encoder's
        per-frame pixel shuffle + Linear, rounded through encoder.output_dtype (the encoder stage's half)."""
        if len(frames) == 0:
            return torch.zeros(0, *self.connector.projected_shape(self.encoder.grid))
        projected = self.connector.project(self.encode(frames).to(self.device)).cpu()
        return wire_round(projected, self.output_dtype)

    @torch.inference_mode()
    def temporal_projected(self, encoded: torch.Tensor, mask: np.ndarray, state: StreamState):
        """The temporal owner's half: one projected grid per time step (reused frames get their
        reference's), the Mamba layers with the stream's state carried, pooling.
        -> (pooled (T', h', w', D), new temporal state, the grid a later reused frame gets)."""
        from pipeline.reuse import advance

        steps, last_grid = advance(encoded, mask, state.last_grid)
        pooled, new_state = self.connector.pool_projected(steps.to(self.device), self.reducer, state.temporal)
        return pooled.cpu(), new_state, last_grid

    @torch.inference_mode()
    def caption(self, pooled: torch.Tensor, t_start: float | None = None, t_end: float | None = None) -> str:
        """Pooled tokens (T', h', w', D) of a chunk spanning t_start..t_end (None: a still image) -> text."""
        visual = self.connector.to_llm(pooled.to(self.device))  # (T'*h'*w', llm_hidden)
        return self.summarizer.caption(visual, self.caption_prompt, pooled.shape[0], t_start, t_end)

    @torch.inference_mode()
    def caption_image(self, image: np.ndarray) -> str:
        """A still image (S, S, 3) at the encoder's size -> its caption, asked with the image chat. It is a
        one-frame video repeated over one pooling group (the copies reuse its grid); on LLaVA-OneVision it
        takes that model's own image path instead (base view + one tile, unpooled: `VlmConnector.still`)."""
        base = self.connector.base_connector if self.connector.is_vlm else None
        if base is not None and base.family == "llava_onevision":
            grid = self.encode(image[None]).to(self.device)  # (1, g, g, C)
            x = wire_round(base.still(grid[None]), self.output_dtype)  # (1, 2, g, g, D)
            out, _ = self.connector.temporal.forward_projected(x)
            return self.summarizer.caption(out[0].flatten(0, 2), self.caption_prompt, 2)
        frames = np.repeat(image[None], self.reducer.frames_per_group, axis=0)
        mask = np.zeros(len(frames), bool)
        mask[0] = True
        pooled, _, _ = self.temporal_projected(self.encode_projected(frames[:1]), mask, StreamState("image"))
        return self.caption(pooled)

    def summarize(self, texts: list[str], prompt: str) -> str:
        return summarize_hierarchical(self.summarizer, texts, prompt, self.rollup.max_items_per_prompt)

    # --- offline mode: the whole file through the temporal encoder first ---

    def offline_scan(self, spill_mb: float, spill_dir: str | Path, on_step=None) -> OfflineScan:
        """An empty whole-source scan: add() each chunk's grid, then offline_pooled(). Close it after."""
        return OfflineScan(self.connector.temporal, int(spill_mb * 2**20), spill_dir, on_step=on_step)

    def offline_pooled(self, scan: OfflineScan) -> Iterator[torch.Tensor]:
        """Each chunk's pooled tokens (T', h', w', D), in order, from a scan holding the whole source."""
        for out in scan.outputs():
            with torch.inference_mode():
                pooled = self.reducer(out).cpu()
            yield pooled

    # --- one stream, chunk by chunk ---

    def is_next(self, chunk: FrameChunk, state: StreamState) -> bool:
        """True for the chunk the stream waits for, False for one already applied (a replay)."""
        if chunk.chunk_seq < state.next_chunk_seq:
            return False
        if chunk.chunk_seq != state.next_chunk_seq:
            raise ValueError(
                f"stream {chunk.stream_id}: chunk {chunk.chunk_seq} arrived before chunk {state.next_chunk_seq}"
            )
        return True

    def step(self, chunk: FrameChunk, state: StreamState | None, on_segment=None) -> tuple[list, StreamState]:
        """One chunk -> its records (the segment, then the summaries it makes due). `on_segment(segment)`:
        called with the segment before the summaries are written (it is then not returned): --local stores
        it, and matches the watch rules, without waiting for the LLM's window summary."""
        state = state or StreamState(chunk.stream_id)
        if not self.is_next(chunk, state):
            return [], state  # a replayed chunk: already applied, nothing new to say
        pooled, temporal_state, frames_encoded = self.pool_chunk(chunk, state)
        # 4. caption
        return self.step_pooled(chunk, pooled, state, temporal_state, frames_encoded=frames_encoded,
                                on_segment=on_segment)

    def pool_chunk(self, chunk: FrameChunk, state: StreamState) -> tuple[torch.Tensor, TemporalState, int]:
        """A chunk's frames -> (pooled (T', h', w', D), the temporal state after it, frames encoded). Advances
        the state's static-frame reference and last grid; the caller keeps the temporal state."""
        # 1. static-frame reuse: SigLIP (+ projection) only on the frames that changed
        mask, state.gate_ref = self.gate(chunk.frames, state.gate_ref)
        encoded = self.encode_projected(chunk.frames[mask])
        # 2-3. temporal, pool
        pooled, temporal_state, state.last_grid = self.temporal_projected(encoded, mask, state)
        return pooled, temporal_state, encoded_count(mask, chunk.n_valid)

    def step_pooled(self, chunk: FrameChunk, pooled: torch.Tensor, state: StreamState,
                    temporal_state: TemporalState | None = None, frames_encoded: int | None = None,
                    on_segment=None) -> tuple[list, StreamState]:
        """Caption a chunk whose pooled tokens are known and advance the roll-up (`step`'s second half;
        offline mode's whole-source scan gives the pooled tokens). The chunk's frames are not used."""
        segment = self.segment(pooled, stream_id=chunk.stream_id, chunk_seq=chunk.chunk_seq, t_start=chunk.t_start,
                               t_end=chunk.t_end, n_frames=chunk.n_valid, source=chunk.source,
                               wall_clock=chunk.wall_clock, gap_before=chunk.gap_before, thumbnail=chunk.thumbnail,
                               frames_encoded=chunk.n_valid if frames_encoded is None else frames_encoded)
        return self.after_caption(segment, state, temporal_state, on_segment)

    def after_caption(self, segment: Segment, state: StreamState, temporal_state=None,
                      on_segment=None) -> tuple[list, StreamState]:
        """Advance the stream's roll-up with one captioned chunk (the windows it closes are summarised)."""
        if state.t0 is None:
            state.t0 = segment.t_start
        window = window_of(segment.t_start, state.t0, self.rollup.window_seconds)
        state.window_index = max(window, state.window_index)
        state.window_captions.append(
            {"chunk_seq": segment.chunk_seq, "t_start": segment.t_start, "t_end": segment.t_end,
             "caption": segment.caption, "wall": segment.wall_clock}
        )
        if temporal_state is not None:
            state.temporal = temporal_state
        state.next_chunk_seq = segment.chunk_seq + 1
        state.t_end = segment.t_end
        state.video_seconds += segment.t_end - segment.t_start
        if on_segment is not None:
            on_segment(segment)
            return self._rollups(state, ended=False), state
        return [segment, *self._rollups(state, ended=False)], state

    def segment(self, pooled: torch.Tensor, *, stream_id: str, chunk_seq: int, t_start: float, t_end: float,
                n_frames: int, source: str, wall_clock, gap_before: float = 0.0,
                thumbnail: bytes | None = None, frames_encoded: int | None = None) -> Segment:
        """One chunk's row: its caption, embeddings and times. --local and the distributed
        summarizer both build segments here."""
        caption = self.caption(pooled, t_start, t_end)
        return Segment(
            stream_id=stream_id, chunk_seq=chunk_seq, t_start=t_start, t_end=t_end, caption=caption,
            visual_embedding=visual_embedding(pooled), text_embedding=self.embedder.embed([caption])[0],
            n_frames=n_frames, config_fingerprint=self.config_fingerprint, source=source, wall_clock=wall_clock,
            created_at=time.time(), gap_before=gap_before, thumbnail=thumbnail,
            frames_encoded=frames_encoded, frames_reused=None if frames_encoded is None else n_frames - frames_encoded,
            model=self.provenance[0], untrained=self.provenance[1],
        )

    def summary(self, *, stream_id: str, level: str, seq: int, t_start: float, t_end: float, texts: list[str],
                wall_clock=None) -> Summary:
        """A window or stream roll-up written by the LLM from the level below (both paths)."""
        prompt = self.rollup.window_prompt if level == "window" else self.rollup.stream_prompt
        text = self.summarize(texts, prompt)
        return Summary(
            stream_id=stream_id, level=level, seq=seq, t_start=t_start, t_end=t_end, text=text,
            text_embedding=self.embedder.embed([text])[0], config_fingerprint=self.config_fingerprint,
            wall_clock=wall_clock, created_at=time.time(),
        )

    def _rollups(self, state: StreamState, ended: bool) -> list[Summary]:
        """Write the summaries `rollups_due` says are due (the rule the distributed writer follows too); a
        window's captions leave the state once its summary is written."""
        written = []
        while True:
            rows = [{**c, "wall_clock": c["wall"]} for c in state.window_captions]
            done = {("window", w["seq"]): w["text"] for w in state.window_summaries}
            due = rollups_due(state.stream_id, rows, done, t0=state.t0, t_end=state.t_end, ended=ended,
                              window_seconds=self.rollup.window_seconds)
            for req in due:
                summary = self.summary(stream_id=req.stream_id, level=req.level, seq=req.seq, t_start=req.t_start,
                                       t_end=req.t_end, texts=list(req.texts), wall_clock=req.wall_clock)
                written.append(summary)
                state.summaries += 1
                if req.level == "window":
                    state.window_summaries.append(
                        {"seq": req.seq, "t_start": req.t_start, "t_end": req.t_end, "text": summary.text})
                    state.window_captions = [
                        c for c in state.window_captions
                        if window_of(c["t_start"], state.t0, self.rollup.window_seconds) != req.seq]
            if not due or any(req.level == "stream" for req in due):
                return written

    def finish(self, state: StreamState | None) -> tuple[list, StreamState | None]:
        """End of stream: the last window's summary, then the whole-stream summary."""
        if state is None or state.t0 is None:
            return [], state
        return self._rollups(state, ended=True), state
