"""Composition root: unpack the config tree into the model objects."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, fingerprint
from pipeline.models.checkpoint import build_connector
from pipeline.models.pooling import TokenReducer
from pipeline.models.siglip import SiglipEncoder, resolve_device
from pipeline.models.summarizer import Summarizer
from pipeline.models.text_embed import TextEmbedder
from pipeline.processor import RollupSettings, StreamProcessor

RANDOM_MARKER = "VIDSTORM_RANDOM_WEIGHTS"


def build_processor(cfg: Config, log=print) -> StreamProcessor:
    encoder = SiglipEncoder(
        cfg.encoder.model,
        device=cfg.encoder.device,
        dtype=cfg.encoder.dtype,
        batch_size=cfg.encoder.batch_size,
        select_layer=cfg.encoder.select_layer,
    )
    s = cfg.summarizer
    summarizer = Summarizer(s.model, s.device, s.dtype, s.max_new_tokens, s.system_prompt)
    device = resolve_device(cfg.encoder.device)
    connector = build_connector(cfg.temporal, encoder.hidden_size, summarizer.hidden_size, device, log=log)
    reducer = TokenReducer(cfg.pooling.temporal_k, cfg.pooling.sample_s, cfg.pooling.spatial_p)
    r = cfg.summary
    rollup = RollupSettings(r.window_seconds, r.max_items_per_prompt, r.window_prompt, r.stream_prompt)
    return StreamProcessor(
        encoder, connector, reducer, summarizer, TextEmbedder(cfg.store.text_model),
        s.caption_prompt, rollup, fingerprint(cfg), device,
    )


def untrained_notice(cfg: Config) -> str | None:
    """One plain line when captions cannot mean anything yet, else None."""
    random_vision = (Path(cfg.encoder.model) / RANDOM_MARKER).is_file()
    if not random_vision and cfg.temporal.checkpoint:
        return None
    parts = []
    if random_vision:
        parts.append(f"the SigLIP weights in {cfg.encoder.model} are random")
    if not cfg.temporal.checkpoint:
        parts.append("the STORM projector and Mamba layers are untrained")
    return (
        "note: " + " and ".join(parts) + ", so captions are not meaningful until a real checkpoint is "
        "configured (encoder.model = a SigLIP hub id or folder, temporal.checkpoint = trained STORM parts)"
    )
