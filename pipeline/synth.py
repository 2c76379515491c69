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
        mux_frames(out, stream, ((t, frame_image(i, width, height)) for i, t in enumerate(times)))
    return path


def mux_frames(out, stream, frames) -> None:
    """Encode (seconds, RGB uint8 image) pairs into `stream` (time base 1/1000) and flush it."""
    for t, image in frames:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(round(t * 1000))
        frame.time_base = Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


class SocketWriter:
    """A connected socket as the file PyAV muxes a live stream into (tests' and benches' live cameras):
    every write goes out at once."""

    def __init__(self, conn):
        self.conn = conn

    def write(self, data) -> int:
        self.conn.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Save an RGB uint8 (H, W, 3) image as PNG with PyAV (no imaging library needed)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def camera_background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A still scene: sky and ground gradients with a few buildings (uint8 (H, W, 3))."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    horizon = height * 0.55
    sky = np.stack([120 + 60 * y, 160 + 50 * y, 220 - 20 * y], -1)
    ground = np.stack([90 + 40 * y, 100 + 30 * y, 80 + 20 * y], -1)
    img[:] = np.where(np.arange(height)[:, None, None] < horizon, sky, ground)
    for _ in range(6):  # buildings on the horizon
        w, h = int(rng.integers(width // 12, width // 5)), int(rng.integers(height // 8, height // 3))
        x0 = int(rng.integers(0, width - w))
        img[int(horizon) - h : int(horizon), x0 : x0 + w] = rng.integers(40, 200, 3)
    return img.clip(0, 255).astype(np.uint8)


def write_static_camera(
    path: str | Path,
    seconds: float = 120.0,
    fps: int = 10,
    width: int = 640,
    height: int = 360,
    events: list[tuple[float, float]] = ((30.0, 40.0),),
    noise: float = 2.0,
    movers: int = 2,
    seed: int = 0,
) -> Path:
    """A fixed camera on a still scene with sensor noise (Gaussian, `noise` grey levels), where
    people-sized figures (1/24 of the width, 1/5 of the height) walk across the ground during each
    `events` span (start, end seconds): the footage static-frame reuse is for."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = camera_background(width, height, seed).astype(np.float32)
    pw, ph = max(width // 24, 2), max(height // 5, 2)
    plans = []  # per event: movers' (row, colour, direction)
    for _ in events:
        plans.append([(int(rng.integers(int(height * 0.6), height - ph)), rng.integers(20, 120, 3),
                       int(rng.choice([-1, 1]))) for _ in range(movers)])
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = {"preset": "veryfast"}

        def frames():
            for i in range(int(round(seconds * fps))):
                t = i / fps
                img = base + rng.normal(0.0, noise, base.shape).astype(np.float32) if noise else base.copy()
                for (start, end), plan in zip(events, plans):
                    if start <= t < end:
                        phase = (t - start) / (end - start)
                        for k, (row, colour, direction) in enumerate(plan):
                            p = (phase + k / max(len(plan), 1) * 0.3) % 1.0
                            x = int((p if direction > 0 else 1 - p) * (width - pw))
                            img[row : row + ph, x : x + pw] = colour
                yield t, img.clip(0, 255).astype(np.uint8)

        mux_frames(out, stream, frames())
    return path
