"""Rendering and writing the synthetic temporal-QA clips that pipeline/train/synthqa.py plans.

Frames are drawn with numpy (each shape's mask precomputed once per clip at a few sub-pixel
phases), encoded with x264 ``ultrafast`` (one encoder thread each) in a small process pool, and
written with the JSONL files by :func:`write_dataset`.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.train.synthqa import SPLITS, SUBPIXEL_PHASES, TASKS, ClipSpec, ShapeSpec, plan_dataset


def shape_mask(spec: ShapeSpec, supersample: int, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Coverage (0..1, float32) of the shape in its `box` x `box` patch; `offset` (px, 0..1) shifts it
    right/down inside the patch. Anti-aliased by `supersample` x `supersample` point sampling."""
    box, ss = spec.box, supersample
    u = (np.arange(box * ss, dtype=np.float32) + 0.5) / ss
    cx = box / 2 + offset[0] - 0.5
    cy = box / 2 + offset[1] - 0.5
    x = u[None, :] - cx
    y = u[:, None] - cy
    r = spec.diameter / 2
    if spec.kind == "circle":
        inside = x * x + y * y <= r * r
    elif spec.kind == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif spec.kind == "triangle":  # apex up, base at the bottom, centred vertically
        h = spec.diameter * spec.apex
        depth = y + h / 2  # 0 at the apex, h at the base
        inside = (depth >= 0) & (depth <= h) & (np.abs(x) <= r * depth / h)
    else:
        raise ValueError(f"unknown shape {spec.kind!r}")
    return inside.reshape(box, ss, box, ss).mean(axis=(1, 3), dtype=np.float32)


class Sprite:
    """A shape's masks (one per sub-pixel phase along its motion) and colour, ready to paste."""

    def __init__(self, spec: ShapeSpec, supersample: int, frames: int):
        self.spec = spec
        self.rgb = np.array(spec.rgb, dtype=np.float32)
        self.frames = frames
        moving = spec.start != spec.end
        self.axis = 0 if spec.start[0] != spec.end[0] else 1
        phases = SUBPIXEL_PHASES if moving else 1
        if moving:
            self.masks = []
            for p in range(phases):
                off = [0.0, 0.0]
                off[self.axis] = p / phases
                self.masks.append(shape_mask(spec, supersample, tuple(off))[..., None])
        else:
            fx, fy = (spec.start[0] % 1.0, spec.start[1] % 1.0)
            self.masks = [shape_mask(spec, supersample, (fx, fy))[..., None]]
        self.phases = phases

    def place(self, height: int, width: int, index: int) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Where the shape lies in a (height, width) frame at frame `index` and its mask there (box x box x 1,
        coverage 0..1), or None when it is not visible yet."""
        spec = self.spec
        if index < spec.appear:
            return None
        t = index / (self.frames - 1) if self.frames > 1 else 0.0
        pos = [spec.start[a] + (spec.end[a] - spec.start[a]) * t for a in (0, 1)]
        top_left = [int(math.floor(v)) for v in pos]
        mask = self.masks[0]
        if self.phases > 1:
            frac = pos[self.axis] - top_left[self.axis]
            phase = int(round(frac * self.phases))
            if phase == self.phases:
                phase = 0
                top_left[self.axis] += 1
            mask = self.masks[phase]
        box = spec.box
        x0 = min(max(top_left[0], 0), width - box)
        y0 = min(max(top_left[1], 0), height - box)
        return (slice(y0, y0 + box), slice(x0, x0 + box)), mask

    def paste(self, canvas: np.ndarray, index: int) -> tuple[slice, slice] | None:
        """Blend the shape into `canvas` (uint8, in place) at frame `index`; returns the patch
        it touched, or None when the shape is not visible yet."""
        placed = self.place(canvas.shape[0], canvas.shape[1], index)
        if placed is None:
            return None
        region, mask = placed
        patch = canvas[region].astype(np.float32)
        patch += mask * (self.rgb - patch)
        patch += 0.5
        canvas[region] = patch.astype(np.uint8)
        return region


def render_frames(spec: ClipSpec):
    """Yield the clip's frames (H x W x 3 uint8 RGB) in order.

    Only the shapes' patches are computed per frame: the background (with its noise) is a copy."""
    rng = np.random.default_rng(spec.seed)
    sprites = [Sprite(s, spec.supersample, spec.frames) for s in spec.shapes]
    shape = (spec.height, spec.width, 3)
    size = spec.height * spec.width * 3
    clean = np.full(shape, spec.background, dtype=np.uint8)  # background + shapes, no noise
    noise = noisy = None
    if spec.noise_sigma > 0:
        # a bank of Gaussian noise read at a random offset each frame: fresh-looking per-frame
        # noise without drawing H*W*3 normals per frame; `noisy` is the background plus it
        noise = rng.standard_normal(2 * size, dtype=np.float32) * np.float32(spec.noise_sigma)
        noisy = np.clip(noise + np.float32(spec.background + 0.5), 0, 255).astype(np.uint8)
    for index in range(spec.frames):
        regions = [r for r in (sprite.paste(clean, index) for sprite in sprites) if r is not None]
        if noise is None:
            frame = clean.copy()
        else:
            start = int(rng.integers(0, size + 1))
            frame = noisy[start : start + size].reshape(shape).copy()
            frame_noise = noise[start : start + size].reshape(shape)
            for region in regions:
                values = clean[region].astype(np.float32)
                values += frame_noise[region]
                values += 0.5
                np.clip(values, 0, 255, out=values)
                frame[region] = values.astype(np.uint8)
        for region in regions:  # back to the bare background for the next frame
            clean[region] = spec.background
        yield frame


