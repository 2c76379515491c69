"""The SQL pieces of store queries: the filters of a segments query, times as people write them."""

from __future__ import annotations

import datetime as dt
import re


class QueryError(ValueError):
    """A query that cannot be answered as asked (a time that does not parse, a reversed range)."""


def parse_named_time(name: str, text):
    try:
        return parse_time(text)
    except ValueError as err:
        raise QueryError(f"{name}: {err}") from None


def parse_time(text: str | float | None) -> tuple[str, float | dt.datetime] | None:
    """'90', '1:30', '01:02:03.5' -> ('video', seconds); an ISO date/time -> ('wall', datetime)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return "video", float(text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return "video", float(text)
    if re.fullmatch(r"(\d+:){1,2}\d+(\.\d+)?", text):
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
        return "video", seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read time {text!r}: use seconds, H:MM:SS, or an ISO date-time") from None
    return "wall", when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def segment_filters(stream=None, since=None, until=None, q=None, after=None) -> tuple[list[str], list]:
    """SQL conditions: rows of `stream` that overlap [since, until] (video seconds or wall-clock
    times), whose caption holds every word of `q`, after the (stream_id, chunk_seq) cursor."""
    clauses, params = [], []
    if stream:
        clauses.append("stream_id = ?")
        params.append(stream)
    since_text, until_text = since, until
    since, until = parse_named_time("since", since), parse_named_time("until", until)
    if since and until and since[0] == until[0] and since[1] > until[1]:
        raise QueryError(f"since {since_text!r} is after until {until_text!r}")
    if since:
        clauses.append("t_end > ?" if since[0] == "video" else "wall_clock >= ?")
        params.append(since[1])
    if until:
        clauses.append("t_start <= ?" if until[0] == "video" else "wall_clock <= ?")
        params.append(until[1])
    for word in query_words(q):
        clauses.append("contains(lower(caption), ?)")
        params.append(word)
    if after is not None:
        clauses.append("(stream_id > ? OR (stream_id = ? AND chunk_seq > ?))")
        params += [after[0], after[0], int(after[1])]
    return clauses, params


def query_words(text: str | None) -> list[str]:
    return re.findall(r"\w+", text.lower()) if text else []


def where_clause(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def limit_clause(limit) -> str:
    if limit is None:
        return ""
    if int(limit) < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    return f" LIMIT {int(limit)}"
