"""Ingest progress: the figures after a resume, the --local line, the distributed board."""

import io
import time

import pytest

from pipeline.ingest import LocalProgress
from pipeline.jobs.result import JobResult
from pipeline.progress import ProgressBoard, figures


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_after_a_resume_counts_this_runs_speed_and_the_rest_of_the_source():
    # a 1000 s file resumed at 500 s: 100 s more in 50 s of wall time is 2x real time, 200 s to go
    f = figures(600.0, 1000.0, 500.0, 50.0)
    assert f["x_realtime"] == pytest.approx(2.0) and f["eta_s"] == pytest.approx(200.0)
    assert f["fraction"] == pytest.approx(0.6)
    fresh = figures(100.0, 1000.0, 0.0, 50.0)  # from the start: the same speed, 450 s to go
    assert fresh["eta_s"] == pytest.approx(450.0)
    assert figures(10.0, None, 0.0, 5.0)["eta_s"] is None  # a live source has no end
    assert figures(500.0, 1000.0, 500.0, 5.0)["x_realtime"] is None  # nothing gained yet: no guess


def test_local_progress_line_after_a_resume_shows_the_eta_of_what_is_left(tmp_path):
    out = Tty()
    job = JobResult("j", "/x.mp4", "cam", started_at=time.time() - 50)
    job.video_seconds = 100.0  # this run: 500 s -> 600 s of a 1000 s file
    LocalProgress(out).update(job, 100, 1000.0, 600.0, 500.0)
    text = out.getvalue()
    assert "0:10:00/0:16:40" in text and "ETA 0:03:" in text, text  # ~200 s left at 2x real time


def test_the_distributed_board_redraws_bars_on_a_terminal_and_logs_lines_otherwise():
    rows = [{"stream_id": "cam-a", **figures(40.0, 80.0, 0.0, 10.0)},
            {"stream_id": "cam-b", **figures(5.0, None, 0.0, 10.0)}]
    tty = Tty()
    board = ProgressBoard(tty)
    board(rows)
    board(rows)
    text = tty.getvalue()
    assert text.count("cam-a") == 2 and "\x1b[2F" in text  # the second drawing goes back over the first
    assert "0:00:40/0:01:20 [##########" in text and "4.00x real time" in text and "ETA 0:00:10" in text
    board.clear()
    log = io.StringIO()
    quiet = ProgressBoard(log, every_s=3600)
    quiet(rows)
    quiet(rows)  # within every_s: nothing more
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("progress: ") for line in lines) and "\x1b" not in log.getvalue()
