"""What crosses process boundaries, each with an explicit wire encoding (never pickle).

Wire format of a packed message:

    b"VST1" | u32 little-endian header length | JSON header | raw array bytes

The header names each array's dtype, shape, offset and length inside the raw part.
`unpack` validates all of it, so garbage raises ValueError instead of crashing a stage.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa

MAGIC = b"VST1"
ALLOWED_DTYPES = {"uint8", "uint16", "float16", "float32", "float64", "int64"}
MAX_HEADER = 1 << 20


def pack(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """Encode a JSON-able header and named numpy arrays as one binary message."""
    arrays = arrays or {}
    specs, blobs, offset = {}, [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise TypeError(f"array {name!r} has unsupported dtype {arr.dtype}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        specs[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "offset": offset, "nbytes": len(data)}
        blobs.append(data)
        offset += len(data)
    head = json.dumps({"meta": header, "arrays": specs}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Decode `pack` output. Raises ValueError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise ValueError("not a vidstorm message (bad magic)")
    (n,) = struct.unpack("<I", bytes(data[4:8]))
    if n > MAX_HEADER or 8 + n > len(data):
        raise ValueError("vidstorm message header is truncated or too large")
    try:
        head = json.loads(bytes(data[8 : 8 + n]))
        meta, specs = head["meta"], head["arrays"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"vidstorm message header is not valid JSON: {err}") from None
    body = memoryview(data)[8 + n :]
    arrays = {}
    for name, spec in specs.items():
        try:
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            shape, offset, nbytes = tuple(int(s) for s in spec["shape"]), int(spec["offset"]), int(spec["nbytes"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"array {name!r} has a bad spec: {err}") from None
        if spec["dtype"] not in ALLOWED_DTYPES or offset < 0 or offset + nbytes > len(body):
            raise ValueError(f"array {name!r} points outside the message")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
            raise ValueError(f"array {name!r} size does not match its shape")
        arrays[name] = np.frombuffer(body[offset : offset + nbytes], dtype=dtype).reshape(shape)
    return meta, arrays


@dataclass
class FrameChunk:
    """`chunk_frames` sampled frames of one stream, resized for the encoder.

    frames may be padded (last frame repeated) up to a multiple of the pooling
    group; `timestamps` covers only the `n_valid` real frames.
    """

    stream_id: str
    chunk_seq: int
    frames: np.ndarray  # (T, S, S, 3) uint8
    timestamps: np.ndarray  # (n_valid,) float64 seconds of presentation time
    t_end: float  # end of the span this chunk covers
    wall_clock: float | None = None  # unix seconds of the first frame: live sources, tagged files
    source: str = ""
    gap_before: float = 0.0  # seconds a live source was away before this chunk (it reconnected)
    thumbnail: bytes | None = None  # JPEG of the middle sampled frame (decode.thumbnail_width px wide)
    # static-frame reuse (pipeline/reuse.py): (T,) bool, the time steps SigLIP must encode; `frames`
    # then holds only those (the others reuse the stream's last encoded frame). None: every step.
    encode_mask: np.ndarray | None = None

    @property
    def n_valid(self) -> int:
        return len(self.timestamps)

    @property
    def mask(self) -> np.ndarray:
        """Which time steps `frames` holds (all of them when no reuse was planned)."""
        return np.ones(len(self.frames), bool) if self.encode_mask is None else self.encode_mask

    def gated(self, mask: np.ndarray) -> "FrameChunk":
        """This chunk with only the frames `mask` marks (what the decoders hand the encoders)."""
        from dataclasses import replace

        return replace(self, frames=self.frames[mask], encode_mask=np.asarray(mask, bool))

    @property
    def t_start(self) -> float:
        return float(self.timestamps[0])

    def to_bytes(self) -> bytes:
        header = {
            "type": "frame_chunk",
            "stream_id": self.stream_id,
            "chunk_seq": self.chunk_seq,
            "t_end": self.t_end,
            "wall_clock": self.wall_clock,
            "source": self.source,
            "gap_before": self.gap_before,
        }
        arrays = {"frames": self.frames, "timestamps": np.asarray(self.timestamps, np.float64)}
        if self.thumbnail is not None:
            arrays["thumbnail"] = np.frombuffer(self.thumbnail, np.uint8)
        if self.encode_mask is not None:
            arrays["encode_mask"] = self.encode_mask.astype(np.uint8)
        return pack(header, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "FrameChunk":
        return cls.from_message(*unpack(data))

    @classmethod
    def from_message(cls, meta: dict, arrays: dict) -> "FrameChunk":
        """From an already unpacked message (a stage that must look at the type first)."""
        if meta.get("type") != "frame_chunk":
            raise ValueError(f"expected a frame_chunk message, got {meta.get('type')!r}")
        frames = arrays.get("frames")
        if frames is None or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError("frame_chunk frames must be uint8 (T, H, W, 3)")
        mask = arrays.get("encode_mask")
        if mask is not None:
            mask = check_mask(mask, len(frames), len(arrays["timestamps"]))
        return cls(
            stream_id=str(meta["stream_id"]),
            chunk_seq=int(meta["chunk_seq"]),
            frames=frames,
            timestamps=arrays["timestamps"],
            t_end=float(meta["t_end"]),
            wall_clock=None if meta.get("wall_clock") is None else float(meta["wall_clock"]),
            source=str(meta.get("source", "")),
            gap_before=float(meta.get("gap_before") or 0.0),
            thumbnail=check_thumbnail(arrays["thumbnail"].tobytes()) if "thumbnail" in arrays else None,
            encode_mask=mask,
        )


def check_mask(mask: np.ndarray, encoded: int, n_valid: int) -> np.ndarray:
    """A static-frame mask read from a queue: 0/1 per time step, as many 1s as grids or frames came,
    at least the chunk's real frames long, else ValueError."""
    if mask.dtype != np.uint8 or mask.ndim != 1 or not np.isin(mask, (0, 1)).all():
        raise ValueError("encode_mask must be 0/1 bytes, one per time step")
    if int(mask.sum()) != encoded or len(mask) < max(n_valid, 1):
        raise ValueError(f"encode_mask marks {int(mask.sum())} of {len(mask)} steps but {encoded} frames came "
                         f"for {n_valid} real frames")
    return mask.astype(bool)


