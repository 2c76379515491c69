"""PyAV sources -> FrameChunk iterator, sampled by presentation time, resumable.

A source is a file, a folder (recursive, stable order) or a live URL FFmpeg can
open (rtsp, http(s), udp, tcp, ...). Frames are sampled at `fps` on a grid of
presentation times: a frame is taken when its own PTS reaches the next grid
point, and its exact PTS is reported, so variable-frame-rate files and files with
a start offset get true times. Grid points skipped by a gap are not repeated.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from pipeline.errors import VidstormError
from pipeline.types import FrameChunk

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts", ".flv", ".mpg", ".mpeg", ".wmv"}
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "rtp")
EPS = 5e-4  # seconds: PTS rounding tolerance when matching the sampling grid


class SourceError(VidstormError):
    """A source cannot be read. The message names the source and the problem."""

    def __init__(self, source: str, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source, self.problem = source, problem


@dataclass(frozen=True)
class Source:
    uri: str  # a file path or a URL
    stream_id: str
    live: bool = False
    # the file's content_fingerprint once something computed it (pipeline.ingest.Ingested.pending), so
    # a job run reads each file's head and tail once; None: not computed yet
    content_fp: str | None = field(default=None, compare=False)


def is_url(text: str) -> bool:
    return re.match(r"^([a-z][a-z0-9+.-]*)://", text, re.I) is not None


def slug(text: str) -> str:
    """A safe stream id (pipeline.names) made from a file or URL name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:128].rstrip("-._") or "stream"


def expand_sources(args: list[str], stream_id: str | None = None) -> tuple[list[Source], list[SourceError]]:
    """Turn command-line arguments into sources; problems come back as errors, not raised.

    An explicit stream id must be a safe name (it names state files): BadName otherwise."""
    from pipeline.names import check_name

    if stream_id is not None:
        check_name(stream_id, "stream id")
    sources, errors = [], []
    for arg in args:
        if is_url(arg):
            scheme = arg.split("://", 1)[0].lower()
            if scheme == "file":
                arg = arg[len("file://") :]
            elif scheme not in LIVE_SCHEMES:
                errors.append(SourceError(arg, f"unsupported URL scheme {scheme!r}"))
                continue
            else:
                name = arg.split("://", 1)[1].split("?")[0]
                sources.append(Source(arg, stream_id or slug(name), live=True))
                continue
        path = Path(arg)
        if path.is_dir():
            found = folder_sources(path)
            if not found:
                errors.append(SourceError(arg, "folder holds no video files"))
            sources += found
        elif path.is_file():  # stored absolute: a clip of it is cut later, from wherever the server runs
            sources.append(Source(str(path.resolve()), stream_id or slug(path.stem)))
        else:
            errors.append(SourceError(arg, "no such file or folder"))
    return _unique_ids(sources), errors


def folder_sources(folder: str | Path, pattern: str = "**/*") -> list[Source]:
    """Video files under `folder` matching `pattern`; stream ids from folder name + relative path."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    return [Source(str(p.resolve()), slug(f"{folder.resolve().name}/{p.relative_to(folder).with_suffix('').as_posix()}"))
            for p in found]


def _unique_ids(sources: list[Source]) -> list[Source]:
    """Two sources must never share a stream id: their rows would collide in the store."""
    seen: dict[str, int] = {}
    out = []
    for source in sources:
        sid = source.stream_id
        if sid in seen:
            seen[sid] += 1
            sid = f"{sid}-{seen[sid]}"
            while sid in seen:
                sid += "x"
        seen.setdefault(sid, 1)
        out.append(Source(source.uri, sid, source.live))
    return out


def content_fingerprint(path: str, block: int = 1 << 20) -> str:
    """Content fingerprint of a file: size + first and last MiB (fast on hours of video)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(block))
        if size > block:
            fh.seek(max(block, size - block))
            digest.update(fh.read(block))
    return digest.hexdigest()[:32]


def recorded_at(container, stream) -> float | None:
    """When a file's footage starts (unix seconds), from its creation_time tag; None when the tag
    is missing or is a placeholder (many tools write 1970-01-01)."""
    import datetime as dt

    text = stream.metadata.get("creation_time") or container.metadata.get("creation_time")
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp() if when.year >= 2000 else None


