"""The watch of one process (pipeline/watch/service.py), with links to each alert's moment on the web page."""

from __future__ import annotations

import os
from pathlib import Path


def media_links(cfg):
    """alert -> (thumbnail URL, clip URL) under `watch.public_url`, signed with the API token as the
    server signs them (valid `watch.media_url_ttl_s`); None when no public URL is configured."""
    base = cfg.watch.public_url.rstrip("/")
    if not base:
        return None
    from actors.server.media import MediaSigner, thumbnail_path

    token = (cfg.api.token or os.environ.get("VIDSTORM_API_TOKEN", "")).strip() or None
    signer = MediaSigner(token, cfg.watch.media_url_ttl_s)

    def links(alert):
        if alert.level != "chunk":
            return None, None
        thumb = base + signer.url(thumbnail_path(alert.stream_id, alert.seq))
        if "://" in alert.source or alert.t_end - alert.t_start > cfg.api.clip_max_seconds:
            return thumb, None  # GET /clip cuts file sources only (as the API's own links)
        clip = base + signer.url("/clip", {"stream": alert.stream_id, "since": f"{alert.t_start:.3f}",
                                           "until": f"{alert.t_end:.3f}"})
        return thumb, clip

    return links


def watch_service(cfg, data_dir: str | Path, r, store, log=print, notify: bool = True):
    from pipeline.watch.service import WatchService

    return WatchService(cfg, data_dir, r, store, media=media_links(cfg), log=log, notify=notify)


class LocalWatch:
    """The watch of a `--local` ingest (or a scheduled local run): when the data directory has rules, the
    data directory's Redis (`redis.url`, else the embedded server a scheduler keeps up, else one started
    for this command) holds the outbox and a notifier thread delivers; `close()` waits watch.drain_s."""

    def __init__(self, cfg, data_dir: str | Path, store, log=print):
        self.cfg, self.data_dir, self.store, self.log = cfg, Path(data_dir), store, log
        self.service = None
        self._server = None

    def __enter__(self):
        from pipeline.queue import connect
        from pipeline.queue.server import EmbeddedRedis, redis_url_for
        from pipeline.watch.rules import rule_folders

        # any rule file: a broken one is one line (WatchService) and never stops the ingest
        if not any(f.is_dir() and any(f.glob("*.y*ml")) for f in rule_folders(self.cfg.watch.dir, self.data_dir)):
            return self
        try:
            url = redis_url_for(self.cfg, self.data_dir)
            if url is None:
                self._server = EmbeddedRedis(self.data_dir / "redis", appendfsync=self.cfg.redis.appendfsync).start()
                url = self._server.url
            self.service = watch_service(self.cfg, self.data_dir, connect(url), self.store, log=self.log)
        except Exception as err:  # no Redis for the outbox: ingest goes on without alerts, and says so
            from pipeline.watch.rules import mask_url

            self.log(f"watch: alerts are off for this run: {mask_url(str(err))[:200]}")
            self.__exit__(None, None, None)
            self.service = None
        return self

    def observe(self, records) -> int:
        return self.service.observe(records) if self.service else 0

    def __exit__(self, *exc):
        try:
            if self.service is not None:
                self.service.close()
        finally:
            if self._server is not None:
                self._server.stop()
                self._server = None
