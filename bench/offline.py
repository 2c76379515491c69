"""Memory of `temporal.mode=offline` (the whole-file bidirectional scan) at the default geometry.

Default config: SigLIP-B/16 at 224 px -> (T, 14, 14, 768) grids at 1 fps in 16-frame chunks;
2x2 pixel shuffle -> 49 tokens per frame; d_model 576; 4 layers; fp32 activations.

Analytic: the scan holds layer l's input for the whole file plus layer l+1's forward halves,
i.e. two copies of (tokens x d_model x 4 bytes) at its peak; with a spill threshold it holds at
most the threshold and the rest is on disk.

Measured: a real OfflineScan over `--minutes` of video (random SigLIP-shaped grids: SigLIP
runs per chunk before the scan and is not what is measured), each setting in a fresh process:
everything in memory, then `--spill-mb`. Reported: the activation store's peak bytes in memory,
bytes spilled, the process's peak RSS growth over the scan, and the time. The store figures are
linear in the file's length, so the 1-hour figures are the measured ones scaled (and match the
analytic ones).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.models.offline import OfflineScan  # noqa: E402
from pipeline.models.pooling import TokenReducer  # noqa: E402
from pipeline.models.temporal import TemporalEncoder  # noqa: E402

MB = 1e6
GRID, VISION_DIM = 14, 768  # SigLIP-B/16 at 224 px


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def geometry(cfg) -> dict:
    tokens_per_frame = math.ceil(GRID / 2) ** 2
    frames_per_hour = int(3600 * cfg.decode.fps)
    layer_bytes = frames_per_hour * tokens_per_frame * cfg.temporal.d_model * 4
    return {"tokens_per_frame": tokens_per_frame, "tokens_per_hour": frames_per_hour * tokens_per_frame,
            "one_layer_hour_mb": layer_bytes / MB, "held_hour_mb_no_spill": 2 * layer_bytes / MB}


def child(minutes: float, spill_mb: float) -> dict:
    """One scan in this process; returns its figures."""
    cfg = load_config()
    t, chunk_frames = cfg.temporal, cfg.decode.chunk_frames
    torch.manual_seed(0)
    encoder = TemporalEncoder(VISION_DIM, t.d_model, t.n_layers, "offline", t.d_state, t.d_conv, t.expand,
                              scan_impl="torch").eval()
    reducer = TokenReducer.from_config(cfg.pooling)
    n_chunks = math.ceil(minutes * 60 * cfg.decode.fps / chunk_frames)
    generator = torch.Generator().manual_seed(1)

    def grid():
        return torch.randn(chunk_frames, GRID, GRID, VISION_DIM, generator=generator)

    with torch.inference_mode(), tempfile.TemporaryDirectory() as spill:
        with OfflineScan(encoder, 1 << 40) as warm:  # one chunk's working set, so the baseline includes it
            warm.add(grid())
            list(warm.outputs())
        rss0, start = rss_bytes(), time.perf_counter()
        with OfflineScan(encoder, int(spill_mb * 2**20), spill) as scan:
            for _ in range(n_chunks):
                scan.add(grid())
            pooled = sum(reducer(out).shape[0] for out in scan.outputs())
            store = scan.store
        seconds = time.perf_counter() - start
        left = list(Path(spill).iterdir())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"minutes": minutes, "chunks": n_chunks, "pooled_frames": pooled, "spill_mb": spill_mb,
            "store_peak_mb": store.peak / MB, "spilled_mb": store.bytes_written / MB,
            "files_written": store.files_written, "rss_growth_mb": (peak_rss - rss0) / MB, "seconds": seconds,
            "left_on_disk": len(left)}


def run_child(minutes: float, spill_mb: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "--minutes", str(minutes), "--spill-mb",
                          str(spill_mb)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="video length of the measured scans")
    parser.add_argument("--spill-mb", type=float, default=8.0, help="spill threshold of the second scan (MiB)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.minutes, args.spill_mb)))
        return

    cfg = load_config()
    geo = geometry(cfg)
    in_memory = run_child(args.minutes, 1e9)
    spilled = run_child(args.minutes, args.spill_mb)
    scale = 3600 * cfg.decode.fps / (in_memory["chunks"] * cfg.decode.chunk_frames)  # frames of 1 h / measured
    hour_no_spill = in_memory["store_peak_mb"] * scale
    spill_cap_mb = args.spill_mb * 2**20 / MB
    print(f"geometry      SigLIP-B/16 224px -> {geo['tokens_per_frame']} tokens/frame at {cfg.decode.fps:g} fps, "
          f"d_model {cfg.temporal.d_model}, {cfg.temporal.n_layers} layers, fp32")
    print(f"1 hour        {geo['tokens_per_hour']} tokens; one layer {geo['one_layer_hour_mb']:.0f} MB; "
          f"held at the peak (2 layers) {geo['held_hour_mb_no_spill']:.0f} MB (analytic)")
    for name, r in (("in memory", in_memory), (f"spill {args.spill_mb:g} MiB", spilled)):
        print(f"{name:14s}{r['minutes']:g} min ({r['chunks']} chunks) in {r['seconds']:.1f} s: store peak "
              f"{r['store_peak_mb']:.1f} MB, spilled {r['spilled_mb']:.1f} MB in {r['files_written']} files, "
              f"peak RSS +{r['rss_growth_mb']:.1f} MB, {r['left_on_disk']} left on disk")
    print(f"1 hour, measured x{scale:.2f}: held {hour_no_spill:.0f} MB without spill; with spill at most "
          f"{spill_cap_mb:.1f} MB held (+{spilled['rss_growth_mb'] - spilled['store_peak_mb']:.0f} MB working set), "
          f"{spilled['spilled_mb'] * scale:.0f} MB written to disk")
    print(json.dumps({
        "geometry": {**{k: v for k, v in geo.items() if k != "held_hour_mb_no_spill"},
                     "d_model": cfg.temporal.d_model, "n_layers": cfg.temporal.n_layers, "fps": cfg.decode.fps,
                     "chunk_frames": cfg.decode.chunk_frames},
        "hour_held_mb_no_spill_analytic": round(geo["held_hour_mb_no_spill"], 1),
        "hour_held_mb_no_spill_measured": round(hour_no_spill, 1),
        "hour_held_mb_with_spill": round(spilled["store_peak_mb"], 1),
        "hour_spilled_mb": round(spilled["spilled_mb"] * scale, 1),
        "spill_threshold_mib": args.spill_mb,
        "measured": {"in_memory": in_memory, "spilled": spilled},
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
