"""Media of the web page: signed thumbnail/clip URLs, and cut clips cached on disk.

<img> and <video> cannot send the bearer header, so with a token configured every thumbnail and
clip URL the API hands out carries `exp` (unix seconds) and `sig`, an HMAC-SHA256 over the path
and the other query parameters, keyed by a key derived from the token. A URL without them, with
a parameter changed, or past `exp` is refused (401). Without a token the URLs are plain.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import urllib.parse
from pathlib import Path


class MediaSigner:
    def __init__(self, token: str | None, ttl_s: float = 3600.0):
        self.ttl_s = ttl_s
        self.key = hmac.new(token.encode(), b"vidstorm media url v1", hashlib.sha256).digest() if token else None

    def _mac(self, path: str, params: list[tuple[str, str]]) -> str:
        message = path + "?" + urllib.parse.urlencode(params)
        return hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()

    def url(self, path: str, params: dict | None = None, now: float | None = None) -> str:
        """`path` (already %-encoded) with `params`, signed when a token is set. The signature covers the
        decoded path, which is what `check` gets from the server (request.url.path)."""
        pairs = [(k, str(v)) for k, v in (params or {}).items()]
        if self.key is not None:
            pairs.append(("exp", str(int((time.time() if now is None else now) + self.ttl_s))))
            pairs.append(("sig", self._mac(urllib.parse.unquote(path), pairs)))
        return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")

    def check(self, path: str, pairs: list[tuple[str, str]], now: float | None = None) -> str | None:
        """None if the URL is signed, unchanged and not expired; else why not (one line). `path`: decoded."""
        if self.key is None:
            return None
        given = [v for k, v in pairs if k == "sig"]
        rest = [(k, v) for k, v in pairs if k != "sig"]
        expires = [v for k, v in rest if k == "exp"]
        if len(given) != 1 or len(expires) != 1:
            return "media URLs need the exp and sig the API signed them with (or the bearer header)"
        if not hmac.compare_digest(given[0].encode("utf-8", "surrogateescape"), self._mac(path, rest).encode()):
            return "media URL signature does not match (the URL was changed, or signed with another token)"
        try:
            expired = float(expires[0]) < (time.time() if now is None else now)
        except ValueError:
            expired = True
        if expired:
            return "media URL expired: ask the API for a fresh one"
        return None


class NoClip(Exception):
    """A stream whose clips cannot be cut: `status` (HTTP) and one line saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def clip_source(query, stream_id: str) -> Path:
    """The file a stream's segments came from, for GET /clip and `vidstorm clip`. The path comes from
    the store (what ingest recorded), never from the request; NoClip if it cannot be cut."""
    from pipeline.secrets import mask_secrets

    if not query.has_stream(stream_id):
        raise NoClip(404, f"unknown stream {stream_id!r}")
    source = query.stream_source(stream_id)
    if not source:
        raise NoClip(404, f"stream {stream_id!r} has no stored source")
    if "://" in source:
        raise NoClip(400, f"stream {stream_id!r} is a live source ({mask_secrets(source)}): clips are cut "
                          "from files only")
    path = Path(source)
    if not path.is_file():
        raise NoClip(404, f"the source file of stream {stream_id!r} is gone ({path})")
    return path


def thumbnail_path(stream_id: str, chunk_seq: int) -> str:
    return f"/segments/{urllib.parse.quote(stream_id, safe='')}/{int(chunk_seq)}/thumbnail.jpg"


class ClipCache:
    """Cut clips as files under `folder`, keyed by the source file (path, size, mtime) and the span;
    the oldest are removed past `max_bytes`. A browser's range requests read one cut."""

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, source: Path, since: float, until: float, max_seconds: float) -> Path:
        from pipeline.clip import cut_clip

        info = source.stat()
        key = hashlib.sha256(json.dumps([str(source), info.st_size, info.st_mtime_ns, round(since, 3),
                                         round(until, 3)]).encode()).hexdigest()[:32]
        out = self.folder / f"{key}.mp4"
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one cut per span, however many requests ask at once
            if out.is_file():
                os.utime(out)
                return out
            self.folder.mkdir(parents=True, exist_ok=True)
            cut_clip(source, since, until, out, max_seconds=max_seconds)
        self._trim(keep=out)
        return out

    def _trim(self, keep: Path) -> None:
        found = []
        for p in self.folder.glob("*.mp4"):
            try:
                found.append((p.stat().st_mtime, p.stat().st_size, p))
            except FileNotFoundError:  # trimmed by another request meanwhile
                continue
        total = sum(size for _, size, _ in found)
        for _, size, p in sorted(found):
            if total <= self.max_bytes:
                break
            if p != keep:  # (a clip being sent stays readable: the open file outlives its name)
                p.unlink(missing_ok=True)
                total -= size
