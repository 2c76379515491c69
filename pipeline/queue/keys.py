"""Every Redis key vidstorm uses, and when each is made and removed: the one key schema.

Ingest (prefix `queue.prefix`, "vs" by default), class `Keys`:

    {p}:frames            stream   FrameChunks and end markers, decoders -> encoders
    {p}:tokens:<stream>   stream   projected grids of one stream, encoders -> its temporal owner
    {p}:pooled            stream   pooled tokens, temporal owners -> summarizers
    {p}:rollup            stream   window / stream summary requests, writer -> summarizers
    {p}:results           stream   segments, summaries, end markers -> writer
    {p}:dead              stream   messages that failed queue.max_deliveries times (kept for a person)
    {p}:decoded:<stream>  hash     the decoder's position (next_chunk_seq, t_end, gate reference, finished)
    {p}:state:<stream>    hash     the temporal owner's checkpoint (state, reorder buffer, pooled count)
    {p}:offline:<stream>  hash     temporal.mode=offline: chunks handed on after the whole-file scan
    {p}:ingest:<stream>   hash     progress of a running stream (source, started_at, decoded_s, done_s, ...)
    {p}:owner:<i>         set      the streams temporal owner i applies
    {p}:done              hash     stream -> its final job row (JSON)
    {p}:ends              hash     stream -> its end marker (JSON)
    {p}:rolled            set      "<stream>|<level>|<seq>" roll-ups already asked for
    {p}:active            set      the streams of the current run
    {p}:progress          hash     worker name -> messages handed on (the supervisor's stall check)
    {p}:stop              string   set: every stage loop returns

Lifecycle: a run's start (runtime DistributedIngest._reset) deletes `stream_keys(s)` and the
stream's fields in done / ends / rolled, unless it resumes the stream; the writer and the temporal
owner remove a finished stream from `active` / `owner:<i>` (and its `offline` count); a scheduled
job run deletes its own prefix's keys when it is over (runtime/scheduler.py); the queues are
trimmed to queue.maxlen; nothing expires on its own.

Scheduled jobs (class `SchedKeys`, prefix `{p}:sched`):

    {p}:sched:cursor:<job>    string   the time up to which the job's cron windows are planned
    {p}:sched:pending         zset     run ids waiting to run (score: window time)
    {p}:sched:run:<run_id>    hash     job, window, trigger, status, attempts, owner, error, cancel
    {p}:sched:lease:<run_id>  string   the owner's id, with a TTL the owner renews while it runs

Watch alerts (class `WatchKeys`, prefix `watch.prefix`, "vs-watch": apart from the ingest prefixes a
scheduled run deletes; pipeline/watch/outbox.py says how each is used):

    {w}:alerts     hash     alert id -> the alert (JSON): the once-per-(rule, segment) guard, kept
    {w}:merged     hash     alert id -> matches its cooldown merged into it
    {w}:quiet      set      ids of matches merged into an earlier alert
    {w}:last       hash     "<rule>|<stream>|<level>" -> "<event_s> <alert id>" (the cooldown's reference)
    {w}:queue      stream   (alert, target) deliveries; group "notifier"; trimmed to ~100,000 entries
    {w}:delivery   hash     "<alert id>|<target>" -> its delivery state (JSON)
"""

from __future__ import annotations


class Keys:
    """The ingest keys of one queue prefix."""

    def __init__(self, prefix: str):
        self.p = prefix

    frames = property(lambda self: f"{self.p}:frames")
    pooled = property(lambda self: f"{self.p}:pooled")
    rollup = property(lambda self: f"{self.p}:rollup")
    results = property(lambda self: f"{self.p}:results")
    dead = property(lambda self: f"{self.p}:dead")
    done = property(lambda self: f"{self.p}:done")
    ends = property(lambda self: f"{self.p}:ends")
    rolled = property(lambda self: f"{self.p}:rolled")
    active = property(lambda self: f"{self.p}:active")
    stop = property(lambda self: f"{self.p}:stop")
    progress = property(lambda self: f"{self.p}:progress")
    everything = property(lambda self: f"{self.p}:*")  # a SCAN pattern over all of them

    def tokens(self, stream_id: str) -> str:
        return f"{self.p}:tokens:{stream_id}"

    def state(self, stream_id: str) -> str:
        return f"{self.p}:state:{stream_id}"

    def decoded(self, stream_id: str) -> str:
        return f"{self.p}:decoded:{stream_id}"

    def owner(self, index: int) -> str:
        return f"{self.p}:owner:{index}"

    def ingest(self, stream_id: str) -> str:
        return f"{self.p}:ingest:{stream_id}"

    def offline(self, stream_id: str) -> str:
        return f"{self.p}:offline:{stream_id}"

    def stream_keys(self, stream_id: str) -> list[str]:
        """What a fresh start of the stream deletes."""
        return [self.tokens(stream_id), self.state(stream_id), self.decoded(stream_id), self.offline(stream_id),
                self.ingest(stream_id)]


class SchedKeys:
    """The job board's keys."""

    def __init__(self, prefix: str):
        self.p = f"{prefix}:sched"

    pending = property(lambda self: f"{self.p}:pending")

    def run(self, rid: str) -> str:
        return f"{self.p}:run:{rid}"

    def lease(self, rid: str) -> str:
        return f"{self.p}:lease:{rid}"

    def cursor(self, job: str) -> str:
        return f"{self.p}:cursor:{job}"


class WatchKeys:
    """The watch outbox's keys (pipeline/watch/outbox.py)."""

    def __init__(self, prefix: str):
        self.p = prefix

    alerts = property(lambda self: f"{self.p}:alerts")
    merged = property(lambda self: f"{self.p}:merged")
    quiet = property(lambda self: f"{self.p}:quiet")
    last = property(lambda self: f"{self.p}:last")
    queue = property(lambda self: f"{self.p}:queue")
    delivery = property(lambda self: f"{self.p}:delivery")
