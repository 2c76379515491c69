"""The queue messages between the Ray stages, typed: each a dataclass with `to_bytes` and `from_parts`
(an unpacked JSON header + raw arrays, pipeline/types.pack; never pickle), checked on the way in.

    frames   FrameChunk (pipeline/types.py)       decoders -> encoders
    tokens   Tokens: a chunk's projected grids    encoders -> its temporal owner
    pooled   Pooled: a chunk's pooled tokens      temporal owners -> summarizers
    rollup   RollupRequest: texts to summarise    writer -> summarizers
    end      EndMarker: a stream's last chunk     decoders -> ... -> writer (each stage hands it on)
    segment / summary   Segment, Summary (pipeline/types.py): stored records   summarizers -> writer

`parse(data, Tokens, EndMarker)` is the one way a stage reads its input: anything malformed is a
ValueError naming the problem (the stage logs one line and skips it)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only in annotations: a decoder or writer process never imports it
    import torch

from pipeline.types import FrameChunk, Segment, Summary, check_mask, check_thumbnail, pack, unpack


def _str(meta: dict, key: str) -> str:
    value = meta[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text, got {type(value).__name__}")
    return value


def _int(meta: dict, key: str) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _float(meta: dict, key: str, optional: bool = False) -> float | None:
    value = meta.get(key) if optional else meta[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ChunkInfo:
    """What the tokens and pooled messages say about their chunk. The thumbnail rides as base64 text; a
    garbled one is dropped (thumbnail None, thumbnail_error says why): the chunk's caption still counts."""

    stream_id: str
    chunk_seq: int
    t_start: float
    t_end: float
    n_valid: int
    wall_clock: float | None = None
    source: str = ""
    gap_before: float = 0.0
    thumbnail: bytes | None = None
    frames_encoded: int | None = None  # SigLIP passes the chunk cost (set by the temporal owner)
    thumbnail_error: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, chunk: FrameChunk) -> "ChunkInfo":
        return cls(chunk.stream_id, chunk.chunk_seq, chunk.t_start, chunk.t_end, chunk.n_valid, chunk.wall_clock,
                   chunk.source, chunk.gap_before, chunk.thumbnail)

    def header(self) -> dict:
        """The JSON-able fields (also what an offline spill file keeps of its chunk)."""
        out = {"stream_id": self.stream_id, "chunk_seq": self.chunk_seq, "t_start": self.t_start,
               "t_end": self.t_end, "n_valid": self.n_valid, "wall_clock": self.wall_clock, "source": self.source,
               "gap_before": self.gap_before,
               "thumbnail": None if self.thumbnail is None else base64.b64encode(self.thumbnail).decode()}
        if self.frames_encoded is not None:
            out["frames_encoded"] = self.frames_encoded
        return out

    @classmethod
    def from_header(cls, meta: dict) -> "ChunkInfo":
        n_valid = _int(meta, "n_valid")
        if n_valid < 1:
            raise ValueError(f"n_valid must be >= 1, got {n_valid}")
        encoded = meta.get("frames_encoded")
        if encoded is not None and (isinstance(encoded, bool) or not isinstance(encoded, int)
                                    or not 0 <= encoded <= n_valid):
            encoded = None  # a count we cannot trust: read as "not known" (every frame)
        thumbnail, error = None, None
        try:
            thumbnail = thumbnail_from_text(meta.get("thumbnail"))
        except ValueError as err:
            error = str(err)
        return cls(_str(meta, "stream_id"), _int(meta, "chunk_seq"), _float(meta, "t_start"), _float(meta, "t_end"),
                   n_valid, _float(meta, "wall_clock", optional=True), str(meta.get("source") or ""),
                   _float(meta, "gap_before", optional=True) or 0.0, thumbnail, encoded, error)


