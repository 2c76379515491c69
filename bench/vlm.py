"""STORM on a pretrained VLM, both families, on tiny random checkpoints (CPU): exact at init, and the
LLM's tokens per minute of video with STORM's 12.5% setting against the VLM alone at 1 fps.

    python bench/vlm.py

For each family (SmolVLM, LLaVA-OneVision), a tiny random checkpoint built offline and loaded with
from_pretrained, fp32:
  max_abs_diff_tokens   per-frame visual tokens (tower -> the VLM's own connector, temporal module at
                        identity) against the family's get_image_features / get_video_features
  max_abs_diff_logits   LLM logits for a one-frame prompt against the family's own forward on
                        input_ids + pixel values
  describe_equal        `vidstorm describe IMAGE` (identity, pooling off) == the family's own generate
Tokens per minute: the LLM's whole input (prompt text, image/frame markers and visual tokens) for one
minute of 1 fps video in 16-frame chunks, counted from the prompts ingest builds: STORM-on-VLM at
12.5% (temporal pooling k=4 x sampling s=2) against the VLM alone (every frame, no module). Counted at
the tiny geometry and at the real models' per-frame token counts (SmolVLM2-256M: 64 per 512 px frame;
LLaVA-OneVision: 196 per 384 px frame), which only change how many slots a frame has. Target <= 1/6.
Last line: one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Describe the video briefly."
FAMILIES = {"smolvlm": ("smolvlm-tiny", 64), "llava_onevision": ("llava-ov-tiny", 196)}  # real per-frame tokens


def overrides(ref, *extra):
    return [f"encoder.model={ref}", f"summarizer.model={ref}", "summarizer.system_prompt=''", "encoder.device=cpu",
            "encoder.dtype=fp32", "summarizer.device=cpu", "summarizer.dtype=fp32", "encoder.output_dtype=fp32",
            "summarizer.max_new_tokens=12", *extra]


def exactness(ref: str, tmp: Path, log) -> dict:
    import numpy as np
    import torch

    from pipeline.build import build_processor
    from pipeline.config import load_config
    from pipeline.describe import describe
    from pipeline.models.vlm import load_vlm
    from pipeline.models.vlm_build import own_features, own_generate, own_inputs
    from pipeline.processor import StreamState
    from pipeline.types import FrameChunk

    off = ["pooling.temporal_k=1", "pooling.sample_s=1", "pooling.spatial_p=1"]
    cfg = load_config(None, overrides(ref, *off))
    processor = build_processor(cfg, log=None)
    size = processor.encoder.image_size
    frames = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), np.uint8)
    chunk = FrameChunk("b", 0, frames, np.arange(8, dtype=np.float64), 8.0)
    processor.static_threshold = 0.0  # every frame through the tower
    pooled, _, _ = processor.pool_chunk(chunk, StreamState("b"))
    ours = processor.connector.to_llm(pooled)
    tokens = float((ours - own_features(ref, frames)).abs().max())
    one, _, _ = processor.pool_chunk(FrameChunk("b", 0, frames[:1], np.zeros(1), 1.0), StreamState("b"))
    visual = processor.connector.to_llm(one)
    llm = processor.summarizer
    ids, mask = llm.visual_prompt(PROMPT, 1, visual.shape[0], *_one_frame_span(processor))
    with torch.no_grad():
        mine = llm.model(inputs_embeds=llm.splice(ids, mask, visual)[None]).logits
        theirs = load_vlm(ref, torch.float32)(input_ids=ids[None], **own_inputs(ref, frames[:1])).logits
    logits = float((mine - theirs).abs().max())
    image = tmp / "still.png"
    write_png(image, frames[3])
    printed = describe(processor, image, cfg)[0]["caption"]
    reference = own_generate(ref, frames[3], PROMPT, 12)
    log(f"  tokens max |diff| {tokens:.2e}, logits max |diff| {logits:.2e}, describe {printed!r} vs own "
        f"generate {reference!r}")
    return {"max_abs_diff_tokens": tokens, "max_abs_diff_logits": logits,
            "describe_equal": bool(printed == reference and reference != "")}


def _one_frame_span(processor):
    """The one-frame prompt each family's own forward takes with its pixel inputs (`own_inputs`): SmolVLM's
    image chat, LLaVA-OneVision's one-frame video."""
    return (None, None) if processor.summarizer.layout.family == "smolvlm" else (0.0, 1.0)


def write_png(path: Path, image) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")), *stream.encode()]:
            container.mux(packet)


def tokens_per_minute(ref: str, real_per_frame: int, log) -> dict:
    """LLM input tokens for 60 s of 1 fps video (16-frame chunks): STORM 12.5% vs the VLM alone."""
    from pipeline.build import build_processor
    from pipeline.config import load_config

    processor = build_processor(load_config(None, overrides(ref)), log=None)
    llm = processor.summarizer
    h, w, _ = processor.connector.projected_shape(processor.encoder.grid)
    tiny_per_frame = h * w
    out = {}
    for label, per_frame in (("tiny", tiny_per_frame), ("real", real_per_frame)):
        counts = {}
        for name, frames_per_chunk in (("storm12", 2), ("vlm_alone", 16)):  # 16 frames -> 16 / (4 x 2) = 2
            total = 0
            for chunk in range(4):  # 64 s = 4 chunks of 16 s
                ids, _ = llm.visual_prompt(PROMPT, frames_per_chunk, per_frame, 16.0 * chunk, 16.0 * (chunk + 1))
                total += len(ids)
            counts[name] = total * 60 / 64
        out[label] = counts
        log(f"  {label} geometry ({per_frame} tokens per frame): {counts['storm12']:.0f} vs {counts['vlm_alone']:.0f} "
            f"LLM tokens per minute of video, ratio {counts['storm12'] / counts['vlm_alone']:.3f}")
    return {"llm_tokens_per_min_storm12": round(out["real"]["storm12"]),
            "llm_tokens_per_min_vlm": round(out["real"]["vlm_alone"]),
            "llm_tokens_ratio": round(out["real"]["storm12"] / out["real"]["vlm_alone"], 4),
            "llm_tokens_ratio_tiny": round(out["tiny"]["storm12"] / out["tiny"]["vlm_alone"], 4)}


def main() -> None:
    from pipeline.models.vlm_build import build_random_vlm

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = {}
    with tempfile.TemporaryDirectory(prefix="vidstorm-bench-vlm-") as tmp:
        tmp = Path(tmp)
        for family, (geometry, real_per_frame) in FAMILIES.items():
            log(f"{family} ({geometry}, random weights)")
            ref = str(build_random_vlm(tmp / geometry, geometry))
            result[family] = {**exactness(ref, tmp, log), **tokens_per_minute(ref, real_per_frame, log)}
    result["target_llm_tokens_ratio"] = round(1 / 6, 4)
    result["meets_target"] = all(r["llm_tokens_ratio"] <= 1 / 6 and r["describe_equal"]
                                 and r["max_abs_diff_tokens"] <= 1e-5 and r["max_abs_diff_logits"] <= 1e-5
                                 for r in result.values() if isinstance(r, dict))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
