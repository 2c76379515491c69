"""Event-to-alert latency of `vidstorm watch`: a live camera on 127.0.0.1 shows a red circle at known
moments; how long until the alert reaches a webhook receiver and an MQTT subscriber?

    python bench/watch.py [--events 10] [--fps 1] [--live-chunk-frames 4] [--seed 7] [--ray] [key=value ...]

bench/live_scene.py serves MPEG-TS over TCP, paced in real time: clips of the toy family one after
another, EVENTS of them with a red circle, starting at any phase of a chunk. `vidstorm ingest
tcp://... --local --config configs/toy.yaml decode.fps=F decode.live_chunk_frames=N` (--ray: through
Ray + Redis) runs with one keyword rule, "red circle", notifying a local HTTP receiver (this process)
and a real mosquitto broker (a subscriber in this process). Latency of an event = the arrival of the
first alert whose segment overlaps the event clip, minus the moment its first frame went into the
socket. Events no alert covers are counted as missed (the caption did not say "red circle"); alerts
overlapping no event are counted as false.

The last line is one JSON object: webhook and mqtt {p50_s, p95_s, max_s, n}, chunk_s (the live chunk's
duration), target_p95_s (chunk_s + 3), missed and false alerts, the stream's length and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.queue.server import free_port  # noqa: E402


class Webhook:
    def __init__(self):
        self.got: list[tuple[float, dict]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Mqtt:
    def __init__(self, folder: Path):
        import paho.mqtt.client as mqtt

        self.port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.got: list[tuple[float, dict]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("bench/#", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.got.append((time.time(), json.loads(m.payload)))
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        subscribed.wait(10)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()
        self.proc.terminate()
        self.proc.wait(10)


def latencies(events: list[dict], got: list[tuple[float, dict]]) -> tuple[list[float], int, int]:
    """(latency of each event an alert covers, events missed, alerts overlapping no event)."""
    out, missed = [], 0
    for ev in events:
        times = [at for at, a in got if a["t_start"] < ev["t_end"] and a["t_end"] > ev["t_start"]]
        if times:
            out.append(min(times) - ev["wall"])
        else:
            missed += 1
    false = sum(1 for _, a in got if not any(a["t_start"] < e["t_end"] and a["t_end"] > e["t_start"] for e in events))
    return out, missed, false


def summary(values: list[float]) -> dict:
    if not values:
        return {"p50_s": None, "p95_s": None, "max_s": None, "n": 0}
    v = np.asarray(values)
    return {"p50_s": round(float(np.percentile(v, 50)), 3), "p95_s": round(float(np.percentile(v, 95)), 3),
            "max_s": round(float(v.max()), 3), "n": len(values)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--fps", type=float, default=1.0, help="decode.fps (the toy model is trained at 1)")
    ap.add_argument("--live-chunk-frames", type=int, default=4, help="decode.live_chunk_frames")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--config", default=str(ROOT / "configs" / "toy.yaml"))
    ap.add_argument("--ray", action="store_true", help="ingest through Ray + Redis instead of --local")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for the ingest")
    args = ap.parse_args()
    chunk_s = args.live_chunk_frames / args.fps
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vidstorm-watch-bench-") as tmp:
        tmp = Path(tmp)
        hook, broker = Webhook(), Mqtt(tmp)
        data = tmp / "data"
        (data / "watch").mkdir(parents=True)
        (data / "watch" / "red.yaml").write_text(
            f"name: red-circle\nquery: red circle\nmatch: keyword\nstreams: [cam]\n"
            f"notify: ['webhook:{hook.url}', 'mqtt:bench']\n")
        port = free_port()
        scene = subprocess.Popen([sys.executable, str(ROOT / "bench" / "live_scene.py"), str(port), str(args.seed),
                                  str(args.events)], stdout=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in scene.stdout], daemon=True).start()
        assert lines.get(timeout=120).strip() == "listening"
        command = [sys.executable, "-m", "actors.cli", "ingest", f"tcp://127.0.0.1:{port}", "--stream", "cam",
                   "--data", str(data), "--config", args.config, f"decode.fps={args.fps}",
                   f"decode.live_chunk_frames={args.live_chunk_frames}", "decode.reconnect_outage=0",
                   f"watch.mqtt_url=mqtt://127.0.0.1:{broker.port}", "watch.drain_s=30", *args.overrides]
        if not args.ray:
            command.insert(5, "--local")
        ingest = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        scene.wait(60)
        events = []
        while not lines.empty():
            line = lines.get().split()
            if line and line[0] == "event":
                events.append({"t_start": float(line[2]), "t_end": float(line[3]), "wall": float(line[4])})
        time.sleep(1.0)
        broker.stop()
        if ingest.returncode != 0:
            print(ingest.stderr[-3000:], file=sys.stderr)
        captions = subprocess.run([sys.executable, "-m", "actors.cli", "segments", "cam", "--data", str(data)],
                                  cwd=ROOT, capture_output=True, text=True).stdout
        from pipeline.store.query import StoreQuery

        q = StoreQuery(data / "store")
        rows = q.segments("cam")
        q.close()
        # where the time goes: a segment is stored this long after its chunk's last frame was sent
        # (wall_clock is its first frame's time; n_frames / fps later the chunk is complete)
        stored_after = [r["created_at"].timestamp() - (r["wall_clock"].timestamp() + (r["n_frames"] - 1) / args.fps)
                        for r in rows if r["wall_clock"] is not None]
    result = {"path": "ray" if args.ray else "local", "chunk_s": chunk_s, "target_p95_s": chunk_s + 3.0,
              "events": len(events), "stream_s": events and max(e["t_end"] for e in events)}
    for name, got in (("webhook", hook.got), ("mqtt", broker.got)):
        values, missed, false = latencies(events, got)
        result[name] = {**summary(values), "missed": missed, "false_alerts": false, "alerts": len(got)}
        print(f"{name}: " + ", ".join(f"{v:.2f}" for v in sorted(values)), file=sys.stderr)
    print(captions[-4000:], file=sys.stderr)
    result["stored_after_chunk_s"] = summary(stored_after)
    result["wall_s"] = round(time.time() - started, 1)
    result["p50_s"] = {k: result[k]["p50_s"] for k in ("webhook", "mqtt")}
    result["p95_s"] = {k: result[k]["p95_s"] for k in ("webhook", "mqtt")}
    print(json.dumps(result, sort_keys=True))
    return 0 if ingest.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
