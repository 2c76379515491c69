"""Synthetic temporal-QA data: deterministic, well-formed, and the answers are what the pixels show."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.train.synthqa import COLOURS, DIRECTIONS, SHAPES, plan_dataset
from pipeline.train.synthrender import write_dataset

CHEAP = dict(size_range=(96, 128), fps_range=(10, 12), duration_range=(4.0, 4.5))
PLAIN = np.array(list(COLOURS.values()), dtype=np.int32)
FAR_FROM_BACKGROUND = 60  # max channel difference of a shape pixel from the background


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _samples(out: Path) -> dict[str, list[dict]]:
    return {split: _lines(out / f"{split}.jsonl") for split in ("train", "val", "test")}


def _analyse(path: Path) -> dict:
    """Decode a clip; per frame: the centroid of the pixels far from the background and the
    number of such pixels nearest to each plain colour."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = dict(
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            fps=float(stream.average_rate),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
        )
        times, centroids, counts = [], [], []
        background = None
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24").astype(np.int16)
            if background is None:
                background = np.median(image.reshape(-1, 3), axis=0).astype(np.int16)
            far = np.abs(image - background).max(axis=2) > FAR_FROM_BACKGROUND
            ys, xs = np.nonzero(far)
            centroids.append((xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan))
            pixels = image[far]
            nearest = np.argmin(((pixels[:, None, :].astype(np.int32) - PLAIN[None]) ** 2).sum(-1), axis=1)
            counts.append(np.bincount(nearest, minlength=len(PLAIN)))
            times.append(float(frame.time))
    info.update(frames=len(times), times=np.array(times), centroids=np.array(centroids))
    info["counts"] = np.array(counts)
    return info


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The full spec ranges: 4 train, 2 val, 2 test clips (one of each task per split), and a
    reversed control for every val/test direction clip."""
    out = tmp_path_factory.mktemp("synthqa") / "data"
    summary = write_dataset(out, 8, 1, splits=(0.5, 0.25, 0.25), control_frac=1.0)
    samples = _samples(out)
    decoded = {row["id"]: _analyse(out / row["video"]) for rows in samples.values() for row in rows}
    return out, summary, samples, decoded


def test_same_seed_same_bytes_different_seed_different_clips(tmp_path):
    a = write_dataset(tmp_path / "a", 6, 5, control_frac=1.0, splits=(0.34, 0.33, 0.33), workers=2, **CHEAP)
    b = write_dataset(tmp_path / "b", 6, 5, control_frac=1.0, splits=(0.34, 0.33, 0.33), workers=1, **CHEAP)
    c = write_dataset(tmp_path / "c", 6, 6, control_frac=1.0, splits=(0.34, 0.33, 0.33), **CHEAP)
    assert a["splits"] == b["splits"]
    names = ["train.jsonl", "val.jsonl", "test.jsonl", "train_captions.jsonl"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    clips_a = sorted(p.name for p in (tmp_path / "a" / "clips").iterdir())
    assert clips_a == sorted(p.name for p in (tmp_path / "b" / "clips").iterdir())
    assert len(clips_a) == a["clips"] > 6  # reversed controls included
    for name in clips_a:  # one x264 thread per clip: the videos are identical too, pool or not
        clip_a, clip_b = (tmp_path / d / "clips" / name for d in ("a", "b"))
        assert clip_a.read_bytes() == clip_b.read_bytes(), name

    ids_a = {r["id"] for rows in _samples(tmp_path / "a").values() for r in rows}
    ids_c = {r["id"] for rows in _samples(tmp_path / "c").values() for r in rows}
    assert not ids_a & ids_c  # ids carry the seed: datasets can be merged
    first_a = (tmp_path / "a" / "clips" / clips_a[0]).read_bytes()
    clips_c = sorted((tmp_path / "c" / "clips").iterdir())
    assert all(p.read_bytes() != first_a for p in clips_c)
    assert (tmp_path / "a" / "train.jsonl").read_text() != (tmp_path / "c" / "train.jsonl").read_text()
    assert c["clips_per_s"] > 0


def test_splits_are_disjoint_and_every_line_has_its_clip(dataset):
    out, summary, samples, _ = dataset
    ids = {split: {r["id"] for r in rows} for split, rows in samples.items()}
    videos = {split: {r["video"] for r in rows} for split, rows in samples.items()}
    for x, y in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[x] & ids[y] and not videos[x] & videos[y]
    base = [r for rows in samples.values() for r in rows if "control" not in r]
    assert len(base) == 8
    assert [len(rows) for rows in samples.values()] == [4, 3, 3]  # + one control each in val and test
    assert summary["splits"]["train"] == {"direction": 2, "order": 2, "controls": 0, "samples": 4}
    assert summary["splits"]["val"] == {"direction": 1, "order": 1, "controls": 1, "samples": 3}
    all_videos = set().union(*videos.values())
    assert {f"clips/{p.name}" for p in (out / "clips").iterdir()} == all_videos
    assert summary["clips"] == len(all_videos) == 10
    captions = _lines(out / "train_captions.jsonl")
    assert captions == [{"video": r["video"], "caption": r["caption"]} for r in samples["train"]]
    assert not any("control" in r or "pair" in r for r in samples["train"])


def test_clips_decode_within_the_spec_ranges(dataset):
    _, _, samples, decoded = dataset
    assert len(decoded) == 10
    for name, clip in decoded.items():
        assert clip["codec"] == "h264" and clip["pix_fmt"] == "yuv420p", name
        assert 10 <= clip["fps"] <= 30 and clip["fps"] == int(clip["fps"]), name
        duration = clip["frames"] / clip["fps"]
        assert 4.0 - 1e-6 <= duration <= 8.0 + 1e-6, (name, duration)
        # constant frame rate: frame i is shown at i / fps
        assert np.allclose(clip["times"], np.arange(clip["frames"]) / clip["fps"], atol=1e-3), name
        w, h = clip["width"], clip["height"]
        assert 96 <= h <= w <= 480 and w % 2 == 0 and h % 2 == 0, (name, w, h)
        assert min(abs(w / h - a) for a in (1, 4 / 3, 16 / 9)) < 0.02, (name, w, h)


def _direction_of(centroids: np.ndarray) -> tuple[str, float, float]:
    (x0, y0), (x1, y1) = centroids[0], centroids[-1]
    dx, dy = x1 - x0, y1 - y0
    if abs(dx) > abs(dy):
        return ("right" if dx > 0 else "left"), abs(dx), abs(dy)
    return ("down" if dy > 0 else "up"), abs(dy), abs(dx)


def test_direction_clips_move_as_answered_and_reversed_controls_move_back(dataset):
    _, _, samples, decoded = dataset
    rows = [r for split in samples.values() for r in split if r["task"] == "direction"]
    by_id = {r["id"]: r for r in rows}
    controls = [r for r in rows if r.get("control") == "reversed"]
    assert len(controls) == 2 and len(rows) == 6
    for row in rows:
        clip = decoded[row["id"]]
        track = clip["centroids"]
        assert not np.isnan(track).any(), f"{row['id']}: the shape is not visible in every frame"
        seen, along, across = _direction_of(track)
        assert seen == row["answer"], (row["id"], seen, row["answer"])
        short = min(clip["width"], clip["height"])
        assert along >= 0.4 * (0.75 * short - 3) - 1 and across < 2.5, (row["id"], along, across)
        # constant speed: the halfway point is halfway
        middle = track[len(track) // 2]
        assert np.abs(middle - (track[0] + track[-1]) / 2).max() < 2.5, row["id"]
    for control in controls:
        original = by_id[control["pair"]]
        assert original["pair"] == original["id"] and control["id"] != original["id"]
        flipped = {"left": "right", "right": "left", "up": "down", "down": "up"}
        assert control["answer"] == flipped[original["answer"]]
        assert control["question"] == original["question"]
        forward, backward = decoded[original["id"]], decoded[control["id"]]
        assert backward["frames"] == forward["frames"] and backward["fps"] == forward["fps"]
        assert np.abs(backward["centroids"] - forward["centroids"][::-1]).max() < 1.5


def test_order_clips_show_the_answer_first_at_least_1_5_s_earlier(dataset):
    _, _, samples, decoded = dataset
    rows = [r for split in samples.values() for r in split if r["task"] == "order"]
    assert len(rows) == 4
    colour_index = {name: i for i, name in enumerate(COLOURS)}
    for row in rows:
        clip = decoded[row["id"]]
        other = next(o for o in row["options"] if o != row["answer"])
        appear = {}
        for label in (row["answer"], other):
            colour = label.split()[1]
            visible = np.nonzero(clip["counts"][:, colour_index[colour]] >= 15)[0]
            assert len(visible), (row["id"], label)
            first = visible[0]
            # appears once and stays
            assert (clip["counts"][first:, colour_index[colour]] >= 15).all(), (row["id"], label)
            appear[label] = clip["times"][first]
        duration = clip["frames"] / clip["fps"]
        assert appear[other] - appear[row["answer"]] >= 1.5 - 1e-6, (row["id"], appear)
        assert appear[row["answer"]] <= 0.3 * duration + 1e-6, (row["id"], appear)
        assert appear[other] <= duration - 1.2 + 1e-6, (row["id"], appear)


def test_question_options_answer_and_caption_strings(dataset):
    _, _, samples, _ = dataset
    colour = "|".join(COLOURS)
    shape = "|".join(SHAPES)
    rows = [r for split in samples.values() for r in split]
    for row in rows:
        assert re.fullmatch(r"s1_\d{5}(_rev)?", row["id"]) and row["video"] == f"clips/{row['id']}.mp4"
        assert row["answer"] in row["options"]
        if row["task"] == "direction":
            m = re.fullmatch(rf"Which way does the ({colour}) ({shape}) move\?", row["question"])
            assert m, row["question"]
            assert row["options"] == ["left", "right", "up", "down"]
            assert row["caption"] == f"a {m[1]} {m[2]} moves {row['answer']}"
        else:
            pattern = rf"Which appears first: the ({colour}) ({shape}) or the ({colour}) ({shape})\?"
            m = re.fullmatch(pattern, row["question"])
            assert m, row["question"]
            assert m[1] != m[3] and m[2] != m[4]
            assert row["options"] == [f"the {m[1]} {m[2]}", f"the {m[3]} {m[4]}"]
            first, second = (m[1], m[2]), (m[3], m[4])
            if row["answer"] != row["options"][0]:
                first, second = second, first
            assert row["caption"] == f"a {first[0]} {first[1]} appears, then a {second[0]} {second[1]}"
        keys = ["id", "video", "question", "options", "answer", "task", "caption"]
        assert list(row)[:7] == keys and set(row) - set(keys) <= {"pair", "control"}


def test_plan_is_balanced_and_within_the_spec():
    specs = plan_dataset(600, 3)
    assert len(specs) == 600 and len({s.id for s in specs}) == 600
    for split, count in (("train", 480), ("val", 60), ("test", 60)):
        chosen = [s for s in specs if s.split == split]
        assert len(chosen) == count
        tasks = Counter(s.task for s in chosen)
        assert tasks["direction"] == tasks["order"] == count // 2
        direction = [s for s in chosen if s.task == "direction"]
        order = [s for s in chosen if s.task == "order"]
        for counter in (
            Counter(s.answer for s in direction),
            Counter(s.shapes[0].colour for s in direction),
            Counter(s.shapes[0].kind for s in direction),
            Counter(s.shapes[0].colour for s in order),
            Counter(s.shapes[1].colour for s in order),
            Counter(s.shapes[0].kind for s in order),
            Counter(s.options[0] == s.answer for s in order),
        ):
            assert max(counter.values()) - min(counter.values()) <= 2, counter
        controls = sum(s.control for s in chosen)
        assert controls == (0 if split == "train" else len(direction) // 2)
    for s in specs:
        assert 10 <= s.fps <= 30 and 4 <= s.duration <= 8 and 96 <= s.height <= s.width <= 480
        assert 18 <= s.crf <= 30 and 0 <= s.background <= 80 and 0 <= s.noise_sigma <= 8
        short = min(s.width, s.height)
        for shape in s.shapes:
            assert 0.12 * short <= shape.diameter <= 0.25 * short
            plain = COLOURS[shape.colour]
            assert all(abs(a - b) <= 20 for a, b in zip(shape.rgb, plain)), (shape.colour, shape.rgb)
            for x, y in (shape.start, shape.end):
                assert 0 <= x <= s.width - shape.box and 0 <= y <= s.height - shape.box
        if s.task == "direction":
            (shape,) = s.shapes
            axis = 0 if s.answer in ("left", "right") else 1
            free = (s.width, s.height)[axis] - shape.box
            travel = shape.end[axis] - shape.start[axis]
            assert 0.4 * free - 1e-6 <= abs(travel) <= free + 1e-6
            assert (travel > 0) == (s.answer in ("right", "down"))
            assert shape.start[1 - axis] == shape.end[1 - axis]
        else:
            first, second = s.shapes
            assert first.kind != second.kind and first.colour != second.colour
            assert first.appear <= 0.3 * s.frames and (second.appear - first.appear) / s.fps >= 1.5
            assert second.appear / s.fps <= s.duration - 1.2 + 1e-9
            (ax, ay), (bx, by) = first.start, second.start
            apart_x = ax + first.box <= bx or bx + second.box <= ax
            assert apart_x or ay + first.box <= by or by + second.box <= ay
    assert sum(s.noise_sigma > 0 for s in specs) in range(240, 361)
    assert len({(s.width, s.height) for s in specs}) > 100 and len({s.background for s in specs}) > 50
    assert plan_dataset(600, 3) == specs and plan_dataset(600, 4) != specs


def test_cheaper_overrides_and_task_selection():
    cheap = dict(size_range=(96, 160), fps_range=(10, 15), duration_range=(4, 5))
    specs = plan_dataset(50, 2, tasks=("direction",), **cheap)
    assert {s.task for s in specs} == {"direction"}
    assert all(96 <= s.height <= s.width <= 160 and 10 <= s.fps <= 15 and 4 <= s.duration <= 5 for s in specs)
    assert Counter(s.answer for s in specs if s.split == "train") == {d: 10 for d in DIRECTIONS}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0), "n (number of clips) must be an integer >= 1"),
        (dict(n=2.5), "n (number of clips)"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(tasks=("direction", "colour")), "tasks must be"),
        (dict(splits=(1, 0)), "splits must be three fractions"),
        (dict(size_range=(200, 100)), "size_range must satisfy"),
        (dict(duration_range=(2.0, 3.0)), "the order task needs clips of at least"),
        (dict(out_dir=""), "out_dir must be a directory path"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    args = dict(out_dir=tmp_path / "out", n=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        write_dataset(args.pop("out_dir"), args.pop("n"), args.pop("seed"), **args)
    assert not (tmp_path / "out").exists()


def test_out_dir_must_be_a_new_or_empty_directory_unless_overwriting(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        write_dataset(tmp_path / "file", 1, 0, **CHEAP)
    out = tmp_path / "out"
    write_dataset(out, 2, 0, splits=(1, 0, 0), **CHEAP)
    assert len(list((out / "clips").iterdir())) == 2
    with pytest.raises(ValueError, match="is not empty"):
        write_dataset(out, 1, 0, **CHEAP)
    summary = write_dataset(out, 1, 9, splits=(1, 0, 0), overwrite=True, **CHEAP)
    assert summary["clips"] == 1 and [p.name for p in (out / "clips").iterdir()] == ["s9_00000.mp4"]
    assert math.isclose(sum(v["samples"] for v in summary["splits"].values()), 1)


def test_shape_questions_ask_each_direction_clip_its_shape():
    rows = [r for s in plan_dataset(40, 3, shape_questions=True) for r in s.records()]
    shape = [r for r in rows if r["task"] == "shape"]
    direction = {r["video"]: r for r in rows if r["task"] == "direction" and r.get("control") != "reversed"}
    assert shape and sorted(r["video"] for r in shape) == sorted(direction)
    for r in shape:
        colour, kind = direction[r["video"]]["caption"].split()[1:3]
        assert r["question"] == f"What shape is the {colour} object?" and r["answer"] == kind
        assert r["options"] == ["circle", "square", "triangle"] and "caption" not in r  # no second caption sample
    assert {r["answer"] for r in shape} == {"circle", "square", "triangle"}
    plain = [r for s in plan_dataset(40, 3) for r in s.records()]  # without the flag nothing else changes
    assert [r for r in rows if r["task"] != "shape"] == plain
