"""Serve a generated clip as a live MPEG-TS stream on 127.0.0.1, paced in real time.

    python live_server.py tcp://127.0.0.1:PORT?listen=1 SECONDS [FPS]

The server listens on PORT, prints "listening", waits for one client, prints
"playing <unix time>" once it has connected, plays SECONDS of video at wall-clock
pace from then, closes the connection (the end of the stream), prints
"ended <unix time>" and exits. (FFmpeg's own `listen=1` output returns before a
client connects and would send the frames it paced meanwhile as one burst, so
the socket is accepted here and PyAV writes the stream into it.)
"""

import socket
import sys
import time
from fractions import Fraction
from urllib.parse import urlsplit

import av

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from pipeline.synth import SocketWriter, frame_image  # noqa: E402


def main():
    url, seconds = urlsplit(sys.argv[1]), float(sys.argv[2])
    fps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((url.hostname, url.port))
    listener.listen(1)
    print("listening", flush=True)
    conn, _ = listener.accept()
    listener.close()
    print(f"playing {time.time():.3f}", flush=True)
    with conn, av.open(SocketWriter(conn), "w", format="mpegts", buffer_size=188 * 8) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.gop_size = fps
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        start = time.monotonic()
        for i in range(int(seconds * fps)):
            delay = start + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = av.VideoFrame.from_ndarray(frame_image(i, 160, 120), format="rgb24")
            frame.pts, frame.time_base = i * 1000 // fps, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    print(f"ended {time.time():.3f}", flush=True)


if __name__ == "__main__":
    main()
