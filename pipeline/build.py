"""Composition root: unpack the config tree into the model objects."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, fingerprint
from pipeline.models.checkpoint import build_connector
from pipeline.models.lora import LORA_NAME
from pipeline.models.pooling import TokenReducer
from pipeline.models.siglip import SiglipEncoder, resolve_device
from pipeline.models.summarizer import Summarizer
from pipeline.models.text_embed import TextEmbedder
from pipeline.processor import RollupSettings, StreamProcessor

RANDOM_MARKER = "VIDSTORM_RANDOM_WEIGHTS"


ALL_PARTS = ("encoder", "temporal", "llm")


def build_processor(cfg: Config, log=print, parts: tuple[str, ...] = ALL_PARTS) -> StreamProcessor:
    """The models for `parts`; a stage that runs only some of them loads only those.

    Geometry of a part that is not loaded is read from its config file (no weights).
    """
    from pipeline.models.siglip import vision_geometry
    from pipeline.models.summarizer import llm_hidden_size

    e, s = cfg.encoder, cfg.summarizer
    encoder = summarizer = embedder = None
    if "encoder" in parts:
        encoder = SiglipEncoder(e.model, e.device, e.dtype, e.batch_size, e.select_layer)
    if "llm" in parts:
        summarizer = Summarizer(s.model, s.device, s.dtype, s.max_new_tokens, s.system_prompt)
        if summarizer.load_adapters(cfg.temporal.checkpoint) and log:  # trained with these STORM parts
            log(f"LLM adapters: {cfg.temporal.checkpoint}/{LORA_NAME} (rank {summarizer.adapters['rank']}, "
                "captions only)")
        embedder = TextEmbedder(cfg.store.text_model)
    vision_dim = encoder.hidden_size if encoder else vision_geometry(e.model)[1]
    llm_hidden = summarizer.hidden_size if summarizer else llm_hidden_size(s.model)
    device = resolve_device(e.device)
    connector = build_connector(cfg.temporal, vision_dim, llm_hidden, device, log=log)
    reducer = TokenReducer(cfg.pooling.temporal_k, cfg.pooling.sample_s, cfg.pooling.spatial_p)
    r = cfg.summary
    rollup = RollupSettings(r.window_seconds, r.max_items_per_prompt, r.window_prompt, r.stream_prompt)
    return StreamProcessor(
        encoder, connector, reducer, summarizer, embedder, s.caption_prompt, rollup, fingerprint(cfg), device,
        static_threshold=e.static_threshold, output_dtype=e.output_dtype,
    )


def untrained_notice(cfg: Config) -> str | None:
    """One plain line when captions cannot mean anything yet (or only for a toy family), else None."""
    random_vision = (Path(cfg.encoder.model) / RANDOM_MARKER).is_file()
    if cfg.temporal.checkpoint:
        if not random_vision:
            return None
        return (f"note: the SigLIP in {cfg.encoder.model} is random (frozen) and the STORM parts in "
                f"{cfg.temporal.checkpoint} were trained on its features, so captions are meaningful only for "
                "footage like their training data (configs/toy.yaml: the synthetic shapes family)")
    parts = []
    if random_vision:
        parts.append(f"the SigLIP weights in {cfg.encoder.model} are random")
    parts.append("the STORM projector and Mamba layers are untrained")
    return (
        "note: " + " and ".join(parts) + ", so captions are not meaningful until a real checkpoint is "
        "configured (encoder.model = a SigLIP hub id or folder, temporal.checkpoint = trained STORM parts; "
        "see `vidstorm train`)"
    )
