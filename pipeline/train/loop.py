"""`vidstorm train`: one loop for the STORM parts, local or inside a Ray Train worker.

    decode -> SigLIP (frozen, cached) -> pixel shuffle + Linear -> Mamba layers -> pooling
      -> projector -> LLM (frozen unless sft trains it); loss on answer tokens only

The loop knows nothing of Ray: a `Worker` tells it its rank, how to average gradients
across workers, where to resume from and how to report a checkpoint. `actors/runtime/train.py`
fills that in from Ray Train; `--local` uses the defaults (one process).

A checkpoint folder is what ingest loads (`temporal.checkpoint`: model.safetensors +
storm_config.json) plus optimizer.pt and train_state.json for `--resume`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipeline.config import Config
from pipeline.errors import VidstormError
from pipeline.models.checkpoint import BASE_PREFIX, save_storm
from pipeline.models.storm import StormConnector
from pipeline.models.lora import LORA_NAME, lora_layers, lora_parameters, save_lora
from pipeline.models.pooling import TokenReducer
from pipeline.train.data import Dataset, FeatureCache, Sample, read_jsonl
from pipeline.train.evaluate import evaluate
from pipeline.train.model import VisualLM
from pipeline.train.warmup import HEAD_NAME, ChoiceHead, WarmupObjective, caption_vocabulary, words_of

STATE_NAME = "train_state.json"
OPTIMIZER_NAME = "optimizer.pt"


class TrainError(VidstormError):
    """Training cannot start or continue (no data, bad checkpoint, ...)."""


@dataclass
class Worker:
    """What a distributed wrapper tells the loop. The defaults are one local process."""

    rank: int = 0
    world: int = 1
    resume_from: Path | None = None  # a checkpoint folder to continue from
    report: Callable[[dict, Path | None], None] = lambda metrics, folder: None
    all_reduce: Callable[[torch.Tensor], None] | None = None  # sums a tensor across workers, in place
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class Models:
    encoder: object  # frozen SigLIP
    connector: StormConnector  # the trainable STORM parts
    vlm: VisualLM  # connector + training-time reducer + LLM
    eval_vlm: VisualLM  # same modules, test-time reducer (pooling.sample_s)
    cache: FeatureCache
    warmup: WarmupObjective | None = None  # stage warmup: the choice head the temporal encoder trains with


def build_models(cfg: Config, device: torch.device, log=print, training: bool = True,
                 grids: dict | None = None) -> Models:
    """Training starts from train.init_from (or a seeded init); eval loads temporal.checkpoint."""
    from dataclasses import replace

    from pipeline.build import build_encoder, build_storm
    from pipeline.models.summarizer import Summarizer

    e, s, t, p = cfg.encoder, cfg.summarizer, cfg.train, cfg.pooling
    dev = device.type
    encoder = build_encoder(replace(e, device=dev), log)
    llm = Summarizer(s.model, dev, "fp32", s.max_new_tokens, s.system_prompt)
    temporal = replace(cfg.temporal, checkpoint="") if training else cfg.temporal
    connector = build_storm(replace(cfg, temporal=temporal), encoder.hidden_size, llm.hidden_size, device, log=log,
                            encoder_dtype=encoder.dtype)
    from pipeline.models.vlm import release_vlms

    release_vlms()  # the parts hold their modules of a VLM base
    if training and t.init_from:
        init_from(connector, Path(t.init_from), log)
    connector.train()
    for name in ("temporal", "projector"):
        trains = {"warmup": name == "temporal", "align": True}.get(t.stage, name in t.trainable)
        # on a VLM base the projector is the VLM's own connector (saved with the checkpoint once trained)
        part = connector.base_connector if connector.is_vlm and name == "projector" else getattr(connector, name)
        part.requires_grad_(trains)
        if connector.is_vlm and name == "projector" and trains:
            connector.base_trained = True
    if "llm" in t.trainable and t.stage == "sft":
        llm.model.requires_grad_(True)
    if training and "lora" in t.trainable and t.stage == "sft":  # adapters: the init_from run's, or fresh
        if not llm.load_adapters(t.init_from, trainable=True):
            llm.add_adapters(t.lora_rank, t.lora_alpha, seed=t.seed)
    elif not training:
        llm.load_adapters(cfg.temporal.checkpoint)  # eval reads the model ingest would run
    use_bf16 = t.autocast == "bf16" or (t.autocast == "auto" and dev == "cuda")
    if training and use_bf16 and llm.model.dtype == torch.float32:  # the same products, without a cast a call
        from pipeline.models.dtype import frozen_linears_to_bf16

        frozen_linears_to_bf16(llm.model)
    if training and dev == "cpu":  # sequences of ~80 tokens: eager attention's backward beats SDPA's CPU
        llm.model.set_attn_implementation("eager")  # flash kernel (~0.4 s of a 3.9 s connector step; README)
    train_reducer = TokenReducer.from_config(p, sample_s=t.sample_s)
    test_reducer = TokenReducer.from_config(p)
    chunk = cfg.decode.chunk_frames
    group = math.lcm(train_reducer.frames_per_group, test_reducer.frames_per_group)
    if chunk % group:
        raise TrainError(f"decode.chunk_frames={chunk} must be a multiple of {group} "
                         f"(pooling.temporal_k x train.sample_s and x pooling.sample_s)")
    key = ""
    if t.grid_cache:  # what a cached grid depends on: the encoder's weights and the decoding
        from pipeline.config import content_digest
        from pipeline.reuse import version as reuse_version

        key = json.dumps([content_digest(e.model), e.dtype, e.select_layer, cfg.decode.fps, chunk, group,
                          t.max_chunks] + ([e.static_threshold, reuse_version()] if e.static_threshold else []))
    cache = FeatureCache(encoder, cfg.decode.fps, chunk, group, t.max_chunks, grids,
                         disk=Path(t.grid_cache) if t.grid_cache else None, key=key,
                         static_threshold=e.static_threshold)
    fps = cfg.decode.fps
    vlm = VisualLM(connector, train_reducer, llm, chunk, use_bf16, fps)
    return Models(encoder, connector, vlm, VisualLM(connector, test_reducer, llm, chunk, use_bf16, fps), cache)


def init_from(connector: StormConnector, folder: Path, log=print) -> None:
    """Start from another run's STORM parts: every tensor whose name and shape fit.

    A checkpoint trained with another LLM (e.g. a small LM trained alongside, to pretrain the
    temporal encoder cheaply) gives its temporal encoder; the projector into this LLM starts fresh.
    """
    from safetensors.torch import load_file

    weights_file = folder / "model.safetensors"
    if not weights_file.is_file():
        raise TrainError(f"train.init_from={folder}: no model.safetensors there")
    own = connector.state_dict()
    found = load_file(str(weights_file))
    fits = {k: v for k, v in found.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("temporal.") for k in fits):
        raise TrainError(f"train.init_from={folder}: its temporal encoder does not fit this config")
    connector.load_state_dict(fits, strict=False)
    connector.base_trained |= any(k.startswith(BASE_PREFIX) for k in fits)  # a trained VLM connector travels on
    fresh = sorted({k.split(".")[0] for k in own if k not in fits})
    if log:
        log(f"initialised {len(fits)} of {len(own)} tensors from {folder}"
            + (f" ({', '.join(fresh)} fresh: shapes differ)" if fresh else ""))


def load_data(cfg: Config, cache: FeatureCache, log=print) -> tuple[Dataset, list[Sample]]:
    """Training samples (media encoded and cached) and the validation subset."""
    from pipeline.build import caption_prompt

    t, prompt = cfg.train, caption_prompt(cfg)
    if not t.data:
        raise TrainError("train.data is empty: give one or more JSONL files (train.data=[a.jsonl,b.jsonl])")
    data = read_jsonl(list(t.data), prompt, t.qa_prompt)
    if t.tasks:
        data = Dataset([x for x in data.samples if x.task in t.tasks], data.problems, data.lines)
        if not data.samples:
            raise TrainError(f"no samples of train.tasks={list(t.tasks)} in {', '.join(t.data)}")
    if t.stage == "warmup":  # questions through the choice head, captions through its word head
        vocabulary = set(caption_vocabulary([x.answer for x in data.samples if not x.is_choice]))
        data = Dataset([x for x in data.samples if x.is_choice or words_of(x.answer) & vocabulary],
                       data.problems, data.lines)
        if not data.samples:
            raise TrainError(f"train.stage=warmup needs multiple-choice samples (question, options, answer) "
                             f"or captions with words seen twice in {', '.join(t.data)}; it found none")
    data = cache.usable(data, log=log)
    for problem in data.problems:
        log(f"skipped: {problem}")
    if not data.samples:
        raise TrainError(f"no usable training samples in {', '.join(t.data)} ({len(data.problems)} problems)")
    val: list[Sample] = []
    if t.val_data:
        raw = read_jsonl(t.val_data, prompt, t.qa_prompt)
        choice = [x for x in raw.samples if x.is_choice] or raw.samples
        if t.stage == "warmup":  # the head's validation reads captions too
            choice = raw.samples
        val = cache.usable(Dataset(choice[: t.val_samples or None], raw.problems)).samples
    return data, val


def parameter_groups(models: Models, t) -> list[dict]:
    """AdamW groups: weight decay on matrices only; the LLM (sft) at its own learning rate."""
    decay, no_decay = [], []
    for name, param in models.connector.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 and "A_log" not in name else no_decay).append(param)
    if models.warmup is not None:
        for name, param in models.warmup.head.named_parameters():
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": t.weight_decay, "lr": t.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": t.lr}]
    adapters = lora_parameters(models.vlm.llm.model)
    if adapters:
        groups.append({"params": adapters, "weight_decay": 0.0, "lr": t.lr_lora})
    seen = {id(p) for p in adapters}
    llm = [p for p in models.vlm.llm.model.parameters() if p.requires_grad and id(p) not in seen]
    if llm:
        groups.append({"params": llm, "weight_decay": t.weight_decay, "lr": t.lr_llm})
    return [g for g in groups if g["params"]]


def lr_factor(step: int, t) -> float:
    """Linear warmup, then cosine from 1 down to min_lr_ratio at the last step."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(step: int, rank: int, world: int, batch: int, n: int, seed: int) -> list[int]:
    """The samples worker `rank` trains on at `step`: epochs of seeded permutations, each worker
    a disjoint slice. A function of the step alone, so a resumed run sees the same batches."""
    out, perms = [], {}
    for j in range(batch):
        position = (step * world + rank) * batch + j
        epoch = position // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.append(int(perms[epoch][position % n]))
    return out


