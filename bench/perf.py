"""Do less work for the same answer (issue 12), measured side by side in one run on this machine.

(a) static camera: a still scene with sensor noise and a few walks (people-sized figures), made
    here, ingested with `vidstorm ingest --local`'s code (4 Mamba layers, SmolLM2 captions of 32
    tokens, fp32, 16-frame chunks at 1 fps) with static-frame reuse on (encoder.static_threshold
    default) and off (0): SigLIP frames encoded, end-to-end time, and the cosine between the two
    runs' pooled tokens for the chunks with movement. Twice: with a random SigLIP-so400m/14 at
    384 px (STORM's encoder; the keys without suffix) and with the demo's SigLIP-B/16 at 224 px
    (keys ending _b16), where the LLM caption costs as much as SigLIP and bounds the speedup.
(b) the toy QA test set (`synth-data --n 120 --seed 4242 --splits 0,0,1`, 150 questions) answered by
    `vidstorm eval --config configs/toy.yaml` with reuse on and off: accuracy.
(c) bytes per chunk on the tokens queue: fp32 SigLIP grids (what it carried before) against what the
    encoder stage now queues (projected grids, 16-bit), read back from a real Redis; and with reuse
    on the static clip.
(d) SigLIP frames/s in fp32 against `encoder.dtype=auto` (bf16 where native and faster), and the
    cosine of the pooled tokens.

Last line: one JSON object with static_encode_ratio, static_speedup, queue_bytes_ratio,
cpu_auto_speedup and the figures behind them.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"
DEMO_SIGLIP = "vidstorm-data/models/siglip-b16-224-random"


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.frames = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, frames):
        self.frames += len(frames)
        return self.inner.encode(frames)


def demo_config(*extra, model: str | Path = ROOT / DEMO_SIGLIP):
    from pipeline.config import load_config

    return load_config(str(ROOT / "configs" / "demo.yaml"),
                       [f"encoder.model={model}", "encoder.dtype=fp32", "summarizer.dtype=fp32",
                        "decode.chunk_frames=16", "summarizer.max_new_tokens=32", "summary.window_seconds=300",
                        *extra])


def so400m() -> Path:
    """A random SigLIP-so400m/14 at 384 px (STORM's encoder geometry), built once into bench/.cache."""
    from pipeline.models.siglip import build_random_siglip

    path = CACHE / "siglip-so400m-384-random"
    if not (path / "config.json").is_file():
        build_random_siglip(path, hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304,
                            image_size=384, patch_size=14)
    return path


def events_for(seconds: float) -> list[tuple[float, float]]:
    """A walk of 10-20 s every ~2 minutes: about 12% of the time something moves."""
    spans, t, length = [], 40.5, 15.0
    while t + length < seconds:
        spans.append((t, t + length))
        t += 120.0
        length = 25.0 - length  # 15 s, 10 s, 15 s, ...
    return spans


def part_a(minutes: float, log, model: str | Path = ROOT / DEMO_SIGLIP, label: str = "SigLIP-B/16 224 px") -> dict:
    from pipeline.build import build_processor
    from pipeline.decode import Source
    from pipeline.ingest import LocalIngest
    from pipeline.synth import write_static_camera

    seconds = minutes * 60
    events = events_for(seconds)
    clip = CACHE / f"static-camera-{minutes:g}m.mp4"
    if not clip.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        write_static_camera(clip.with_suffix(".tmp.mp4"), seconds=seconds, fps=10, width=640, height=360,
                            events=events, noise=3.0, movers=2, seed=3)
        clip.with_suffix(".tmp.mp4").rename(clip)
    cfg_on = demo_config(model=model)
    cfg_off = demo_config("encoder.static_threshold=0", model=model)
    base = build_processor(cfg_on, log=None)
    runs = {}
    for name, cfg in (("on", cfg_on), ("off", cfg_off)):
        proc = copy.copy(base)
        proc.encoder = CountingEncoder(base.encoder)
        proc.static_threshold = cfg.encoder.static_threshold
        pooled = {}
        inner = proc.step_pooled

        def recording(chunk, tokens, *args, _pooled=pooled, _inner=inner, **kwargs):
            _pooled[chunk.chunk_seq] = (chunk.t_start, chunk.t_end, tokens.clone())
            return _inner(chunk, tokens, *args, **kwargs)

        proc.step_pooled = recording
        with tempfile.TemporaryDirectory(prefix="vidstorm-perf-") as tmp:
            runner = LocalIngest(cfg, proc, tmp, log=lambda m: None)
            start = time.perf_counter()
            job = runner.run(Source(str(clip), "cam"))
            wall = time.perf_counter() - start
        assert job.status == "done", job.error
        runs[name] = {"frames": proc.encoder.frames, "seconds": wall, "pooled": pooled, "chunks": job.chunks}
        log(f"(a) {label}, reuse {name:>3}: {proc.encoder.frames:4d} SigLIP frames, {wall:6.1f} s for {minutes:g} min of video "
            f"({job.chunks} chunks)")
    import torch

    moving, cosines = [], []
    for seq, (t0, t1, on) in runs["on"]["pooled"].items():
        if any(a < t1 and t0 < b for a, b in events):
            off = runs["off"]["pooled"][seq][2]
            cos = torch.nn.functional.cosine_similarity(on.flatten(0, -2), off.flatten(0, -2), dim=-1)
            cosines.append(cos)
            moving.append(seq)
    cos = torch.cat(cosines)
    out = {
        "minutes": minutes, "walks": len(events),
        "frames_encoded_on": runs["on"]["frames"], "frames_encoded_off": runs["off"]["frames"],
        "static_encode_ratio": round(runs["off"]["frames"] / max(runs["on"]["frames"], 1), 2),
        "ingest_s_on": round(runs["on"]["seconds"], 1), "ingest_s_off": round(runs["off"]["seconds"], 1),
        "static_speedup": round(runs["off"]["seconds"] / runs["on"]["seconds"], 2),
        "moving_chunks": len(moving), "moving_cos_min": round(float(cos.min()), 4),
        "moving_cos_mean": round(float(cos.mean()), 4),
    }
    log(f"(a) {label}: {out['static_encode_ratio']}x fewer SigLIP frames, {out['static_speedup']}x faster end to end; "
        f"pooled tokens of the {len(moving)} chunks with movement, reuse on vs off: cosine min "
        f"{out['moving_cos_min']}, mean {out['moving_cos_mean']}")
    return out, clip


def part_b(log) -> dict:
    data = CACHE / "toy-test"
    if not (data / "test.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "actors.cli", "synth-data", str(data), "--n", "120", "--seed", "4242",
                        "--splits", "0,0,1"], cwd=ROOT, check=True, capture_output=True)
    out = {}
    for name, extra in (("on", []), ("off", ["encoder.static_threshold=0"])):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "actors.cli", "eval", "--config", "configs/toy.yaml", "--data",
                               str(data / "test.jsonl"), *extra], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"eval failed: {done.stderr.strip().splitlines()[-1:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        out[f"toy_accuracy_{name}"] = result["accuracy"]
        log(f"(b) reuse {name:>3}: accuracy {result['accuracy']:.3f} on {result['n']} questions "
            f"({time.perf_counter() - start:.0f} s)")
    out["toy_accuracy_delta_points"] = round(100 * (out["toy_accuracy_on"] - out["toy_accuracy_off"]), 2)
    return out