def thumbnail_from_text(text) -> bytes | None:
    """A thumbnail as the tokens and pooled headers carry it (base64 JPEG) -> bytes (ValueError if it is
    not one)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("thumbnail must be base64 text")
    return check_thumbnail(base64.b64decode(text, validate=True))


@dataclass(frozen=True)
class Tokens:
    """One chunk's projected grids of the frames SigLIP encoded (wire dtype) + the reuse mask."""

    TYPE = "tokens"
    info: ChunkInfo
    tokens: np.ndarray  # (E, h, w, D) in tokens_dtype's wire form (pipeline/processor.to_wire)
    tokens_dtype: str
    encode_mask: np.ndarray  # (T,) bool: the time steps `tokens` holds

    def to_bytes(self) -> bytes:
        header = {"type": self.TYPE, **self.info.header(), "tokens_dtype": self.tokens_dtype}
        return pack(header, {"tokens": self.tokens, "encode_mask": self.encode_mask.astype(np.uint8)})

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict) -> "Tokens":
        info = ChunkInfo.from_header(meta)
        wire = meta.get("tokens_dtype", "fp32")
        tokens = arrays["tokens"]
        if {"bf16": np.uint16, "fp16": np.float16, "fp32": np.float32}.get(wire) != tokens.dtype:
            raise ValueError(f"tokens of dtype {tokens.dtype} do not match the message's tokens_dtype {wire!r}")
        if tokens.ndim != 4:
            raise ValueError(f"tokens must be (frames, h, w, D), got shape {tuple(tokens.shape)}")
        mask = arrays.get("encode_mask")
        mask = np.ones(len(tokens), bool) if mask is None else check_mask(mask, len(tokens), info.n_valid)
        return cls(info, tokens, wire, mask)

    def grids(self) -> torch.Tensor:
        """The projected grids as an fp32 tensor (E, h, w, D) (ValueError if they hold non-finite values)."""
        from pipeline.processor import from_wire

        return from_wire(self.tokens, self.tokens_dtype)


@dataclass(frozen=True)
class Pooled:
    """One chunk's pooled tokens (the LLM's visual input) + its visual embedding (the store's)."""

    TYPE = "pooled"
    info: ChunkInfo
    pooled: np.ndarray  # (T', h', w', D) as the temporal owner's pooling made it
    visual_embedding: np.ndarray

    @classmethod
    def of(cls, info: ChunkInfo, pooled: torch.Tensor) -> "Pooled":
        from pipeline.processor import visual_embedding

        return cls(info, pooled.numpy(), visual_embedding(pooled))

    def to_bytes(self) -> bytes:
        return pack({"type": self.TYPE, **self.info.header()},
                    {"pooled": self.pooled, "visual_embedding": self.visual_embedding})

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict) -> "Pooled":
        pooled = arrays["pooled"]
        if pooled.ndim != 4 or pooled.dtype.kind != "f":
            raise ValueError(f"pooled must be floats (frames, h, w, D), got {pooled.dtype} {tuple(pooled.shape)}")
        return cls(ChunkInfo.from_header(meta), pooled, np.asarray(arrays.get("visual_embedding", ()), np.float32))


@dataclass(frozen=True)
class RollupRequest:
    """The writer asks for a summary of lower-level texts: a window's captions or a stream's windows."""

    TYPE = "rollup"
    stream_id: str
    level: str  # "window" | "stream"
    seq: int
    t_start: float
    t_end: float
    wall_clock: float | None
    texts: tuple[str, ...]

    @property
    def tag(self) -> str:
        """Names the request once per stream (the writer asks once; the store dedupes repeats)."""
        return f"{self.stream_id}|{self.level}|{self.seq}"

    def to_bytes(self) -> bytes:
        return pack({"type": self.TYPE, "stream_id": self.stream_id, "level": self.level, "seq": self.seq,
                     "t_start": self.t_start, "t_end": self.t_end, "wall_clock": self.wall_clock,
                     "texts": list(self.texts)})

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict | None = None) -> "RollupRequest":
        level = _str(meta, "level")
        if level not in ("window", "stream"):
            raise ValueError(f"level must be window or stream, got {level!r}")
        texts = meta["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of text")
        return cls(_str(meta, "stream_id"), level, _int(meta, "seq"), _float(meta, "t_start"), _float(meta, "t_end"),
                   _float(meta, "wall_clock", optional=True), tuple(texts))


