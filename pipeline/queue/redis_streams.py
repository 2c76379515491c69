"""Redis Streams adapter: publish, consume (messages carry their own ack), reclaim, dead-letter.

At-least-once delivery with consumer groups:
- publish: XADD of one binary payload (never pickle) with an approximate MAXLEN bound.
  Producers also call `wait_for_room` first, so the bound is backpressure and never
  trims work that was not yet done.
- consume: XREADGROUP. Each Message has ack(); `handoff` acks inside a MULTI/EXEC
  together with the next stage's XADD (and any state write), so a stage's output
  and its ack land together or not at all. Acked entries are XDEL'ed, so XLEN is
  the number of messages still in flight.
- reclaim: XAUTOCLAIM of entries idle longer than `reclaim_idle_ms`, i.e. held by a
  consumer that died; their delivery count rises each time.
- dead letters: an entry delivered more than `max_deliveries` times goes to
  `<prefix>:dead` with its origin and reason, and is acked, so the rest proceed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import redis

from pipeline.queue.keys import Keys

PAYLOAD = b"data"
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
RedisError = redis.RedisError  # any error of the client, for code that must not import redis itself


def connect(url: str) -> redis.Redis:
    """redis://[:password@]host:port/db or rediss:// for TLS. Binary-safe client."""
    client = redis.Redis.from_url(url, decode_responses=False, socket_timeout=30, socket_connect_timeout=5,
                                  health_check_interval=10)
    return client


def retrying(fn: Callable, *, give_up_after: float = 120.0, on_retry: Callable | None = None):
    """Run fn(), retrying while Redis is unreachable (restarting, loading its AOF)."""
    deadline = time.monotonic() + give_up_after
    delay = 0.05
    while True:
        try:
            return fn()
        except RETRYABLE as err:
            if time.monotonic() > deadline:
                raise
            if on_retry:
                on_retry(err)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@dataclass
class Message:
    queue: "RedisQueue"
    stream: str
    id: bytes
    data: bytes
    deliveries: int = 1

    def ack(self) -> None:
        self.queue.ack(self)


class RedisQueue:
    def __init__(self, client: redis.Redis, group: str, consumer: str, *, prefix: str = "vs",
                 maxlen: int = 100_000, reclaim_idle_ms: int = 30_000, max_deliveries: int = 5):
        self.r, self.group, self.consumer = client, group, consumer
        self.prefix, self.maxlen = prefix, maxlen
        self.reclaim_idle_ms, self.max_deliveries = reclaim_idle_ms, max_deliveries
        self._groups: set[str] = set()

    @property
    def dead_stream(self) -> str:
        return Keys(self.prefix).dead

    # --- producing ---

    def publish(self, stream: str, payload: bytes, pipe=None) -> bytes | None:
        target = pipe if pipe is not None else self.r
        return target.xadd(stream, {PAYLOAD: payload}, maxlen=self.maxlen, approximate=True)

    def wait_for_room(self, stream: str, limit: int, poll: float = 0.05, stop: Callable[[], bool] = lambda: False):
        """Backpressure: block while `stream` holds `limit` or more messages not yet done."""
        while not stop() and retrying(lambda: self.r.xlen(stream)) >= limit:
            time.sleep(poll)

    # --- consuming ---

    def ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            self.r.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._groups.add(stream)

    def consume(self, streams: list[str], count: int = 1, block_ms: int = 200) -> list[Message]:
        """New messages for this consumer, after first reclaiming any abandoned ones."""
        for stream in streams:
            self.ensure_group(stream)
        reclaimed = self.reclaim(streams, count)
        if reclaimed:
            return reclaimed
        reply = self.r.xreadgroup(self.group, self.consumer, {s: ">" for s in streams}, count=count, block=block_ms)
        out = []
        for stream, entries in reply or []:
            stream = stream.decode() if isinstance(stream, bytes) else stream
            for msg_id, fields in entries:
                if fields is None:  # deleted while pending
                    continue
                out.append(Message(self, stream, msg_id, fields.get(PAYLOAD, b"")))
        return out

    def reclaim(self, streams: list[str], count: int = 1) -> list[Message]:
        """Take over messages idle past the timeout; dead-letter the ones retried too often."""
        out = []
        for stream in streams:
            reply = self.r.xautoclaim(stream, self.group, self.consumer, self.reclaim_idle_ms, "0-0", count=count)
            entries = reply[1] if reply else []
            for msg_id, fields in entries:
                deliveries = self._deliveries(stream, msg_id)
                if fields is None:  # the entry itself is gone: nothing to redo
                    self.r.xack(stream, self.group, msg_id)
                    continue
                msg = Message(self, stream, msg_id, fields.get(PAYLOAD, b""), deliveries)
                if deliveries > self.max_deliveries:
                    self.dead_letter(msg, f"delivered {deliveries} times without success")
                    continue
                out.append(msg)
            if out:
                break
        return out

    def _deliveries(self, stream: str, msg_id: bytes) -> int:
        info = self.r.xpending_range(stream, self.group, min=msg_id, max=msg_id, count=1)
        return int(info[0]["times_delivered"]) if info else 1

    def ack(self, msg: Message, pipe=None) -> None:
        target = pipe if pipe is not None else self.r
        target.xack(msg.stream, self.group, msg.id)
        target.xdel(msg.stream, msg.id)

    def handoff(self, msg: Message | list[Message], outputs: list[tuple[str, bytes]], extra: Callable | None = None):
        """Atomically: publish outputs, run extra(pipe) (e.g. a state write), ack the input(s)."""
        msgs = msg if isinstance(msg, list) else [msg]

        def run():
            pipe = self.r.pipeline(transaction=True)
            for stream, payload in outputs:
                self.publish(stream, payload, pipe)
            if extra is not None:
                extra(pipe)
            for m in msgs:
                self.ack(m, pipe)
            pipe.execute()

        retrying(run)

    def dead_letter(self, msg: Message, reason: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.dead_stream, {PAYLOAD: msg.data, b"origin": msg.stream, b"id": msg.id,
                                     b"reason": reason.encode()[:500], b"group": self.group})
        self.ack(msg, pipe)
        pipe.execute()
