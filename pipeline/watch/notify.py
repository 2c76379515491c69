"""The notifier: delivers the outbox's alerts over webhooks and MQTT, retrying, and records each outcome.

- A webhook is an HTTP POST of the alert as JSON, with `X-Vidstorm-Alert-Id` (the same on every
  retry: a receiver that saw it already can drop it) and `X-Vidstorm-Signature: t=<unix>,v1=<hex>`,
  the HMAC-SHA256 of "<t>.<body>" under the webhook secret. 2xx is delivered; anything else, a refused
  connection or no answer in `watch.timeout_s` is retried after 1, 2, 4, ... seconds (up to
  `watch.retry_max_s`), `watch.max_attempts` times in all, then recorded as failed.
- MQTT: the same JSON published with QoS 1 to `<topic>/<stream>/<rule>` (Frigate's layout:
  `frigate/<camera>/<label>`), delivered when the broker acknowledges it. A broker that is down is
  retried like a webhook.
- Every outcome (retrying, delivered, failed) is a row of the Parquet `alerts` table (the latest row
  of an (alert, target) wins); GET /alerts/events follows that table.

Delivery is at-least-once with an idempotency key: an entry is acknowledged in Redis only after its
outcome is recorded (in Redis, then the table), so a notifier killed mid-delivery delivers again after it restarts; if the
receiver had already answered, it gets the same alert id twice and keeps one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as pysecrets
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path

from pipeline.errors import VidstormError
from pipeline.types import AlertRow
from pipeline.watch.match import Alert
from pipeline.watch.outbox import GROUP, Outbox
from pipeline.watch.rules import mask_url, parse_target

BATCH = 4  # queue entries taken at a time: each may wait timeout_s, all well within reclaim_idle_s


def webhook_secret(configured: str, data_dir: str | Path) -> str:
    """`watch.webhook_secret` (or VIDSTORM_WEBHOOK_SECRET), else one made once and kept in
    DATA/watch/.webhook-secret (mode 0600) for receivers to check signatures with."""
    import os

    if configured or os.environ.get("VIDSTORM_WEBHOOK_SECRET"):
        return configured or os.environ["VIDSTORM_WEBHOOK_SECRET"]
    path = Path(data_dir) / "watch" / ".webhook-secret"
    if not path.is_file():  # written aside, then linked into place: a reader never sees it half written
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".webhook-secret.{os.getpid()}.{pysecrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pysecrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise VidstormError(f"{path} is empty: remove it (a new secret is made) or set watch.webhook_secret")
    return secret


def sign(secret: str, body: bytes, now: float | None = None) -> str:
    t = str(int(time.time() if now is None else now))
    mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def check_signature(secret: str, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """What a receiver runs: the signature is ours and fresh."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    good = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(good, parts.get("v1", "")) and abs(time.time() - t) <= tolerance_s


class DeliveryError(Exception):
    """One attempt failed; the message says why (no secrets)."""


