"""Temporal encoder cost against SigLIP, at the demo geometry, measured side by side.

SigLIP-B/16 at 224 px (random weights), 16-frame chunks, d_model 576, 4 bidirectional
layers (chunk_bidirectional, forward state carried), pooling k=4, s=2.
Also: the block-parallel selective scan against the per-token loop, at the same size.

Target: temporal encoder + pooling <= 15% of the SigLIP time per chunk.
Last line: one JSON object with siglip_s, temporal_s, temporal_over_siglip, scan_speedup_vs_loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.models.pooling import TokenReducer  # noqa: E402
from pipeline.models.scan import selective_scan_blocked, selective_scan_ref  # noqa: E402
from pipeline.models.siglip import SiglipEncoder, build_random_siglip  # noqa: E402
from pipeline.models.temporal import TemporalEncoder  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = load_config()  # defaults = the demo geometry
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        siglip = SiglipEncoder(
            str(build_random_siglip(Path(tmp) / "siglip-b16-224")),
            device="cpu",
            dtype="fp32",
            batch_size=cfg.encoder.batch_size,
            select_layer=cfg.encoder.select_layer,
        )
    t = cfg.temporal
    temporal = TemporalEncoder(
        siglip.hidden_size, t.d_model, t.n_layers, t.mode, t.d_state, t.d_conv, t.expand, scan_impl="torch"
    ).eval()
    reducer = TokenReducer.from_config(cfg.pooling)
    frames = torch.randint(0, 256, (cfg.decode.chunk_frames, 224, 224, 3), dtype=torch.uint8)

    tokens = siglip.encode(frames)  # (16, 14, 14, 768); also warms up
    state = None

    def run_temporal():
        nonlocal state
        with torch.inference_mode():
            out, state = temporal(tokens, state)
            return reducer(out)

    pooled = run_temporal()
    siglip_times, temporal_times = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits both alike
        siglip_times.append(timed(lambda: siglip.encode(frames)))
        temporal_times.append(timed(run_temporal))
    siglip_s, temporal_s = statistics.median(siglip_times), statistics.median(temporal_times)

    # selective scan at the size one demo mixer sees: L = 16 * 7 * 7 tokens, d_inner 1152, N 16
    seq_len, d_inner, n_state = cfg.decode.chunk_frames * 7 * 7, t.expand * t.d_model, t.d_state
    g = torch.Generator().manual_seed(0)
    scan_args = dict(
        u=torch.randn(1, d_inner, seq_len, generator=g),
        delta=torch.randn(1, d_inner, seq_len, generator=g) - 2,
        A=-torch.arange(1, n_state + 1, dtype=torch.float32).expand(d_inner, n_state),
        B=torch.randn(1, n_state, seq_len, generator=g),
        C=torch.randn(1, n_state, seq_len, generator=g),
        D=torch.ones(d_inner),
        z=torch.randn(1, d_inner, seq_len, generator=g),
        delta_softplus=True,
        initial_state=torch.randn(1, d_inner, n_state, generator=g),
    )
    selective_scan_blocked(**scan_args), selective_scan_ref(**scan_args)
    blocked_times, loop_times = [], []
    for _ in range(args.repeats):
        blocked_times.append(timed(lambda: selective_scan_blocked(**scan_args)))
        loop_times.append(timed(lambda: selective_scan_ref(**scan_args)))
    blocked_s, loop_s = statistics.median(blocked_times), statistics.median(loop_times)

    ratio = temporal_s / siglip_s
    print(f"geometry     SigLIP-B/16 224px (select_layer {cfg.encoder.select_layer}), {cfg.decode.chunk_frames}-frame chunks")
    print(f"             d_model {t.d_model}, {t.n_layers} layers, mode {t.mode}, k={reducer.temporal_k} s={reducer.sample_s}")
    print(f"tokens       {tuple(tokens.shape)} -> temporal -> pooled {tuple(pooled.shape)}")
    print(f"siglip       {siglip_s * 1000:8.1f} ms / chunk")
    print(f"temporal+pool{temporal_s * 1000:8.1f} ms / chunk   ratio {ratio:.3f}  (target <= 0.15)")
    print(f"scan L={seq_len} blocked {blocked_s * 1000:6.1f} ms   per-token loop {loop_s * 1000:6.1f} ms   "
          f"speedup {loop_s / blocked_s:.2f}x")
    print(json.dumps({
        "siglip_s": round(siglip_s, 4),
        "temporal_s": round(temporal_s, 4),
        "temporal_over_siglip": round(ratio, 4),
        "scan_blocked_s": round(blocked_s, 4),
        "scan_loop_s": round(loop_s, 4),
        "scan_speedup_vs_loop": round(loop_s / blocked_s, 3),
        "chunk_frames": cfg.decode.chunk_frames,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
