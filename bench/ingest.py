"""Ingestion speed and memory, measured side by side in one run.

1. decode overhead: our decoder (1 fps sampling, bilinear resize to 224, chunking)
   against PyAV's plain decode loop doing the same sampling and resize, on a
   10-minute 720p H.264 clip. Target: at most 1.1.
2. rtf: the full pipeline (SigLIP-B/16 random, 4 Mamba layers, SmolLM2 captions,
   MiniLM embeddings, Parquet store) in real-time factor, over the first minutes.
3. memory: peak RSS of `stream`-mode ingestion of 10 vs 60 minutes of video with
   the test-size models, each in its own process. Target: within 10%.
   (The long clips are 320x240 so that generating them takes seconds: what is
   measured is growth with video length, which resolution does not change.)

Last line: one JSON object with decode_overhead, rtf, mem_60_over_10 and the rest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"


def make_clip(path: Path, minutes: float, width: int, height: int, fps: int = 25, gop: int = 50) -> Path:
    """A camera-like H.264 clip: static scene, a moving object, 2 s GOPs. Cached between runs."""
    import av

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp.mp4")
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    side = height // 6
    with av.open(str(staging), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "ultrafast"}
        for i in range(int(minutes * 60 * fps)):
            img = base.copy()
            x, y = (i * 4) % (width - side), (i * 2) % (height - side)
            img[y : y + side, x : x + side] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    staging.rename(path)
    return path


def plain_pyav(path: Path, size: int = 224, fps: float = 1.0) -> tuple[float, int]:
    """PyAV's own loop: decode everything, convert one frame per second."""
    import av

    start = time.perf_counter()
    sampled, next_t = 0, 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.time + 5e-4 >= next_t:
                frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BILINEAR")
                sampled += 1
                next_t += 1.0 / fps
    return time.perf_counter() - start, sampled


def ours(path: Path, size: int = 224, fps: float = 1.0) -> tuple[float, int, int]:
    from pipeline.decode import Source, VideoDecoder

    start = time.perf_counter()
    decoder = VideoDecoder(Source(str(path), "bench"), size=size, fps=fps, chunk_frames=16, pad_multiple=8)
    sampled = sum(c.n_valid for c in decoder.chunks())
    return time.perf_counter() - start, sampled, decoder.frames_decoded


