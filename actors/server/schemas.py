"""The API's response bodies: they are the OpenAPI schema the fuzz test checks answers against."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from pydantic import BaseModel, create_model

from pipeline.store.schema import ALERTS, JOBS, LISTED, SEGMENTS, SUMMARIES


NO_SCHEDULER = "no scheduler is reachable: start `vidstorm scheduler`"
COMPARISONS = {"less_than_equal": "<=", "greater_than_equal": ">=", "less_than": "<", "greater_than": ">"}
TIME_HELP = "video seconds (90), H:MM:SS (0:01:30), or an ISO date-time (2026-01-02T03:04:05Z)"



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


Alert = _columns_model("Alert", ALERTS, keys=("alert_id", "rule", "stream_id", "level", "seq", "target", "status"),
                       defaults=True)


class AlertList(BaseModel):
    items: list[Alert]  # thumbnail_url / clip_url: this server's (signed when a token is set)


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
