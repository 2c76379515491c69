"""Cron windows: which scheduled times fall due, which missed ones run, what period a run covers.

A window is the cron time a run stands for (an aware datetime). Times are computed in the
job's time zone (so `0 2 * * *` means 02:00 local, across DST changes) and stored in UTC.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from croniter import croniter

from pipeline.jobs.spec import JobSpec

UTC = dt.timezone.utc


def fire_times(spec: JobSpec, after: dt.datetime, until: dt.datetime, limit: int = 100_000) -> list[dt.datetime]:
    """Cron times t with after < t <= until, in UTC."""
    tz = zoneinfo.ZoneInfo(spec.timezone)
    it = croniter(spec.schedule, after.astimezone(tz))
    times = []
    while len(times) < limit:
        t = it.get_next(dt.datetime)
        if t > until:
            break
        times.append(t.astimezone(UTC))
    return times


def next_fire(spec: JobSpec, after: dt.datetime) -> dt.datetime:
    tz = zoneinfo.ZoneInfo(spec.timezone)
    return croniter(spec.schedule, after.astimezone(tz)).get_next(dt.datetime).astimezone(UTC)


def previous_fire(spec: JobSpec, before: dt.datetime) -> dt.datetime:
    tz = zoneinfo.ZoneInfo(spec.timezone)
    return croniter(spec.schedule, before.astimezone(tz)).get_prev(dt.datetime).astimezone(UTC)


def select_windows(spec: JobSpec, due: list[dt.datetime], now: dt.datetime,
                   on_time_s: float) -> tuple[list[tuple[dt.datetime, str]], list[dt.datetime]]:
    """Of the windows due since the last look: ([(window, trigger)] to run, [skipped]).

    A window that fell due less than `on_time_s` ago is on time (trigger "cron"); older ones
    were missed while no scheduler ran and are caught up by spec.catch_up: all (each once, at
    most max_catch_up of them, newest kept), latest (only the newest due window), none.
    """
    late = [t for t in due if (now - t).total_seconds() > on_time_s]
    on_time = [t for t in due if t not in late]
    if spec.catch_up == "all":
        keep = late[-spec.max_catch_up:]
    elif spec.catch_up == "latest":
        keep = late[-1:] if not on_time else []
    else:
        keep = []
    skipped = [t for t in late if t not in keep]
    return [(t, "catch-up") for t in keep] + [(t, "cron") for t in on_time], skipped


def period_of(spec: JobSpec, window: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC that a digest run for `window` rolls up: the day or hour before it
    in the job's time zone, or the interval since the previous cron time."""
    tz = zoneinfo.ZoneInfo(spec.timezone)
    local = window.astimezone(tz)
    if spec.period == "day":
        end = local.replace(hour=0, minute=0, second=0, microsecond=0)
        start = (end - dt.timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tz)  # 23/25-hour days
        return start.astimezone(UTC), end.astimezone(UTC)
    if spec.period == "hour":
        end = window.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        return end - dt.timedelta(hours=1), end
    return previous_fire(spec, window), window.astimezone(UTC)


def run_id(name: str, window: dt.datetime, trigger: str = "cron") -> str:
    """Deterministic, so a re-run of a crashed window is the same run."""
    stamp = window.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{name}@{stamp}" + ("-manual" if trigger == "manual" else "")
