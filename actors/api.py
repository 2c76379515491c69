"""The HTTP query service (`vidstorm serve`): FastAPI over StoreQuery, run by uvicorn.

    create_app(...)  the logic: routes, auth, errors; explicit arguments, tests call it directly
    serve(args)      the composition root: config -> token, embedder, store -> a bound socket -> uvicorn

Every error is JSON {"error": "<one line saying what is wrong>"}; bad parameters are 4xx, never 5xx.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import math
import os
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.media import ClipCache, MediaSigner, NoClip, clip_source, thumbnail_path
from pipeline.errors import VidstormError
from pipeline.store.query import QueryError, StoreQuery
from pipeline.store.schema import JOBS, LISTED, SEGMENTS, SUMMARIES

log = logging.getLogger("vidstorm.api")

NO_SCHEDULER = "no scheduler is reachable: start `vidstorm scheduler`"
COMPARISONS = {"less_than_equal": "<=", "greater_than_equal": ">=", "less_than": "<", "greater_than": ">"}
TIME_HELP = "video seconds (90), H:MM:SS (0:01:30), or an ISO date-time (2026-01-02T03:04:05Z)"


# --- response bodies (they are the OpenAPI schema the fuzz test checks answers against) ---


class ErrorBody(BaseModel):
    error: str


class Stream(BaseModel):
    stream_id: str
    segments: int
    t_start: float | None
    t_end: float | None
    last_update: dt.datetime | None
    thumbnail_url: str | None = None  # its latest segment's thumbnail (signed when a token is set)
    summary: str | None = None  # its stream summary, once written


def _columns_model(name: str, schema: pa.Schema, keys: tuple[str, ...], listed: tuple[str, ...] | None = None,
                   defaults: bool = False, base: type[BaseModel] | None = None) -> type[BaseModel]:
    """A response model whose fields are a stored table's columns (store/schema.py; `listed`: those
    a listing returns): keys required, the rest nullable (default None when `defaults`)."""
    python = {pa.types.is_string: str, pa.types.is_integer: int, pa.types.is_floating: float,
              pa.types.is_timestamp: dt.datetime}
    found = {}
    for column in schema:
        if listed is not None and column.name not in listed:
            continue
        kind = next(t for test, t in python.items() if test(column.type))
        if column.name in keys:
            found[column.name] = (kind, ...)
        else:
            found[column.name] = (kind | None, None if defaults else ...)
    return create_model(name, __base__=base, **found) if base else create_model(name, **found)


class MediaUrls(BaseModel):
    thumbnail_url: str | None = None  # GET it as it is: signed when a token is set (short-lived)
    clip_url: str | None = None  # an MP4 of the span (file sources only)


Segment = _columns_model("Segment", SEGMENTS, keys=("stream_id", "chunk_seq"), listed=LISTED["segments"],
                         base=MediaUrls)
Summary = _columns_model("Summary", SUMMARIES, keys=("stream_id", "level", "seq"), listed=LISTED["summaries"])
Job = _columns_model("Job", JOBS, keys=("job_id",), defaults=True)


class Hit(MediaUrls):
    stream_id: str
    level: str  # chunk | window | stream | period
    seq: int
    t_start: float | None
    t_end: float | None
    text: str | None
    score: float | None  # cosine similarity; null only if a stored vector was not finite


class StreamList(BaseModel):
    items: list[Stream]


class SegmentPage(BaseModel):
    items: list[Segment]
    next_cursor: str | None  # pass back as `cursor` for the next page; null on the last page


class HitList(BaseModel):
    items: list[Hit]


class SummaryList(BaseModel):
    items: list[Summary]


class JobList(BaseModel):
    items: list[Job]


class RunRequested(BaseModel):
    run_id: str


class Schedule(BaseModel):
    name: str
    kind: str
    schedule: str  # cron
    timezone: str
    next_run: dt.datetime | None
    last_status: str | None
    last_started_at: dt.datetime | None
    last_finished_at: dt.datetime | None


class ScheduleList(BaseModel):
    items: list[Schedule]


class StreamProgress(BaseModel):
    stream_id: str
    source: str
    done_s: float  # video seconds stored, from the start of the source
    total_s: float | None  # the source's length (None: live, or not known yet)
    fraction: float | None
    x_realtime: float | None  # video seconds per wall second of this run
    eta_s: float | None
    decoded_s: float | None


class ProgressList(BaseModel):
    items: list[StreamProgress]
    note: str | None = None  # why the list may be incomplete (e.g. Redis unreachable)


POST_HEADER = "X-Vidstorm-Request"  # state-changing requests need it: a cross-site form cannot send it
WEB = Path(__file__).parent / "web"


# --- the app ---


def create_app(
    store_root: str | Path,
    token: str | None,
    embedder,
    run_requester: Callable[[str], str] | None = None,
    refresh_s: float = 5.0,
    max_limit: int = 1000,
    index_min_vectors: int = 50000,
    index_nprobe: int = 32,
    media_ttl_s: float = 3600.0,
    clip_max_seconds: float = 300.0,
    clip_cache: ClipCache | None = None,
    progress: Callable[[], tuple[list[dict], str | None]] | None = None,
    schedules: Callable[[], list[dict]] | None = None,
) -> FastAPI:
    """The query service over the store at `store_root`.

    token: bearer token every endpoint but the OpenAPI schema/docs requires; None or "" = no auth.
    embedder: has embed(list[str]) -> (n, dim) float32, for /search.
    run_requester: name -> run_id, asks the scheduler for a run; raises KeyError for an unknown
        job and VidstormError when the scheduler cannot be reached. None: POST .../run answers 503.
    refresh_s: a background thread (started by the app's lifespan) picks up new Parquet files this often.
    index_min_vectors, index_nprobe: StoreConfig's, for the vector index of meaning-based search.
    media_ttl_s: how long the signed thumbnail/clip URLs in answers stay valid (token mode).
    clip_max_seconds, clip_cache: GET /clip's longest span, and where cut clips are kept (default: a
        temporary folder, 256 MB).
    progress: () -> (rows, note) of running distributed ingests (stages.ingest_progress); None: none.
    schedules: () -> the job specs [{name, kind, schedule, timezone}]; None: no jobs known.
    """
    query = StoreQuery(store_root, index_min_vectors=index_min_vectors, index_nprobe=index_nprobe)
    signer = MediaSigner(token, media_ttl_s)
    if clip_cache is None:
        import tempfile

        clip_cache = ClipCache(Path(tempfile.gettempdir()) / f"vidstorm-clips-{os.getuid()}", 256 << 20)
    stop = threading.Event()  # set when the app shuts down (or by whoever runs it without its lifespan)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        refresher = threading.Thread(target=_refresh_loop, args=(query, refresh_s, stop),
                                     name="store-refresh", daemon=True)
        refresher.start()
        try:
            yield
        finally:
            stop.set()
            refresher.join(timeout=10)
            query.close()

    app = FastAPI(title="vidstorm", version=_version(), lifespan=lifespan,
                  description="Segments, summaries, meaning-based search and jobs of a vidstorm store.")
    app.state.query, app.state.stop = query, stop  # a host that never ends the lifespan: stop.set(), close()
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(QueryError, _bad_query)
    app.add_exception_handler(Exception, _internal_error)

    errors = {400: {"model": ErrorBody}, 422: {"model": ErrorBody}}
    if token:
        errors[401] = {"model": ErrorBody, "description": "missing or wrong bearer token"}
    router = APIRouter(dependencies=[Depends(_bearer_check(token))] if token else [], responses=errors)
    limit_param = Query(100, ge=1, le=max_limit, description="rows per page")

    def known_stream(stream: str | None) -> None:
        if stream and not query.has_stream(stream):
            raise HTTPException(404, f"unknown stream {stream!r}")

    def with_media(rows: list[dict], seq_key: str) -> list[dict]:
        """Listed rows with their thumbnail and clip URLs (chunk rows: the segment's own span)."""
        sources = {}
        for row in rows:
            has = row.pop("has_thumbnail", False)
            if row.get("level", "chunk") == "chunk":
                stream = row["stream_id"]
                if stream not in sources:
                    sources[stream] = query.stream_source(stream)
                row["thumbnail_url"] = signer.url(thumbnail_path(stream, row[seq_key])) if has else None
                row["clip_url"] = clip_url(stream, sources[stream], row["t_start"], row["t_end"])
        return rows

    def clip_url(stream_id: str, source: str | None, since, until) -> str | None:
        if not source or "://" in source or since is None or until is None or until - since > clip_max_seconds:
            return None
        return signer.url("/clip", {"stream": stream_id, "since": f"{since:.3f}", "until": f"{until:.3f}"})

    @router.get("/streams", response_model=StreamList)
    def streams():
        rows = query.streams()
        latest = query.latest_thumbnails()
        summaries = {r["stream_id"]: r["text"] for r in query.summaries(level="stream")}
        for row in rows:
            seq = latest.get(row["stream_id"])
            row["thumbnail_url"] = None if seq is None else signer.url(thumbnail_path(row["stream_id"], seq))
            row["summary"] = summaries.get(row["stream_id"])
        return {"items": _plain(rows)}

    @router.get("/segments", response_model=SegmentPage, responses={404: {"model": ErrorBody}})
    def segments(
        stream: str | None = Query(None, description="only this stream"),
        since: str | None = Query(None, description=f"rows that end after this: {TIME_HELP}"),
        until: str | None = Query(None, description=f"rows that start before this: {TIME_HELP}"),
        q: str | None = Query(None, description="captions holding every one of these words (any case)"),
        limit: int = limit_param,
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ):
        after = _decode_cursor(cursor) if cursor else None
        known_stream(stream)
        rows = query.segments(stream, since, until, limit + 1, q=q or None, after=after)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["stream_id"], rows[-1]["chunk_seq"]) if more else None
        return {"items": _plain(with_media(rows, "chunk_seq")), "next_cursor": next_cursor}

    @router.get("/search", response_model=HitList, responses={404: {"model": ErrorBody}})
    def search(
        q: str = Query(..., min_length=1, pattern=r"\S", description="what to look for, in plain words"),
        k: int = Query(10, ge=1, le=100, description="how many results"),
        stream: str | None = Query(None, description="only this stream"),
        since: str | None = Query(None, description=f"rows that end after this: {TIME_HELP}"),
        until: str | None = Query(None, description=f"rows that start before this: {TIME_HELP}"),
    ):
        known_stream(stream)
        vector = embedder.embed([q])[0]
        return {"items": _plain(with_media(query.search(vector, stream, since, until, k=k), "seq"))}

    @router.get("/summaries", response_model=SummaryList, responses={404: {"model": ErrorBody}})
    def summaries(
        stream: str | None = Query(None, description="only this stream"),
        level: Literal["stream", "period", "window"] | None = Query(None),
    ):
        known_stream(stream)
        return {"items": _plain(query.summaries(stream, level))}

    @router.get("/jobs", response_model=JobList, description="The latest state of each run, newest first.")
    def jobs(
        name: str | None = Query(None, description="runs of this named job"),
        status: str | None = Query(None, description="running, done, failed, ..."),
        limit: int = limit_param,
    ):
        return {"items": _plain(query.jobs(name=name, status=status, limit=limit))}

    @router.get("/schedules", response_model=ScheduleList,
                description="The named jobs: cron, next run, and how the last run went.")
    def schedule_list():
        items = []
        now = dt.datetime.now(dt.timezone.utc)
        try:
            specs = schedules() if schedules else []
        except VidstormError as err:  # a spec file the scheduler would refuse too
            raise HTTPException(503, str(err)) from None
        for spec in specs:
            last = query.jobs(name=spec["name"], limit=1)
            items.append({**spec, "next_run": spec.get("next_run") or _next_fire(spec, now),
                          "last_status": last[0]["status"] if last else None,
                          "last_started_at": last[0]["started_at"] if last else None,
                          "last_finished_at": last[0]["finished_at"] if last else None})
        return {"items": _plain(items)}

    @router.get("/progress", response_model=ProgressList,
                description="Running distributed ingests: video seconds stored of the total, x real time, ETA.")
    def progress_list():
        if progress is None:
            return {"items": [], "note": None}
        rows, note = progress()
        return {"items": _plain(rows), "note": note}

    @router.post("/jobs/{name}/run", status_code=202, response_model=RunRequested,
                 responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    def run_job(name: str, request: Request):
        from pipeline.names import JOB_NAME_MAX, is_name, rule

        if request.headers.get(POST_HEADER) != "1":  # a cross-site form cannot set a custom header
            raise HTTPException(400, f"state-changing requests need the header `{POST_HEADER}: 1`")
        if not is_name(name, JOB_NAME_MAX):  # never let a network-supplied name near a path or a key
            raise HTTPException(400, f"a job name is {rule(JOB_NAME_MAX)}")
        if run_requester is None:
            raise HTTPException(503, NO_SCHEDULER)
        try:
            return {"run_id": str(run_requester(name))}
        except KeyError:
            raise HTTPException(404, f"unknown job {name!r}") from None
        except VidstormError as err:
            raise HTTPException(503, str(err)) from None

    app.include_router(router)

    # --- media: the bearer header, or a URL the API signed (images and videos cannot send headers) ---

    bearer_scheme = HTTPBearer(auto_error=False, description="the service's token, or a signed URL")

    def media_auth(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)):
        if credentials is not None and hmac.compare_digest(
                credentials.credentials.encode("utf-8", "surrogateescape"), token.encode()):
            return
        problem = signer.check(request.url.path, list(request.query_params.multi_items()))
        if problem:
            raise HTTPException(401, problem)

    media_router = APIRouter(dependencies=[Depends(media_auth)] if token else [],
                             responses={**({401: {"model": ErrorBody}} if token else {}), 404: {"model": ErrorBody}})

    @media_router.get("/segments/{stream}/{seq}/thumbnail.jpg", response_class=Response,
                      responses={200: {"content": {"image/jpeg": {}}}},
                      description="The JPEG stored with a segment (~192 px wide).")
    def thumbnail(stream: str, seq: int, request: Request, exp: str | None = None, sig: str | None = None):
        data = query.thumbnail(stream, seq)
        if data is None:
            raise HTTPException(404, f"no thumbnail stored for segment {seq} of stream {stream!r}")
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": f"private, max-age={int(media_ttl_s)}"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @media_router.get("/clip", response_class=FileResponse, responses={200: {"content": {"video/mp4": {}}}},
                      description="An MP4 of a span of a stream's source file (stream copy from a keyframe where "
                                  "it can, else re-encoded).")
    def clip(stream: str = Query(..., min_length=1), since: float = Query(..., ge=0),
             until: float = Query(..., gt=0), exp: str | None = None, sig: str | None = None):
        from pipeline.clip import ClipError

        try:
            path = clip_source(query, stream)
        except NoClip as err:
            raise HTTPException(err.status, str(err)) from None
        try:
            out = clip_cache.get(path, since, until, clip_max_seconds)
        except ClipError as err:
            raise HTTPException(400, str(err)) from None
        return FileResponse(out, media_type="video/mp4", filename=f"{_file_safe(stream)}-{since:.0f}-{until:.0f}.mp4",
                            content_disposition_type="inline",
                            headers={"Cache-Control": f"private, max-age={int(media_ttl_s)}"})

    app.include_router(media_router)

    # --- the web page (public: it holds no data; its calls carry the token) ---

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB / "index.html", media_type="text/html", headers={
            "Cache-Control": "no-cache", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"})

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def _next_fire(spec: dict, now: dt.datetime) -> dt.datetime | None:
    from pipeline.jobs.spec import JobSpec
    from pipeline.jobs.windows import next_fire

    try:
        return next_fire(JobSpec(name=spec["name"], kind=spec["kind"], schedule=spec["schedule"],
                                 timezone=spec.get("timezone", "UTC")), now)
    except Exception:  # a spec the scheduler would refuse: no next run
        return None


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "clip"


def _refresh_loop(query: StoreQuery, every_s: float, stop: threading.Event) -> None:
    try:  # here rather than in the first search, which would wait for it (minutes on a large store)
        query.open_index()
    except Exception as err:
        log.warning("vidstorm serve: opening the search index failed (the first search tries again): %s", err)
    last_error = None
    while not stop.wait(every_s):
        try:
            query.refresh()
            last_error = None
        except Exception as err:  # an unreadable file must not end the service; say so once, not every tick
            if str(err) != last_error:
                log.warning("vidstorm serve: store refresh failed (serving what was loaded): %s", err)
            last_error = str(err)


def _bearer_check(token: str):
    scheme = HTTPBearer(auto_error=False, description="the service's token (api.token or VIDSTORM_API_TOKEN)")
    expected = token.encode()

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send `Authorization: Bearer <token>`",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode("utf-8", "surrogateescape"), expected):
            raise HTTPException(401, "wrong bearer token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return check


# --- parameters ---


def _encode_cursor(stream_id: str, chunk_seq: int) -> str:
    raw = json.dumps([stream_id, int(chunk_seq)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8, bad JSON
        key = None
    if not (isinstance(key, list) and len(key) == 2 and isinstance(key[0], str)
            and isinstance(key[1], int) and not isinstance(key[1], bool)):
        raise HTTPException(400, "cursor: not a cursor from this service; pass next_cursor back as it came")
    return key[0], key[1]


# --- answers ---


def _plain(rows: list[dict]) -> list[dict]:
    """Python scalars only: numpy values unwrapped, NaN/inf as null (JSON has neither)."""
    return [{name: _plain_value(value) for name, value in row.items()} for row in rows]


def _plain_value(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _bad_query(_request: Request, exc: QueryError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": "; ".join(_problem(e) for e in exc.errors())}, status_code=422)


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    # a bug or an unreadable store: JSON like every other answer; uvicorn logs the traceback
    return JSONResponse({"error": "internal error: the server log says more"}, status_code=500)


def _problem(error: dict) -> str:
    """One pydantic error -> 'limit: must be <= 1000'."""
    where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
    ctx, kind = error.get("ctx") or {}, error.get("type", "")
    if kind == "missing":
        return f"{where}: is required"
    if kind in COMPARISONS:
        bound = next(iter(ctx.values()), "?")
        return f"{where}: must be {COMPARISONS[kind]} {bound}"
    if kind == "int_parsing":
        return f"{where}: must be a whole number, got {error.get('input')!r}"
    message = error.get("msg") or "is not valid"
    return f"{where}: {message[:1].lower()}{message[1:]}"


def _version() -> str:
    from pipeline import __version__

    return __version__


# --- the composition root ---


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

    from actors.scheduler import request_run
    from pipeline.config import mask_secrets
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

    from actors.stages import ingest_progress
    from pipeline.config import mask_secrets
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