def pipeline_rtf(path: Path, minutes: float) -> dict:
    """The demo models end to end over the first `minutes` of the clip."""
    from pipeline.build import build_processor
    from pipeline.config import load_config
    from pipeline.decode import Source, VideoDecoder
    from pipeline.models.siglip import build_random_siglip
    from pipeline.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        model = build_random_siglip(Path(tmp) / "siglip")
        cfg = load_config(ROOT / "configs" / "demo.yaml", [f"encoder.model={model}"])
        processor = build_processor(cfg, log=None)
        store = Store(Path(tmp) / "store")
        decoder = VideoDecoder(Source(str(path), "bench"), size=processor.encoder.image_size, fps=cfg.decode.fps,
                               chunk_frames=cfg.decode.chunk_frames, pad_multiple=processor.reducer.frames_per_group)
        start, state, video = time.perf_counter(), None, 0.0
        for chunk in decoder.chunks():
            records, state = processor.step(chunk, state)
            store.write_records(records)
            video = chunk.t_end
            if video >= minutes * 60:
                break
        decoder.close()
        store.write_records(processor.finish(state)[0])
        wall = time.perf_counter() - start
    return {"video_s": video, "wall_s": wall, "rtf": video / wall}


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_child(clip: Path) -> None:
    """Runs in its own process: ingest `clip` in stream mode with test-size models, print peak RSS."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipeline.build import build_processor
    from pipeline.config import load_config
    from pipeline.decode import Source
    from pipeline.ingest import LocalIngest, LocalProgress
    from pipeline.models.siglip import build_random_siglip
    from pipeline.models.summarizer import resolve_llm

    with tempfile.TemporaryDirectory() as tmp:
        siglip = build_random_siglip(Path(tmp) / "siglip", hidden_size=32, num_layers=2, num_heads=2,
                                     intermediate_size=64, image_size=56, patch_size=14)
        tok = AutoTokenizer.from_pretrained(resolve_llm("smollm2"))
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        llm.save_pretrained(Path(tmp) / "llm")
        tok.save_pretrained(Path(tmp) / "llm")
        cfg = load_config(None, [f"encoder.model={siglip}", f"summarizer.model={Path(tmp) / 'llm'}",
                                 "summarizer.max_new_tokens=4", "temporal.mode=stream", "temporal.d_model=32",
                                 "temporal.n_layers=2", "temporal.d_state=8", "decode.chunk_frames=16"])
        runner = LocalIngest(cfg, build_processor(cfg, log=None), Path(tmp) / "data", progress=LocalProgress(open("/dev/null", "w")),
                             log=lambda m: None)
        # Sample RSS only while ingesting: the lifetime peak (ru_maxrss) is set by model
        # loading and would hide any growth with video length.
        samples, stop = [], threading.Event()

        def sample():
            while not stop.wait(0.1):
                samples.append(rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        start_rss, start = rss_mb(), time.perf_counter()
        sampler.start()
        job = runner.run(Source(str(clip), "mem"))
        stop.set()
        sampler.join()
        assert job.status == "done", job.error
        print(json.dumps({"peak_rss_mb": max(samples + [rss_mb()]), "start_rss_mb": start_rss,
                          "lifetime_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          "chunks": job.chunks, "seconds": time.perf_counter() - start}))


def measure_memory(clip: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(clip)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description="ingestion benchmark")
    parser.add_argument("--memory-child", metavar="CLIP")
    parser.add_argument("--rtf-minutes", type=float, default=2.0, help="video minutes for the full-pipeline RTF")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(Path(args.memory_child))
        return

    t = time.perf_counter()
    clip720 = make_clip(CACHE / "cam-10min-720p.mp4", 10, 1280, 720)
    print(f"clip         {clip720.name} ready in {time.perf_counter() - t:.0f}s")

    plain_pyav(clip720)  # warm the page cache
    plain_s, plain_n = plain_pyav(clip720)
    ours_s, ours_n, decoded = ours(clip720)
    overhead = ours_s / plain_s
    print(f"decode       plain PyAV {decoded / plain_s:7.1f} frames/s ({plain_n} sampled)   "
          f"ours {decoded / ours_s:7.1f} frames/s ({ours_n} sampled)   overhead {overhead:.3f} (target <= 1.1)")

    rtf = pipeline_rtf(clip720, args.rtf_minutes)
    print(f"pipeline     demo models: {rtf['video_s']:.0f}s of video in {rtf['wall_s']:.1f}s = {rtf['rtf']:.2f}x real time")

    short = make_clip(CACHE / "cam-10min-240p.mp4", 10, 320, 240, fps=10, gop=20)
    long = make_clip(CACHE / "cam-60min-240p.mp4", 60, 320, 240, fps=10, gop=20)
    mem10, mem60 = measure_memory(short), measure_memory(long)
    ratio = mem60["peak_rss_mb"] / mem10["peak_rss_mb"]
    print(f"memory       stream mode, test-size models, peak RSS while ingesting: "
          f"10 min {mem10['peak_rss_mb']:.0f} MB ({mem10['chunks']} chunks, {mem10['start_rss_mb']:.0f} MB at start), "
          f"60 min {mem60['peak_rss_mb']:.0f} MB ({mem60['chunks']} chunks, {mem60['start_rss_mb']:.0f} MB at start), "
          f"ratio {ratio:.3f} (target <= 1.1)")
    print(json.dumps({
        "decode_overhead": round(overhead, 4),
        "decode_fps_plain": round(decoded / plain_s, 1),
        "decode_fps_ours": round(decoded / ours_s, 1),
        "rtf": round(rtf["rtf"], 3),
        "rtf_video_s": rtf["video_s"],
        "mem_10_mb": round(mem10["peak_rss_mb"], 1),
        "mem_60_mb": round(mem60["peak_rss_mb"], 1),
        "mem_60_over_10": round(ratio, 4),
        "mem_growth_60_mb": round(mem60["peak_rss_mb"] - mem60["start_rss_mb"], 1),
    }))


if __name__ == "__main__":
    main()
