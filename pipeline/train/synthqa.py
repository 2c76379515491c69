"""Synthetic temporal-QA clips: H.264 MP4s (PyAV/libx264) plus JSONL questions and captions.

Two tasks, each needing more than one frame to answer:

- ``direction``: one shape moves at constant speed left, right, up or down for the whole clip.
  "Which way does the red circle move?" -> one of left/right/up/down.
- ``order``: two shapes (different colour and kind) pop in at different times (>= 1.5 s apart)
  and stay still. "Which appears first: the red circle or the blue square?" -> "the red circle".

Layout written by :func:`pipeline.train.synthrender.write_dataset` (video paths are relative to the JSONL files)::

    OUT/clips/<id>.mp4
    OUT/train.jsonl  OUT/val.jsonl  OUT/test.jsonl   {"id", "video", "question", "options",
                                                      "answer", "task", "caption"[, "pair", "control"]}
    OUT/train_captions.jsonl                         {"video", "caption"}, one line per train clip

Some direction clips of val/test also get a *reversed control*: the same frames in reverse order
(same timing) as a sample of its own, whose answer is the opposite direction. Both samples carry
``"pair": <id of the original>``; the reversed one also ``"control": "reversed"``.

Everything is planned up front from the seed (:func:`plan_dataset`, here: cheap and pure), so the
JSONL bytes depend only on the arguments; pipeline/train/synthrender.py renders and writes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TASKS = ("direction", "order")
SPLITS = ("train", "val", "test")
ASPECTS = (1.0, 4 / 3, 16 / 9)  # width / height; square or landscape

SIZE_RANGE = (96, 480)  # px, each side
FPS_RANGE = (10, 30)
DURATION_RANGE = (4.0, 8.0)  # seconds
CRF_RANGE = (18, 30)
SHAPE_FRACTION = (0.12, 0.25)  # of the shorter side
BACKGROUND_RANGE = (0, 80)
NOISE_SIGMA = (1.0, 8.0)
COLOUR_JITTER = 20
ORDER_GAP_S = 1.5  # the second shape appears at least this long after the first
ORDER_TAIL_S = 1.2  # ... and at least this long before the end
ORDER_FIRST_FRACTION = 0.3  # the first shape appears in the first 30% of the clip
TRAVEL_FRACTION = (0.4, 1.0)  # of the free space along the motion axis
SUBPIXEL_PHASES = 4  # precomputed sub-pixel offsets of a moving shape's mask


@dataclass(frozen=True)
class ShapeSpec:
    kind: str  # circle | square | triangle
    colour: str
    rgb: tuple[int, int, int]  # jittered colour
    diameter: float  # px: circle diameter, square side, triangle base
    apex: float  # triangle height / base (0.87 = equilateral .. 1.0)
    box: int  # side of the square patch the mask is drawn in
    start: tuple[float, float]  # (x, y) of the patch's top-left at frame 0 (fractional px)
    end: tuple[float, float]  # ... at the last frame; moves linearly in between
    appear: int  # first frame it is visible in


@dataclass(frozen=True)
class ClipSpec:
    id: str
    split: str
    task: str
    width: int
    height: int
    fps: int
    frames: int
    crf: int
    background: int
    noise_sigma: float  # 0: no noise
    supersample: int  # anti-aliasing factor of the masks
    seed: int  # render seed (noise)
    shapes: tuple[ShapeSpec, ...]
    question: str
    options: tuple[str, ...]
    answer: str
    caption: str
    control: bool  # also write the reversed clip (direction only)
    shape_question: bool = False  # direction clips: also ask which shape it is (a warm-up signal for shape)

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def video(self) -> str:
        return f"clips/{self.id}.mp4"

    @property
    def reversed_id(self) -> str:
        return f"{self.id}_rev"

    def records(self) -> list[dict]:
        """The QA lines of this clip (and of its reversed control)."""
        base = {
            "id": self.id,
            "video": self.video,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "task": self.task,
            "caption": self.caption,
        }
        kind, colour = self.shapes[0].kind, self.shapes[0].colour
        extra = []
        if self.shape_question and self.task == "direction":
            extra = [{**{k: v for k, v in base.items() if k != "caption"}, "id": f"{self.id}_shape",
                      "question": shape_question(colour), "options": list(SHAPES), "answer": kind, "task": "shape"}]
        if not self.control:
            return [base, *extra]
        flipped = OPPOSITE[self.answer]
        reverse = dict(
            base,
            id=self.reversed_id,
            video=f"clips/{self.reversed_id}.mp4",
            answer=flipped,
            caption=direction_caption(colour, kind, flipped),
            pair=self.id,
            control="reversed",
        )
        return [dict(base, pair=self.id), reverse, *extra]


def shape_question(colour: str) -> str:
    return f"What shape is the {colour} object?"


def direction_question(colour: str, kind: str) -> str:
    return f"Which way does the {colour} {kind} move?"


def direction_caption(colour: str, kind: str, direction: str) -> str:
    return f"a {colour} {kind} moves {direction}"


def order_question(named: Sequence[str]) -> str:
    """`named`: the two option strings ("the red circle") in the order the question names them."""
    return f"Which appears first: {named[0]} or {named[1]}?"


def order_caption(first: ShapeSpec, second: ShapeSpec) -> str:
    return f"a {first.colour} {first.kind} appears, then a {second.colour} {second.kind}"


def _the(shape: ShapeSpec) -> str:
    return f"the {shape.colour} {shape.kind}"


# ----------------------------------------------------------------------------------------------
# validation


def _range(name: str, value, lo_min: float, integer: bool) -> tuple:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    kind = int if integer else (int, float)
    if any(isinstance(v, bool) or not isinstance(v, kind) for v in (lo, hi)):
        raise ValueError(f"{name} must hold {'integers' if integer else 'numbers'}, got {value!r}")
    if not lo_min <= lo <= hi:
        raise ValueError(f"{name} must satisfy {lo_min} <= low <= high, got {value!r}")
    return (lo, hi)


def _check(
    n, seed, splits, tasks, size_range, fps_range, duration_range, crf_range, noise_prob, control_frac
):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of clips) must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    splits = tuple(splits)
    if (
        len(splits) != 3
        or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0 for s in splits)
        or sum(splits) <= 0
    ):
        raise ValueError(
            f"splits must be three fractions >= 0 (train, val, test) with a positive sum, got {splits!r}"
        )
    tasks = tuple(tasks) if not isinstance(tasks, str) else (tasks,)
    if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(TASKS):
        raise ValueError(f"tasks must be a non-empty selection of {TASKS}, got {tasks!r}")
    size_range = _range("size_range", size_range, 32, True)
    if size_range[1] > 4096:
        raise ValueError(f"size_range must stay <= 4096 px, got {size_range!r}")
    fps_range = _range("fps_range", fps_range, 1, True)
    duration_range = _range("duration_range", duration_range, 0.5, False)
    if "order" in tasks:
        shortest = ORDER_GAP_S + ORDER_TAIL_S + 0.2
        too_short = any(
            math.ceil(duration_range[0] * f - 1e-9) < _order_gap_tail(f)
            for f in range(fps_range[0], fps_range[1] + 1)
        )
        if duration_range[0] < shortest or too_short:
            raise ValueError(
                f"the order task needs clips of at least {shortest:.1f} s "
                f"(a {ORDER_GAP_S} s gap and {ORDER_TAIL_S} s to see the second shape), "
                f"got duration_range={duration_range!r}"
            )
    crf_range = _range("crf_range", crf_range, 0, True)
    if crf_range[1] > 51:
        raise ValueError(f"crf_range must stay within 0..51, got {crf_range!r}")
    for name, value in (("noise_prob", noise_prob), ("control_frac", control_frac)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return splits, tasks, size_range, fps_range, duration_range, crf_range


# ----------------------------------------------------------------------------------------------
# planning


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of n * fractions (normalised); sums to n."""
    total = sum(fractions)
    exact = [n * f / total for f in fractions]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _even(value: float) -> int:
    return int(round(value / 2)) * 2


