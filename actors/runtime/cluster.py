"""Where the stages run: Ray (local or a cluster) and Redis (embedded or `redis.url`).

Embedded default: with no `redis.url` a real redis-server starts in the data
directory, and with no `ray.address` a local Ray starts; both stop on exit, on
error and on Ctrl-C. A cluster is a config change (ray.address, redis.url).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import Config
from pipeline.secrets import mask_secrets
from pipeline.errors import VidstormError
from pipeline.queue import connect, retrying
from pipeline.queue.server import EmbeddedRedis, redis_url_for


ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0}


def worker_env(cfg: Config) -> dict:
    """Environment of every Ray worker we start (actors, digest tasks)."""
    # Workers share cores: threads that spin while waiting would steal them from the others.
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    if cfg.workers.torch_threads > 0:
        env["OMP_NUM_THREADS"] = str(cfg.workers.torch_threads)
    for var in ("VIDSTORM_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY"):
        if var in os.environ:
            env[var] = os.environ[var]
    return env


def init_ray(cfg: Config, **options) -> None:
    """ray.init for one command: a local Ray, or the cluster at `ray.address`. Failures are one line."""
    import ray

    address = cfg.ray.address
    if address and address != "auto" and "://" not in address:
        check_ray_cluster(address)
    try:
        ray.init(address=address or None, namespace=cfg.ray.namespace, include_dashboard=False,
                 configure_logging=False, **options)
    except Exception as err:
        first = str(err).splitlines()[0]
        raise VidstormError(f"cannot start or reach Ray ({address or 'local'}): {first}") from None


def check_ray_cluster(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, at once, where ray.init would retry for 20-40 s, print a warning a second
    and then say only "Failed to connect": the head unreachable, or its token missing or wrong.

    A Ray started with token authentication (`ray start --head` does so by default) serves only
    clients with RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), and Ray reads these for an explicit address from the environment alone.
    """
    import socket

    import ray

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port; ray.init says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise VidstormError(f"cannot reach Ray at {address} ({err.strerror or err}): is its "
                            f"head running (`ray start --head`), and is ray.address its host:port?") from None
    try:
        from ray._raylet import (AuthenticationMode, AuthenticationTokenLoader, GcsClient,
                                 get_authentication_mode)
    except ImportError:  # a Ray without token authentication
        return
    use_token = get_authentication_mode() == AuthenticationMode.TOKEN
    set_token = "set RAY_AUTH_TOKEN to the token the cluster was started with"
    if use_token and not _has_ray_token(AuthenticationTokenLoader.instance()):
        # (Ray's own client aborts the process here, from C++, with a stack trace)
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        where = f" ({path}, in RAY_AUTH_TOKEN_PATH, is missing or empty)" if path else ""
        raise VidstormError(f"RAY_AUTH_MODE=token but no Ray token is set{where}: {set_token}")
    try:
        with _quiet_stderr():  # Ray's C++ client logs each refused attempt to fd 2 itself
            GcsClient(address=address)
    except ray.exceptions.AuthenticationError:
        if not use_token:
            raise VidstormError(f"the Ray cluster at {address} requires a token: set RAY_AUTH_MODE=token and "
                                f"RAY_AUTH_TOKEN to the token the cluster was started with") from None
        held = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN")
                else os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
        raise VidstormError(f"the Ray cluster at {address} refused the token in {held}: "
                            f"{set_token}") from None
    except ray.exceptions.RpcError as err:  # something listens there, not a Ray head (after ~40 s)
        raise VidstormError(f"no Ray head answers at {address} ({str(err).splitlines()[0].rstrip('.')}): "
                            f"is ray.address the head's host:port (`ray start --head --port`)?") from None
    except Exception:  # anything else: ray.init says what it is
        return


def _has_ray_token(loader) -> bool:
    import ray

    try:
        return loader.has_token(ignore_auth_mode=True)
    except ray.exceptions.AuthenticationError:  # RAY_AUTH_TOKEN_PATH names no readable token
        return False


@contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for a moment (C++ writes there directly, past sys.stderr)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Cluster:
    """Redis + Ray for one command. `with Cluster(cfg, data) as cluster: ...`"""

    def __init__(self, cfg: Config, data_dir: str | Path, log=print, with_ray: bool = True, join: bool = False):
        """with_ray=False: Redis only. join=True: use the embedded Redis a scheduler runs in this
        data directory, if there is one (its jobs board lives there)."""
        self.cfg, self.data_dir, self.log = cfg, Path(data_dir), log
        self.with_ray, self.join = with_ray, join
        self.redis_server: EmbeddedRedis | None = None
        self.started_ray = False
        self.redis_url = cfg.redis.url

    def start(self) -> "Cluster":
        import ray

        if not self.redis_url and self.join:
            self.redis_url = redis_url_for(self.cfg, self.data_dir)
        if not self.redis_url:
            self.redis_server = EmbeddedRedis(self.data_dir / "redis", appendfsync=self.cfg.redis.appendfsync).start()
            self.redis_url = self.redis_server.url
        try:
            retrying(lambda: connect(self.redis_url).ping(), give_up_after=10)
        except Exception as err:
            self.stop()
            raise VidstormError(f"cannot reach Redis at {mask_secrets(self.redis_url)}: {err}") from None
        if self.with_ray and not ray.is_initialized():
            try:
                init_ray(self.cfg, log_to_driver=False)
            except VidstormError:
                self.stop()
                raise
            self.started_ray = True
        return self

    def stop(self) -> None:
        import ray

        if self.started_ray and ray.is_initialized():
            ray.shutdown()
            self.started_ray = False
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
