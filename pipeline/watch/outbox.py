"""The alert outbox in Redis: each (rule, segment) alert once, cooldowns, and per-target delivery state.

Its keys (`WatchKeys`, prefix `watch.prefix`) are listed in pipeline/queue/keys.py. The queue has one
consumer group, "notifier", with a consumer per notifier process (it leaves when it holds nothing).

`put` is one Lua script, so a matcher that dies half way leaves either all of an alert or none of
it, and two writers or a replay cannot make a second alert of the same (rule, segment).
"""

from __future__ import annotations

import json

from pipeline.queue.keys import WatchKeys
from pipeline.watch.match import Alert

GROUP = "notifier"

_PUT = """
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 1 or redis.call('SISMEMBER', KEYS[4], id) == 1 then return 0 end
local ev = tonumber(ARGV[3])
local cooldown = tonumber(ARGV[4])
local last = redis.call('HGET', KEYS[3], ARGV[5])
local lev = nil
if last then
  local sep = string.find(last, ' ')
  lev = tonumber(string.sub(last, 1, sep - 1))
  -- within the cooldown of the latest alert, before or after it (chunks may be stored out of order)
  if cooldown > 0 and math.abs(ev - lev) < cooldown then
    redis.call('SADD', KEYS[4], id)
    redis.call('HINCRBY', KEYS[5], string.sub(last, sep + 1), 1)
    return 2
  end
end
redis.call('HSET', KEYS[1], id, ARGV[2])
if not lev or ev > lev then
  redis.call('HSET', KEYS[3], ARGV[5], ARGV[3] .. ' ' .. id)
end
for i = 6, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'id', id, 'target', ARGV[i])
end
return 1
"""


class Outbox:
    """Where matched alerts wait for the notifier. `put` returns new | duplicate | merged."""

    def __init__(self, r, prefix: str):
        self.r = r
        self.keys = WatchKeys(prefix)
        self._put = r.register_script(_PUT)

    def put(self, alert: Alert, cooldown_s: float) -> str:
        k = self.keys
        res = self._put(keys=[k.alerts, k.queue, k.last, k.quiet, k.merged],
                        args=[alert.alert_id, alert.to_json(), repr(float(alert.event_s)), repr(float(cooldown_s)),
                              f"{alert.rule}|{alert.stream_id}|{alert.level}", *alert.targets])
        return {0: "duplicate", 1: "new", 2: "merged"}[int(res)]

    def alert(self, alert_id: str) -> Alert | None:
        raw = self.r.hget(self.keys.alerts, alert_id)
        return Alert.from_json(raw) if raw else None

    def merged(self, alert_id: str) -> int:
        return int(self.r.hget(self.keys.merged, alert_id) or 0)

    def delivery(self, alert_id: str, target: str) -> dict:
        raw = self.r.hget(self.keys.delivery, f"{alert_id}|{target}")
        return json.loads(raw) if raw else {}

    def set_delivery(self, alert_id: str, target: str, state: dict, pipe=None) -> None:
        (pipe or self.r).hset(self.keys.delivery, f"{alert_id}|{target}", json.dumps(state))

    def pending(self) -> int:
        """Deliveries not finished yet: queued for the notifier or held by it (retries included)."""
        try:
            groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                      for g in self.r.xinfo_groups(self.keys.queue)}
        except Exception:  # no queue yet: nothing was ever put
            return 0
        group = groups.get(GROUP)
        if group is None:
            return int(self.r.xlen(self.keys.queue))
        last = group.get("last-delivered-id") or b"0-0"
        last = last.decode() if isinstance(last, bytes) else last
        waiting = len(self.r.xrange(self.keys.queue, min=f"({last}", max="+", count=100000))  # (Redis 6.2: no lag)
        return int(group.get("pending", 0)) + waiting
