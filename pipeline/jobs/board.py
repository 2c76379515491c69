"""The job board in Redis: which windows are due, and which scheduler runs each one.

Its keys ({p}:sched:cursor|pending|run|lease) are in pipeline/queue/keys.py (SchedKeys).

Planning moves the cursor in a WATCH/MULTI transaction, so of two schedulers looking at
the same moment exactly one adds each window. Taking a run is one Lua script (lease SET NX
plus the status check), so exactly one scheduler runs a window at a time; a run whose
owner died keeps its pending entry and is taken again when the lease runs out.
"""

from __future__ import annotations

import datetime as dt

import redis

from pipeline.jobs.spec import JobSpec
from pipeline.queue.keys import SchedKeys
from pipeline.jobs.windows import UTC, fire_times, run_id, select_windows

FINAL = ("done", "failed", "cancelled")

_ACQUIRE = """
local status = redis.call('HGET', KEYS[2], 'status')
if (not status) or status == 'done' or status == 'failed' or status == 'cancelled' then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return false
end
if redis.call('HGET', KEYS[2], 'cancel') == '1' then
  redis.call('HSET', KEYS[2], 'status', 'cancelled')
  redis.call('ZREM', KEYS[3], ARGV[3])
  return false
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[2], 'status', 'running', 'owner', ARGV[1])
  return redis.call('HINCRBY', KEYS[2], 'attempts', 1)
end
return false
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_FINISH = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'error', ARGV[3])
redis.call('DEL', KEYS[1])
if ARGV[2] ~= 'pending' then redis.call('ZREM', KEYS[3], ARGV[4]) end
return 1
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return 'unknown' end
if status == 'done' or status == 'failed' or status == 'cancelled' then return status end
redis.call('HSET', KEYS[2], 'cancel', '1')
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], 'status', 'cancelled')
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 'cancelled'
end
return 'cancelling'
"""


def _iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).isoformat()


class JobBoard:
    def __init__(self, client: redis.Redis, prefix: str = "vs"):
        self.r = client
        self.keys = SchedKeys(prefix)
        self.pending_key = self.keys.pending
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    def _run_key(self, rid: str) -> str:
        return self.keys.run(rid)

    def _lease_key(self, rid: str) -> str:
        return self.keys.lease(rid)

    # --- planning ---

    def plan_runs(self, spec: JobSpec, now: dt.datetime, on_time_s: float) -> tuple[list[dict], list[dt.datetime]]:
        """Add the job's windows that fell due since the last look. Returns (new runs, skipped windows).

        A job seen for the first time starts from `now`: history is not backfilled.
        """
        key = self.keys.cursor(spec.name)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    cursor = dt.datetime.fromisoformat(raw.decode()) if raw else None
                    if cursor is not None and now <= cursor:
                        pipe.unwatch()
                        return [], []
                    due = fire_times(spec, cursor, now) if cursor else []
                    chosen, skipped = select_windows(spec, due, now, on_time_s)
                    pipe.multi()
                    pipe.set(key, _iso(now))
                    runs = [self._add(pipe, spec.name, window, trigger, now) for window, trigger in chosen]
                    pipe.execute()
                    return runs, skipped
                except redis.WatchError:
                    continue  # another scheduler planned at the same moment: look again

    def _add(self, pipe, name: str, window: dt.datetime, trigger: str, now: dt.datetime) -> dict:
        rid = run_id(name, window, trigger)
        info = {"run_id": rid, "job": name, "window": _iso(window), "trigger": trigger,
                "status": "pending", "requested_at": _iso(now)}
        for field, value in info.items():
            pipe.hsetnx(self._run_key(rid), field, value)
        pipe.zadd(self.pending_key, {rid: window.timestamp()}, nx=True)
        return info

    def request(self, name: str, now: dt.datetime) -> str:
        """A manual run of a job, now (`jobs run`, POST /jobs/{name}/run)."""
        pipe = self.r.pipeline(transaction=True)
        info = self._add(pipe, name, now, "manual", now)
        pipe.execute()
        return info["run_id"]

    def pending(self) -> list[str]:
        return [m.decode() for m in self.r.zrange(self.pending_key, 0, -1)]

    def info(self, rid: str) -> dict:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self._run_key(rid)).items()}

    # --- running ---

    def acquire(self, rid: str, owner: str, lease_s: float) -> int | None:
        """Take a pending run: its attempt number, or None if it is taken, finished or cancelled."""
        keys = [self._lease_key(rid), self._run_key(rid), self.pending_key]
        attempts = self._acquire(keys=keys, args=[owner, int(lease_s * 1000), rid])
        return int(attempts) if attempts else None

    def renew(self, rid: str, owner: str, lease_s: float) -> bool:
        return bool(self._renew(keys=[self._lease_key(rid)], args=[owner, int(lease_s * 1000)]))

    def finish(self, rid: str, owner: str, status: str, error: str = "") -> bool:
        """Record the outcome; `pending` hands the run back for another attempt. False: lease lost."""
        keys = [self._lease_key(rid), self._run_key(rid), self.pending_key]
        return bool(self._finish(keys=keys, args=[owner, status, error, rid]))

    def cancel(self, rid: str) -> str:
        """unknown | cancelled (it had not started) | cancelling (its owner stops it) | its final status."""
        keys = [self._lease_key(rid), self._run_key(rid), self.pending_key]
        result = self._cancel(keys=keys, args=[rid])
        return result.decode() if isinstance(result, bytes) else str(result)

    def cancel_requested(self, rid: str) -> bool:
        return self.r.hget(self._run_key(rid), "cancel") == b"1"
