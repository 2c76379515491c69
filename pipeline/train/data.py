"""Training and evaluation samples: JSONL -> Sample -> SigLIP patch grids.

One sample per line, media paths relative to the JSONL file:

    {"video": "clip.mp4", "caption": "a red circle moves left"}
    {"image": "x.png", "caption": "..."}
    {"video": "clip.mp4", "question": "...", "options": ["left", ...], "answer": "left", "task": "direction"}
    {"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video>\\n..."},
                                            {"from": "gpt", "value": "..."}]}

A line with both a question and a caption gives two samples (caption and QA).
Media go through the ingest decoder (same fps, chunking, resize, padding) and the
same SigLIP pre-processing, so what the model learns on is what ingest feeds it.
A broken line or unreadable clip is one line in `problems`, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.decode import Source, SourceError, VideoDecoder, content_fingerprint

PLACEHOLDER = "<video>"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}  # also `vidstorm describe`
_LLAVA_TOKENS = re.compile(r"<(video|image)>")
_BAD_PATH = re.compile(r"[\x00-\x1f]")


@dataclass
class Sample:
    media: Path  # resolved file
    prompt: str  # user text, with one <video> placeholder
    answer: str  # target text (a caption, an answer, an assistant turn)
    options: list[str] = field(default_factory=list)  # multiple choice (QA); empty otherwise
    task: str = "caption"
    id: str = ""
    pair: str = ""  # id shared by a clip and its control (e.g. the reversed clip)
    control: str = ""

    @property
    def is_choice(self) -> bool:
        return bool(self.options)


@dataclass
class Dataset:
    samples: list[Sample]
    problems: list[str]  # one line per skipped line or sample
    lines: int = 0


def _media_path(base: Path, value, line_no: int, where: str) -> Path:
    if not isinstance(value, str) or not value or _BAD_PATH.search(value) or len(value) > 4096:
        raise ValueError(f"{where}:{line_no}: media path must be a non-empty string without control characters")
    path = (base / value).resolve()
    if not path.is_file():
        raise ValueError(f"{where}:{line_no}: media file not found: {value}")
    return path


def format_options(options: list[str]) -> str:
    return ", ".join(options)


def _samples_from_line(row: dict, base: Path, line_no: int, where: str, caption_prompt: str,
                       qa_prompt: str) -> list[Sample]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}:{line_no}: a line must be a JSON object")
    key = "video" if "video" in row else "image" if "image" in row else None
    if key is None:
        raise ValueError(f"{where}:{line_no}: no 'video' or 'image' field")
    media = _media_path(base, row[key], line_no, where)
    ident = str(row.get("id", f"{Path(where).name}:{line_no}"))
    common = dict(media=media, id=ident, pair=str(row.get("pair", "")), control=str(row.get("control", "")))
    samples = []
    if "conversations" in row:
        samples += _conversation_samples(row["conversations"], common, line_no, where)
    if "question" in row:
        options, answer = row.get("options"), row.get("answer")
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise ValueError(f"{where}:{line_no}: 'question' must be a non-empty string")
        if not isinstance(answer, str):
            raise ValueError(f"{where}:{line_no}: a question needs an 'answer' string")
        if options is not None:
            if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) for o in options)):
                raise ValueError(f"{where}:{line_no}: 'options' must be a list of at least two strings")
            if answer not in options:
                raise ValueError(f"{where}:{line_no}: answer {answer!r} is not one of the options")
        prompt = qa_prompt.format(question=row["question"].strip(), options=format_options(options or []))
        samples.append(Sample(prompt=prompt, answer=answer, options=list(options or []),
                              task=str(row.get("task", "qa")), **common))
    if "caption" in row:
        if not isinstance(row["caption"], str) or not row["caption"].strip():
            raise ValueError(f"{where}:{line_no}: 'caption' must be a non-empty string")
        samples.append(Sample(prompt=caption_prompt, answer=row["caption"].strip(), task="caption", **common))
    if not samples:
        raise ValueError(f"{where}:{line_no}: needs 'caption', 'question' + 'answer', or 'conversations'")
    return samples


def _conversation_samples(turns, common: dict, line_no: int, where: str) -> list[Sample]:
    """LLaVA style: each human turn followed by a gpt turn is one sample (the media goes with each)."""
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"{where}:{line_no}: 'conversations' must be a list of {{from, value}} objects")
    samples = []
    for human, gpt in zip(turns, turns[1:]):
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            continue
        question, answer = human.get("value"), gpt.get("value")
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"{where}:{line_no}: conversation turns need string values")
        text = _LLAVA_TOKENS.sub("", question).strip()
        samples.append(Sample(prompt=f"{PLACEHOLDER}\n{text}", answer=answer.strip(), task="conversation", **common))
    if not samples:
        raise ValueError(f"{where}:{line_no}: 'conversations' has no human turn followed by a gpt turn")
    return samples


def read_jsonl(paths, caption_prompt: str, qa_prompt: str) -> Dataset:
    """Every sample of every file; a bad line is skipped with one line in `problems`."""
    samples, problems, lines = [], [], 0
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if not path.is_file():
            problems.append(f"{path}: no such JSONL file")
            continue
        for line_no, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not text.strip():
                continue
            lines += 1
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{line_no}: not JSON ({err.msg})")
                continue
            try:
                samples += _samples_from_line(row, path.parent, line_no, str(path), caption_prompt, qa_prompt)
            except ValueError as err:
                problems.append(str(err))
    return Dataset(samples, problems, lines)


def load_frames(media: Path, size: int, fps: float, chunk_frames: int, pad_multiple: int,
                max_chunks: int) -> np.ndarray:
    """uint8 (T, size, size, 3) through the ingest decoder; T a multiple of pad_multiple.

    An image is a one-frame video (padded like ingest pads a short chunk). Raises SourceError.
    """
    decoder = VideoDecoder(Source(str(media), "train"), size, fps, chunk_frames, pad_multiple)
    if media.suffix.lower() in IMAGE_EXTENSIONS:
        decoder.duration = None  # a still image has no timeline to be truncated
    frames = []
    chunks = decoder.chunks()
    try:
        for chunk in chunks:
            frames.append(chunk.frames)
            if len(frames) == max_chunks:
                break
    finally:
        chunks.close()
    return np.concatenate(frames)


class FeatureCache:
    """SigLIP grids per sample, computed once: the encoder is frozen, so every epoch reuses them.

    Grids are kept as fp16 on CPU; a media file used by several samples is encoded once.
    """

    def __init__(self, encoder, fps: float, chunk_frames: int, pad_multiple: int, max_chunks: int,
                 grids: dict | None = None, disk: Path | None = None, key: str = "", static_threshold: float = 0.0):
        """`grids`: a dict to keep them in, shared by runs with the same encoder and decoding.
        `disk`: a folder that keeps them across runs (safetensors, one file per clip), named by
        `key` (what the grids depend on: encoder weights, decoding) and the clip's content.
        `static_threshold`: static-frame reuse as ingest does it (encoder.static_threshold): a clip is
        one stream, and a frame that barely changed gets its reference frame's grid."""
        self.static_threshold = static_threshold
        self.encoder, self.fps, self.chunk_frames = encoder, fps, chunk_frames
        self.pad_multiple, self.max_chunks = pad_multiple, max_chunks
        self._grids: dict[Path, torch.Tensor] = {} if grids is None else grids
        self.failed: dict[Path, str] = {}
        self.disk, self.key = (Path(disk) if disk else None), key

    def _disk_file(self, media: Path) -> Path | None:
        if self.disk is None:
            return None
        try:
            content = content_fingerprint(str(media))
        except OSError:
            return None
        name = hashlib.sha256(f"{self.key}|{content}".encode()).hexdigest()[:40]
        return self.disk / f"{name}.safetensors"

    def _load(self, media: Path) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        stored = self._disk_file(media)
        if stored is not None and stored.is_file():
            try:
                return load_file(str(stored))["grid"]
            except Exception:  # a torn or foreign file: encode again and replace it
                pass
        frames = load_frames(media, self.encoder.image_size, self.fps, self.chunk_frames,
                             self.pad_multiple, self.max_chunks)
        grid = self.encode(frames).half().contiguous()
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_suffix(f".tmp{os.getpid()}")
            save_file({"grid": grid}, str(tmp))
            os.replace(tmp, stored)
        return grid

    def encode(self, frames: np.ndarray) -> torch.Tensor:
        """A clip's grids (T, g, g, C), SigLIP run only on the frames static-frame reuse keeps."""
        from pipeline.reuse import fill, gate

        mask, _ = gate(frames, None, self.static_threshold)
        return fill(self.encoder.encode(frames[mask]), mask, None)

    def get(self, media: Path) -> torch.Tensor | None:
        """(T, g, g, C) fp32, or None for a clip that cannot be read (the reason is in `failed`)."""
        if media in self.failed:
            return None
        if media not in self._grids:
            try:
                self._grids[media] = self._load(media)
            except SourceError as err:
                self.failed[media] = str(err)
                return None
        return self._grids[media].float()

    def usable(self, dataset: Dataset, log=None) -> Dataset:
        """Encode every sample's media; samples whose media cannot be read move to `problems`."""
        kept, problems, said = [], list(dataset.problems), set()
        for i, sample in enumerate(dataset.samples):
            if self.get(sample.media) is None:
                if sample.media not in said:  # one line per clip, however many samples use it
                    problems.append(f"{sample.media}: {self.failed[sample.media]}")
                said.add(sample.media)
            else:
                kept.append(sample)
            if log and (i + 1) % 200 == 0:
                log(f"encoded {i + 1}/{len(dataset.samples)} samples")
        return Dataset(kept, problems, dataset.lines)
