"""Composition root: unpack the config tree into the model objects."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config, content_digest, fingerprint
from pipeline.errors import ConfigError
from pipeline.models.checkpoint import build_connector
from pipeline.models.lora import LORA_NAME
from pipeline.models.pooling import TokenReducer
from pipeline.models.siglip import SiglipEncoder, resolve_device
from pipeline.models.summarizer import Summarizer
from pipeline.models.text_embed import TextEmbedder
from pipeline.models.vlm import release_vlms
from pipeline.processor import RollupSettings, StreamProcessor

RANDOM_MARKER = "VIDSTORM_RANDOM_WEIGHTS"


ALL_PARTS = ("encoder", "temporal", "llm")


def vlm_base(cfg: Config) -> str:
    """The pretrained VLM the STORM module sits on (models/vlm.py), or "" for a plain SigLIP + LLM.

    A VLM's tower, connector and LLM belong together: encoder.model and summarizer.model name it both."""
    from pipeline.models.vlm import read_config, vlm_family

    e, s = cfg.encoder.model, cfg.summarizer.model
    # one checkpoint named on both sides is a VLM's signature: a hub id not yet cached is fetched (its
    # config only) here, so an unreachable one is one clear line rather than a SigLIP loader's complaint
    if not vlm_family(e, fetch=e == s and s != "smollm2"):
        kind = read_config(e).get("model_type", "")
        if e == s and "vision_config" in read_config(e):
            raise ConfigError(f"{e} is a {kind} checkpoint; the VLM bases are the SmolVLM family (smolvlm, idefics3) "
                              "and LLaVA-OneVision (llava_onevision)")
        if s != "smollm2" and vlm_family(s):
            raise ConfigError(f"summarizer.model={s} is a VLM: set encoder.model to the same checkpoint")
        return ""
    if s != e:
        raise ConfigError(f"encoder.model={e} is a VLM: set summarizer.model to the same checkpoint (got {s})")
    return e


def caption_prompt(cfg: Config) -> str:
    """What a chunk's caption is asked with: a VLM gets summarizer.prompt in its own chat layout; the
    <video>-splice LLMs summarizer.caption_prompt (what the mlp-form checkpoints were trained on)."""
    return cfg.summarizer.prompt if vlm_base(cfg) else cfg.summarizer.caption_prompt


def build_encoder(e, log=print):
    """The frame encoder encoder.model names: a VLM's own tower, else a SigLIP vision model."""
    from pipeline.models.vlm import VlmVision, vlm_family

    if vlm_family(e.model):
        if log and e.select_layer != -2:
            log(f"encoder.select_layer={e.select_layer} is ignored: {e.model} feeds its connector its own layer")
        return VlmVision(e.model, e.device, e.dtype, e.batch_size)
    return SiglipEncoder(e.model, e.device, e.dtype, e.batch_size, e.select_layer)


def build_storm(cfg: Config, vision_dim: int, llm_hidden: int, device, log=print, with_base: bool = True,
                encoder_dtype=None):
    """The STORM module: on a VLM base (with the VLM's connector where frames are projected), else mlp."""
    from pipeline.models.vlm import VlmConnector

    base = vlm_base(cfg)
    base_connector = None
    if base and with_base:
        from pipeline.models.siglip import resolve_dtype

        base_connector = VlmConnector.from_vlm(base, encoder_dtype or resolve_dtype(cfg.encoder.dtype, device))
    return build_connector(cfg.temporal, vision_dim, llm_hidden, device, log=log, base=base,
                           base_connector=base_connector)