@dataclass(frozen=True)
class EndMarker:
    """A stream's end: its last chunk and how it ended, with the job it belongs to (handed on by every
    stage after that stream's last chunk)."""

    TYPE = "end"
    stream_id: str
    last_chunk_seq: int  # -1: no chunk at all
    status: str  # done | failed
    error: str = ""
    job: dict = field(default_factory=dict)

    def header(self) -> dict:
        return {"type": self.TYPE, "stream_id": self.stream_id, "last_chunk_seq": self.last_chunk_seq,
                "status": self.status, "error": self.error, "job": self.job}

    def to_bytes(self) -> bytes:
        return pack(self.header())

    def to_json(self) -> str:
        return json.dumps(self.header())

    @classmethod
    def from_json(cls, text: str | bytes) -> "EndMarker":
        return cls.from_parts(json.loads(text))

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict | None = None) -> "EndMarker":
        job = meta.get("job") or {}
        if not isinstance(job, dict):
            raise ValueError("job must be an object")
        return cls(_str(meta, "stream_id"), _int(meta, "last_chunk_seq"), _str(meta, "status"),
                   str(meta.get("error") or ""), job)

    def failed(self, last_chunk_seq: int, error: str) -> "EndMarker":
        """This stream ended as failed after `last_chunk_seq`, for `error`."""
        return replace(self, last_chunk_seq=last_chunk_seq, status="failed", error=error)


def encode_record(rec: Segment | Summary) -> bytes:
    """A Segment or Summary as a results message: its fields in the header, its embeddings and thumbnail
    as arrays."""
    from dataclasses import asdict

    row = asdict(rec)
    arrays = {k: np.asarray(row.pop(k), np.float32) for k in ("visual_embedding", "text_embedding") if k in row}
    thumbnail = row.pop("thumbnail", None)
    if thumbnail is not None:
        arrays["thumbnail"] = np.frombuffer(thumbnail, np.uint8)
    row["type"] = "segment" if isinstance(rec, Segment) else "summary"
    return pack(row, arrays)


def decode_record(meta: dict, arrays: dict) -> Segment | Summary:
    """`encode_record` back (ValueError / TypeError / KeyError for a malformed one)."""
    meta = dict(meta)
    cls = Segment if meta.pop("type") == "segment" else Summary
    arrays = dict(arrays)
    thumbnail = arrays.pop("thumbnail", None)
    if thumbnail is not None:
        meta["thumbnail"] = check_thumbnail(thumbnail.tobytes())
    return cls(**meta, **{k: np.array(v) for k, v in arrays.items()})


_TYPES = {"frame_chunk": FrameChunk, Tokens.TYPE: Tokens, Pooled.TYPE: Pooled, RollupRequest.TYPE: RollupRequest,
          EndMarker.TYPE: EndMarker, "segment": Segment, "summary": Summary}


def parse(data: bytes, *expected: type):
    """The message `data` holds, one of the `expected` classes (ValueError for anything else or malformed)."""
    meta, arrays = unpack(data)
    cls = _TYPES.get(meta.get("type"))
    if cls is None or cls not in expected:
        raise ValueError(f"unexpected message type {meta.get('type')!r}")
    try:
        if cls is FrameChunk:
            return FrameChunk.from_message(meta, arrays)
        if cls in (Segment, Summary):
            return decode_record(meta, arrays)
        return cls.from_parts(meta, arrays)
    except KeyError as err:
        raise ValueError(f"a {meta['type']} message without {err}") from None
    except TypeError as err:
        raise ValueError(f"a malformed {meta['type']} message: {err}") from None