def _describe(err: Exception) -> str:
    text = str(err)
    match = re.search(r"\]\s*(.*?)(?::\s*'[^']*')?$", text)
    return (match.group(1) if match else text).strip() or type(err).__name__


THUMBNAIL_QUALITY = 3  # MJPEG qscale (2 best .. 31 worst): ~5-10 KB at 192 px wide


def thumbnail_frame(frame: av.VideoFrame, width: int) -> av.VideoFrame:
    """`frame` scaled to `width` px wide (aspect kept, even height), in the JPEG encoder's format: a
    small copy, so the decoder's full-size buffer is not held while the chunk fills."""
    height = max(2, round(width * frame.height / frame.width / 2) * 2)
    return frame.reformat(width=width, height=height, format="yuvj420p", interpolation="BILINEAR")


def jpeg_bytes(small: av.VideoFrame) -> bytes:
    """A JPEG of a thumbnail_frame, by FFmpeg's MJPEG encoder (no image library needed)."""
    small.pts = 0
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = small.width, small.height, "yuvj420p"
    encoder.time_base = Fraction(1, 1)
    encoder.options = {"qmin": str(THUMBNAIL_QUALITY), "qmax": str(THUMBNAIL_QUALITY)}
    return b"".join(bytes(p) for p in [*encoder.encode(small), *encoder.encode(None)])


def jpeg_thumbnail(frame: av.VideoFrame, width: int) -> bytes:
    """A JPEG of `frame`, `width` px wide (~5-10 ms at 720p here, once per chunk)."""
    return jpeg_bytes(thumbnail_frame(frame, width))


