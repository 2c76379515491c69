"""GET /alerts and GET /alerts/events: the watch rules' alerts (pipeline/watch), from the Parquet table.

/alerts/events is a server-sent-events stream: one `alert` event (the row as JSON) each time an
alert's delivery state is written (retrying, delivered, failed), and a comment every 15 s to keep
the connection open. It needs the bearer header like every call: the page reads it with fetch().
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from pipeline.watch.table import read_alerts

from actors.server.schemas import Alert, AlertList

POLL_S = 0.5
KEEPALIVE_S = 15.0


def alerts_router(store_root: str | Path, query, signer, clip_url, stop, limit_param, dependencies) -> APIRouter:
    """`query` (StoreQuery) tells each stream's source, for clip links; `signer`/`clip_url` make this
    server's media links, as /segments does."""
    from actors.server.media import thumbnail_path

    router = APIRouter(dependencies=dependencies)
    root = Path(store_root)

    def with_links(rows: list[dict]) -> list[dict]:
        for row in rows:
            chunk = row.get("level") == "chunk"
            row["thumbnail_url"] = signer.url(thumbnail_path(row["stream_id"], row["seq"])) if chunk else None
            source = query.stream_source(row["stream_id"]) if chunk and query.has_stream(row["stream_id"]) else None
            row["clip_url"] = clip_url(row["stream_id"], source, row["t_start"], row["t_end"]) if chunk else None
        return rows

    @router.get("/alerts", response_model=AlertList,
                description="Alerts of the watch rules, newest first: the latest delivery state of each "
                            "(alert, target).")
    def alerts(rule: str | None = Query(None, description="only this rule's"),
               stream: str | None = Query(None, description="only this stream's"),
               status: str | None = Query(None, description="retrying, delivered or failed"),
               limit: int = limit_param):
        return {"items": with_links(read_alerts(root, rule=rule, stream=stream, status=status, limit=limit))}

    @router.get("/alerts/events", response_class=StreamingResponse,
                description="Server-sent events: `alert` with the row each time an alert's state is written.")
    async def alert_events(request: Request, rule: str | None = Query(None), stream: str | None = Query(None),
                           since: float | None = Query(None, description="unix seconds: replay what changed after it")):
        async def events():
            last = time.time() if since is None else since
            seen: set[str] = set()
            quiet = time.monotonic()
            yield "retry: 2000\n\n"
            while not stop.is_set() and not await request.is_disconnected():
                files = {p.name for p in (root / "alerts").rglob("part-*.parquet")}
                if files - seen:
                    seen |= files
                    rows = await asyncio.to_thread(read_alerts, root, rule, stream, None, last, None)
                    for row in sorted(with_links(rows), key=lambda r: r["updated_at"]):
                        last = max(last, row["updated_at"])
                        yield f"event: alert\ndata: {Alert.model_validate(row).model_dump_json()}\n\n"  # as /alerts
                        quiet = time.monotonic()
                if time.monotonic() - quiet > KEEPALIVE_S:
                    quiet = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_S)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return router