def save_checkpoint(folder: Path, models: Models, optimizer, step: int, metrics: dict, cfg: Config) -> Path:
    """Weights ingest loads, plus what --resume needs. Each file is replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging-{os.getpid()}"
    save_storm(models.connector, staging)
    torch.save(optimizer.state_dict(), staging / OPTIMIZER_NAME)
    state = {"step": step, "metrics": metrics, "stage": cfg.train.stage, "encoder": cfg.encoder.model,
             "llm": cfg.summarizer.model, "mode": cfg.temporal.mode, "data": list(cfg.train.data),
             # what the module's tokens were pooled by (ingest says so when its config pools otherwise)
             "pooling": {"temporal_k": cfg.pooling.temporal_k, "spatial_p": cfg.pooling.spatial_p,
                         "train_sample_s": cfg.train.sample_s}}
    (staging / STATE_NAME).write_text(json.dumps(state, indent=1))
    if models.warmup is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in models.warmup.head.state_dict().items()},
                  str(staging / HEAD_NAME), metadata={"options": json.dumps(list(models.warmup.head.options)),
                                                      "words": json.dumps(list(models.warmup.head.words)),
                                                      "readout": models.warmup.head.readout})
    if lora_layers(models.vlm.llm.model):
        save_lora(models.vlm.llm.model, staging, **models.vlm.llm.adapters)
    if "llm" in cfg.train.trainable and cfg.train.stage == "sft":
        models.vlm.llm.model.save_pretrained(staging / "llm")
        models.vlm.llm.tokenizer.save_pretrained(staging / "llm")
    for item in staging.iterdir():
        target = folder / item.name
        if item.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(item, target)
    staging.rmdir()
    return folder


def load_checkpoint(folder: Path, models: Models, optimizer) -> tuple[int, dict]:
    """Weights and optimizer state of a checkpoint folder -> (step, metrics)."""
    from safetensors.torch import load_file

    state_file = folder / STATE_NAME
    if not state_file.is_file():
        raise TrainError(f"{folder} holds no {STATE_NAME}: nothing to resume")
    state = json.loads(state_file.read_text())
    weights = load_file(str(folder / "model.safetensors"))
    try:
        loaded = models.connector.load_state_dict(weights, strict=False)  # a VLM's connector: only if trained
        wrong = [k for k in loaded.missing_keys if not k.startswith(BASE_PREFIX)] + loaded.unexpected_keys
        if wrong:
            raise KeyError(f"{len(wrong)} tensors do not fit (first: {wrong[0]})")
        if lora_layers(models.vlm.llm.model):
            models.vlm.llm.model.load_state_dict(load_file(str(folder / LORA_NAME)), strict=False)
        if models.warmup is not None:
            from safetensors import safe_open

            with safe_open(str(folder / HEAD_NAME), "pt") as f:
                meta = f.metadata() or {}
            for what in ("options", "words"):
                saved, ours = json.loads(meta.get(what, "[]")), list(getattr(models.warmup.head, what))
                if saved != ours:
                    raise ValueError(f"its choice head knows {len(saved)} {what}, this data has {len(ours)}")
            if meta.get("readout", "mean") != models.warmup.head.readout:
                raise ValueError(f"its choice head reads the tokens by {meta.get('readout', 'mean')}, "
                                 f"train.warmup_readout is {models.warmup.head.readout}")
            models.warmup.head.load_state_dict(load_file(str(folder / HEAD_NAME)))
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER_NAME, weights_only=True))
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise TrainError(f"cannot resume from {folder}: it does not fit this model ({str(err)[:160]})") from None
    return int(state["step"]), state.get("metrics", {})


def train(cfg: Config, worker: Worker | None = None, log=print, should_stop=lambda: False,
          on_step=lambda loss: None, models: Models | None = None) -> dict:
    """Train the configured parts for train.steps steps; returns the last metrics.

    `models` (from build_models) may be passed in to share cached grids or inspect them after."""
    worker = worker or Worker()
    t = cfg.train
    torch.manual_seed(t.seed)
    lead = worker.rank == 0
    out = Path(t.out) if t.out else None
    if out is None:
        raise TrainError("train.out is empty: name the checkpoint folder (train.out=DIR)")

    # 1. models: SigLIP and the LLM frozen, the STORM parts trainable
    models = models or build_models(cfg, worker.device, log=log if lead else None)
    # 2. data: JSONL -> samples; each clip decoded and SigLIP-encoded once
    data, val = load_data(cfg, models.cache, log=log if lead else (lambda m: None))
    if lead:
        log(f"train: {len(data.samples)} samples from {data.lines} lines ({len(data.problems)} skipped), "
            f"{len(val)} validation samples, {worker.world} worker(s)")
    if t.stage == "warmup":  # the choice head knows the options of this data
        torch.manual_seed(t.seed)
        options = sorted({o for x in data.samples for o in x.options})
        words = caption_vocabulary([x.answer for x in data.samples if not x.is_choice])
        # on a VLM base the head reads what the LLM can: one Linear on the mean of RMS-normalised tokens
        head = ChoiceHead(models.connector.spec.d_model, options, words=words, linear=models.connector.is_vlm,
                          readout=t.warmup_readout)
        models.warmup = WarmupObjective(models.vlm, head.to(worker.device))
    # 3. optimizer and schedule; resume where a run stopped
    optimizer = torch.optim.AdamW(parameter_groups(models, t), betas=(0.9, 0.95))
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    step, metrics = 0, {}
    if not t.init_from and not models.connector.is_vlm:  # a fresh model: standardise the encoder's features with this data's statistics
        sample = [data.samples[i].media for i in range(0, len(data.samples), max(1, len(data.samples) // 256))]
        models.connector.temporal.set_input_stats(torch.cat([models.cache.get(m) for m in sample]))
    if worker.resume_from is not None:
        step, metrics = load_checkpoint(worker.resume_from, models, optimizer)
        if lead:
            log(f"resumed from {worker.resume_from} at step {step}")
    metrics.update(resumed_from=step, samples=len(data.samples), skipped=len(data.problems))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    progress = _progress(t.steps, step, lead)
    started, start_step = time.time(), step

    # 4. the loop
    while step < t.steps:
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step, t)
        idx = batch_indices(step, worker.rank, worker.world, t.batch_size, len(data.samples), t.seed)
        batch = [data.samples[i] for i in idx]
        grids = [models.cache.get(x.media) for x in batch]
        if models.warmup is not None:
            loss = models.warmup.loss(grids, batch)
        else:
            loss = models.vlm.loss(grids, [x.prompt for x in batch], [x.answer for x in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if worker.all_reduce is not None:  # average gradients (and the loss, for the log) over workers
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                worker.all_reduce(p.grad)
                p.grad /= worker.world
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        step += 1
        loss_value = loss.item()
        on_step(loss_value)
        metrics.update(step=step, loss=round(loss_value, 4), lr=optimizer.param_groups[0]["lr"])
        progress.update(1)
        progress.set_postfix(loss=f"{loss_value:.3f}")
        if step % t.eval_every == 0 or step == t.steps:
            metrics.update(_validate(models, val))
            if lead and val:
                progress.write(f"step {step}: loss {metrics['loss']:.3f}, validation "
                               + ", ".join(f"{k} {v}" for k, v in metrics.items() if k.startswith("val_")))
        stopping = should_stop()
        if step % t.save_every == 0 or step == t.steps or stopping:  # the same steps on every worker
            checkpoint = save_checkpoint(out, models, optimizer, step, dict(metrics), cfg) if lead else None
            worker.report(dict(metrics), checkpoint)
        if stopping:
            progress.close()
            log(f"stopped at step {step}; checkpoint in {out}; continue with --resume")
            metrics["stopped"] = True
            return metrics
    progress.close()
    metrics["steps_per_s"] = round((step - start_step) / max(time.time() - started, 1e-9), 3)
    if lead:
        log(f"trained {step} steps; checkpoint in {out} (set temporal.checkpoint={out})")
    return metrics


def _validate(models: Models, val: list[Sample]) -> dict:
    if not val:
        return {}
    models.connector.eval()
    try:
        if models.warmup is not None:  # the head's accuracy: the LLM cannot read a warm-up checkpoint yet
            result = models.warmup.accuracy(models.cache, val)
            found = {"val_accuracy": result["accuracy"]}
            if "caption_words" in result:
                found["val_caption_words"] = result["caption_words"]
            found.update({f"val_{task}": acc for task, acc in result["per_task"].items()})
            return found
        if val[0].is_choice:
            result = evaluate(models.eval_vlm, models.cache, val)
            found = {"val_accuracy": result["accuracy"]}
            found.update({f"val_{task}": acc for task, acc in result["per_task"].items()})
            return found
        with torch.no_grad():
            grids = [models.cache.get(x.media) for x in val]
            loss = models.eval_vlm.loss(grids, [x.prompt for x in val], [x.answer for x in val])
        return {"val_loss": round(float(loss), 4)}
    finally:
        models.connector.train()


def _progress(total: int, done: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, disable=not enabled, file=sys.stderr, unit="step",
                dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 15.0)
