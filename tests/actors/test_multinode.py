"""A real two-node Ray cluster on this machine, as an operator runs one: `ray start --head` and a
second `ray start --address=...` with its own raylet, token authentication, Redis with a password,
and `vidstorm ingest --config <cluster config>` as a driver that connects to them.

With workers.scheduling=spread the runtime pins the stage actors round-robin to the two nodes, so the
second node holds some of them. Losing it mid-run must cost nothing: the supervisor makes its actors
again on the head, the run completes there, and the stored rows equal an uninterrupted run.

Every process here is ours: started with a fresh token, each node in a session of its own, and
stopped by PID (`ray stop` would stop every Ray on the machine).
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import redis

from pipeline.config import load_config
from pipeline.decode import Source
from pipeline.ingest import LocalIngest
from pipeline.queue.server import EmbeddedRedis, free_port, free_ports
from test_distributed import CHUNKS, _rows, clips  # noqa: F401  (clips: a fixture)

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
PREFIX = "mn"
# One actor of each stage (five), round-robin over the nodes. (Ray's default placement favours the
# driver's node, the head, for actors that reserve no CPUs: which stages reach the second would be chance.)
WORKERS = {"decoders": 1, "encoders": 1, "temporal": 1, "summarizers": 1, "scheduling": "spread"}
# GCS declares a silent node dead after period x threshold (default 3 s x 5, after a 5 s grace)
FAST_NODE_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                   "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}


_TAKEN: set[int] = set()


def taken_ports(n: int) -> list[int]:
    """n free ports, distinct from each other and from every port handed to a node of this module
    (the head's, the dashboard's and each node's six), so no two Ray components are given one."""
    ports = free_ports(n, exclude=_TAKEN)
    _TAKEN.update(ports)
    return ports


class RayNode:
    """One `ray start --block` we own. It runs in a session of its own; stop() ends it (SIGTERM: Ray
    takes its node down), kill() takes the node away at once, as a machine that lost power."""

    def __init__(self, args: list[str], env: dict, temp_dir: Path):
        temp_dir.mkdir(parents=True, exist_ok=True)
        self.log = temp_dir / "ray-start.log"
        flags = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
        ports = list(zip(flags, map(str, taken_ports(len(flags)))))
        self.args = [RAY, "start", "--block", *args, "--node-ip-address", "127.0.0.1", "--temp-dir",
                     str(temp_dir), "--num-cpus", "1", "--object-store-memory", str(100 * 2**20),
                     "--disable-usage-stats", *[x for flag_port in ports for x in flag_port]]
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "RayNode":
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"ray start failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """`ray start` and everything it started (GCS, raylet, agents, the actors' workers): the
        processes of its session, orphans included."""
        ours = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.proc.pid:
                    ours.append(p)
            except (ProcessLookupError, PermissionError):
                pass
        return ours

    def actors(self) -> list[str]:
        """Names of the vidstorm actors whose worker processes run on this node (ray::EncoderActor ...)."""
        names = []
        for p in self.processes():
            try:
                name = p.cmdline()[0] if p.cmdline() else p.name()
            except psutil.NoSuchProcess:
                continue
            if name.startswith("ray::") and "Actor" in name and "Agent" not in name:
                names.append(name.split()[0].removeprefix("ray::").split(".")[0])
        return sorted(names)

    def kill(self) -> list[str]:
        """SIGKILL every process of the node (by PID). Returns the actors that were on it."""
        victims, on_it = self.processes(), self.actors()
        _kill(victims)
        self.proc.wait(timeout=10)
        return on_it

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        ours = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, left = psutil.wait_procs(ours, timeout=timeout)
        left += [p for p in self.processes() if p not in ours]
        _kill(left)  # whatever Ray did not take down itself
        self.proc.wait(timeout=10)
        self.proc = None


def _kill(processes: list) -> None:
    """SIGKILL these processes (by PID) and wait for them."""
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


class TwoNodeCluster:
    """A head node and a worker node joined with one token, and Redis with a password."""

    def __init__(self, root: Path):
        self.root = root
        self.token = secrets.token_hex(16)  # fresh for each run of the suite; never stored in the repo
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0", **FAST_NODE_DEATH}
        self.port, dashboard_port = taken_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        self.head = RayNode(["--head", "--port", str(self.port), "--include-dashboard", "false",
                             "--dashboard-port", str(dashboard_port)], self.env, root / "head")
        self.worker: RayNode | None = None
        self.redis = EmbeddedRedis(root / "redis", password=secrets.token_hex(12))

    def start(self) -> "TwoNodeCluster":
        self.redis.start()
        self.head.start()
        return self

    def ensure_worker(self) -> RayNode:
        """A live second node registered with the head (a new one after a test killed the last)."""
        if self.worker is None or not self.worker.alive():
            self.worker = RayNode(["--address", self.address], self.env,
                                  self.root / f"worker-{time.monotonic_ns()}").start()
            deadline = time.monotonic() + 60
            while self.alive_nodes() < 2:
                assert time.monotonic() < deadline, "the worker node never joined the head"
                time.sleep(0.5)
        return self.worker

    def alive_nodes(self) -> int:
        done = subprocess.run([RAY, "status", "--address", self.address], env=self.env, capture_output=True,
                              text=True, timeout=60)
        active = done.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(line.strip().startswith("1 node_") for line in active.splitlines())

    def stop(self) -> None:
        for node in (self.worker, self.head):
            if node is not None:
                node.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    # a short path: Ray's unix sockets live under --temp-dir, and pytest's tmp paths are long
    root = Path(tempfile.mkdtemp(prefix="vs-mn-", dir="/tmp"))
    cluster = TwoNodeCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, clips, tiny_overrides, tiny_processor):  # noqa: F811
    """What an uninterrupted run stores for cam-a (the in-process --local path: the same rows as a
    distributed run, tests/actors/test_distributed.py)."""
    data = tmp_path_factory.mktemp("local")
    runner = LocalIngest(load_config(None, tiny_overrides), tiny_processor, data, log=lambda m: None)
    assert runner.run(Source(str(clips["cam-a"]), "cam-a")).status == "done"
    return _rows(data / "store")


def _cluster_config(cluster: TwoNodeCluster, folder: Path) -> tuple[Path, str]:
    """The cluster config an operator writes (addresses; the Redis password from the environment),
    and the queue prefix it gives this run."""
    prefix = f"{PREFIX}{secrets.token_hex(3)}"
    workers = "".join(f"\n  {key}: {value}" for key, value in WORKERS.items())
    path = folder / "cluster.yaml"
    path.write_text(f"""\
ray:
  address: {cluster.address}
redis:
  url: redis://:${{oc.env:REDIS_PASSWORD}}@127.0.0.1:{cluster.redis.port}/0
queue:
  prefix: {prefix}
  reclaim_idle_s: 1
  max_in_flight: 2
workers:{workers}
""")
    return path, prefix


def _ingest(cluster, config: Path, data: Path, clip: Path, tiny_overrides, env: dict | None = None):
    """`vidstorm ingest --config config` as a separate driver process; what it says goes to
    data/ingest.log (a file, not a pipe nobody reads while the test watches Redis)."""
    env = {**(env if env is not None else cluster.env), "REDIS_PASSWORD": cluster.redis.password}
    cmd = [sys.executable, "-m", "actors.cli", "ingest", str(clip), "--config", str(config),
           "--data", str(data), *tiny_overrides]
    data.mkdir(parents=True, exist_ok=True)
    with open(data / "ingest.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = data / "ingest.log"
    return proc


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for the driver; its exit code and what it said."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # our driver, by its PID
        proc.wait()
        raise AssertionError(f"vidstorm ingest did not finish in {timeout:.0f}s:\n"
                             f"{proc.log.read_text()[-3000:]}") from None
    return proc.returncode, proc.log.read_text()


def _progress(r: redis.Redis, prefix: str, role: str) -> int:
    """Messages a stage has handed on (the writer: rows stored)."""
    name = f"{prefix}-writer" if role == "writer" else f"{prefix}-{role}-0"
    return int(r.hget(f"{prefix}:progress", name) or 0)


def test_ingest_on_a_two_node_cluster_places_stages_on_both(ray_cluster, clips, uninterrupted,  # noqa: F811
                                                             tiny_overrides, tmp_path):
    worker = ray_cluster.ensure_worker()
    config, prefix = _cluster_config(ray_cluster, tmp_path)
    r = redis.Redis.from_url(ray_cluster.redis.url)
    proc = _ingest(ray_cluster, config, tmp_path / "data", clips["cam-a"], tiny_overrides)
    while proc.poll() is None and _progress(r, prefix, "writer") < 2:
        time.sleep(0.2)
    placed = {"head": ray_cluster.head.actors(), "worker": worker.actors()}
    code, err = _finish(proc, timeout=240)
    assert code == 0, err
    assert "cam-a: 10 chunks" in err and "on a restarted actor" not in err
    assert placed["worker"] and placed["head"], placed  # both nodes ran stages
    assert _rows(tmp_path / "data" / "store") == uninterrupted


def test_losing_a_node_mid_run_loses_and_doubles_nothing(ray_cluster, clips, uninterrupted,  # noqa: F811
                                                         tiny_overrides, tmp_path):
    worker = ray_cluster.ensure_worker()
    config, prefix = _cluster_config(ray_cluster, tmp_path)
    r = redis.Redis.from_url(ray_cluster.redis.url)
    proc = _ingest(ray_cluster, config, tmp_path / "data", clips["cam-a"], tiny_overrides)
    deadline = time.monotonic() + 180
    # some rows stored, and work left
    while not (_progress(r, prefix, "writer") >= 2 and _progress(r, prefix, "temporal") <= CHUNKS - 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended or stalled before the kill"
        time.sleep(0.05)
    on_worker = worker.kill()
    assert on_worker, "no stage ran on the killed node"
    code, err = _finish(proc, timeout=240)
    assert code == 0, err
    # the dead node's calls were made again, on the head: a line per outage, not one per retry
    assert 1 <= err.count("on a restarted actor") <= 2 * len(on_worker), err
    assert not worker.alive() and ray_cluster.alive_nodes() == 1
    assert _rows(tmp_path / "data" / "store") == uninterrupted


@pytest.mark.parametrize("case", ["no token", "wrong token", "token mode without a token",
                                  "token file missing"])
def test_a_missing_or_wrong_ray_token_is_one_clear_line(ray_cluster, clips, tiny_overrides,  # noqa: F811
                                                        tmp_path, case):
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    if case == "wrong token":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    elif case == "token mode without a token":  # nor ~/.ray/auth_token (which may exist on this machine)
        env.update(RAY_AUTH_MODE="token", HOME=str(tmp_path))
    elif case == "token file missing":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "none"))
    config, _ = _cluster_config(ray_cluster, tmp_path)
    proc = _ingest(ray_cluster, config, tmp_path / "data", clips["cam-a"], tiny_overrides, env)
    code, err = _finish(proc, timeout=120)
    assert code == 2, err
    said = [line for line in err.splitlines() if not line.startswith("note: ")]  # (untrained models)
    assert len(said) == 1, err  # no traceback, no Ray warning a second
    at, unset = f"the Ray cluster at {ray_cluster.address}", "RAY_AUTH_MODE=token but no Ray token is set"
    expected = {"no token": f"{at} requires a token: set RAY_AUTH_MODE=token",
                "wrong token": f"{at} refused the token in RAY_AUTH_TOKEN",
                "token mode without a token": f"{unset}: set RAY_AUTH_TOKEN",
                "token file missing": f"{unset} ({tmp_path / 'none'}, in RAY_AUTH_TOKEN_PATH, is"}[case]
    assert said[0].startswith(f"vidstorm: error: {expected}"), said[0]
    assert ray_cluster.token not in err and ray_cluster.redis.password not in err


def test_an_unreachable_head_is_one_clear_line_at_once():
    """(ray.init would retry for ~40 s, a warning a second, then say only "Failed to connect".)"""
    from actors.runtime import check_ray_cluster
    from pipeline.errors import VidstormError

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(VidstormError, match=rf"cannot reach Ray at {address} \(Connection refused\): is its"):
        check_ray_cluster(address)
