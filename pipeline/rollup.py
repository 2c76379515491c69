"""When a stream's summaries are due: the one roll-up rule of `--local` (pipeline/processor.py) and of the
distributed writer (actors/runtime/writer.py), a pure function of what is captioned and summarised so far.

A stream's chunks fall into windows of `summary.window_seconds` from its first chunk. Window w is due once
a chunk of a later window is captioned, or the stream ended well (its last chunk captioned, status done);
the stream summary is due once it ended well and every window is summarised. A stream that failed gets
the windows a later chunk closed, and no last window or stream summary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pipeline.messages import RollupRequest


def window_of(t_start: float, t0: float, window_seconds: float) -> int:
    """The roll-up window a chunk starting at t_start belongs to (t0: the stream's first chunk)."""
    return math.floor((t_start - t0) / window_seconds)


def rollups_due(stream_id: str, chunks: Sequence[Mapping], summaries: Mapping[tuple[str, int], str], *,
                t0: float | None, t_end: float | None, ended: bool, window_seconds: float) -> list[RollupRequest]:
    """The summaries to write now, in order.

    chunks: the stream's captioned chunks in order (t_start, t_end, caption, wall_clock), at least those of
    the windows not summarised yet (those of summarised windows are skipped); summaries: (level, seq) ->
    text of those written; t0 / t_end: start of the stream's first chunk / end of its last captioned one
    (None: nothing captioned); ended: the stream's last chunk is captioned and it ended well."""
    if t0 is None:
        return []
    windows: dict[int, list] = {}
    for row in chunks:
        windows.setdefault(window_of(row["t_start"], t0, window_seconds), []).append(row)
    last = max(windows) if windows else None
    due = [RollupRequest(stream_id, "window", w, rows[0]["t_start"], rows[-1]["t_end"], rows[0]["wall_clock"],
                         tuple(r["caption"] for r in rows))
           for w, rows in sorted(windows.items())
           if ("window", w) not in summaries and (w < last or ended)]
    if ended and not due and ("stream", 0) not in summaries:
        texts = tuple(text for (level, _), text in sorted(summaries.items()) if level == "window")
        due.append(RollupRequest(stream_id, "stream", 0, t0, t_end, None, texts))
    return due
