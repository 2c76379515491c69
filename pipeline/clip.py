"""Cut a span of a video file into an MP4 a browser <video> element plays (H.264/AAC, moov first).

Times are the source's presentation times in seconds, as pipeline.decode reports them. Two ways:

- stream copy (packets only, nothing decoded) when the keyframe at or before `since` is within
  `copy_slack_s` of it and the codec can go into MP4: the clip starts at that keyframe and holds
  every frame with pts < until. With B-frames it may also hold the anchor frame(s) after `until`
  that those frames reference; ClipInfo.end says where it really ends.
- re-encode (libx264) otherwise: exactly the frames with since <= pts < until, source timestamps kept.

Audio: AAC/MP3 is copied in a stream copy; any other audio (opus, pcm, ...), and all audio of a
re-encode, is re-encoded to AAC, cut to the frames inside the clip. Decoding audio is cheap, and a
clip keeps its sound.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from pipeline.decode import _describe
from pipeline.errors import VidstormError

MP4_VIDEO = {"h264", "hevc", "av1"}  # what MP4 holds and browsers play, copied as is (MPEG-4 Part 2 goes
#                                    in MP4 but no browser plays it: re-encoded)
MP4_AUDIO = {"aac", "mp3"}
MP4_TAGS = {"h264": "avc1", "hevc": "hvc1", "av1": "av01"}  # hvc1: Safari wants it
EPS = 5e-4  # seconds: PTS rounding tolerance
AUDIO_LAG_S = 5.0  # seconds of video read past the clip while waiting for its audio


class ClipError(VidstormError):
    """A clip cannot be cut. The message names the source or span and the problem."""


@dataclass(frozen=True)
class ClipInfo:
    start: float  # source time (s) of the clip's first frame
    end: float  # source time (s) just after its last frame
    copied: bool  # True: stream copy; False: re-encoded
    bytes: int


def cut_clip(source: str | Path, since: float, until: float, out: str | Path, *, max_seconds: float = 300.0,
             copy_slack_s: float = 1.0) -> ClipInfo:
    """Cut [since, until) of the video file `source` into the MP4 `out`, atomically.

    `until` past the end is clamped to the end. Raises ClipError for a live URL, an unreadable file
    or a bad span; `out` is then left as it was."""
    # 1. check the request before touching the file
    source = str(source)
    if "://" in source:
        raise ClipError(f"{source} is a live stream: only files can be cut")
    _check_span(since, until, max_seconds)
    out = Path(out)
    if not out.parent.is_dir():
        raise ClipError(f"{out}: the output folder does not exist")
    # 2. cut into a temp file beside `out`, then move it into place
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
        os.close(fd)
    except OSError as err:
        raise ClipError(f"{out}: cannot write there ({err.strerror})") from None
    try:
        with _open(source) as src:
            start, end, copied = _cut(src, source, since, until, tmp, copy_slack_s)
        os.replace(tmp, out)
    except av.error.FFmpegError as err:
        raise ClipError(f"{source}: cannot cut {since:g}-{until:g} s ({_describe(err)})") from None
    except OSError as err:
        raise ClipError(f"{out}: cannot write the clip ({err.strerror or err})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after a successful replace
    return ClipInfo(start, end, copied, out.stat().st_size)


def _check_span(since: float, until: float, max_seconds: float):
    if not (math.isfinite(since) and math.isfinite(until)):
        raise ClipError(f"since={since} s, until={until} s: both must be finite numbers of seconds")
    if since < 0:
        raise ClipError(f"since={since:g} s is negative: source times start at 0")
    if until <= since:
        raise ClipError(f"until={until:g} s is not after since={since:g} s")
    if until - since > max_seconds:
        raise ClipError(f"the span {since:g}-{until:g} s is longer than the limit of {max_seconds:g} s; "
                        "cut a shorter one")


def _open(source: str):
    if not os.path.isfile(source):
        raise ClipError(f"{source}: no such file")
    try:
        src = av.open(source)
    except (av.error.FFmpegError, OSError) as err:
        raise ClipError(f"{source}: not a readable video ({_describe(err)})") from None
    if not src.streams.video:
        src.close()
        raise ClipError(f"{source}: has no video stream")
    return src


def _cut(src, source: str, since: float, until: float, tmp: str,
         copy_slack_s: float) -> tuple[float, float, bool]:
    """Write the clip to `tmp`; (start, end, copied)."""
    video = src.streams.video[0]
    audio = src.streams.audio[0] if src.streams.audio else None
    first, end = _extent(src, video)
    if since >= end:
        raise ClipError(f"{source}: since={since:g} s is outside the source (it lasts {end - first:.2f} s)")
    until = min(until, end)
    keyframe = _keyframe_at_or_before(src, video, since)
    copy = (_codec(video) in MP4_VIDEO and keyframe is not None
            and since - keyframe <= copy_slack_s + EPS)
    with av.open(tmp, "w", format="mp4", options={"movflags": "+faststart"}) as dst:
        if copy:
            start, stop = _copy(src, video, audio, dst, keyframe, until)
        else:
            start, stop = _reencode(src, video, audio, dst, keyframe, since, until)
    if start is None:
        raise ClipError(f"{source}: no frames between {since:g} and {until:g} s")
    return start, stop, copy


def _codec(stream) -> str:
    """The codec's own name (mp3), not its decoder's (mp3float, libdav1d)."""
    return stream.codec_context.codec.canonical_name


def _extent(src, video) -> tuple[float, float]:
    """(first, end) source times of the video; end is inf when the file does not say."""
    first = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
    if video.duration:
        return first, first + float(video.duration * video.time_base)
    if src.duration:
        return first, first + src.duration / 1_000_000
    return first, math.inf


def _seconds(ts: int | None, stream) -> float | None:
    return None if ts is None else float(ts * stream.time_base)


def _keyframe_at_or_before(src, video, since: float) -> float | None:
    """Source time of the last keyframe with pts <= since, from packets alone (None: none found).

    A seek lands on a keyframe by its index timestamp, which may be a dts or plain inexact (MPEG-TS),
    so the packets are checked, and the search widens when the landing keyframe is after `since`."""
    for back in (0.0, 10.0, 120.0, math.inf):
        src.seek(int(max(since - back, 0.0) / video.time_base), stream=video, backward=True)
        found = None
        for packet in src.demux(video):
            pts, dts = _seconds(packet.pts, video), _seconds(packet.dts, video)
            if pts is None and dts is None:
                continue  # the demuxer's flush packet
            if packet.is_keyframe and pts is not None and pts <= since + EPS:
                found = pts
            if (dts if dts is not None else pts) > since + EPS:
                break  # dts only grows and pts >= dts: no later packet is shown before `since`
        if found is not None or back == math.inf:
            return found
    return None


def _copy(src, video, audio, dst, keyframe: float, until: float) -> tuple[float | None, float]:
    """Stream copy from the keyframe at `keyframe` through every frame with pts < until."""
    out_video = dst.add_stream_from_template(video)
    out_video.codec_tag = MP4_TAGS[_codec(video)]  # not the .avi/.mkv tag (XVID, H264) MP4 refuses
    sound = _Sound(dst, audio, copy=audio is not None and _codec(audio) in MP4_AUDIO)
    offset = round(keyframe / video.time_base)  # source ticks at the clip's 0
    src.seek(offset, stream=video, backward=True)
    started, stop = False, keyframe
    held = []  # packets shown at or after `until`: written only if a frame shown before it follows
    for packet in src.demux(*sound.with_video(video)):
        if packet.stream.type == "audio":
            sound.write(packet, keyframe, until)
            continue
        if packet.dts is None:
            continue  # the demuxer's flush packet
        started = started or (packet.is_keyframe and packet.pts == offset)
        if not started:
            continue
        if _seconds(packet.dts, video) >= until - EPS:  # dts only grows and pts >= dts:
            if _past_audio(sound, packet, video, until):  # every frame before `until` is out
                break
            continue
        held.append(packet)
        if _seconds(packet.pts, video) < until - EPS:
            for kept in held:
                stop = max(stop, _seconds(kept.pts + (kept.duration or _frame_ticks(video)), video))
                kept.pts, kept.dts = kept.pts - offset, kept.dts - offset
                kept.stream = out_video
                dst.mux(kept)
            held = []
    sound.close()
    return (keyframe if started else None), stop


def _reencode(src, video, audio, dst, keyframe: float | None, since: float,
              until: float) -> tuple[float | None, float]:
    """Decode from the keyframe before `since`; encode the frames with since <= pts < until (libx264)."""
    out_video = dst.add_stream("libx264", rate=video.average_rate or video.guessed_rate or 25)
    out_video.width, out_video.height = video.width & ~1, video.height & ~1  # 4:2:0 needs even sizes
    out_video.pix_fmt = "yuv420p"
    out_video.time_base = out_video.codec_context.time_base = video.time_base  # keeps source timestamps
    out_video.options = {"preset": "veryfast", "crf": "23"}
    video.codec_context.thread_type = "AUTO"
    sound = _Sound(dst, audio, copy=False)
    src.seek(round((keyframe or 0.0) / video.time_base), stream=video, backward=True)
    offset, start, stop, video_done = None, None, since, False
    waiting = []  # audio packets that came before the first frame: its time is the sound's 0
    for packet in src.demux(*sound.with_video(video)):
        if packet.stream.type == "audio":
            if start is None:
                waiting.append(packet)
            else:
                sound.write(packet, start, until)
            continue
        if video_done:
            if _past_audio(sound, packet, video, until):
                break
            continue
        for frame in packet.decode():  # in presentation order
            t = _seconds(frame.pts, video)
            if t is None or t < since - EPS:
                continue
            if t >= until - EPS:
                video_done = True
                break
            if offset is None:
                offset, start = frame.pts, t
                for early in waiting:
                    sound.write(early, start, until)
            stop = _seconds(frame.pts + (frame.duration or _frame_ticks(video)), video)
            picture = frame.reformat(width=out_video.width, height=out_video.height, format="yuv420p")
            picture.pts, picture.time_base = frame.pts - offset, video.time_base
            dst.mux(out_video.encode(picture))
    dst.mux(out_video.encode())
    sound.close()
    return start, stop


def _past_audio(sound, packet, video, until: float) -> bool:
    """After the clip's last frame: stop reading once the audio is done, or has fallen so far behind
    the video that it has ended (files interleave streams within a second or two)."""
    return sound.done or packet.dts is None or _seconds(packet.dts, video) > until + AUDIO_LAG_S


def _frame_ticks(video) -> int:
    """One frame's duration in the stream's ticks, for packets and frames that do not say."""
    return max(1, round(1 / (video.average_rate or video.guessed_rate or 25) / video.time_base))


class _Sound:
    """The clip's audio track: packets copied (copy=True) or re-encoded to AAC, kept inside [start, until)."""

    def __init__(self, dst, audio, copy: bool):
        self.audio, self.copy, self.dst, self.out = audio, copy, dst, None
        self.done = audio is None  # True once a packet at or after `until` has come
        if audio is None:
            return
        if copy:
            self.out = dst.add_stream_from_template(audio)
            self.out.codec_tag = "mp4a"  # MP4's tag for AAC and MP3 alike
        else:
            self.out = dst.add_stream("aac", rate=audio.sample_rate)
            channels = audio.codec_context.channels
            self.out.layout = "mono" if channels == 1 else "stereo"  # what every browser plays

    def with_video(self, video) -> list:
        return [video] if self.audio is None else [video, self.audio]

    def write(self, packet, start: float, until: float):
        """Write the part of `packet` inside [start, until); source time `start` becomes the clip's 0."""
        if self.done:
            return
        if packet.pts is None:  # the demuxer's flush packet: the stream has ended
            self.done = True
        elif _seconds(packet.pts, self.audio) >= until - EPS:
            self.done = True
            return
        if self.copy:
            if packet.pts is not None and _seconds(packet.pts, self.audio) >= start - EPS:
                shift = round(start / self.audio.time_base)
                dts = packet.pts if packet.dts is None else packet.dts
                packet.pts, packet.dts = packet.pts - shift, dts - shift
                packet.stream = self.out
                self.dst.mux(packet)
            return
        for frame in packet.decode():
            t = _seconds(frame.pts, self.audio)
            if t is not None and start - EPS <= t < until - EPS:
                frame.pts = round((t - start) * frame.sample_rate)
                frame.time_base = Fraction(1, frame.sample_rate)
                self.dst.mux(self.out.encode(frame))

    def close(self):
        if self.out is not None and not self.copy:
            self.dst.mux(self.out.encode())
