"""A process's watch: the rules (read again when their files change), the matcher, and a notifier thread.

Ingest calls `observe(records)` right after it stores them (--local: LocalIngest; Ray: the writer,
before it acknowledges them). A broken rule file is one line and the other rules go on. When Redis
cannot be reached, `--local` keeps the records (up to BACKLOG) and matches them on a later call, trying
Redis again after RETRY_AFTER_S (so a Redis that is away costs ingest one timeout, not one per chunk);
the writer passes strict=True instead: the Redis error goes up, its tick is retried and nothing is
acknowledged unmatched. Matching is idempotent, so records matched twice make one alert.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipeline.watch import Watcher, lazy_embedder
from pipeline.watch.notify import Notifier, webhook_secret
from pipeline.watch.outbox import Outbox
from pipeline.watch.rules import load_rules, mask_url, rule_folders

RELOAD_EVERY_S = 2.0
BACKLOG = 10000  # records kept for a later match while Redis is away (--local)
RETRY_AFTER_S = 10.0


class WatchService:
    def __init__(self, cfg, data_dir: str | Path, r, store, media=None, log=print, notify: bool = True):
        self.cfg, self.data_dir, self.r, self.store, self.media, self.log = cfg, Path(data_dir), r, store, media, log
        self.folders = rule_folders(cfg.watch.dir, data_dir)
        self.embed = lazy_embedder(cfg.store.text_model)
        self.watcher: Watcher | None = None
        self.notify = notify
        self._signature = None
        self._checked = float("-inf")
        self._warned: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.notifier: Notifier | None = None
        self._backlog: list = []
        self._down_until = float("-inf")
        self.reload()
        try:
            if notify and (self.watcher or Outbox(r, cfg.watch.prefix).pending()):
                self.start_notifier()  # alerts an earlier run left undelivered go out now
        except Exception as err:
            self._warn("start", f"watch: notifier not started: {mask_url(str(err))[:200]}")

    def _files_signature(self):
        files = []
        for folder in self.folders:
            if folder.is_dir():
                files += [(str(p), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.y*ml"))]
        return tuple(files)

    def reload(self) -> None:
        """Read the rules again if a file was added, changed or removed."""
        self._checked = time.monotonic()
        signature = self._files_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:  # a bad file is one line (once a minute) and is skipped; the other rules go on
            rules = load_rules(self.folders, on_error=lambda err: self._warn(f"rule {err}", f"watch: {err}"))
        except Exception as err:  # keep the rules we had
            self._warn("rules", f"watch: rules not reloaded: {mask_url(str(err))[:200]}")
            return
        self.watcher = Watcher(rules, Outbox(self.r, self.cfg.watch.prefix), self.embed, self.log) if rules else None

    def observe(self, records, strict: bool = False) -> int:
        """Match stored records; returns the alerts made. Never raises, except a Redis error when `strict`."""
        from pipeline.queue import RedisError

        try:
            if time.monotonic() - self._checked > RELOAD_EVERY_S:
                self.reload()
        except Exception as err:
            self._warn("reload", f"watch: rules not reloaded: {mask_url(str(err))[:200]}")
        if self.watcher is None:
            return 0
        records = self._backlog + list(records)
        self._backlog = []
        if not strict and time.monotonic() < self._down_until:
            self._backlog = records[-BACKLOG:]
            return 0
        try:
            fired = self.watcher.observe(records)
        except RedisError as err:
            if strict:
                raise
            self._down_until = time.monotonic() + RETRY_AFTER_S
            self._backlog = records[-BACKLOG:]
            self._warn("redis", f"watch: Redis unreachable ({mask_url(str(err))[:120]}); {len(self._backlog)} "
                                f"records wait to be matched")
            return 0
        except Exception as err:  # e.g. the text model cannot load: one line a minute, ingest goes on
            self._warn("observe", f"watch: could not match new records: {mask_url(str(err))[:200]}")
            return 0
        if fired and self.notify:
            try:
                self.start_notifier()
            except Exception as err:
                self._warn("start", f"watch: notifier not started: {mask_url(str(err))[:200]}")
        return len(fired)

    def _warn(self, kind: str, line: str) -> None:
        if time.monotonic() - self._warned.get(kind, float("-inf")) > 60.0:
            self._warned[kind] = time.monotonic()
            self.log(line)

    def start_notifier(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()  # (a writer's run() that ended set the last one)
        secret = webhook_secret(self.cfg.watch.webhook_secret, self.data_dir)
        self.notifier = Notifier(self.r, self.cfg.watch, self.store, secret, media=self.media, log=self.log)
        self._thread = threading.Thread(target=self.notifier.run, args=(self._stop,), name="vidstorm-notifier",
                                        daemon=True)
        self._thread.start()

    def close(self, drain_s: float | None = None) -> int:
        """Let the notifier deliver for up to `drain_s` (watch.drain_s), then stop it. Returns deliveries
        still pending (they wait in Redis for the next notifier). Never raises."""
        if self._thread is None:
            return 0
        drain_s = self.cfg.watch.drain_s if drain_s is None else drain_s
        deadline = time.monotonic() + drain_s
        outbox = Outbox(self.r, self.cfg.watch.prefix)
        left = 0
        try:
            left = outbox.pending()
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = outbox.pending()
        except Exception as err:
            self.log(f"watch: could not wait for the alerts to go out: {mask_url(str(err))[:200]}")
        self._stop.set()
        self._thread.join(timeout=self.cfg.watch.timeout_s + 5)
        self._thread = None
        if left:
            self.log(f"watch: {left} alert deliveries still pending; they go out with the next run or "
                     f"`vidstorm watch deliver`")
        return left
