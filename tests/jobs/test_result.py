"""Job rows' whole-stream counts from what the store holds (pipeline/jobs/result.py): pure logic."""

from pipeline.jobs.result import JobResult, stored_counts


def test_stored_counts_take_the_gapless_chunks_and_only_their_windows_summaries():
    chunks = {seq: {"t_start": 16.0 * seq, "t_end": 16.0 * seq + 16} for seq in (0, 1, 2, 4)}  # 3 missing
    summaries = [("window", 0), ("window", 1), ("window", 7), ("stream", 0)]  # window 7: another window length
    counts = stored_counts(chunks, summaries, window_seconds=30.0)
    # chunks 0-2 (t 0-48) fall in windows 0 and 1; chunk 4 after the gap is not counted, as --local's state
    # would not have it either
    assert counts == {"chunks": 3, "segments": 3, "video_seconds": 48.0, "summaries": 3}
    assert stored_counts({}, [("stream", 0)], 30.0) == {"chunks": 0, "segments": 0, "video_seconds": 0.0,
                                                       "summaries": 0}
    job = JobResult("j", "a.mp4", "cam", chunks=9).counted(counts)
    assert (job.chunks, job.segments, job.summaries, job.video_seconds) == (3, 3, 3, 48.0)
    assert JobResult("j", "a.mp4", "cam", chunks=9).counted(None).chunks == 9