class VideoDecoder:
    """Decode one source into FrameChunks of `chunk_frames` frames at `fps`.

    Frames are resized (bilinear) to size x size RGB. The last partial chunk is
    kept: padded by repeating its last frame up to a multiple of `pad_multiple`.
    """

    def __init__(
        self,
        source: Source,
        size: int,
        fps: float = 1.0,
        chunk_frames: int = 16,
        pad_multiple: int = 8,
        threads: int = 0,
        keyframes_only: bool = False,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        start_at: float = 0.0,
        first_chunk_seq: int = 0,
        reconnect_outage: float = 0.0,
        reconnect_backoff_max: float = 5.0,
        thumbnail_width: int = 0,
    ):
        self.source, self.size, self.period = source, size, 1.0 / fps
        self.chunk_frames, self.pad_multiple = chunk_frames, pad_multiple
        self.threads, self.keyframes_only = threads, keyframes_only
        self.open_timeout, self.read_timeout = open_timeout, read_timeout
        self.start_at, self.first_chunk_seq = start_at, first_chunk_seq
        self.reconnect_outage, self.reconnect_backoff_max = reconnect_outage, reconnect_backoff_max
        self.thumbnail_width = thumbnail_width  # px; 0: no thumbnails
        self.duration: float | None = None  # seconds, when the container knows it
        self.recorded_at: float | None = None  # unix seconds of the file's start, when it says (cameras do)
        self.frames_decoded = 0  # every decoded frame, sampled or not
        self.reconnects = 0  # live: times the source came back after a drop
        self.connected_at: float | None = None  # unix seconds the (last) connection was made
        self._container = None
        self._shift = 0.0  # live: added to a connection's own timestamps (each reconnect restarts them)
        self._rebase: tuple[float, float] | None = None  # live, after a reconnect: (t_first, wall0) to rebase on

    @classmethod
    def for_config(cls, source: Source, decode, size: int, pad_multiple: int, **kwargs) -> "VideoDecoder":
        """A decoder with the settings of a DecodeConfig (--local and the distributed decoders); a live
        source's chunks are `live_chunk_frames` long when that is set."""
        chunk = decode.live_chunk_frames if source.live and decode.live_chunk_frames else decode.chunk_frames
        return cls(source, size, decode.fps, chunk, pad_multiple, decode.threads,
                   decode.keyframes_only, decode.open_timeout, decode.read_timeout,
                   reconnect_outage=decode.reconnect_outage, reconnect_backoff_max=decode.reconnect_backoff_max,
                   thumbnail_width=decode.thumbnail_width, **kwargs)

    # 1. open, with clear errors
    def open(self, retry_until: float | None = None):
        """Open the source. Refused connections are retried until `retry_until` (time.monotonic();
        default open_timeout from now); each attempt may take open_timeout to connect and probe."""
        uri = self.source.uri
        if not self.source.live:
            if not os.path.isfile(uri):
                raise SourceError(uri, "no such file")
            if os.path.getsize(uri) == 0:
                raise SourceError(uri, "empty file (0 bytes)")
        deadline = time.monotonic() + self.open_timeout if retry_until is None else retry_until
        while True:
            try:
                attempt = time.time()
                container = av.open(uri, timeout=(self.open_timeout, self.read_timeout))
                self.connected_at = attempt  # live: its first frame is (about) this moment's picture
                break
            except av.error.ConnectionRefusedError as err:
                if time.monotonic() >= deadline:  # a camera that is restarting gets a few tries
                    raise SourceError(uri, f"connection refused ({_describe(err)})") from None
                time.sleep(0.2)
            except av.error.InvalidDataError as err:
                raise SourceError(uri, f"not a readable video ({_describe(err)})") from None
            except (av.error.FFmpegError, OSError) as err:
                raise SourceError(uri, f"cannot open ({_describe(err)})") from None
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            container.close()
            raise SourceError(uri, f"has no video stream (only {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = self.threads
        if self.keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        if stream.duration is not None and stream.time_base is not None:
            self.duration = float(stream.duration * stream.time_base)
        elif container.duration:
            self.duration = container.duration / 1_000_000
        self._container, self._stream = container, stream
        if not self.source.live:
            self.recorded_at = recorded_at(container, stream)
        return self

    def _start_time(self) -> float:
        stream = self._stream
        return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0

    def close(self):
        if self._container is not None:
            self._container.close()
            self._container = None

    # 2. decode and sample on the presentation-time grid
    def _sampled_frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
        container, stream = self._container, self._stream
        if self.start_at > 0 and not self.source.live:
            container.seek(int(self.start_at / stream.time_base), stream=stream, backward=True)
        next_t = None
        try:
            for frame in container.decode(stream):
                self.frames_decoded += 1
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                if self._rebase is not None:  # first frame after a reconnect: continue on the wall clock
                    t_first, wall0 = self._rebase
                    self._shift, self._rebase = t_first + (self.connected_at - wall0) - t, None
                t += self._shift
                if t < self.start_at - EPS:
                    continue
                if next_t is None:  # the grid starts at the resume point, else at the first frame
                    next_t = self.start_at if self.start_at > 0 else t
                if t < next_t - EPS:
                    continue
                yield t, frame
                next_t += self.period
                while next_t <= t + EPS:
                    next_t += self.period
        except av.error.FFmpegError as err:
            if self.source.live and (next_t is not None or self._rebase is not None):
                return  # a live stream that stops answering (here, or again after a reconnect) has dropped
            where = f" after {next_t:.1f}s" if next_t is not None else ""
            raise SourceError(self.source.uri, f"corrupt or unreadable video data{where} ({_describe(err)})") from None

    def chunks(self) -> Iterator[FrameChunk]:
        """Yield chunks; raises SourceError for an unreadable or truncated source."""
        if self._container is None:
            self.open()
        frames, stamps, seq = [], [], self.first_chunk_seq
        pictures = []  # the chunk's first decoded frames (references): its thumbnail is made from the middle one
        wall0 = t_first = None
        last_t = None
        gap, back = 0.0, False  # seconds away before the next chunk; a live source just reconnected
        try:
            while True:
                for t, frame in self._sampled_frames():
                    if self.source.live and wall0 is None:  # the first frame is the picture at connection
                        wall0, t_first = self.connected_at or time.time(), t  # (probing and lag come after)
                    elif wall0 is None and self.recorded_at is not None:  # a file that says when it was shot
                        wall0, t_first = self.recorded_at, self._start_time()
                    if back:  # the first frame after a reconnect: the time away is the gap
                        gap, back = max(0.0, t - last_t - self.period), False
                    rgb = frame.to_ndarray(width=self.size, height=self.size, format="rgb24",
                                           interpolation="BILINEAR")
                    frames.append(rgb)
                    stamps.append(t)
                    if self.thumbnail_width and len(pictures) <= (self.chunk_frames - 1) // 2:
                        pictures.append(frame)  # the middle frame of any chunk (a short last one too) is among these
                    last_t = t
                    if len(frames) == self.chunk_frames:
                        yield self._chunk(seq, frames, stamps, wall0, t_first, gap, pictures)
                        frames, stamps, seq, gap, pictures = [], [], seq + 1, 0.0, []
                if frames:  # no chunk spans a gap: what came before the drop is a chunk of its own
                    yield self._chunk(seq, frames, stamps, wall0, t_first, gap, pictures)
                    frames, stamps, seq, gap, pictures = [], [], seq + 1, 0.0, []
                if not (self.source.live and wall0 is not None and self._reconnect(t_first, wall0)):
                    break
                back = True
            if last_t is None and self.start_at > 0:  # resumed after the last sample: nothing left,
                self._check_complete(self.start_at - self.period)  # but a cut file is still cut
                return
            if last_t is None:
                raise SourceError(self.source.uri, "no decodable video frames")
            self._check_complete(last_t)
        finally:
            self.close()

    def _reconnect(self, t_first: float, wall0: float) -> bool:
        """A live source dropped: reopen it with backoff for up to reconnect_outage seconds.
        True when it is back (its timestamps are then rebased on the wall clock, so the time it was
        away shows as a gap); False when the outage ran out (the stream ends)."""
        self.close()
        if self.reconnect_outage <= 0:
            return False
        give_up = time.monotonic() + self.reconnect_outage
        delay = 0.2
        while give_up - time.monotonic() > 0:
            try:
                self.open(retry_until=give_up)  # an attempt that connected may finish probing past give_up
            except SourceError:
                time.sleep(min(delay, max(0.0, give_up - time.monotonic())))
                delay = min(2 * delay, self.reconnect_backoff_max)
                continue
            self.reconnects += 1
            self._rebase = (t_first, wall0)
            return True
        return False

    def _chunk(self, seq, frames, stamps, wall0, t_first, gap: float = 0.0, pictures=()) -> FrameChunk:
        n_valid = len(frames)
        thumbnail = jpeg_thumbnail(pictures[(n_valid - 1) // 2], self.thumbnail_width) if pictures else None
        padded = -(-n_valid // self.pad_multiple) * self.pad_multiple
        frames = frames + [frames[-1]] * (padded - n_valid)
        wall = None if wall0 is None else wall0 + (stamps[0] - t_first)
        return FrameChunk(
            stream_id=self.source.stream_id,
            chunk_seq=seq,
            frames=np.stack(frames),
            timestamps=np.asarray(stamps, dtype=np.float64),
            t_end=stamps[-1] + self.period,
            wall_clock=wall,
            source=self.source.uri,
            gap_before=round(gap, 3),
            thumbnail=thumbnail,
        )

    def _check_complete(self, last_t: float):
        """A file whose index promises more than could be decoded is truncated."""
        if self.source.live or self.duration is None or self.keyframes_only:
            return
        expected_end = self._start_time() + self.duration
        if last_t + max(2.0, 2 * self.period) < expected_end:
            raise SourceError(
                self.source.uri, f"truncated: video data ends at {last_t:.1f}s of {expected_end:.1f}s"
            )


def check_offline_source(source: Source, mode: str) -> None:
    """temporal.mode=offline scans a whole file: a live source (no end) is refused, never quietly run in
    another mode. --local and the distributed decoders both ask here."""
    if mode == "offline" and source.live:
        raise SourceError(source.uri, "temporal.mode=offline scans whole files and cannot run on a live source; "
                          "ingest it with temporal.mode=chunk_bidirectional (same weights)")