def part_c(clip: Path, log) -> dict:
    from dataclasses import replace

    from pipeline.queue.keys import Keys
    from actors.runtime import EncoderStage
    from pipeline.decode import Source, VideoDecoder
    from pipeline.messages import ChunkInfo
    from pipeline.queue.redis_streams import PAYLOAD
    from pipeline.queue.server import EmbeddedRedis
    from pipeline.reuse import gate
    from pipeline.types import pack

    with tempfile.TemporaryDirectory(prefix="vidstorm-perf-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            sizes = {}
            for name, extra in (("all", ["encoder.static_threshold=0"]), ("reuse", [])):
                # nothing consumes the tokens queue here: room for every chunk, or the stage waits for room
                cfg = demo_config("queue.prefix=perf" + name, "queue.max_in_flight=64", *extra)
                keys = Keys(cfg.queue.prefix)
                stage = EncoderStage(cfg, server.url, "encoder-0")
                decoder = VideoDecoder.for_config(Source(str(clip), "cam"), cfg.decode, 224, 8)
                reference, before, chunks = None, [], 0
                for chunk in decoder.chunks():
                    if chunks == 12:
                        break
                    mask, reference = gate(chunk.frames, reference, cfg.encoder.static_threshold)
                    stage.q.publish(keys.frames, chunk.gated(mask).to_bytes())
                    chunks += 1
                    if name == "all":  # what the queue carried before: every frame's fp32 SigLIP grid
                        enc = stage.processor.encoder  # (its size is its shape's: zeros stand in for the values)
                        grid = np.zeros((len(chunk.frames), enc.grid, enc.grid, enc.hidden_size), np.float32)
                        info = replace(ChunkInfo.of(chunk), thumbnail=None)
                        before.append(len(pack({"type": "tokens", **info.header()}, {"tokens": grid})))
                deadline = time.monotonic() + 300
                while stage.r.xlen(keys.tokens("cam")) < chunks and time.monotonic() < deadline:
                    stage.tick()
                sizes[name] = [len(f[PAYLOAD]) for _, f in stage.r.xrange(keys.tokens("cam"))]
                if before:
                    sizes["before"] = before
        finally:
            server.stop()
    mean = {k: float(np.mean(v)) for k, v in sizes.items()}
    out = {"queue_bytes_before": round(mean["before"]), "queue_bytes_after": round(mean["all"]),
           "queue_bytes_after_with_reuse": round(mean["reuse"]),
           "queue_bytes_ratio": round(mean["before"] / mean["all"], 2),
           "queue_bytes_ratio_with_reuse": round(mean["before"] / mean["reuse"], 2)}
    log(f"(c) tokens queue, bytes per 16-frame chunk at demo geometry: fp32 SigLIP grids {out['queue_bytes_before']:,}, "
        f"projected fp16 {out['queue_bytes_after']:,} ({out['queue_bytes_ratio']}x fewer), with reuse on the static "
        f"clip {out['queue_bytes_after_with_reuse']:,} ({out['queue_bytes_ratio_with_reuse']}x)")
    return out


def part_d(log) -> dict:
    import torch

    from pipeline.build import build_processor
    from pipeline.models import dtype as auto
    from pipeline.models.siglip import SiglipEncoder

    cfg = demo_config()
    model = str(ROOT / DEMO_SIGLIP)
    encoders = {"fp32": SiglipEncoder(model, "cpu", "fp32", 16, cfg.encoder.select_layer),
                "auto": SiglipEncoder(model, "cpu", "auto", 16, cfg.encoder.select_layer)}
    frames = np.random.default_rng(0).integers(0, 255, (32, 224, 224, 3), np.uint8)
    best = {k: float("inf") for k in encoders}
    grids = {}
    for _ in range(2):  # alternated, best of two
        for name, encoder in encoders.items():
            encoder.encode(frames[:4])
            start = time.perf_counter()
            grids[name] = encoder.encode(frames)
            best[name] = min(best[name], time.perf_counter() - start)
    connector = build_processor(cfg, log=None, parts=("temporal",)).connector
    reducer = build_processor(cfg, log=None, parts=("temporal",)).reducer
    pooled = {}
    with torch.inference_mode():
        for name, grid in grids.items():
            pooled[name] = connector.pool_projected(connector.project(grid[:16]), reducer)[0]
    cos = torch.nn.functional.cosine_similarity(pooled["fp32"].flatten(0, -2), pooled["auto"].flatten(0, -2), dim=-1)
    fps = {k: len(frames) / v for k, v in best.items()}
    out = {"siglip_fps_fp32": round(fps["fp32"], 2), "siglip_fps_auto": round(fps["auto"], 2),
           "auto_dtype": encoders["auto"].dtype_name, "native_bf16": auto.native_bf16(),
           "cpu_auto_speedup": round(fps["auto"] / fps["fp32"], 2), "auto_pooled_cos_min": round(float(cos.min()), 5)}
    log(f"(d) SigLIP-B/16 224 px, batch 16: fp32 {out['siglip_fps_fp32']} frames/s, auto ({out['auto_dtype']}; native "
        f"bf16: {out['native_bf16']}) {out['siglip_fps_auto']} frames/s = {out['cpu_auto_speedup']}x; pooled tokens "
        f"cosine min {out['auto_pooled_cos_min']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="static-camera clip for (a) at B/16 geometry")
    parser.add_argument("--so400m-minutes", type=float, default=1.5,
                        help="static-camera clip for (a) at so400m geometry (fp32 SigLIP-so400m: ~3 s a frame here)")
    parser.add_argument("--skip-qa", action="store_true", help="leave out (b), the toy QA accuracy")
    args = parser.parse_args()
    if not (ROOT / DEMO_SIGLIP).is_dir():
        subprocess.run([sys.executable, "-m", "actors.cli", "demo-assets", "--data", "vidstorm-data"], cwd=ROOT,
                       check=True)
    if not args.skip_qa and not (ROOT / "models/toy-vlm/vlm/model.safetensors").is_file():  # configs/toy.yaml's VLM
        subprocess.run(["make", "toy-vlm-assets"], cwd=ROOT, check=True)  # assembled from the shipped parts
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    log = lambda m: print(m, flush=True)  # noqa: E731
    result = {}
    # (a) twice: at STORM's encoder geometry (so400m/384, where SigLIP is most of a chunk's compute, as
    # on a real deployment), and at the demo's (B/16 at 224 px, where the 32-token caption weighs as much)
    a, _ = part_a(args.so400m_minutes, log, so400m(), "SigLIP-so400m/14 384 px")
    result.update(a)
    demo, clip = part_a(args.minutes, log)
    result.update({f"{k}_b16": v for k, v in demo.items()})
    if not args.skip_qa:
        result.update(part_b(log))
    result.update(part_c(clip, log))
    result.update(part_d(log))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
