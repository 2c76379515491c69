"""`vidstorm describe FILE`: captions of a video (one per chunk) or of a still image, nothing stored.

The same per-chunk path as ingest (static-frame plan, encoder + projection, the temporal module with
its state carried, pooling, the LLM), without the store, the roll-ups or the text embeddings. A still
image is captioned with the image chat (`StreamProcessor.caption_image`); with the temporal module at
identity and pooling off, on a VLM base, its caption is the VLM's own `generate`.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

from pipeline.decode import Source, SourceError, VideoDecoder, _describe, slug
from pipeline.processor import StreamProcessor, StreamState
from pipeline.reuse import fill
from pipeline.train.data import IMAGE_EXTENSIONS



def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path, size: int) -> np.ndarray:
    """A still image as uint8 (size, size, 3) RGB, decoded by PyAV; untouched when it is already that size."""
    path = str(path)
    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, OSError, StopIteration) as err:
        raise SourceError(path, f"not a readable image ({_describe(err) if str(err) else 'no picture in it'})"
                          ) from None
    if (frame.width, frame.height) == (size, size):
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BILINEAR")


def describe_image(processor: StreamProcessor, path: str | Path) -> list[dict]:
    image = read_image(path, processor.encoder.image_size)
    return [{"t_start": 0.0, "t_end": 0.0, "caption": processor.caption_image(image)}]


def describe_video(processor: StreamProcessor, path: str | Path, decode_cfg, mode: str, spill_mb: float,
                   spill_dir: str | Path) -> list[dict]:
    source = Source(str(Path(path).resolve()), slug(Path(path).stem))
    decoder = VideoDecoder.for_config(source, replace(decode_cfg, thumbnail_width=0), processor.encoder.image_size,
                                      processor.reducer.frames_per_group)
    rows = []
    if mode == "offline":  # the whole file through the bidirectional scan first, as ingest does
        with processor.offline_scan(spill_mb, spill_dir) as scan:
            chunks, reference, last = [], None, None
            for chunk in decoder.chunks():
                mask, reference = processor.gate(chunk.frames, reference)
                encoded = processor.encode_projected(chunk.frames[mask])
                scan.add_projected(fill(encoded, mask, last))
                last = encoded[-1] if len(encoded) else last
                chunks.append((chunk.t_start, chunk.t_end))
            for (t_start, t_end), pooled in zip(chunks, processor.offline_pooled(scan)):
                rows.append({"t_start": t_start, "t_end": t_end, "caption": processor.caption(pooled, t_start, t_end)})
        return rows
    state = StreamState(source.stream_id)
    for chunk in decoder.chunks():
        pooled, state.temporal, _ = processor.pool_chunk(chunk, state)
        rows.append({"t_start": chunk.t_start, "t_end": chunk.t_end,
                     "caption": processor.caption(pooled, chunk.t_start, chunk.t_end)})
    return rows


def describe(processor: StreamProcessor, path: str | Path, cfg) -> list[dict]:
    """[{t_start, t_end, caption}] of a file: one row for a still image, one per chunk for a video."""
    if not Path(path).is_file():
        raise SourceError(str(path), "no such file")
    if is_image(path):
        return describe_image(processor, path)
    t = cfg.temporal
    return describe_video(processor, path, cfg.decode, t.mode, t.offline_spill_mb,
                          t.offline_spill_dir or tempfile.gettempdir())