MAX_THUMBNAIL = 1 << 18  # bytes: a ~192 px JPEG is ~5-15 KB (and base64 of it must fit a message header)


def check_thumbnail(data: bytes | None) -> bytes | None:
    """`data` if it looks like a JPEG of sane size (what crosses a queue is checked), else ValueError."""
    if data is None:
        return None
    if not isinstance(data, bytes) or len(data) > MAX_THUMBNAIL or not data.startswith(b"\xff\xd8"):
        raise ValueError("thumbnail is not a JPEG of at most 256 KiB")
    return data


def column(arrow_type: pa.DataType, **kwargs):
    """A dataclass field that is also a stored column: its Arrow type rides in the field's metadata.
    store/schema.py builds the tables' schemas from these, and the API its response models."""
    return field(metadata={"arrow": arrow_type}, **kwargs)


TEXT_DIM = 384  # all-MiniLM-L6-v2
UTC_US = pa.timestamp("us", tz="UTC")


@dataclass
class Segment:
    """One chunk's caption and embeddings: a row of the segments table."""

    stream_id: str = column(pa.string())
    chunk_seq: int = column(pa.int64())
    t_start: float = column(pa.float64())
    t_end: float = column(pa.float64())
    caption: str = column(pa.string())
    visual_embedding: np.ndarray = column(pa.list_(pa.float32()))  # (d_model,) mean of the pooled visual tokens
    text_embedding: np.ndarray = column(pa.list_(pa.float32(), TEXT_DIM))  # L2-normalised caption embedding
    n_frames: int = column(pa.int32())
    config_fingerprint: str = column(pa.string())
    source: str = column(pa.string(), default="")
    wall_clock: float | None = column(UTC_US, default=None)  # unix seconds: live sources, tagged files
    created_at: float = column(UTC_US, default=0.0)  # unix seconds
    level: str = column(pa.string(), default="chunk")
    gap_before: float = column(pa.float64(), default=0.0)  # seconds a live source was away before it
    thumbnail: bytes | None = column(pa.binary(), default=None)  # JPEG of the chunk's middle sampled frame
    # static-frame reuse: of the n_frames sampled frames, how many SigLIP encoded and how many
    # reused the stream's last encoded frame's grid (encoder.static_threshold)
    frames_encoded: int | None = column(pa.int32(), default=None)
    frames_reused: int | None = column(pa.int32(), default=None)
    # what wrote the caption ("smollm2 + <encoder> + storm:<checkpoint>@<digest>") and which of its parts
    # are random or untrained, comma-separated ("": all pretrained or trained): such a caption is invented
    # text, not an observation. Stores written before these columns read them as None.
    model: str = column(pa.string(), default="")
    untrained: str = column(pa.string(), default="")


