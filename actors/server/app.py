"""The HTTP query service (`vidstorm serve`): FastAPI over StoreQuery, run by uvicorn.

    create_app(...)  the logic: routes, auth, errors; explicit arguments, tests call it directly
    serve(args)      the composition root (serve.py): config -> token, embedder, store -> socket -> uvicorn

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
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.server.media import ClipCache, MediaSigner, NoClip, clip_source, thumbnail_path
from pipeline.errors import VidstormError
from pipeline.store.query import StoreQuery
from pipeline.store.sql import QueryError

from actors.server.schemas import (COMPARISONS, ErrorBody, HitList, JobList, NO_SCHEDULER, ProgressList,
                                    RunRequested, ScheduleList, SegmentPage, StreamList, SummaryList,
                                    TIME_HELP)

log = logging.getLogger("vidstorm.api")

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
    from actors.server.alerts import alerts_router

    app.include_router(alerts_router(store_root, query, signer, clip_url, stop, limit_param,
                                     [Depends(_bearer_check(token))] if token else []), responses=errors)

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
