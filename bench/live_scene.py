"""A live camera for bench/watch.py: MPEG-TS over TCP on 127.0.0.1, paced in real time, showing clips of the
toy family (`vidstorm synth-data`'s direction clips, one after another) in which a red circle appears
at known moments.

    python bench/live_scene.py PORT SEED EVENTS

Plans direction clips of 3-7 s at 10 fps, 160 x 160 (pipeline/train/synthqa.py): EVENTS of them show
a red circle, the others any other shape; each event follows one or two other clips, so events start
at any phase of a chunk. Prints "listening", waits for one client, then "event <i> <t_start> <t_end>
<unix time>" when the first frame of event clip i goes into the socket (the moment a camera would see
it; t in seconds of the stream), and "ended <unix time>". x264 runs with tune=zerolatency and the
muxer flushes every packet, so nothing is held back on this side.
"""

from __future__ import annotations

import socket
import sys
import time
from fractions import Fraction

import av
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from pipeline.synth import SocketWriter  # noqa: E402
from pipeline.train.synthqa import plan_dataset  # noqa: E402
from pipeline.train.synthrender import render_frames  # noqa: E402

FPS, SIZE = 10, 160


def is_event(spec) -> bool:
    return any(s.colour == "red" and s.kind == "circle" for s in spec.shapes)


def plan_scene(seed: int, events: int) -> list:
    """The clips in stream order: one or two others, then an event, `events` times; then one other."""
    pool = plan_dataset(400, seed, splits=(1, 0, 0), tasks=("direction",), size_range=(SIZE, SIZE),
                        fps_range=(FPS, FPS), duration_range=(3.0, 7.0), control_frac=0.0)
    hits = [s for s in pool if is_event(s)]
    others = [s for s in pool if not any(sh.colour == "red" or sh.kind == "circle" for sh in s.shapes)]
    rng = np.random.default_rng(seed)
    scene = []
    for i in range(events):
        scene += [others.pop() for _ in range(1 + int(rng.integers(0, 2)))]
        scene.append(hits[i])
    return scene + [others.pop()]


def main() -> None:
    port, seed, events = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    scene = plan_scene(seed, events)
    frames = [list(render_frames(spec)) for spec in scene]  # rendered before anyone connects
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    print("listening", flush=True)
    conn, _ = listener.accept()
    listener.close()
    with conn, av.open(SocketWriter(conn), "w", format="mpegts", buffer_size=188 * 8,
                       options={"flush_packets": "1"}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.gop_size = FPS
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        start, i, event = time.monotonic(), 0, 0
        for spec, clip in zip(scene, frames):
            t0 = i / FPS
            for k, image in enumerate(clip):
                delay = start + i / FPS - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                vf = av.VideoFrame.from_ndarray(image, format="rgb24")
                vf.pts, vf.time_base = i * 1000 // FPS, Fraction(1, 1000)
                for packet in stream.encode(vf):
                    out.mux(packet)
                if k == 0 and is_event(spec):
                    print(f"event {event} {t0:.3f} {t0 + len(clip) / FPS:.3f} {time.time():.3f}", flush=True)
                    event += 1
                i += 1
        for packet in stream.encode():
            out.mux(packet)
    print(f"ended {time.time():.3f}", flush=True)


if __name__ == "__main__":
    main()
