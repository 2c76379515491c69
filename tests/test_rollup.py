"""The one roll-up rule (pipeline/rollup.py) both ingest paths follow."""

from pipeline.rollup import rollups_due, window_of


def _chunks(starts, length=8.0):
    return [{"t_start": t, "t_end": t + length, "caption": f"c{t:g}", "wall_clock": None if t else 1.7e9}
            for t in starts]


def _due(chunks, summaries=None, ended=False, t0=None):
    t0 = chunks[0]["t_start"] if chunks and t0 is None else t0
    return rollups_due("cam", chunks, summaries or {}, t0=t0, t_end=chunks[-1]["t_end"] if chunks else None,
                       ended=ended, window_seconds=30.0)


def test_a_window_is_due_once_a_later_window_has_a_chunk():
    assert window_of(29.9, 0.0, 30.0) == 0 and window_of(30.0, 0.0, 30.0) == 1 and window_of(31.0, 1.0, 30.0) == 1
    assert _due(_chunks([0, 8, 16, 24])) == []  # window 0 is still open
    (w0,) = _due(_chunks([0, 8, 16, 24, 32]))
    assert (w0.level, w0.seq, w0.t_start, w0.t_end, w0.wall_clock) == ("window", 0, 0.0, 32.0, 1.7e9)
    assert w0.texts == ("c0", "c8", "c16", "c24")
    # written: nothing more is due until the stream ends or window 1 closes
    assert _due(_chunks([0, 8, 16, 24, 32]), {("window", 0): "w0"}) == []


def test_a_stream_that_ended_well_gets_its_last_window_then_its_summary():
    chunks = _chunks([0, 8, 16, 24, 32, 40, 64])
    due = _due(chunks, ended=True)
    assert [(r.level, r.seq) for r in due] == [("window", 0), ("window", 1), ("window", 2)]  # no stream yet
    done = {("window", 2): "w2", ("window", 0): "w0", ("window", 1): "w1"}
    (stream,) = _due(chunks, done, ended=True)
    assert (stream.level, stream.seq, stream.t_start, stream.t_end) == ("stream", 0, 0.0, 72.0)
    assert stream.texts == ("w0", "w1", "w2")  # in window order
    assert _due(chunks, {**done, ("stream", 0): "s"}, ended=True) == []


def test_only_the_open_windows_chunks_are_needed_and_nothing_is_due_before_a_caption():
    """--local keeps only the chunks of windows not summarised yet; the writer passes every chunk."""
    done = {("window", 0): "w0"}
    (last, ) = _due(_chunks([32, 40]), done, ended=True, t0=0.0)
    assert (last.seq, last.texts) == (1, ("c32", "c40"))
    assert _due(_chunks([32, 40]), {**done, ("window", 1): "w1"}, ended=True, t0=0.0)[0].texts == ("w0", "w1")
    assert rollups_due("cam", [], {}, t0=None, t_end=None, ended=True, window_seconds=30.0) == []


def test_a_failed_stream_gets_only_the_windows_a_later_chunk_closed():
    assert [(r.level, r.seq) for r in _due(_chunks([0, 8, 40]))] == [("window", 0)]
    assert _due(_chunks([0, 8, 40]), {("window", 0): "w0"}) == []
