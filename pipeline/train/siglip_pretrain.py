"""A toy SigLIP, pretrained the way SigLIP is: image and text towers, pairwise sigmoid loss.

A frozen *random* image encoder keeps colour and motion but not shape (README, "The toy model,
measured"); a real SigLIP is pretrained on image-text pairs, then frozen. This does the same at
toy scale on still frames of the synthetic family (pipeline/train/synthqa.py: one or two shapes of
any colour and size, anywhere, on the family's grey backgrounds and noise), each with a caption
naming its colours, shapes and where they are:

    "a red circle at the top left"  |  "a red circle and a blue square"  |  ...

    images (B, 3, S, S) --vision tower--> x (B, E)      captions --text tower--> y (B, E)
    logits[i, j] = exp(t) * <x_i/|x_i|, y_j/|y_j|> + b      (SiglipModel's own logits_per_image)
    loss = -1/B * sum_ij log sigmoid(z_ij * logits[i, j]),  z_ij = +1 if caption_i == caption_j else -1

(Zhai et al. 2023, eq. 1; two images with the same caption are both positives.) The result is a
`SiglipModel` folder with a word-level tokenizer; `encoder.model` loads its vision tower like any
SigLIP checkpoint. `zero_shot` scores every "a <colour> <shape>" prompt against held-out frames.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import SiglipTowerConfig
from pipeline.train import synthqa as sq
from pipeline.train import synthrender

ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
SPECIAL_TOKENS = ("<pad>", "<unk>", "</s>")
TEXT_LENGTH = 24  # captions padded to this many tokens (SigLIP pools the last position)


def vocabulary() -> list[str]:
    words = {"a", "and", "at", "the", "in", "of", *sq.COLOURS, *sq.SHAPES, *ROWS, *COLUMNS}
    return [*SPECIAL_TOKENS, *sorted(words)]


def where(x: float, y: float, width: int, height: int) -> str:
    """ "at the top left" for a shape centred at (x, y) px; "in the middle" at the centre."""
    row = ROWS[min(int(3 * y / height), 2)]
    column = COLUMNS[min(int(3 * x / width), 2)]
    if row == "middle" and column == "centre":
        return "in the middle"
    if column == "centre":
        return f"at the {row}"
    if row == "middle":
        return f"at the {column}"
    return f"at the {row} {column}"


def patch_class(colour: str, kind: str) -> int:
    """The class of a (colour, kind) in the dense head's labels; 0 is the background."""
    return 1 + list(sq.COLOURS).index(colour) * len(sq.SHAPES) + sq.SHAPES.index(kind)


def patch_labels(shapes, width: int, height: int, grid: int, cover: float = 0.3) -> np.ndarray:
    """(grid, grid) uint8: for each patch of the frame resized to the tower's grid, the `patch_class` of
    the shape covering at least `cover` of it (the one covering more, where two do), else 0. `shapes`:
    still ShapeSpecs (`start` = top-left of its box, px)."""
    rows = np.round(np.arange(grid + 1) * height / grid).astype(int)
    columns = np.round(np.arange(grid + 1) * width / grid).astype(int)
    area = np.diff(rows)[:, None] * np.diff(columns)[None, :]
    best, labels = np.zeros((grid, grid), np.float32), np.zeros((grid, grid), np.uint8)
    for shape in shapes:
        canvas = np.zeros((height, width), np.float32)
        region, mask = synthrender.Sprite(shape, 2, 1).place(height, width, 0)  # where render_frames pastes it
        canvas[region] = mask[..., 0]
        covered = np.add.reduceat(np.add.reduceat(canvas, rows[:-1], axis=0), columns[:-1], axis=1) / area
        take = (covered >= cover) & (covered > best)
        labels[take], best[take] = patch_class(shape.colour, shape.kind), covered[take]
    return labels