def build_processor(cfg: Config, log=print, parts: tuple[str, ...] = ALL_PARTS) -> StreamProcessor:
    """The models for `parts`; a stage that runs only some of them loads only those.

    Geometry of a part that is not loaded is read from its config file (no weights).
    """
    from pipeline.models.siglip import vision_geometry
    from pipeline.models.summarizer import llm_hidden_size

    e, s = cfg.encoder, cfg.summarizer
    encoder = summarizer = embedder = None
    if "encoder" in parts:
        encoder = build_encoder(e, log)
    if "llm" in parts:
        summarizer = Summarizer(s.model, s.device, s.dtype, s.max_new_tokens, s.system_prompt)
        if summarizer.load_adapters(cfg.temporal.checkpoint) and log:  # trained with these STORM parts
            log(f"LLM adapters: {cfg.temporal.checkpoint}/{LORA_NAME} (rank {summarizer.adapters['rank']}, "
                "captions only)")
        embedder = TextEmbedder(cfg.store.text_model)
    vision_dim = encoder.hidden_size if encoder else vision_geometry(e.model)[1]
    llm_hidden = summarizer.hidden_size if summarizer else llm_hidden_size(s.model)
    device = resolve_device(e.device)
    connector = build_storm(cfg, vision_dim, llm_hidden, device, log=log, with_base="encoder" in parts,
                            encoder_dtype=encoder.dtype if encoder else None)
    release_vlms()  # each part holds its own modules of a VLM base; the rest of the checkpoint is freed
    reducer = TokenReducer.from_config(cfg.pooling)
    r = cfg.summary
    rollup = RollupSettings(r.window_seconds, r.max_items_per_prompt, r.window_prompt, r.stream_prompt)
    return StreamProcessor(
        encoder, connector, reducer, summarizer, embedder, caption_prompt(cfg), rollup, fingerprint(cfg), device,
        static_threshold=e.static_threshold, output_dtype=e.output_dtype, provenance=provenance(cfg),
    )


def pooling_notice(cfg: Config) -> str | None:
    """One line when temporal.checkpoint was trained with other pooling than this config's (its
    train_state.json says; test-time sampling is training-free and not compared)."""
    import json
    from pathlib import Path

    state = Path(cfg.temporal.checkpoint) / "train_state.json" if cfg.temporal.checkpoint else None
    try:
        trained = json.loads(state.read_text()).get("pooling") if state and state.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(trained, dict):
        return None
    now = {"temporal_k": cfg.pooling.temporal_k, "spatial_p": cfg.pooling.spatial_p}
    differ = {k: v for k, v in now.items() if k in trained and trained[k] != v}
    if not differ:
        return None
    said = " ".join(f"pooling.{k}={trained[k]}" for k in now if k in trained)
    return (f"note: {cfg.temporal.checkpoint} was trained with {said}; this config pools with "
            + " ".join(f"pooling.{k}={v}" for k, v in now.items()) + ": captions may be worse")


def untrained_notice(cfg: Config) -> str | None:
    """A plain line when captions cannot mean anything yet (or only for a toy family), and one when the
    checkpoint was trained with other pooling; else None."""
    lines = [line for line in (_untrained_line(cfg), pooling_notice(cfg)) if line]
    return "\n".join(lines) or None


def _untrained_line(cfg: Config) -> str | None:
    base = vlm_base(cfg)
    if base:  # a pretrained VLM's captions mean something from the start (the module starts as the identity)
        return (f"note: the VLM weights in {base} are random, so captions are not meaningful; use a pretrained "
                "VLM (configs/smolvlm2.yaml, configs/llava-onevision.yaml)") if is_random(base) else None
    random_vision = is_random(cfg.encoder.model)
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


def is_random(model: str) -> bool:
    """A local model folder saved with random weights (build_random_siglip, build_random_vlm mark them)."""
    return (Path(model) / RANDOM_MARKER).is_file()


def provenance(cfg: Config) -> tuple[str, str]:
    """(model, untrained) every segment records: what writes the captions, e.g.
    "smollm2 + google/siglip-base-patch16-224 + storm:ckpt/storm@1a2b3c4d" (the checkpoint's content
    digest, so a retrained folder reads as another model), and its random or untrained parts,
    comma-separated ("" when every part is pretrained or trained)."""
    checkpoint = cfg.temporal.checkpoint
    digest = content_digest(checkpoint)[:8] if checkpoint else ""
    base = vlm_base(cfg)
    if base:  # one checkpoint gives tower, connector and LLM; a fresh module is the identity (the VLM as is)
        storm = f"{checkpoint}@{digest}" if digest else (checkpoint or "identity")
        return f"{base} + storm:{storm}", "VLM (random)" if is_random(base) else ""
    storm = f"{checkpoint}@{digest}" if digest else (checkpoint or "random init")
    untrained = []
    if is_random(cfg.encoder.model):
        untrained.append("SigLIP (random)")
    if not checkpoint:
        untrained.append("STORM temporal module + projector (untrained)")
    return f"{cfg.summarizer.model} + {cfg.encoder.model} + storm:{storm}", ", ".join(untrained)
