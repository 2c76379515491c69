"""Watch rules, the outbox and the notifier, against a real Redis, a real HTTP receiver and a real
mosquitto; the rules matched as a real clip is ingested with --local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.queue import connect
from pipeline.store import Store
from pipeline.types import Segment, Summary
from pipeline.watch import Watcher
from pipeline.watch.match import Matcher, alert_id
from pipeline.watch.notify import Notifier, check_signature
from pipeline.watch.outbox import Outbox
from pipeline.watch.rules import parse_rule
from pipeline.watch.table import read_alerts

from helpers.mqtt import Broker, Subscriber, free_port
from helpers.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]


def _rule(**kw):
    data = {"name": "door", "query": "a red circle", "notify": ["webhook:http://127.0.0.1:9/x"], **kw}
    return parse_rule(data, "test.yaml")


def _segment(stream, seq, caption, embedder, t0=None, wall=None):
    t0 = float(seq * 4) if t0 is None else t0
    return Segment(stream, seq, t0, t0 + 4, caption, np.zeros(4, np.float32), embedder.embed([caption])[0], 4, "fp",
                   wall_clock=wall)


def _cfg(tmp_path, *extra):
    return load_config(None, [f"watch.prefix=w{os.getpid()}-{time.monotonic_ns()}", "watch.retry_base_s=0.05",
                              "watch.retry_max_s=0.2", "watch.timeout_s=2", f"watch.dir={tmp_path}/none", *extra])


@pytest.mark.parametrize("field, value, says", [
    ("notify", ["webhook:ftp://host/x"], "must start with http:// or https://"),
    ("notify", ["mqtt:cams/#"], "may not hold the wildcards"),
    ("notify", ["email:me@example.com"], "must be webhook:URL or mqtt:TOPIC"),
    ("min_score", 1.5, "min_score must be in [-1, 1]"),
    ("min_score", "high", "min_score must be a number"),
    ("streams", ["../etc"], "stream id '../etc' is not allowed"),
    ("cooldown", "soon", "is not a duration"),
    ("match", "regex", "match must be one of meaning, keyword"),
    ("colour", "red", "unknown watch field 'colour'"),
])
def test_a_bad_rule_is_one_line_naming_the_file_and_field(field, value, says):
    with pytest.raises(ConfigError) as err:
        _rule(**{field: value})
    line = str(err.value)
    assert line.startswith("test.yaml: ") and says in line and "\n" not in line


def test_secrets_in_target_urls_are_masked_when_shown():
    r = _rule(notify=["webhook:https://user:hunter2@hooks.example/x?token=s3cret&x=1"])
    shown = json.dumps(r.shown())
    assert "hunter2" not in shown and "s3cret" not in shown and "hooks.example" in shown
    with pytest.raises(ConfigError) as err:
        _rule(notify=["webhook:https://user:hunter2@bad host/x"])
    assert "hunter2" not in str(err.value)


def test_meaning_and_keyword_rules_match_only_what_they_describe(text_embedder):
    meaning = _rule(min_score=0.6)
    keyword = _rule(name="tri", query="green triangle", match="keyword")
    cam2_only = _rule(name="cam2", min_score=0.6, streams=["cam2"])
    matcher = Matcher({r.name: r for r in (meaning, keyword, cam2_only)}, text_embedder.embed)
    records = [_segment("cam1", i, c, text_embedder) for i, c in enumerate(
        ["a red circle moves to the left", "a blue square moves up", "a green triangle appears, then a red circle",
         "an empty street at night"])]
    records.append(Summary("cam1", "window", 0, 0.0, 16.0, "a blue square moves up",
                           text_embedder.embed(["a blue square moves up"])[0], "fp"))
    hits = {(a.rule, a.seq) for a in matcher.alerts(records)}
    assert hits == {("door", 0), ("door", 2), ("tri", 2)}  # never the square, the street, cam2's rule or a summary
    (a,) = [a for a in matcher.alerts(records[:1]) if a.rule == "door"]
    assert a.score == pytest.approx(float(text_embedder.embed(["a red circle"])[0] @ records[0].text_embedding), abs=1e-3)
    assert a.alert_id == alert_id("door", "cam1", "chunk", 0)


def test_the_outbox_keeps_one_alert_per_rule_and_segment_and_cooldown_merges_a_burst(redis_url, text_embedder):
    r = connect(redis_url)
    cfg = _cfg(Path("/nonexistent"))
    rule = _rule(min_score=0.6, cooldown="10s")
    watcher = Watcher({"door": rule}, Outbox(r, cfg.watch.prefix), text_embedder.embed, log=lambda m: None)
    burst = [_segment("cam", i, "a red circle moves to the left", text_embedder, t0=4.0 * i) for i in range(5)]
    # 0 s fires; 4 and 8 s merge into it; 12 s is 12 s after the last alert: fires; 16 s merges into that one
    fired = watcher.observe(burst)
    assert [a.seq for a in fired] == [0, 3]
    assert watcher.outbox.merged(fired[0].alert_id) == 2 and watcher.outbox.merged(fired[1].alert_id) == 1
    # a replay (a redelivered chunk, a restarted writer) makes nothing new and merges nothing twice
    assert watcher.observe(burst) == []
    assert watcher.outbox.merged(fired[0].alert_id) == 2
    assert r.xlen(watcher.outbox.keys.queue) == 2  # one delivery per alert and target
    # another stream has its own cooldown
    assert [a.seq for a in watcher.observe([_segment("cam2", 0, "a red circle", text_embedder)])] == [0]
    # chunks stored out of order: one 4 s before the latest alert (12 s) merges into it too, and does not
    # move the cooldown's reference back (32 s is 20 s after 12 s: it fires)
    late = [_segment("cam", 9, "a red circle", text_embedder, t0=8.5), _segment("cam", 10, "a red circle",
                                                                                 text_embedder, t0=32.0)]
    assert [a.seq for a in watcher.observe(late)] == [10]
    # a window summary has its own cooldown: it does not merge into (or hold back) chunk alerts
    summary = Summary("cam", "window", 0, 0.0, 30.0, "a red circle", text_embedder.embed(["a red circle"])[0], "fp")
    rule.levels = ["chunk", "window"]
    assert [(a.level, a.seq) for a in watcher.observe([summary])] == [("window", 0)]


def _put(r, cfg, text_embedder, targets, seqs=(0,), stream="cam"):
    rule = _rule(min_score=0.6, notify=targets)
    watcher = Watcher({"door": rule}, Outbox(r, cfg.watch.prefix), text_embedder.embed, log=lambda m: None)
    return watcher.observe([_segment(stream, s, "a red circle moves to the left", text_embedder) for s in seqs])


def test_a_receiver_that_fails_three_times_gets_the_alert_once_signed(tmp_path, redis_url, text_embedder):
    cfg = _cfg(tmp_path)
    r = connect(redis_url)
    store = Store(tmp_path / "store")
    with Receiver(fail_first=3) as rx:
        (alert,) = _put(r, cfg, text_embedder, [f"webhook:{rx.url}"])
        notifier = Notifier(r, cfg.watch, store, "s3cret", log=lambda m: None)
        deadline = time.monotonic() + 20
        while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
            notifier.tick(50)
        got = rx.accepted()
        assert len(rx.requests) == 4 and len(got) == 1
        assert got[0]["alert_id"] == alert.alert_id and got[0]["caption"] == alert.caption
        last = rx.requests[-1]
        assert last["headers"]["X-Vidstorm-Alert-Id"] == alert.alert_id
        assert check_signature("s3cret", last["body"], last["headers"]["X-Vidstorm-Signature"])
        assert not check_signature("other", last["body"], last["headers"]["X-Vidstorm-Signature"])
        # nothing more goes out, however long the notifier runs
        for _ in range(5):
            notifier.tick(20)
        assert len(rx.requests) == 4
    (row,) = read_alerts(tmp_path / "store")
    assert (row["status"], row["attempts"], row["stream_id"], row["seq"]) == ("delivered", 4, "cam", 0)
    retrying = read_alerts(tmp_path / "store", status="retrying")
    assert retrying == []  # the latest row of the (alert, target) wins


def test_credentials_in_a_webhook_url_go_as_basic_auth_and_are_never_shown(tmp_path, redis_url, text_embedder):
    import base64

    cfg = _cfg(tmp_path)
    r = connect(redis_url)
    lines = []
    with Receiver() as rx:
        url = rx.url.replace("http://", "http://alice:hunter2@")
        _put(r, cfg, text_embedder, [f"webhook:{url}"])
        notifier = Notifier(r, cfg.watch, Store(tmp_path / "store"), "k", log=lines.append)
        deadline = time.monotonic() + 20
        while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
            notifier.tick(50)
        (req,) = rx.requests
    assert req["headers"]["Authorization"] == "Basic " + base64.b64encode(b"alice:hunter2").decode()
    (row,) = read_alerts(tmp_path / "store")
    assert row["status"] == "delivered" and "hunter2" not in json.dumps(row, default=str) and not lines


def test_a_redirect_is_not_a_delivery(tmp_path, redis_url, text_embedder):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = _cfg(tmp_path, "watch.max_attempts=2")
        r = connect(redis_url)
        _put(r, cfg, text_embedder, [f"webhook:http://127.0.0.1:{server.server_address[1]}/hook"])
        notifier = Notifier(r, cfg.watch, Store(tmp_path / "store"), "k", log=lambda m: None)
        deadline = time.monotonic() + 20
        while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
            notifier.tick(50)
    finally:
        server.shutdown()
        server.server_close()
    (row,) = read_alerts(tmp_path / "store")
    assert row["status"] == "failed" and "HTTP 302" in row["error"]


def test_an_unreachable_webhook_is_retried_then_recorded_failed(tmp_path, redis_url, text_embedder):
    cfg = _cfg(tmp_path, "watch.max_attempts=3")
    r = connect(redis_url)
    port = free_port()  # nothing listens
    lines = []
    _put(r, cfg, text_embedder, [f"webhook:http://127.0.0.1:{port}/x?token=abc123"])
    notifier = Notifier(r, cfg.watch, Store(tmp_path / "store"), "k", log=lines.append)
    deadline = time.monotonic() + 20
    while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
        notifier.tick(50)
    (row,) = read_alerts(tmp_path / "store")
    assert row["status"] == "failed" and row["attempts"] == 3 and "unreachable" in row["error"]
    assert "abc123" not in row["target"] + row["error"] and "abc123" not in " ".join(lines)
    assert len(lines) == 1 and "failed after 3 attempts" in lines[0]


def test_mqtt_alerts_reach_a_real_broker_once_in_frigate_layout(tmp_path, redis_url, text_embedder, broker):
    cfg = _cfg(tmp_path, f"watch.mqtt_url={broker.url}")
    r = connect(redis_url)
    sub = Subscriber(broker.port, "cams/#")
    try:
        alerts = _put(r, cfg, text_embedder, ["mqtt:cams"], seqs=(0, 1))
        notifier = Notifier(r, cfg.watch, Store(tmp_path / "store"), "k", log=lambda m: None)
        deadline = time.monotonic() + 20
        while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
            notifier.tick(50)
        got = sub.wait(2)
        time.sleep(0.5)
        assert sorted((t, p["alert_id"]) for t, p in sub.messages) == sorted(
            ("cams/cam/door", a.alert_id) for a in alerts)
        notifier.close()
    finally:
        sub.close()
    assert {row["status"] for row in read_alerts(tmp_path / "store")} == {"delivered"}
    assert len(got) == 2


def test_a_broker_that_is_down_at_start_is_retried_until_it_is_up(tmp_path, redis_url, text_embedder):
    later = Broker(tmp_path)
    cfg = _cfg(tmp_path, f"watch.mqtt_url={later.url}", "watch.max_attempts=50")
    r = connect(redis_url)
    (alert,) = _put(r, cfg, text_embedder, ["mqtt:cams"])
    notifier = Notifier(r, cfg.watch, Store(tmp_path / "store"), "k", log=lambda m: None)
    for _ in range(3):
        notifier.tick(50)
        time.sleep(0.1)
    (row,) = read_alerts(tmp_path / "store")
    assert row["status"] == "retrying" and "unreachable" in row["error"]
    later.start()
    sub = Subscriber(later.port, "cams/#")
    try:
        deadline = time.monotonic() + 20
        while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
            notifier.tick(50)
        assert [p["alert_id"] for _, p in sub.wait(1)] == [alert.alert_id]
    finally:
        sub.close()
        notifier.close()
        later.stop()
    (row,) = read_alerts(tmp_path / "store")
    assert row["status"] == "delivered" and row["attempts"] >= 2


NOTIFIER = """
import sys, threading
from pipeline.config import load_config
from pipeline.queue import connect
from pipeline.store import Store
from pipeline.watch.notify import Notifier
cfg = load_config(None, sys.argv[3:])
n = Notifier(connect(sys.argv[1]), cfg.watch, Store(sys.argv[2]), "k", log=print)
print("ready", flush=True)
n.run(threading.Event())
"""


def test_a_notifier_killed_mid_delivery_delivers_after_restart_once(tmp_path, redis_url, text_embedder):
    overrides = [f"watch.prefix=w{time.monotonic_ns()}", "watch.timeout_s=1", "watch.reclaim_idle_s=5"]
    cfg = load_config(None, overrides)
    r = connect(redis_url)
    with Receiver(hold_first_s=0.8) as rx:
        (alert,) = _put(r, cfg, text_embedder, [f"webhook:{rx.url}"])
        proc = subprocess.Popen([sys.executable, "-c", NOTIFIER, redis_url, str(tmp_path / "store"), *overrides],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 20
            while not rx.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            assert rx.requests, "the first notifier never posted"
            os.kill(proc.pid, signal.SIGKILL)  # mid-delivery: the receiver holds its answer
            proc.wait(10)
        finally:
            proc.kill()
        assert read_alerts(tmp_path / "store") == []  # nothing recorded: the delivery never finished
        again = Notifier(r, cfg.watch, Store(tmp_path / "store"), "k", log=lambda m: None)
        again.tick(50)
        assert len(rx.requests) == 1  # not taken over before reclaim_idle_s: the first might still be sending
        deadline = time.monotonic() + 20
        while Outbox(r, cfg.watch.prefix).pending() and time.monotonic() < deadline:
            again.tick(50)
        assert len(rx.requests) == 2  # sent again after the restart, and not again after that
        for _ in range(5):
            again.tick(20)
        assert len(rx.requests) == 2
    ids = [req["headers"]["X-Vidstorm-Alert-Id"] for req in rx.requests]
    assert ids == [alert.alert_id, alert.alert_id]  # the receiver keeps one: the same id both times
    rows = read_alerts(tmp_path / "store", limit=None)
    assert [(row["status"], row["attempts"]) for row in rows] == [("delivered", 1)]


def test_local_ingest_alerts_once_per_matching_segment(tmp_path, tiny_overrides):
    """A real clip through `vidstorm ingest --local`: a rule for its stream fires once for each stored
    segment, a rule for another stream never; a second ingest of the file sends nothing again."""
    from pipeline.store.query import StoreQuery
    from pipeline.synth import write_clip

    clip = write_clip(tmp_path / "yard.mp4", seconds=12, fps=5)
    data = tmp_path / "data"
    with Receiver() as rx:
        rules = data / "watch"
        rules.mkdir(parents=True)
        (rules / "all.yaml").write_text(f"name: all\nquery: anything\nmin_score: -1\nstreams: [yard]\n"
                                        f"notify: ['webhook:{rx.url}']\n")
        (rules / "never.yaml").write_text(f"name: never\nquery: anything\nmin_score: -1\nstreams: [elsewhere]\n"
                                          f"notify: ['webhook:{rx.url}']\n")
        args = [sys.executable, "-m", "actors.cli", "ingest", str(clip), "--local", "--data", str(data),
                *tiny_overrides, "decode.chunk_frames=8"]
        done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr
        segments = StoreQuery(data / "store").segments("yard")
        got = rx.accepted()
        assert len(segments) >= 2
        assert sorted(b["seq"] for b in got) == [s["chunk_seq"] for s in segments]
        assert {(b["rule"], b["stream_id"]) for b in got} == {("all", "yard")}
        # the same stream again under another config (not skipped as already ingested): every chunk is
        # stored and matched again, and no alert is made twice
        again = subprocess.run([*args, "summarizer.max_new_tokens=5"], capture_output=True, text=True, cwd=ROOT,
                               timeout=300)
        assert again.returncode == 0, again.stderr
        assert "already ingested" not in again.stderr and "alert:" not in again.stderr
        assert len(rx.requests) == len(segments)
    listed = subprocess.run([sys.executable, "-m", "actors.cli", "alerts", "--json", "--data", str(data)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    rows = json.loads(listed.stdout)
    assert sorted(r["seq"] for r in rows) == [s["chunk_seq"] for s in segments]
    assert {r["status"] for r in rows} == {"delivered"}
    assert not (data / "redis" / "redis-server.url").exists()  # the Redis it started for the outbox is stopped


def test_rows_stored_while_redis_is_away_are_matched_when_it_is_back(tmp_path, text_embedder):
    """--local: a Redis that cannot be reached is one line; the rows wait and alert once it is back."""
    from pipeline.queue.server import EmbeddedRedis
    from pipeline.watch.service import WatchService

    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "red.yaml").write_text("name: red\nquery: a red circle\nmin_score: 0.6\n"
                                                 "notify: ['webhook:http://127.0.0.1:9/x']\n")
    cfg = _cfg(tmp_path, f"watch.dir={tmp_path}/none")
    server = EmbeddedRedis(tmp_path / "redis").start()
    lines = []
    try:
        r = connect(server.url)
        service = WatchService(cfg, tmp_path, r, None, log=lines.append, notify=False)
        server.stop()
        rows = [_segment("cam", i, "a red circle moves to the left", text_embedder, t0=100.0 * i) for i in range(2)]
        assert service.observe(rows) == 0
        assert len(lines) == 1 and "Redis unreachable" in lines[0] and "2 records wait" in lines[0]
        assert service.observe([_segment("cam", 2, "a red circle", text_embedder, t0=200.0)]) == 0  # no new wait
        server = EmbeddedRedis(tmp_path / "redis", port=server.port).start()
        service._down_until = 0.0  # (RETRY_AFTER_S later)
        assert service.observe([]) == 3
        assert service.observe(rows) == 0  # matched once
    finally:
        server.stop()