def render_group(rng: np.random.Generator, size: int, versions: int = 1, compress: bool = False,
                 size_range=sq.SIZE_RANGE, grid: int = 0, cover: float = 0.3) -> list[tuple[np.ndarray, str, list, np.ndarray | None]]:
    """Stills of the family resized to (size, size, 3) uint8 as decode does, each with its caption and its
    shapes [(colour, kind, x, y)] (centre, fractions of the frame). One shape or two (different colour and
    kind); position words on half the captions. compress: through H.264 at the family's CRF. `versions` > 1: the same scene (colours, sizes, places,
    background, noise) with the shapes' kinds rotated, so a batch holds pairs that differ only in shape:
    the contrast that teaches shape (colour alone separates most random pairs). Each still's last item is its
    `patch_labels` at `grid` and `cover` (the dense head's targets; with a small `cover`, the patches a
    shape touches) when `grid` > 0, else None."""
    width, height = sq._frame_size(rng, size_range)
    count = 1 + int(rng.random() < 0.5)
    colours = rng.choice(list(sq.COLOURS), count, replace=False)
    kinds = rng.choice(list(sq.SHAPES), count, replace=False)
    short = min(width, height)
    shapes, placed = [], []  # placed: (x, y, box) px
    for kind, colour in zip(kinds, colours):
        shape = sq._shape(rng, str(kind), str(colour), short, (0.0, 0.0), (0.0, 0.0), 0)
        for _ in range(200):
            x, y = float(rng.uniform(0, width - shape.box)), float(rng.uniform(0, height - shape.box))
            if not any(sq._overlaps((x, y, shape.box), p, margin=2) for p in placed):
                break
        placed.append((x, y, shape.box))
        shapes.append(sq.replace(shape, start=(x, y), end=(x, y)))
    background = int(rng.integers(*sq.BACKGROUND_RANGE, endpoint=True))
    noise, seed = float(rng.uniform(*sq.NOISE_SIGMA)), int(rng.integers(2**31))
    with_place = rng.random() < 0.5
    crf = int(rng.integers(*sq.CRF_RANGE, endpoint=True)) if compress else 0
    out = []
    for version in range(versions):
        turned = [sq.replace(s, kind=sq.SHAPES[(sq.SHAPES.index(s.kind) + version) % len(sq.SHAPES)]) for s in shapes]
        spec = sq.ClipSpec(id="still", split="train", task="still", width=width, height=height, fps=1, frames=1,
                           crf=0, background=background, noise_sigma=noise, supersample=2, seed=seed,
                           shapes=tuple(turned), question="", options=(), answer="", caption="", control=False)
        frame = next(synthrender.render_frames(spec))
        frame = h264(frame, crf) if compress else av.VideoFrame.from_ndarray(frame, format="rgb24")
        image = frame.reformat(
            width=size, height=size, format="rgb24", interpolation="BILINEAR").to_ndarray()
        parts = []
        for s, (x, y, box) in zip(turned, placed):
            part = f"a {s.colour} {s.kind}"
            parts.append(f"{part} {where(x + box / 2, y + box / 2, width, height)}" if with_place else part)
        centres = [((x + box / 2) / width, (y + box / 2) / height) for x, y, box in placed]
        truth = [(s.colour, s.kind, *c) for s, c in zip(turned, centres)]
        labels = patch_labels(turned, width, height, grid, cover) if grid else None
        out.append((image, " and ".join(parts), truth, labels))
    return out


def h264(image: np.ndarray, crf: int) -> av.VideoFrame:
    """The frame as the family's clips carry it: through H.264 (yuv420p, libx264 at `crf`) and back."""
    import io

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": str(crf)}
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")), *stream.encode()]:
            out.mux(packet)
    buffer.seek(0)
    with av.open(buffer, "r", format="h264") as source:
        return next(source.decode(video=0))


def render_pair(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, list]:
    """One still (`render_group` with one version): image, caption, truth."""
    return render_group(rng, size)[0][:3]


