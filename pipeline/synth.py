"""Synthetic but real video files, encoded with PyAV: for the demo, tests and benchmarks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """A moving square on a slowly changing background; each frame differs."""
    y, x = np.mgrid[0:height, 0:width]
    hue = (index * 3) % 256
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = (x * 255 // max(width - 1, 1) + hue) % 256
    img[..., 1] = (y * 255 // max(height - 1, 1)) % 256
    img[..., 2] = (128 + hue) % 256
    side = max(height // 4, 2)
    cx = (index * 7) % max(width - side, 1)
    cy = (index * 5) % max(height - side, 1)
    img[cy : cy + side, cx : cx + side] = (255, 255, 255)
    return img


def write_clip(
    path: str | Path,
    seconds: float = 60.0,
    fps: int = 10,
    width: int = 320,
    height: int = 240,
    start: float = 0.0,
    times: list[float] | None = None,
    codec: str = "libx264",
    gop: int | None = None,
    faststart: bool = False,
    creation_time: str | None = None,
) -> Path:
    """Encode a clip. `times` (seconds) gives explicit, possibly irregular, frame times (VFR);
    `creation_time` (ISO) is written as the container's recording time, as cameras do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = Fraction(1, 1000)
    if times is None:
        times = [start + i / fps for i in range(int(round(seconds * fps)))]
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        if creation_time:
            out.metadata["creation_time"] = creation_time
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if gop:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            frame.pts = int(round(t * 1000))
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