class MqttSender:
    """One connection to the broker, made on first use and again after it drops."""

    def __init__(self, url: str, timeout_s: float):
        parts = urllib.parse.urlsplit(url or "mqtt://127.0.0.1:1883")
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"watch.mqtt_url {mask_url(url)!r} must be mqtt://host:port or mqtts://")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        unquote = lambda v: urllib.parse.unquote(v) if v is not None else None  # noqa: E731
        self.user, self.password, self.tls = unquote(parts.username), unquote(parts.password), parts.scheme == "mqtts"
        self.shown = mask_url(url)
        self.timeout_s = timeout_s
        self.client = None

    def _connect(self):
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vidstorm-notifier-{pysecrets.token_hex(4)}")
        if self.user:
            client.username_pw_set(self.user, self.password)
        if self.tls:
            client.tls_set()
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p=None: connected.set() if not rc.is_failure else None
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise DeliveryError(f"MQTT broker {self.shown} unreachable: {err.strerror or err}") from None
        client.loop_start()
        if not connected.wait(self.timeout_s):
            client.loop_stop()
            client.disconnect()
            raise DeliveryError(f"MQTT broker {self.shown} did not accept the connection in {self.timeout_s:.0f}s")
        self.client = client

    def send(self, topic: str, body: bytes) -> None:
        if self.client is None or not self.client.is_connected():
            self.close()
            self._connect()
        info = self.client.publish(topic, body, qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as err:
            self.close()
            raise DeliveryError(f"MQTT publish to {topic!r} failed: {err}") from None
        if not info.is_published():
            self.close()
            raise DeliveryError(f"MQTT broker {self.shown} did not acknowledge the alert in {self.timeout_s:.0f}s")

    def close(self):
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: urllib would turn the POST into a GET without the alert."""

    def redirect_request(self, *args, **kwargs):
        return None


class Sender:
    """One delivery attempt of a JSON body to a target: a signed webhook POST or an MQTT publish (QoS 1).
    Raises DeliveryError saying why not (no secrets)."""

    def __init__(self, watch_cfg, secret: str):
        self.cfg, self.secret = watch_cfg, secret
        self._mqtt: MqttSender | None = None

    def send(self, target: str, body: bytes, alert_id: str, stream_id: str, rule: str) -> None:
        t = parse_target(target)
        if t.kind == "webhook":
            self._post(t, body, alert_id)
        else:
            if self._mqtt is None:
                self._mqtt = MqttSender(self.cfg.mqtt_url, self.cfg.timeout_s)
            self._mqtt.send(f"{t.address}/{stream_id}/{rule}", body)

    def _post(self, t, body: bytes, alert_id: str) -> None:
        import base64
        import urllib.error

        parts = urllib.parse.urlsplit(t.address)
        headers = {"Content-Type": "application/json", "User-Agent": "vidstorm-notifier",
                   "X-Vidstorm-Alert-Id": alert_id, "X-Vidstorm-Signature": sign(self.secret, body)}
        url = t.address
        if parts.username is not None:  # user:password@ in the URL: sent as Basic auth, never in the request line
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=self.cfg.timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as err:  # 3xx (not followed: a redirected POST loses its body), 4xx, 5xx
            status = err.code
            err.close()
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DeliveryError(f"webhook {t.shown} unreachable: {mask_url(str(reason))[:160]}") from None
        except Exception as err:  # a URL urllib cannot send (its message may hold the URL: not shown)
            raise DeliveryError(f"webhook {t.shown} could not be sent: {type(err).__name__}") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"webhook {t.shown} answered HTTP {status}")

    def close(self) -> None:
        if self._mqtt is not None:
            self._mqtt.close()
            self._mqtt = None


class Notifier:
    """Delivers the outbox. `media(alert) -> (thumbnail_url, clip_url)` adds links for people (optional);
    `store` (a pipeline.store.Store) gets the alerts table's rows."""

    def __init__(self, r, watch_cfg, store, secret: str, media=None, consumer: str | None = None, log=print):
        import os
        import socket

        self.outbox = Outbox(r, watch_cfg.prefix)
        self.r, self.cfg, self.store = r, watch_cfg, store
        self.sender = Sender(watch_cfg, secret)
        self.media, self.log = media, log
        self.consumer = consumer or f"notifier-{socket.gethostname()}-{os.getpid()}"
        self.reclaim_idle_s = watch_cfg.reclaim_idle_s  # entries a silent notifier held this long are taken over
        self.keys = self.outbox.keys
        self._retry: dict[bytes, tuple[float, dict]] = {}  # entry id -> (when due, fields)
        self._reclaimed = self._kept = float("-inf")
        self._warned = float("-inf")
        try:
            r.xgroup_create(self.keys.queue, GROUP, id="0", mkstream=True)
        except Exception as err:  # BUSYGROUP: made already
            if "BUSYGROUP" not in str(err):
                raise

    # --- the loop ---

    def tick(self, block_ms: int = 200) -> int:
        """Deliver what is due: entries a stopped notifier held (after reclaim_idle_s), due retries, new
        entries. Returns the entries handled."""
        entries = []
        now = time.time()
        if self._retry and time.monotonic() - self._kept > self.reclaim_idle_s / 3:
            # entries held for a retry stay ours: claiming them again resets their idle time, so another
            # notifier's reclaim does not take (and send) them too
            self._kept = time.monotonic()
            self.r.xclaim(self.keys.queue, GROUP, self.consumer, 0, list(self._retry), justid=True)
        if time.monotonic() - self._reclaimed > min(2.0, self.reclaim_idle_s):
            self._reclaimed = time.monotonic()
            entries += self._reclaim()
        due = [(eid, f) for eid, (at, f) in self._retry.items() if at <= now]
        for eid, _ in due:
            self._retry.pop(eid)
        entries += due
        if not entries:
            wait = min([at for at, _ in self._retry.values()], default=now + block_ms / 1000) - now
            entries = self._read(block_ms=max(1, min(block_ms, int(wait * 1000))))
        for eid, fields in entries:
            # ours again right before sending (another notifier may not reclaim it while this one waits on
            # an earlier entry of the batch)
            self.r.xclaim(self.keys.queue, GROUP, self.consumer, 0, [eid], justid=True)
            self._handle(eid, fields)
        return len(entries)

    def _fields(self, items) -> list[tuple[bytes, dict]]:
        out = []
        for eid, fields in items or []:
            if fields:  # a pending entry trimmed from the stream reads back empty
                out.append((eid, {k.decode(): v.decode() for k, v in fields.items()}))
            else:
                self.r.xack(self.keys.queue, GROUP, eid)
        return out

    def _read(self, block_ms: int) -> list[tuple[bytes, dict]]:
        res = self.r.xreadgroup(GROUP, self.consumer, {self.keys.queue: ">"}, count=BATCH, block=block_ms)
        return [e for _stream, items in res or [] for e in self._fields(items)]

    def _reclaim(self) -> list[tuple[bytes, dict]]:
        """Entries held longer than reclaim_idle_s by any consumer (a notifier that died mid-delivery), now
        ours; those waiting for a retry wait on until their time."""
        idle_ms = int(self.reclaim_idle_s * 1000)
        res = self.r.xautoclaim(self.keys.queue, GROUP, self.consumer, idle_ms, start_id="0-0", count=BATCH)
        out = []
        for eid, fields in self._fields(res[1] if len(res) > 1 else []):
            if eid in self._retry:
                continue
            state = self.outbox.delivery(fields.get("id", ""), fields.get("target", ""))
            if state.get("next_at", 0) > time.time():
                self._retry[eid] = (state["next_at"], fields)
            else:
                out.append((eid, fields))
        return out

    def run(self, stop: threading.Event, idle_ms: int = 200) -> None:
        while not stop.is_set():
            try:
                self.tick(idle_ms)
            except Exception as err:  # Redis restarting, or a bug: keep going, say so once a minute
                if time.monotonic() - self._warned > 60.0:
                    self._warned = time.monotonic()
                    self.log(f"notifier: {mask_url(str(err))[:200]}")
                stop.wait(1.0)
        self.close()

    def close(self) -> None:
        """Stop sending; leave the group if this consumer holds nothing (each process is a consumer)."""
        self.sender.close()
        try:
            if not self._retry:
                held = self.r.xpending_range(self.keys.queue, GROUP, "-", "+", 1, consumername=self.consumer)
                if not held:
                    self.r.xgroup_delconsumer(self.keys.queue, GROUP, self.consumer)
        except Exception:  # Redis gone: the consumer stays listed, harmlessly
            pass

    # --- one entry ---

    def _handle(self, eid: bytes, fields: dict) -> None:
        alert_id, target = fields.get("id", ""), fields.get("target", "")
        alert = self.outbox.alert(alert_id)
        state = self.outbox.delivery(alert_id, target)
        if alert is None:
            self.r.xack(self.keys.queue, GROUP, eid)  # garbage: nothing to send
            self.log(f"notifier: dropping queue entry {eid!r}: no alert {alert_id[:40]!r}")
            return
        if state.get("status") in ("delivered", "failed"):  # done, but stopped before its row or its ack
            self._write_row(alert, target, state)
            self.r.xack(self.keys.queue, GROUP, eid)
            return
        attempts = int(state.get("attempts", 0)) + 1
        try:
            self._send(alert, target, attempts)
        except Exception as err:  # DeliveryError, or anything else a send raised: an attempt that failed
            error = str(err)[:300] if isinstance(err, DeliveryError) else f"could not be sent: {type(err).__name__}"
            if attempts >= self.cfg.max_attempts:
                self._record(eid, alert, target, {"status": "failed", "attempts": attempts, "error": error})
                self.log(f"notifier: alert {alert.rule}/{alert.stream_id}#{alert.seq} to {parse_target(target).shown}"
                         f" failed after {attempts} attempts: {error}")
            else:
                delay = min(self.cfg.retry_max_s, self.cfg.retry_base_s * 2 ** (attempts - 1))
                state = {"status": "retrying", "attempts": attempts, "error": error, "next_at": time.time() + delay}
                self.outbox.set_delivery(alert_id, target, state)
                self._write_row(alert, target, state)
                self._retry[eid] = (time.time() + delay, fields)
            return
        self._record(eid, alert, target, {"status": "delivered", "attempts": attempts, "delivered_at": time.time()})

    def _record(self, eid: bytes, alert: Alert, target: str, state: dict) -> None:
        """The outcome in Redis first (a replay then sends nothing), then the table's row, then the ack: an
        entry leaves the queue only with its row written."""
        self.outbox.set_delivery(alert.alert_id, target, state)
        self._write_row(alert, target, state)
        self.r.xack(self.keys.queue, GROUP, eid)

    def payload(self, alert: Alert, attempt: int) -> dict:
        thumb, clip = self.media(alert) if self.media else (None, None)
        return {
            "type": "vidstorm.alert", "alert_id": alert.alert_id, "rule": alert.rule, "query": alert.query,
            "stream_id": alert.stream_id, "level": alert.level, "seq": alert.seq, "t_start": alert.t_start,
            "t_end": alert.t_end, "wall_clock": alert.wall_clock, "score": alert.score, "caption": alert.caption,
            "merged": self.outbox.merged(alert.alert_id), "thumbnail_url": thumb, "clip_url": clip,
            "created_at": alert.created_at, "attempt": attempt,
        }

    def _send(self, alert: Alert, target: str, attempt: int) -> None:
        body = json.dumps(self.payload(alert, attempt), sort_keys=True).encode()
        self.sender.send(target, body, alert.alert_id, alert.stream_id, alert.rule)

    def _write_row(self, alert: Alert, target: str, state: dict) -> None:
        if self.store is None:
            return
        thumb, clip = self.media(alert) if self.media else (None, None)
        self.store.write_alert(asdict(AlertRow(
            alert_id=alert.alert_id, rule=alert.rule, query=alert.query, stream_id=alert.stream_id, level=alert.level,
            seq=alert.seq, t_start=alert.t_start, t_end=alert.t_end, wall_clock=alert.wall_clock, score=alert.score,
            caption=alert.caption, target=parse_target(target).shown, status=state["status"],
            attempts=state.get("attempts", 0), error=state.get("error"), delivered_at=state.get("delivered_at"),
            merged=self.outbox.merged(alert.alert_id), thumbnail_url=thumb, clip_url=clip,
            created_at=alert.created_at)))