def still_caption(truth: list) -> str:
    """What the image-VLM says of a still: its shapes left to right, "a red circle and a blue square"."""
    return " and ".join(f"a {colour} {kind}" for colour, kind, *_ in sorted(truth, key=lambda t: t[2]))


def _render_part(job: tuple[int, int, int, int, bool, int, float]) -> tuple[np.ndarray, list[str], list, list]:
    n, size, seed, versions, compress, grid, cover = job
    rng = np.random.default_rng(seed)
    images, captions, truths, labels = [], [], [], []
    while len(images) < n:
        for image, caption, truth, label in render_group(rng, size, versions, compress, grid=grid, cover=cover)[: n - len(images)]:
            images.append(image)
            captions.append(caption)
            truths.append(truth)
            labels.append(label)
    return np.stack(images), captions, truths, labels


def render_pairs(n: int, size: int, seed: int, workers: int = 1, versions: int = 1, compress: bool = False,
                 grid: int = 0, cover: float = 0.3) -> tuple[np.ndarray, list[str], list, np.ndarray | None]:
    """n pairs (images (n, size, size, 3) uint8, captions, truths, and with `grid` > 0 each still's
    `patch_labels` (n, grid, grid), else None), in groups of `versions` consecutive stills of one scene
    (`render_group`); the same for any `workers`."""
    chunks = np.array_split(np.arange(n // versions), max(1, n // 500))
    parts = [(len(p) * versions, size, seed * 1000 + i, versions, compress, grid, cover) for i, p in enumerate(chunks)]
    if workers > 1 and len(parts) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            done = pool.map(_render_part, parts)
    else:
        done = [_render_part(p) for p in parts]
    labels = np.stack([x for d in done for x in d[3]]) if grid else None
    return (np.concatenate([d[0] for d in done]), [c for d in done for c in d[1]], [t for d in done for t in d[2]],
            labels)


def word_tokenizer():
    """A word-level fast tokenizer over the family's caption words (no hub needed)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = vocabulary()
    core = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=TEXT_LENGTH)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, TEXT_LENGTH) ids: words, </s>, then padding, as SigLIP pads to a fixed length."""
    return tokenizer([c + " </s>" for c in captions], padding="max_length", truncation=True,
                     max_length=TEXT_LENGTH, return_tensors="pt")["input_ids"]


def build_model(spec: SiglipTowerConfig, vocab_size: int, seed: int = 0):
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    config = SiglipConfig(
        vision_config=dict(hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                           num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                           image_size=spec.image_size, patch_size=spec.patch_size),
        text_config=dict(hidden_size=spec.text_hidden, intermediate_size=4 * spec.text_hidden,
                         num_hidden_layers=spec.text_layers, num_attention_heads=4, vocab_size=vocab_size,
                         max_position_embeddings=TEXT_LENGTH, pad_token_id=0, bos_token_id=2, eos_token_id=2,
                         projection_size=spec.hidden))
    model = SiglipModel(config)
    with torch.no_grad():  # the paper's init (t' = log 10, b = -10): few positives start near p = 0
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> (B, 3, S, S) in [-1, 1] (SigLIP's mean = std = 0.5), as the encoder does."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def keep_patches(rng: np.random.Generator, touched: np.ndarray, keep: int) -> torch.Tensor:
    """(B, keep) patch indices, sorted: every patch a shape touches (`touched` (B, P) bool; a random
    `keep` of them if more), the rest background patches at random (FLIP's masking, shapes kept)."""
    score = rng.random(touched.shape) + 2.0 * touched
    return torch.from_numpy(np.sort(np.argsort(-score, axis=1)[:, :keep], axis=1))


def kept_logits(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """SiglipModel's logits_per_image with each image's tower reading only its `kept` (B, K) patches, each
    with its own position embedding (the whole image when None: the model's own forward)."""
    if kept is None:
        return model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    vision = model.vision_model
    embed = vision.embeddings
    x = embed.patch_embedding(pixel_values.to(embed.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
    x = x + embed.position_embedding.weight[None]
    x = torch.gather(x, 1, kept.to(x.device)[..., None].expand(-1, -1, x.shape[-1]))
    image = vision.head(vision.post_layernorm(vision.encoder(inputs_embeds=x).last_hidden_state))
    text = model.get_text_features(input_ids=input_ids)
    text = getattr(text, "pooler_output", text)
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return (image @ text.T) * model.logit_scale.exp() + model.logit_bias


def sigmoid_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss. logits (B, B) image x text, positives (B, B) bool."""
    signs = positives.float() * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def same_caption(captions: list[str]) -> torch.Tensor:
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    index = torch.tensor([ids[c] for c in captions])
    return index[:, None] == index[None, :]


@torch.no_grad()
def zero_shot(model, tokenizer, images: np.ndarray, truths: list[tuple[str, str]], batch: int = 256) -> dict:
    """Colour and shape accuracy of one-shape frames: the best of the 15 "a <colour> <shape>" prompts."""
    prompts = [(c, s) for c in sq.COLOURS for s in sq.SHAPES]
    text = model.get_text_features(input_ids=tokenize(tokenizer, [f"a {c} {s}" for c, s in prompts]))
    text = getattr(text, "pooler_output", text)
    text = F.normalize(text, dim=-1)
    colour_hits = shape_hits = 0
    for start in range(0, len(images), batch):
        feats = model.get_image_features(pixel_values=pixels(images[start : start + batch]))
        feats = F.normalize(getattr(feats, "pooler_output", feats), dim=-1)
        best = (feats @ text.T).argmax(dim=1)
        for k, truth in zip(best.tolist(), truths[start : start + batch]):
            colour_hits += prompts[k][0] == truth[0]
            shape_hits += prompts[k][1] == truth[1]
    n = max(len(images), 1)
    return {"colour": round(colour_hits / n, 4), "shape": round(shape_hits / n, 4), "frames": len(images)}


def heldout_frames(jsonl: Path, size: int, limit: int = 200) -> tuple[np.ndarray, list]:
    """Middle frames of the direction clips of a `vidstorm synth-data` split (one shape each), decoded
    by the ingest decoder at the tower's size, and their (colour, shape)."""
    from pipeline.train.data import load_frames

    images, truths = [], []
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        if row.get("task") != "direction" or row.get("control"):
            continue
        words = row["caption"].split()  # "a red circle moves left"
        frames = load_frames(jsonl.parent / row["video"], size, 1.0, 8, 1, 1)
        images.append(frames[len(frames) // 2])
        truths.append((words[1], words[2]))
        if len(images) == limit:
            break
    if not images:
        raise ValueError(f"{jsonl}: no direction clips to take held-out frames from (a vidstorm synth-data JSONL)")
    return np.stack(images), truths


def pretrain(out: Path, spec: SiglipTowerConfig, steps: int = 1200, batch: int = 96, lr: float = 1e-3, seed: int = 0,
             heldout: Path | None = None, autocast: bool = False, log=print) -> dict:
    """Render pairs, train, check zero-shot on held-out frames, save a SigLIP folder at `out`."""
    from transformers import get_cosine_schedule_with_warmup

    started = time.monotonic()
    tokenizer = word_tokenizer()
    versions = spec.versions
    grid = spec.image_size // spec.patch_size if spec.dense > 0 or spec.keep > 0 else 0
    # keep: the patches a shape touches at all (cover 0.02) are the ones always kept
    images, captions, _, labels = render_pairs(spec.images, spec.image_size, seed, workers=2, versions=versions,
                                               compress=spec.compress, grid=grid, cover=0.3 if spec.dense > 0 else 0.02)
    touched = labels.reshape(len(labels), -1) > 0 if spec.keep > 0 else None
    masked_steps = int(round(steps * (1 - spec.full_steps))) if spec.keep > 0 else 0
    n_images = len(images)
    log(f"rendered {len(images)} image-caption pairs at {spec.image_size} px in {time.monotonic() - started:.0f} s")
    if heldout is not None:
        test_images, test_truths = heldout_frames(heldout, spec.image_size)
    else:  # one-shape stills of another seed
        test_images, _, test_truths, _ = render_pairs(400, spec.image_size, seed + 10_000)
        one = [i for i, t in enumerate(test_truths) if len(t) == 1]
        test_images, test_truths = test_images[one], [test_truths[i][0] for i in one]
    ids = tokenize(tokenizer, captions)
    model = build_model(spec, len(tokenizer), seed)
    model.train()
    # the dense head (dense > 0): each patch's (colour, kind) class from the vision tower's last hidden state,
    # the one the VLM reads; trained with the towers, not saved
    head = torch.nn.Linear(spec.hidden, 1 + len(sq.COLOURS) * len(sq.SHAPES)) if spec.dense > 0 else None
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    rng = np.random.default_rng(seed + 1)
    for step in range(1, steps + 1):
        groups = rng.choice(n_images // versions, max(1, batch // versions), replace=False)
        pick = (groups[:, None] * versions + np.arange(versions)).reshape(-1)  # whole groups: shape contrasts
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if head is not None:
                output = model(input_ids=ids[pick], pixel_values=pixels(images[pick]))
                logits, patches = output.logits_per_image, head(output.vision_model_output.last_hidden_state)
            else:  # keep > 0: only some patches of each image until the last full_steps
                kept = keep_patches(rng, touched[pick], spec.keep) if step <= masked_steps else None
                logits, patches = kept_logits(model, ids[pick], pixels(images[pick]), kept), None
        loss = sigmoid_loss(logits.float(), same_caption([captions[i] for i in pick]))
        if patches is not None:
            target = torch.from_numpy(labels[pick]).long().reshape(len(pick), -1)
            dense_loss = F.cross_entropy(patches.float().reshape(-1, patches.shape[-1]), target.reshape(-1))
            loss = loss + spec.dense * dense_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step == 1 or step % 100 == 0 or step == steps:
            model.eval()
            acc = zero_shot(model, tokenizer, test_images, test_truths)
            model.train()
            dense = ""
            if patches is not None:  # how many of the batch's shape patches the head names
                shapes = target > 0
                hit = (patches.argmax(-1) == target)[shapes].float().mean().item() if shapes.any() else 0.0
                dense = f" dense {dense_loss.item():.3f} (shape patches {hit:.2f})"
            seen = f" patches {spec.keep if step <= masked_steps else grid * grid}/{grid * grid}" if spec.keep > 0 else ""
            log(f"step {step}/{steps} loss {loss.item():.4f}{dense}{seen} zero-shot colour {acc['colour']} "
                f"shape {acc['shape']} ({time.monotonic() - started:.0f} s)")
    model.eval()
    result = zero_shot(model, tokenizer, test_images, test_truths)
    save(model, tokenizer, spec, out)
    result.update(steps=steps, seconds=round(time.monotonic() - started, 1))
    (out / "pretrain.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def save(model, tokenizer, spec: SiglipTowerConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "size": {"height": spec.image_size, "width": spec.image_size}}))
    marker = out / "VIDSTORM_RANDOM_WEIGHTS"
    marker.unlink(missing_ok=True)



def write_stills(out: Path, n: int, size: int, seed: int) -> dict:
    """Image-caption pairs for aligning the toy image-VLM: OUT/stills/<i>.png (at the tower's size, as decode
    resizes) and OUT/stills.jsonl {"image", "caption"}, captions naming the shapes left to right, no places:
    "a red circle and a blue square"."""
    from pipeline.synth import write_png

    rng = np.random.default_rng(seed)
    (out / "stills").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image, _, truth = render_pair(rng, size)
        name = f"stills/{i:06d}.png"
        write_png(out / name, image)
        rows.append({"image": name, "caption": still_caption(truth)})
    (out / "stills.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"stills": n, "size": size, "out": str(out)}