@dataclass
class Summary:
    """A roll-up written by the LLM from the level below: window, stream, or period."""

    stream_id: str = column(pa.string())
    level: str = column(pa.string())  # "window" | "stream" | "period"
    seq: int = column(pa.int64())  # window index for "window"; 0 for "stream"
    t_start: float = column(pa.float64())
    t_end: float = column(pa.float64())
    text: str = column(pa.string())
    text_embedding: np.ndarray = column(pa.list_(pa.float32(), TEXT_DIM))
    config_fingerprint: str = column(pa.string())
    wall_clock: float | None = column(UTC_US, default=None)
    created_at: float = column(UTC_US, default=0.0)


@dataclass
class AlertRow:
    """One delivery outcome of a watch alert to one target: a row of the alerts table (pipeline/watch;
    the latest row of an (alert_id, target) is its state)."""

    alert_id: str = column(pa.string())  # a digest of (rule, stream, level, seq): one alert per rule and segment
    rule: str = column(pa.string())
    query: str = column(pa.string())
    stream_id: str = column(pa.string())
    level: str = column(pa.string())  # chunk | window | stream | period
    seq: int = column(pa.int64())
    t_start: float = column(pa.float64())
    t_end: float = column(pa.float64())
    wall_clock: float | None = column(UTC_US, default=None)
    score: float = column(pa.float64(), default=0.0)
    caption: str = column(pa.string(), default="")
    target: str = column(pa.string(), default="")  # webhook:URL | mqtt:TOPIC, secrets masked
    status: str = column(pa.string(), default="")  # retrying | delivered | failed
    attempts: int = column(pa.int64(), default=0)
    error: str | None = column(pa.string(), default=None)
    delivered_at: float | None = column(UTC_US, default=None)
    merged: int = column(pa.int64(), default=0)  # later matches its cooldown merged into it (when written)
    thumbnail_url: str | None = column(pa.string(), default=None)  # under watch.public_url (signed)
    clip_url: str | None = column(pa.string(), default=None)
    created_at: float = column(UTC_US, default=0.0)  # when the alert was made
    updated_at: float | None = column(UTC_US, default=None)  # when this row was written


def arrow_schema(record_type) -> pa.Schema:
    """The stored columns of a record dataclass, in field order: every field is a column."""
    missing = [f.name for f in fields(record_type) if "arrow" not in f.metadata]
    if missing:
        raise TypeError(f"{record_type.__name__}: fields {missing} are not declared with column(<arrow type>)")
    return pa.schema([(f.name, f.metadata["arrow"]) for f in fields(record_type)])
