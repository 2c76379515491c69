"""Ray + Redis against --local, side by side in one run, with the demo models.

1. ray_over_local: end-to-end wall time of the same 4-minute clip through Ray actors
   and Redis Streams vs in one process (both include loading the models; the
   embedded Redis + Ray start is reported apart as cluster_start_s). Target: at
   most 1.15. The same ratio on a 96 s clip (ray_over_local_96s) shows the fixed
   cost of starting the actors, which long footage amortises. short_clips_ray_over_local:
   10 clips of 5-8 s in one command (one actor start, one model load; target <= 1.5).
2. queue adapter: messages/s (publish, consume, ack) for 1 KB and 1 MB payloads on
   the embedded redis-server with its durable default (AOF, fsync always) and with
   appendfsync everysec for comparison.
3. two_streams_speedup: throughput (video seconds per wall second) of 2 concurrent
   streams over 1 stream.

Last line: one JSON object with ray_over_local, msgs_per_s_1kb, msgs_per_s_1mb,
two_streams_speedup and the rest.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pipeline.config import load_config  # noqa: E402
from pipeline.decode import Source  # noqa: E402
from pipeline.models.siglip import build_random_siglip  # noqa: E402
from pipeline.synth import write_clip  # noqa: E402


def queue_rate(url: str, size: int, count: int) -> float:
    from pipeline.queue import RedisQueue, connect

    q = RedisQueue(connect(url), "bench", "c1", prefix=f"b{uuid.uuid4().hex[:4]}")
    stream = f"{q.prefix}:s"
    q.ensure_group(stream)
    payload = os.urandom(size)
    start = time.perf_counter()
    for _ in range(count):
        q.publish(stream, payload)
    done = 0
    while done < count:
        msgs = q.consume([stream], count=32, block_ms=100)
        for msg in msgs:
            msg.ack()
        done += len(msgs)
    return count / (time.perf_counter() - start)


def local_run(cfg, clips: Path | list[Path], data: Path) -> float:
    """`vidstorm ingest --local` of these clips: one processor (models loaded once), a stream each."""
    from pipeline.build import build_processor
    from pipeline.ingest import LocalIngest, LocalProgress

    clips = clips if isinstance(clips, list) else [clips]
    start = time.perf_counter()
    runner = LocalIngest(cfg, build_processor(cfg, log=None), data, progress=LocalProgress(open(os.devnull, "w")),
                         log=lambda m: None)
    for i, clip in enumerate(clips):
        job = runner.run(Source(str(clip), "bench" if len(clips) == 1 else f"short-{i}"))
        assert job.status == "done", job.error
    return time.perf_counter() - start


def distributed_run(cluster, cfg, sources, data: Path) -> float:
    from actors.runtime import DistributedIngest

    cluster.data_dir = data
    start = time.perf_counter()
    ingest = DistributedIngest(cluster, cfg, log=lambda m: None)
    try:
        rows = ingest.run(sources)
    finally:
        ingest.shutdown()
    assert all(r["status"] == "done" for r in rows), rows
    return time.perf_counter() - start


def main() -> None:
    from actors.runtime import Cluster
    from pipeline.queue.server import EmbeddedRedis

    tmp = Path(tempfile.mkdtemp(prefix="vidstorm-bench-"))
    model = build_random_siglip(tmp / "siglip")
    clip = write_clip(tmp / "clip-240s.mp4", seconds=240, fps=10)
    short = write_clip(tmp / "clip-96s.mp4", seconds=96, fps=10)
    shorts = [write_clip(tmp / f"short-{i}.mp4", seconds=5 + i % 4, fps=10, start=i) for i in range(10)]
    pair = [write_clip(tmp / f"pair-{i}.mp4", seconds=64, fps=10, start=i) for i in range(2)]
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"encoder.model={model}", "workers.decoders=2",
                                                       f"queue.prefix=b{uuid.uuid4().hex[:4]}"])

    local_s = local_run(cfg, clip, tmp / "local")
    local_short_s = local_run(cfg, short, tmp / "local-short")
    local_shorts_s = local_run(cfg, shorts, tmp / "local-shorts")
    print(f"local        240 s clip, demo models: {local_s:.1f}s   96 s clip: {local_short_s:.1f}s   "
          f"10 clips of 5-8 s: {local_shorts_s:.1f}s")

    t = time.perf_counter()
    with Cluster(cfg, tmp / "cluster", log=lambda m: None) as cluster:
        cluster_start = time.perf_counter() - t
        ray_s = distributed_run(cluster, cfg, [Source(str(clip), "bench")], tmp / "ray")
        ray_short_s = distributed_run(cluster, cfg, [Source(str(short), "bench")], tmp / "ray-short")
        print(f"ray+redis    240 s clip: {ray_s:.1f}s (+ {cluster_start:.1f}s to start Redis and Ray)   "
              f"ratio {ray_s / local_s:.3f} (target <= 1.15)   96 s clip: {ray_short_s:.1f}s, "
              f"ratio {ray_short_s / local_short_s:.3f}")
        ray_shorts_s = distributed_run(cluster, cfg, [Source(str(c), f"short-{i}") for i, c in enumerate(shorts)],
                                       tmp / "ray-shorts")
        print(f"ray+redis    10 clips of 5-8 s in one command: {ray_shorts_s:.1f}s, "
              f"ratio {ray_shorts_s / local_shorts_s:.3f} (target <= 1.5)")
        one_s = distributed_run(cluster, cfg, [Source(str(pair[0]), "one")], tmp / "one")
        two_s = distributed_run(cluster, cfg, [Source(str(p), f"two-{i}") for i, p in enumerate(pair)], tmp / "two")
        speedup = (2 * 64 / two_s) / (64 / one_s)
        print(f"streams      1 stream {one_s:.1f}s, 2 streams {two_s:.1f}s: throughput x{speedup:.2f}")

    rates = {}
    for fsync in ("always", "everysec"):
        with EmbeddedRedis(tmp / f"redis-{fsync}", appendfsync=fsync) as srv:
            rates[fsync] = (queue_rate(srv.url, 1024, 5000), queue_rate(srv.url, 1 << 20, 300))
        print(f"queue        appendfsync {fsync:8s}: 1 KB {rates[fsync][0]:8.0f} msg/s   "
              f"1 MB {rates[fsync][1]:6.0f} msg/s")
    print(json.dumps({
        "ray_over_local": round(ray_s / local_s, 4),
        "ray_over_local_96s": round(ray_short_s / local_short_s, 4),
        "short_clips_ray_over_local": round(ray_shorts_s / local_shorts_s, 4),
        "local_s": round(local_s, 2),
        "local_96s_s": round(local_short_s, 2),
        "ray_96s_s": round(ray_short_s, 2),
        "local_short_clips_s": round(local_shorts_s, 2),
        "ray_short_clips_s": round(ray_shorts_s, 2),
        "ray_s": round(ray_s, 2),
        "cluster_start_s": round(cluster_start, 2),
        "msgs_per_s_1kb": round(rates["always"][0], 1),
        "msgs_per_s_1mb": round(rates["always"][1], 1),
        "msgs_per_s_1kb_everysec": round(rates["everysec"][0], 1),
        "msgs_per_s_1mb_everysec": round(rates["everysec"][1], 1),
        "two_streams_speedup": round(speedup, 3),
        "one_stream_s": round(one_s, 2),
        "two_streams_s": round(two_s, 2),
    }))


if __name__ == "__main__":
    main()
