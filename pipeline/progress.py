"""Ingest progress figures, the same for `--local`, a distributed ingest and GET /progress.

A run that resumes a half-done stream starts at `position_at_start`, not at 0: the rate is what
this run gained over its own wall time, and the ETA is the rest of the source at that rate (the
video ingested before the resume is neither counted as this run's speed nor left to do).
"""

from __future__ import annotations

import sys
import time


def figures(position_s: float, total_s: float | None, position_at_start: float, elapsed_s: float) -> dict:
    """{done_s, total_s, fraction, x_realtime, eta_s}: where a stream stands and when it will end.

    position_s: video seconds ingested (from the start of the source); total_s: its length, None when
    unknown (live); position_at_start: where this run started; elapsed_s: this run's wall time."""
    gained = max(0.0, position_s - position_at_start)
    rate = gained / elapsed_s if elapsed_s > 0 and gained > 0 else None
    known = total_s is not None and total_s > 0
    fraction = min(1.0, position_s / total_s) if known else None
    eta = max(0.0, total_s - position_s) / rate if known and rate else None
    return {"done_s": round(position_s, 3), "total_s": total_s if known else None, "fraction": fraction,
            "x_realtime": rate, "eta_s": eta}


def hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line(stream_id: str, f: dict, width: int = 20) -> str:
    """One line: 'cam1  0:01:30/0:10:00 [###      ]  2.40x real time  ETA 0:03:32'."""
    text = f"{stream_id[:24]:24s} {hms(f['done_s'])}"
    if f["total_s"]:
        text += f"/{hms(f['total_s'])} [{'#' * int((f['fraction'] or 0) * width):{width}s}]"
    text += f"  {f['x_realtime']:5.2f}x real time" if f["x_realtime"] else "  starting"
    if f["eta_s"] is not None:
        text += f"  ETA {hms(f['eta_s'])}"
    return text


class ProgressBoard:
    """Live progress of a distributed ingest: on a terminal one bar per stream, redrawn in place;
    otherwise (a log, CI) one line per stream every `every_s` seconds."""

    def __init__(self, out=None, every_s: float = 5.0):
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        # the first rows are logged at once: monotonic() counts from boot, so a start time of 0.0 would hold
        # them back for every_s seconds of uptime (a CI machine booted minutes ago logged nothing)
        self.every_s, self.last, self.drawn = every_s, None, 0

    def __call__(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.tty:
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.out.write(up + "".join(f"\x1b[2K{line(r['stream_id'], r)[:150]}\n" for r in rows))
            self.drawn = len(rows)
        elif self.last is None or time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self.out.write("".join(f"progress: {line(r['stream_id'], r)}\n" for r in rows))
        self.out.flush()

    def clear(self) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.flush()
            self.drawn = 0