def encode_clip(path: str | Path, frames, width: int, height: int, fps: int, crf: int) -> Path:
    """Encode RGB frames as H.264 yuv420p, constant frame rate `fps` (pts = index / fps)."""
    path = Path(path)
    time_base = Fraction(1, fps)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = 1  # deterministic bytes on any machine; workers run in parallel
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": str(crf)}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def render_clip(spec: ClipSpec, out_dir: str | Path) -> list[Path]:
    """Write OUT/clips/<id>.mp4 (and <id>_rev.mp4 for a reversed control); returns the paths."""
    clips = Path(out_dir) / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    kept: list[np.ndarray] = []

    def frames():
        for image in render_frames(spec):
            if spec.control:
                kept.append(image)
            yield image

    args = (spec.width, spec.height, spec.fps, spec.crf)
    paths = [encode_clip(clips / f"{spec.id}.mp4", frames(), *args)]
    if spec.control:
        paths.append(encode_clip(clips / f"{spec.reversed_id}.mp4", reversed(kept), *args))
    return paths


def _render_job(job: tuple[ClipSpec, str]) -> int:
    spec, out_dir = job
    return len(render_clip(spec, out_dir))


# ----------------------------------------------------------------------------------------------
# the dataset


def _prepare_out(out_dir, overwrite: bool) -> Path:
    if out_dir is None or (isinstance(out_dir, str) and not out_dir.strip()):
        raise ValueError("out_dir must be a directory path, got an empty value")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"out_dir {str(out)!r} is not empty; choose a new directory or pass overwrite=True "
                "(which replaces the dataset files written there before)"
            )
        for name in (*(f"{s}.jsonl" for s in SPLITS), "train_captions.jsonl"):
            (out / name).unlink(missing_ok=True)
        clips = out / "clips"
        if clips.is_dir():
            for old in clips.glob("*.mp4"):
                old.unlink()
    try:
        (out / "clips").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create out_dir {str(out)!r}: {exc}") from None
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **plan,
) -> dict:
    """Render the n clips `plan_dataset(n, seed, **plan)` decides (plus reversed controls in val/test)
    into out_dir; see synthqa's docstring. `plan`: splits, tasks, size/fps/duration/crf ranges,
    noise_prob, control_frac, shape_questions (each direction clip also gets a `shape` question, a line
    of its own: the toy model's warm-up learns shape from it).

    Same arguments -> identical JSONL bytes (and, with one x264 thread per clip, identical MP4s).
    `workers`: processes rendering in parallel (default min(2, CPUs); 1 renders inline).
    `progress(done, total)` is called after each clip. Returns counts per split and task, the
    number of MP4s, the elapsed seconds and clips (MP4s) per second."""
    specs = plan_dataset(n, seed, **plan)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    out = _prepare_out(out_dir, overwrite)
    started = time.perf_counter()
    workers = workers or min(2, os.cpu_count() or 1)
    # biggest first, so the pool's last jobs are short
    jobs = sorted(
        ((s, str(out)) for s in specs),
        key=lambda j: -(j[0].width * j[0].height * j[0].frames * (2 if j[0].control else 1)),
    )
    done = 0
    if workers > 1 and len(jobs) > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_render_job, jobs, chunksize=1):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _render_job(job)
            done += 1
            if progress:
                progress(done, len(jobs))
    seconds = time.perf_counter() - started

    summary_splits = {}
    files = 0
    for split in SPLITS:
        chosen = [s for s in specs if s.split == split]
        rows = [row for s in chosen for row in s.records()]
        _write_jsonl(out / f"{split}.jsonl", rows)
        if split == "train":
            captions = [{"video": r["video"], "caption": r["caption"]} for r in rows if "caption" in r]
            _write_jsonl(out / "train_captions.jsonl", captions)
        counts = {t: sum(s.task == t for s in chosen) for t in TASKS}
        counts["controls"] = sum(s.control for s in chosen)
        counts["samples"] = len(rows)
        summary_splits[split] = counts
        files += len(rows)
    return {
        "out_dir": str(out),
        "seed": seed,
        "clips": files,
        "splits": summary_splits,
        "tasks": {t: sum(s.task == t for s in specs) for t in TASKS},
        "seconds": round(seconds, 3),
        "clips_per_s": round(files / seconds, 3) if seconds > 0 else None,
    }
