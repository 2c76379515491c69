"""A real MQTT broker (Debian's mosquitto), started and stopped by PID, and a subscriber to it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from pipeline.queue.server import free_port


class Broker:
    def __init__(self, folder, port: int | None = None):
        self.folder, self.port, self.proc = folder, port or free_port(), None

    def start(self) -> "Broker":
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.folder / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read().decode()
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Subscriber:
    """A paho client subscribed to a topic filter, collecting (topic, JSON payload)."""

    def __init__(self, url_port: int, topic: str):
        import json

        import paho.mqtt.client as mqtt

        self.messages = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        ready = []
        self.client.on_connect = lambda c, u, f, rc, p=None: (c.subscribe(topic, qos=1), ready.append(1))
        self.client.on_subscribe = lambda *a: ready.append(2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", url_port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while 2 not in ready and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait(self, n: int, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