def _frame_size(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    lo = 2 * math.ceil(size_range[0] / 2)
    hi = 2 * (size_range[1] // 2)
    if hi < lo:  # e.g. (97, 97): the nearest even size
        lo = hi = max(_even(size_range[0]), 32)
    aspects = [a for a in ASPECTS if lo * a <= hi + 1e-9] or [1.0]
    aspect = aspects[int(rng.integers(len(aspects)))]
    short = int(rng.integers(lo // 2, int(hi / aspect) // 2 + 1)) * 2
    short = min(max(short, lo), hi)
    long = min(max(_even(short * aspect), lo), hi)
    return long, short  # width, height


def _jitter(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    base = np.array(COLOURS[colour])
    return tuple(int(v) for v in np.clip(base + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255))


def _shape(rng, kind, colour, short_side, start, end, appear) -> ShapeSpec:
    diameter = float(rng.uniform(*SHAPE_FRACTION)) * short_side
    return ShapeSpec(
        kind=kind,
        colour=colour,
        rgb=_jitter(rng, colour),
        diameter=diameter,
        apex=float(rng.uniform(0.87, 1.0)),
        box=_box(diameter),
        start=start,
        end=end,
        appear=appear,
    )


def _box(diameter: float) -> int:
    return int(math.ceil(diameter)) + 2  # room for a sub-pixel offset and an anti-aliased rim


def _direction_shapes(rng, kind, colour, direction, width, height, frames) -> tuple[ShapeSpec]:
    shape = _shape(rng, kind, colour, min(width, height), (0.0, 0.0), (0.0, 0.0), 0)
    horizontal = direction in ("left", "right")
    free_along = (width if horizontal else height) - shape.box
    free_across = (height if horizontal else width) - shape.box
    travel = float(rng.uniform(*TRAVEL_FRACTION)) * free_along
    lo = float(rng.uniform(0, free_along - travel))
    a, b = (lo, lo + travel) if direction in ("right", "down") else (lo + travel, lo)
    across = float(rng.uniform(0, free_across))
    start, end = ((a, across), (b, across)) if horizontal else ((across, a), (across, b))
    return (replace(shape, start=start, end=end),)


def _overlaps(a: tuple[float, float, int], b: tuple[float, float, int], margin: float) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    return not (
        ax + asz + margin <= bx
        or bx + bsz + margin <= ax
        or ay + asz + margin <= by
        or by + bsz + margin <= ay
    )


def _order_gap_tail(fps: int) -> int:
    """Frames the order task needs after the first shape appears: the gap, then time to see the second."""
    return int(math.ceil(ORDER_GAP_S * fps - 1e-9)) + int(math.ceil(ORDER_TAIL_S * fps - 1e-9))


def _order_shapes(rng, first, second, width, height, fps, frames) -> tuple[ShapeSpec, ShapeSpec]:
    short = min(width, height)
    gap = int(math.ceil(ORDER_GAP_S * fps - 1e-9))
    tail = int(math.ceil(ORDER_TAIL_S * fps - 1e-9))
    last_second = frames - tail  # latest frame the second shape may appear in
    first_latest = min(int(ORDER_FIRST_FRACTION * frames), last_second - gap)
    appear_1 = int(rng.integers(0, first_latest + 1))
    appear_2 = int(rng.integers(appear_1 + gap, last_second + 1))
    shapes = [_shape(rng, kind, colour, short, (0.0, 0.0), (0.0, 0.0), 0) for kind, colour in (first, second)]
    placed: list[tuple[float, float, int]] = []
    for shape in shapes:
        for attempt in range(200):
            x = float(rng.uniform(0, width - shape.box))
            y = float(rng.uniform(0, height - shape.box))
            if not any(_overlaps((x, y, shape.box), p, margin=2) for p in placed):
                break
        else:  # cannot happen with <= 25% shapes, but never overlap: opposite corners
            x, y = (0.0, 0.0) if not placed else (width - shape.box, height - shape.box)
        placed.append((x, y, shape.box))
    return tuple(
        replace(s, start=(x, y), end=(x, y), appear=t)
        for s, (x, y, _), t in zip(shapes, placed, (appear_1, appear_2))
    )


def plan_dataset(
    n: int,
    seed: int,
    *,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    tasks: Sequence[str] = TASKS,
    size_range: tuple[int, int] = SIZE_RANGE,
    fps_range: tuple[int, int] = FPS_RANGE,
    duration_range: tuple[float, float] = DURATION_RANGE,
    crf_range: tuple[int, int] = CRF_RANGE,
    noise_prob: float = 0.5,
    control_frac: float = 0.5,
    shape_questions: bool = False,
) -> list[ClipSpec]:
    """Every clip of a dataset, decided from the seed alone (no rendering).

    n clips in all (reversed controls come on top, as extra samples of their split). Within each
    split the tasks alternate, and each task cycles through its attributes (direction x colour x
    shape; first colour x first shape x which is named first), so every prefix is balanced to +-1."""
    splits, tasks, size_range, fps_range, duration_range, crf_range = _check(
        n, seed, splits, tasks, size_range, fps_range, duration_range, crf_range, noise_prob, control_frac
    )
    width_digits = max(5, len(str(n - 1)))
    specs: list[ClipSpec] = []
    index = 0
    for split_index, (split, count) in enumerate(zip(SPLITS, _split_counts(n, splits))):
        rng = np.random.default_rng([seed, 1, split_index])
        labels = [tasks[(index + k) % len(tasks)] for k in range(count)]
        perms = {
            "direction": [
                rng.permutation(len(DIRECTIONS)),
                rng.permutation(len(COLOURS)),
                rng.permutation(3),
            ],
            "order": [rng.permutation(len(COLOURS)), rng.permutation(3), rng.permutation(2)],
        }
        seen = {t: 0 for t in TASKS}
        split_specs = []
        for task in labels:
            k = seen[task]
            seen[task] += 1
            clip_rng = np.random.default_rng([seed, 2, index])
            clip_id = f"s{seed}_{index:0{width_digits}d}"
            index += 1
            width, height = _frame_size(clip_rng, size_range)
            fps = int(clip_rng.integers(fps_range[0], fps_range[1] + 1))
            lo_frames = math.ceil(duration_range[0] * fps - 1e-9)
            hi_frames = max(math.floor(duration_range[1] * fps + 1e-9), lo_frames)
            frames = int(clip_rng.integers(lo_frames, hi_frames + 1))
            frames = max(frames, 2)
            common = dict(
                id=clip_id,
                split=split,
                task=task,
                width=width,
                height=height,
                fps=fps,
                frames=frames,
                crf=int(clip_rng.integers(crf_range[0], crf_range[1] + 1)),
                background=int(clip_rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1)),
                noise_sigma=float(clip_rng.uniform(*NOISE_SIGMA)) if clip_rng.random() < noise_prob else 0.0,
                supersample=int(clip_rng.choice([2, 3, 4])),
                seed=int(clip_rng.integers(2**31)),
            )
            colours = list(COLOURS)
            if task == "direction":
                dperm, cperm, sperm = perms["direction"]
                direction = DIRECTIONS[dperm[k % 4]]
                colour = colours[cperm[k % 5]]
                kind = SHAPES[sperm[k % 3]]
                shapes = _direction_shapes(clip_rng, kind, colour, direction, width, height, frames)
                spec = ClipSpec(
                    **common,
                    shapes=shapes,
                    question=direction_question(colour, kind),
                    options=DIRECTIONS,
                    answer=direction,
                    caption=direction_caption(colour, kind, direction),
                    control=False,
                    shape_question=shape_questions,
                )
            else:
                cperm, sperm, nperm = perms["order"]
                colour_1 = colours[cperm[k % 5]]
                kind_1 = SHAPES[sperm[k % 3]]
                # the second shape cycles too, at a shift of 1.. from the first: each run of 5 (3)
                # clips has every second colour (kind) once; every pair once per 20 (6) clips
                colour_2 = colours[cperm[(k % 5 + 1 + (k // 5) % 4) % 5]]
                kind_2 = SHAPES[sperm[(k % 3 + 1 + (k // 3) % 2) % 3]]
                first, second = _order_shapes(
                    clip_rng, (kind_1, colour_1), (kind_2, colour_2), width, height, fps, frames
                )
                named = [_the(first), _the(second)]
                if nperm[k % 2]:
                    named.reverse()
                spec = ClipSpec(
                    **common,
                    shapes=(first, second),
                    question=order_question(named),
                    options=tuple(named),
                    answer=_the(first),
                    caption=order_caption(first, second),
                    control=False,
                )
            split_specs.append(spec)
        if split != "train" and control_frac > 0:
            directional = [i for i, s in enumerate(split_specs) if s.task == "direction"]
            wanted = int(math.floor(control_frac * len(directional) + 0.5))
            for i in rng.choice(directional, size=wanted, replace=False) if wanted else []:
                split_specs[i] = replace(split_specs[i], control=True)
        order = rng.permutation(len(split_specs))
        specs.extend(split_specs[i] for i in order)
    return specs


# ----------------------------------------------------------------------------------------------
# rendering
