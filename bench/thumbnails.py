"""What thumbnails cost at ingest, measured side by side in one run (issue 11: at most 5% more ingest
time, about 10 KB per segment).

1. decode: the decoder alone (1 fps sampling, resize for SigLIP, chunking) with and without a
   192 px JPEG per chunk, on a 720p H.264 camera-like clip; runs alternate, best of N each.
2. ingest: `--local` ingest of the same clip with the product's default pipeline (configs/demo.yaml:
   SigLIP-B/16, Mamba layers, SmolLM2 captions, MiniLM embeddings, Parquet), thumbnails on and off,
   alternating, each run into a fresh store; models loaded once.
3. bytes per thumbnail, from the stored Parquet rows.

Last line: one JSON object with decode_ratio, ingest_ratio, bytes_per_thumbnail and the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import CACHE, make_clip  # noqa: E402


def decode_seconds(clip: Path, width: int) -> float:
    from pipeline.decode import Source, VideoDecoder

    start = time.perf_counter()
    for _ in VideoDecoder(Source(str(clip), "bench"), 224, fps=1.0, chunk_frames=16, pad_multiple=8,
                          thumbnail_width=width).chunks():
        pass
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, alternating")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import torch

    from pipeline.build import build_processor
    from pipeline.config import load_config
    from pipeline.decode import Source
    from pipeline.ingest import LocalIngest

    torch.set_num_threads(2)
    clip = make_clip(CACHE / f"camera-{args.minutes:g}min-720p.mp4", args.minutes, 1280, 720)
    decode = {0: [], 192: []}
    for _ in range(args.repeats + 1):
        for width in (0, 192):
            decode[width].append(decode_seconds(clip, width))
    decode = {w: min(times[1:]) for w, times in decode.items()}  # the first pair warms the file cache
    print(f"decode {clip.name}: {decode[0]:.2f} s without thumbnails, {decode[192]:.2f} s with "
          f"({decode[192] / decode[0]:.3f}x)", flush=True)

    base = load_config(ROOT / "configs" / "demo.yaml", [])
    processor = build_processor(base, log=None)
    ingest = {0: [], 192: []}
    sizes, segments = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeats):
            for width in (0, 192):
                cfg = load_config(ROOT / "configs" / "demo.yaml", [f"decode.thumbnail_width={width}"])
                data = Path(tmp) / f"run{run}-w{width}"
                runner = LocalIngest(cfg, processor, data, log=lambda *_: None)
                start = time.perf_counter()
                job = runner.run(Source(str(clip), "cam"))
                ingest[width].append(time.perf_counter() - start)
                assert job.status == "done", job.error
                if width and run == 0:
                    for f in (data / "store" / "segments").rglob("*.parquet"):
                        sizes += [len(t) for t in pq.read_table(f, columns=["thumbnail"]).column(0).to_pylist()]
                    segments = len(sizes)
                print(f"ingest run {run} thumbnails={'on' if width else 'off'}: {ingest[width][-1]:.1f} s", flush=True)
    off, on = statistics.median(ingest[0]), statistics.median(ingest[192])
    result = {
        "clip": clip.name, "video_s": args.minutes * 60,
        "decode_off_s": round(decode[0], 3), "decode_on_s": round(decode[192], 3),
        "decode_ratio": round(decode[192] / decode[0], 4),
        "ingest_off_s": round(off, 2), "ingest_on_s": round(on, 2), "ingest_ratio": round(on / off, 4),
        "segments": segments, "bytes_per_thumbnail": round(statistics.mean(sizes)) if sizes else None,
        "max_thumbnail_bytes": max(sizes) if sizes else None,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
