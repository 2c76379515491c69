"""Shared fixtures: tiny real models built in-process, saved and loaded like real checkpoints."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory):
    """A small random SigLIP vision model saved with save_pretrained: 56 px, 14 px patches (4x4 grid)."""
    from pipeline.models.siglip import build_random_siglip

    path = tmp_path_factory.mktemp("siglip") / "tiny-siglip"
    return build_random_siglip(
        path, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )


@pytest.fixture(scope="session")
def smollm2():
    """The real offline SmolLM2-135M-Instruct (loaded once per session)."""
    from pipeline.models.summarizer import Summarizer

    return Summarizer("smollm2", device="cpu", dtype="fp32", max_new_tokens=16)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """A tiny random Llama + the SmolLM2 tokenizer, saved as a local folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.models.summarizer import packaged_smollm2, resolve_llm

    path = tmp_path_factory.mktemp("llm") / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert packaged_smollm2().is_file()
    return path


@pytest.fixture(scope="session")
def tiny_overrides(tiny_siglip, tiny_llm):
    """configs/test.yaml plus the tiny models, as key=value overrides (CLI tests pass them on)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    settings = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "configs" / "test.yaml"))
    flat = [f"{section}.{key}={value}" for section, keys in settings.items() for key, value in keys.items()]
    return [f"encoder.model={tiny_siglip}", f"summarizer.model={tiny_llm}", *flat]


@pytest.fixture(scope="session")
def tiny_processor(tiny_overrides):
    from pipeline.build import build_processor
    from pipeline.config import load_config

    return build_processor(load_config(None, tiny_overrides), log=None)


@pytest.fixture(scope="session")
def text_embedder():
    from pipeline.models.text_embed import TextEmbedder

    return TextEmbedder()


def pytest_sessionfinish(session, exitstatus):
    """Free DuckDB connections caught in reference cycles before the interpreter exits (else
    DuckDB's bindings list each one as 'leaked' at shutdown)."""
    import gc

    gc.collect()


@pytest.fixture(scope="session")
def publish_tokens(tiny_processor):
    """publish(stage, keys, chunks=3) -> projected grids: random frames SigLIP-encoded, projected and
    queued for a temporal stage as the encoder stage queues them (fp16, every frame encoded; stream
    "cam", one second per chunk)."""
    import numpy as np

    from pipeline.messages import ChunkInfo, Tokens
    from pipeline.processor import to_wire

    def publish(stage, keys, chunks: int = 3) -> list:
        size, frames_per_chunk = tiny_processor.encoder.image_size, stage.cfg.decode.chunk_frames
        frames = np.random.default_rng(0).integers(0, 255, (chunks, frames_per_chunk, size, size, 3), np.uint8)
        grids = [tiny_processor.encode_projected(f) for f in frames]
        for seq, grid in enumerate(grids):
            info = ChunkInfo("cam", seq, float(seq), seq + 1.0, len(grid), source="x.mp4")
            message = Tokens(info, to_wire(grid, "fp16"), "fp16", np.ones(len(grid), bool))
            stage.q.publish(keys.tokens("cam"), message.to_bytes())
        return grids

    return publish


VLM_GEOMETRIES = {"smolvlm": "smolvlm-tiny", "llava_onevision": "llava-ov-tiny"}


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory):
    """Tiny random VLMs of both families (SmolVLM, LLaVA-OneVision) saved with save_pretrained, with a
    tokenizer, chat template and processor config: {family: folder}."""
    from pipeline.models.vlm_build import build_random_vlm

    root = tmp_path_factory.mktemp("vlm")
    return {family: build_random_vlm(root / name, name) for family, name in VLM_GEOMETRIES.items()}



@pytest.fixture(scope="session")
def vlm_smollm2(tmp_path_factory):
    """A SmolVLM-family checkpoint with a tiny random tower and connector on the real SmolLM2-135M:
    a frozen LLM that inputs can steer (training tests)."""
    from pipeline.models.vlm_build import build_random_vlm

    return build_random_vlm(tmp_path_factory.mktemp("vlm-smollm2") / "vlm", "smolvlm-tiny-smollm2",
                            text_from="smollm2")


# --- one real Redis, and one config helper, for every test that needs them ---


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of this test's own (real, embedded, in tmp_path); stopped after it."""
    from pipeline.queue.server import EmbeddedRedis

    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server.url


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    """A redis-server the tests of one module share (each uses its own key prefix)."""
    from pipeline.queue.server import EmbeddedRedis

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server
