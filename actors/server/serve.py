"""`vidstorm serve`: the composition root of the HTTP service (config -> token, embedder, store, the
scheduler's board and the ingest progress in Redis -> a bound socket -> uvicorn)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path


from actors.server.media import ClipCache
from pipeline.errors import VidstormError

from actors.server.app import create_app

log = logging.getLogger("vidstorm.api")


def serve(args) -> int:
    """`vidstorm serve`: config -> app -> uvicorn on a bound socket. Returns 0 on Ctrl-C."""
    import uvicorn

    from pipeline.config import load_config
    from pipeline.models.text_embed import TextEmbedder

    cfg = load_config(args.config, args.overrides)
    token = (cfg.api.token or os.environ.get("VIDSTORM_API_TOKEN", "")).strip() or None
    host = args.host or cfg.api.host
    port = cfg.api.port if args.port is None else args.port
    if not token:
        host = "127.0.0.1"
        print("vidstorm serve: no API token set (api.token or VIDSTORM_API_TOKEN): "
              "listening on 127.0.0.1 only", file=sys.stderr, flush=True)
    store = Path(args.data) / "store"
    sock = _listen(host, port)  # first: a taken port fails before the models load
    try:
        app = create_app(store, token, TextEmbedder(cfg.store.text_model),
                         _run_requester(cfg, args.jobs, args.data), refresh_s=cfg.api.refresh_s,
                         max_limit=cfg.api.max_limit, index_min_vectors=cfg.store.index_min_vectors,
                         index_nprobe=cfg.store.index_nprobe, media_ttl_s=cfg.api.media_url_ttl_s,
                         clip_max_seconds=cfg.api.clip_max_seconds,
                         clip_cache=ClipCache(Path(args.data) / "clip-cache", cfg.api.clip_cache_mb << 20),
                         progress=_progress_reader(cfg, args.data), schedules=_schedules_reader(cfg, args.jobs, args.data))
        bound_host, bound_port = sock.getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"vidstorm serve: http://{url_host}:{bound_port} (store {store}; "
              "schema at /openapi.json, docs at /docs)", file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the SIGINT it caught
        pass
    finally:
        sock.close()
    return 0


def _run_requester(cfg, jobs_dir: str | None, data_dir: str | Path) -> Callable[[str], str]:
    """POST /jobs/{name}/run -> a manual run on the job board that the scheduler(s) of `data_dir` read.
    Specs come from `jobs_dir` (default scheduler.jobs_dir) and DATA/jobs, as for `vidstorm jobs`."""
    import redis

    from actors.runtime.scheduler import request_run
    from pipeline.secrets import mask_secrets
    from pipeline.jobs.spec import load_specs, spec_folders

    def request(name: str) -> str:
        # read per request: a job added with `vidstorm jobs add` needs no restart
        specs = load_specs(spec_folders(jobs_dir or cfg.scheduler.jobs_dir, data_dir))
        try:
            return request_run(cfg, data_dir, specs, name)
        except redis.RedisError as err:
            message = f"cannot reach the scheduler's job board in Redis: {err}"
            raise VidstormError(mask_secrets(message)) from None

    return request


def _progress_reader(cfg, data_dir: str | Path) -> Callable[[], tuple[list[dict], str | None]]:
    """GET /progress: what the stages of distributed ingests on this data directory (or cfg.redis.url)
    write to Redis. No Redis running: no ingest is running either."""
    import redis

    from actors.runtime import ingest_progress
    from pipeline.secrets import mask_secrets
    from pipeline.queue.server import redis_url_for

    def read() -> tuple[list[dict], str | None]:
        url = redis_url_for(cfg, data_dir)
        if not url:
            return [], None
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
            return ingest_progress(client, cfg.queue.prefix), None
        except (redis.RedisError, VidstormError) as err:
            return [], mask_secrets(f"cannot read ingest progress from Redis: {err}")

    return read


def _schedules_reader(cfg, jobs_dir: str | None, data_dir: str | Path) -> Callable[[], list[dict]]:
    from pipeline.jobs.spec import load_specs, spec_folders

    def read() -> list[dict]:  # per request, like POST .../run: `vidstorm jobs add` needs no restart
        specs = load_specs(spec_folders(jobs_dir or cfg.scheduler.jobs_dir, data_dir))
        return [{"name": s.name, "kind": s.kind, "schedule": s.schedule, "timezone": s.timezone}
                for s in sorted(specs.values(), key=lambda s: s.name)]

    return read


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one VidstormError line (port taken, unknown host, ...)."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # bound and listening before the startup line: early clients wait in the backlog
    except (OSError, OverflowError) as err:
        if sock is not None:
            sock.close()
        reason = getattr(err, "strerror", None) or str(err)
        raise VidstormError(f"cannot listen on {host}:{port}: {reason}; pick another --host/--port") from None
    return sock
