"""The config's cross-field rules (load_config runs them): each failure is one line naming the keys."""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.config import (AUTOCAST, DEVICES, DTYPES, SCAN_IMPLS, TEMPORAL_MODES, TRAIN_STAGES, TRAINABLE_PARTS,
                             WIRE_DTYPES, Config, TemporalConfig, TrainConfig)
from pipeline.errors import ConfigError


def validate(cfg: Config, source: str = "config") -> None:
    """Cross-field rules; each failure is one line naming the keys."""
    pool, dec = cfg.pooling, cfg.decode

    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    for name, value in (("pooling.temporal_k", pool.temporal_k), ("pooling.sample_s", pool.sample_s)):
        if value < 1:
            fail(f"{name} must be >= 1, got {value}")
    if not 0 <= pool.sample_from < pool.sample_s:
        fail(f"pooling.sample_from must be in 0..pooling.sample_s-1 = {pool.sample_s - 1}, got {pool.sample_from}")
    if cfg.train.sample_s > 1 and pool.sample_from >= cfg.train.sample_s:
        fail(f"pooling.sample_from={pool.sample_from} is past train.sample_s={cfg.train.sample_s}: training would "
             f"keep another pooled frame than the test")
    if cfg.train.siglip.dense < 0:
        fail(f"train.siglip.dense must be >= 0 (0 = no dense head), got {cfg.train.siglip.dense}")
    patches = (cfg.train.siglip.image_size // max(cfg.train.siglip.patch_size, 1)) ** 2
    if not 0 <= cfg.train.siglip.keep <= patches:
        fail(f"train.siglip.keep must be 0 (all patches) to {patches} (the tower's patches), got {cfg.train.siglip.keep}")
    if cfg.train.siglip.keep > 0 and cfg.train.siglip.dense > 0:
        fail("train.siglip.keep (token dropping) and train.siglip.dense (the dense head) do not combine; set one")
    if not 0 <= cfg.train.siglip.full_steps <= 1:
        fail(f"train.siglip.full_steps must be a fraction 0-1 of the steps, got {cfg.train.siglip.full_steps}")
    if pool.spatial_p < 1 or math.isqrt(pool.spatial_p) ** 2 != pool.spatial_p:
        fail(f"pooling.spatial_p must be a square (1, 4, 9, ...), got {pool.spatial_p}")
    if cfg.temporal.downsample < 1:
        fail(f"temporal.downsample must be >= 1, got {cfg.temporal.downsample}")
    if cfg.temporal.adapter_dim < 0:
        fail(f"temporal.adapter_dim must be >= 0 (0 = no adapter), got {cfg.temporal.adapter_dim}")
    group = pool.frames_per_group
    if dec.chunk_frames < 1 or dec.chunk_frames % group:
        fail(
            f"decode.chunk_frames={dec.chunk_frames} must be a positive multiple of "
            f"pooling.temporal_k*pooling.sample_s = {group}"
        )
    if dec.live_chunk_frames < 0 or dec.live_chunk_frames % group:
        fail(f"decode.live_chunk_frames={dec.live_chunk_frames} must be 0 (= decode.chunk_frames) or a positive "
             f"multiple of pooling.temporal_k*pooling.sample_s = {group}")
    if dec.fps <= 0:
        fail(f"decode.fps must be > 0, got {dec.fps}")
    validate_watch(cfg.watch, fail)
    if dec.open_timeout <= 0 or dec.read_timeout <= 0:
        fail(f"decode.open_timeout and decode.read_timeout must be > 0, got {dec.open_timeout}, {dec.read_timeout}")
    if dec.thumbnail_width != 0 and not 16 <= dec.thumbnail_width <= 1024:
        fail(f"decode.thumbnail_width must be 0 (no thumbnails) or 16..1024 px, got {dec.thumbnail_width}")
    if dec.reconnect_outage < 0 or dec.reconnect_backoff_max <= 0:
        fail(f"decode.reconnect_outage must be >= 0 and decode.reconnect_backoff_max > 0, got "
             f"{dec.reconnect_outage}, {dec.reconnect_backoff_max}")
    if cfg.temporal.mode not in TEMPORAL_MODES:
        fail(f"temporal.mode must be one of {', '.join(TEMPORAL_MODES)}, got {cfg.temporal.mode!r}")
    if cfg.temporal.scan_impl not in SCAN_IMPLS:
        fail(f"temporal.scan_impl must be one of {', '.join(SCAN_IMPLS)}, got {cfg.temporal.scan_impl!r}")
    validate_spill(cfg.temporal, fail)
    for section in ("encoder", "summarizer"):
        part = getattr(cfg, section)
        if part.dtype not in DTYPES:
            fail(f"{section}.dtype must be one of {', '.join(DTYPES)}, got {part.dtype!r}")
        if part.device not in DEVICES and not part.device.startswith("cuda:"):
            fail(f"{section}.device must be one of {', '.join(DEVICES)} or cuda:N, got {part.device!r}")
    if cfg.summary.window_seconds <= 0:
        fail(f"summary.window_seconds must be > 0, got {cfg.summary.window_seconds}")
    if cfg.summary.max_items_per_prompt < 2:
        fail(f"summary.max_items_per_prompt must be >= 2, got {cfg.summary.max_items_per_prompt}")
    for name in ("decoders", "encoders", "temporal", "summarizers", "streams_per_decoder"):
        if getattr(cfg.workers, name) < 1:
            fail(f"workers.{name} must be >= 1, got {getattr(cfg.workers, name)}")
    for name in ("gpus_per_encoder", "gpus_per_summarizer", "gpus_per_temporal"):
        value = getattr(cfg.workers, name)
        if value < 0 and value != -1:
            fail(f"workers.{name} must be -1 (auto) or >= 0, got {value}")
    if cfg.workers.scheduling not in ("default", "spread"):
        fail(f"workers.scheduling must be default or spread, got {cfg.workers.scheduling!r}")
    if cfg.queue.max_in_flight < 1 or cfg.queue.max_deliveries < 1 or cfg.queue.reclaim_idle_s <= 0:
        fail("queue.max_in_flight and queue.max_deliveries must be >= 1 and queue.reclaim_idle_s > 0")
    if cfg.redis.url and not cfg.redis.url.startswith(("redis://", "rediss://", "unix://")):
        fail(f"redis.url must start with redis://, rediss:// or unix://, got {cfg.redis.url!r}")
    if cfg.scheduler.poll_s <= 0 or cfg.scheduler.lease_s <= 0 or cfg.scheduler.max_attempts < 1:
        fail("scheduler.poll_s and scheduler.lease_s must be > 0 and scheduler.max_attempts >= 1")
    if not 1 <= cfg.api.port <= 65535 or cfg.api.max_limit < 1 or cfg.api.refresh_s <= 0:
        fail("api.port must be 1-65535, api.max_limit >= 1 and api.refresh_s > 0")
    if cfg.api.media_url_ttl_s <= 0 or cfg.api.clip_max_seconds <= 0 or cfg.api.clip_cache_mb < 0:
        fail("api.media_url_ttl_s and api.clip_max_seconds must be > 0, api.clip_cache_mb >= 0")
    if cfg.encoder.batch_size < 1:
        fail(f"encoder.batch_size must be >= 1, got {cfg.encoder.batch_size}")
    if not math.isfinite(cfg.encoder.static_threshold) or cfg.encoder.static_threshold < 0:
        fail(f"encoder.static_threshold must be a number of grey levels >= 0 (0 = encode every frame), "
             f"got {cfg.encoder.static_threshold}")
    if cfg.encoder.output_dtype not in WIRE_DTYPES:
        fail(f"encoder.output_dtype must be one of {', '.join(WIRE_DTYPES)}, got {cfg.encoder.output_dtype!r}")
    validate_train(cfg.train, fail)


def validate_spill(t: TemporalConfig, fail) -> None:
    if not math.isfinite(t.offline_spill_mb) or t.offline_spill_mb < 0:
        fail(f"temporal.offline_spill_mb must be a number of megabytes >= 0 (0 = keep nothing in memory), "
             f"got {t.offline_spill_mb}")
    folder = t.offline_spill_dir
    if folder and (not Path(folder).is_absolute() or any(c in folder for c in "\0\n\r")):
        fail(f"temporal.offline_spill_dir must be an absolute folder path (or empty for <data dir>/spill), "
             f"got {folder!r}")


def validate_train(t: TrainConfig, fail) -> None:
    if t.stage not in TRAIN_STAGES:
        fail(f"train.stage must be one of {', '.join(TRAIN_STAGES)}, got {t.stage!r}")
    bad = [p for p in t.trainable if p not in TRAINABLE_PARTS]
    if bad or not t.trainable:
        fail(f"train.trainable must list some of {', '.join(TRAINABLE_PARTS)}, got {list(t.trainable)}")
    if t.warmup_readout not in ("mean", "attention"):
        fail(f"train.warmup_readout must be mean or attention, got {t.warmup_readout!r}")
    if t.autocast not in AUTOCAST:
        fail(f"train.autocast must be one of {', '.join(AUTOCAST)}, got {t.autocast!r}")
    for name in ("steps", "batch_size", "eval_every", "save_every", "sample_s", "max_chunks", "num_workers"):
        if getattr(t, name) < 1:
            fail(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if "lora" in t.trainable and "llm" in t.trainable:
        fail("train.trainable: choose lora (adapters) or llm (every weight), not both")
    if t.lora_rank < 1 or t.lora_alpha <= 0 or t.lr_lora <= 0:
        fail("train.lora_rank must be >= 1, train.lora_alpha and train.lr_lora > 0")
    if t.lr <= 0 or t.lr_llm < 0 or not 0 <= t.min_lr_ratio <= 1 or t.warmup_steps < 0 or t.grad_clip < 0:
        fail("train.lr must be > 0, train.lr_llm >= 0, train.min_lr_ratio in [0, 1], warmup_steps and grad_clip >= 0")
    if "<video>" not in t.qa_prompt or "{question}" not in t.qa_prompt:
        fail("train.qa_prompt must contain <video> and {question}")
    g = t.siglip
    if min(g.image_size, g.patch_size, g.hidden, g.layers, g.heads, g.intermediate, g.text_hidden, g.text_layers,
           g.images, g.versions) < 1 or g.image_size % g.patch_size or g.hidden % g.heads or g.text_hidden % 4:
        fail("train.siglip: sizes must be >= 1, image_size a multiple of patch_size, hidden of heads, "
             "text_hidden of 4")
    if t.stage == "siglip" and not g.versions <= t.batch_size <= g.images:
        fail(f"train.stage=siglip: need train.siglip.versions <= train.batch_size <= train.siglip.images, got "
             f"{g.versions}, {t.batch_size}, {g.images}")


def validate_watch(watch, fail) -> None:
    """watch.*: times and attempts that make sense, a broker URL we can use."""
    import urllib.parse

    from pipeline.secrets import mask_secrets

    for name in ("timeout_s", "retry_base_s", "retry_max_s", "media_url_ttl_s", "reclaim_idle_s"):
        if getattr(watch, name) <= 0:
            fail(f"watch.{name} must be > 0, got {getattr(watch, name)}")
    if watch.drain_s < 0:
        fail(f"watch.drain_s must be >= 0, got {watch.drain_s}")
    if watch.timeout_s * 4 >= watch.reclaim_idle_s:  # a notifier takes 4 entries at a time (notify.BATCH)
        fail(f"watch.reclaim_idle_s ({watch.reclaim_idle_s}) must be more than 4 x watch.timeout_s ({watch.timeout_s}): "
             f"else another notifier takes over deliveries still in hand")
    if watch.max_attempts < 1:
        fail(f"watch.max_attempts must be >= 1, got {watch.max_attempts}")
    try:
        parts = urllib.parse.urlsplit(watch.mqtt_url)
        parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        fail(f"watch.mqtt_url {mask_secrets(watch.mqtt_url)[:80]!r} must be mqtt://[user:pass@]host[:port] or mqtts://")
    if watch.public_url and not watch.public_url.startswith(("http://", "https://")):
        fail(f"watch.public_url {mask_secrets(watch.public_url)[:80]!r} must start with http:// or https://")
