"""The queue adapter against a real redis-server: delivery, reclaim, dead letters, durability."""

import time
import uuid

import pytest
import redis

from pipeline.queue import RedisQueue, connect
from pipeline.queue.server import EmbeddedRedis


@pytest.fixture
def stream():
    return f"test:{uuid.uuid4().hex[:8]}"


def _queue(module_redis, consumer, **kw):
    kw.setdefault("reclaim_idle_ms", 300)
    return RedisQueue(connect(module_redis.url), "workers", consumer, prefix=f"t{uuid.uuid4().hex[:4]}", **kw)


def test_each_message_goes_to_exactly_one_of_two_consumers(module_redis, stream):
    a, b = _queue(module_redis, "a"), _queue(module_redis, "b")
    a.ensure_group(stream)
    for i in range(40):
        a.publish(stream, f"m{i}".encode())
    seen = {"a": [], "b": []}
    for _ in range(60):
        for name, q in (("a", a), ("b", b)):
            for msg in q.consume([stream], count=3, block_ms=10):
                seen[name].append(msg.data)
                msg.ack()
    assert sorted(seen["a"] + seen["b"]) == sorted(f"m{i}".encode() for i in range(40))
    assert not set(seen["a"]) & set(seen["b"])
    assert seen["a"] and seen["b"]
    assert a.r.xlen(stream) == 0  # acked entries are deleted: XLEN is the work in flight


def test_a_dead_consumers_messages_are_reclaimed_and_completed(module_redis, stream):
    dead, alive = _queue(module_redis, "dead"), _queue(module_redis, "alive")
    dead.ensure_group(stream)
    for i in range(3):
        dead.publish(stream, f"job{i}".encode())
    taken = dead.consume([stream], count=3)
    assert len(taken) == 3  # ...and then this consumer dies without acking
    assert alive.consume([stream], count=3, block_ms=10) == []  # not yet idle long enough
    time.sleep(0.4)
    done = []
    for _ in range(5):
        for msg in alive.consume([stream], count=3, block_ms=10):
            assert msg.deliveries == 2
            done.append(msg.data)
            msg.ack()
    assert sorted(done) == [b"job0", b"job1", b"job2"]
    assert alive.r.xpending(stream, "workers")["pending"] == 0


def test_poison_message_is_dead_lettered_after_the_retry_limit(module_redis, stream):
    q = _queue(module_redis, "w", max_deliveries=3, reclaim_idle_ms=50)
    q.ensure_group(stream)
    q.publish(stream, b"\x80garbage")
    for i in range(5):
        q.publish(stream, f"ok{i}".encode())
    processed, attempts = [], 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (len(processed) < 5 or q.r.xlen(q.dead_stream) == 0):
        for msg in q.consume([stream], count=1, block_ms=20):
            if msg.data.startswith(b"\x80"):
                attempts += 1  # processing fails: leave it pending, it will come back
                continue
            processed.append(msg.data)
            msg.ack()
        time.sleep(0.02)
    assert sorted(processed) == [f"ok{i}".encode() for i in range(5)]
    assert attempts == 3
    (entry,) = q.r.xrange(q.dead_stream)
    fields = entry[1]
    assert fields[b"data"] == b"\x80garbage" and fields[b"origin"] == stream.encode()
    assert b"delivered 4 times" in fields[b"reason"]
    assert q.r.xpending(stream, "workers")["pending"] == 0


def test_handoff_publishes_and_acks_together(module_redis, stream):
    q = _queue(module_redis, "w")
    q.ensure_group(stream)
    q.publish(stream, b"in")
    (msg,) = q.consume([stream])
    q.handoff(msg, [(stream + ":out", b"out")], extra=lambda pipe: pipe.set(stream + ":state", b"s1"))
    assert q.r.xrange(stream + ":out")[0][1][b"data"] == b"out"
    assert q.r.get(stream + ":state") == b"s1"
    assert q.r.xpending(stream, "workers")["pending"] == 0


def test_backpressure_waits_for_room(module_redis, stream):
    q = _queue(module_redis, "w")
    q.ensure_group(stream)
    for _ in range(3):
        q.publish(stream, b"x")
    start = time.monotonic()
    q.wait_for_room(stream, limit=3, stop=lambda: time.monotonic() - start > 0.3)
    assert time.monotonic() - start >= 0.3
    q.consume([stream])[0].ack()
    q.wait_for_room(stream, limit=3)  # returns at once now


def test_messages_survive_a_redis_restart(tmp_path):
    srv = EmbeddedRedis(tmp_path / "r").start()
    try:
        q = RedisQueue(connect(srv.url), "g", "c")
        q.ensure_group("s")
        q.publish("s", b"before")
        (pending,) = q.consume(["s"])
        srv.stop()
        with pytest.raises(redis.ConnectionError):
            q.r.ping()
        srv.start()
        q = RedisQueue(connect(srv.url), "g", "c")
        q.publish("s", b"after")
        assert [m.data for m in q.consume(["s"], count=5)] == [b"after"]
        assert q.r.xpending("s", "g")["pending"] == 2  # "before" is still owed
        pending.queue = q
        pending.ack()
        assert q.r.xpending("s", "g")["pending"] == 1
    finally:
        srv.stop()


def test_password_in_the_url(tmp_path):
    with EmbeddedRedis(tmp_path / "r", password="s3cret") as srv:
        assert connect(srv.url).ping()
        with pytest.raises(redis.AuthenticationError):
            connect(srv.url.replace("s3cret", "wrong")).ping()


def test_free_ports_are_distinct_free_and_outside_the_excluded():
    """free_port() n times may hand one port out twice (a `ray start` given one port for two
    components refused to start in CI); free_ports holds each until all are chosen."""
    import socket

    from pipeline.queue.server import free_ports

    first = free_ports(8)
    ports = free_ports(40, exclude=set(first))
    assert len(set(ports)) == 40 and not set(ports) & set(first)
    for port in ports:  # each one could be bound now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
