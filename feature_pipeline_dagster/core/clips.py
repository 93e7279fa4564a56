"""A moment of a video as an MP4 of its own: `feature-pipeline clip` and the page's download.

Stream copy when the start falls on a key frame (within a frame's duration) and MP4 holds
the codec: packets are copied untouched, lossless and at the disk's speed (8 s of 720p in
0.08 s here, against 6.3 s to re-encode it: bench/bench_clip.py). Otherwise the
moment is re-encoded to H.264 from the frame shown at the start: a copy can only begin at
a key frame, up to a GOP earlier (libx264's default GOP is 250 frames, 8 s at 30 fps).
A copy runs from the key frame to the last packet decoded before `end`, so the frames
B-frames need come along (a frame or two past `end`). Times are the stream's presentation
times, as search prints them. Audio comes along: copied where browsers play it in MP4,
else encoded to AAC. The file is written under a temporary name beside the target and
renamed once whole: an interrupted or failed export leaves nothing behind.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from feature_pipeline_dagster.core.errors import ClipError, VideoError, one_line

COPY_VIDEO_CODECS = {"h264", "hevc", "vp9", "av1"}
COPY_AUDIO_CODECS = {"aac", "mp3", "opus"}
# libx264 CRF 18 (visually lossless: a moment someone keeps) at `veryfast`: 6.3 s for 8 s of
# detailed 720p on this shared 2-core machine against 17.6 s at `medium`, for a file 0.5% smaller
# (bench/bench_clip.py): a download should not take minutes.
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}
AAC_BIT_RATE = 160_000


@dataclass(frozen=True)
class Clip:
    path: Path
    start_s: float
    end_s: float  # as cut: the video's end where the one asked for lies past it
    copied: bool  # stream copy, else re-encoded
    duration_s: float  # the written file's, read back
    note: str | None = None  # why the end moved

    @property
    def how(self) -> str:
        return "stream copy (the start is a key frame)" if self.copied else "re-encoded (H.264)"


def export_clip(source: Path, start_s: float, end_s: float, target: Path, force: bool = False) -> Clip:
    """`source` from `start_s` to `end_s` (seconds) into the MP4 `target`; `force` overwrites it.
    An end past the video's end is moved to it (`Clip.note` says so); any other bad time,
    or a target that is not a new `.mp4`, is a `ClipError`; a source that does not open or
    decode, a `VideoError`."""
    import av

    target = Path(target)
    if target.suffix.lower() != ".mp4":
        raise ClipError(f"{target}: the clip is an MP4 file: give a name ending in .mp4")
    if not force and target.exists():
        raise ClipError(f"{target} exists: --force to overwrite it")
    if not target.parent.is_dir():
        raise ClipError(f"{target.parent}: no such folder")
    try:
        container = av.open(str(source))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(f"{source}: cannot open video ({_reason(err)})") from None
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    with container:
        if not container.streams.video:
            raise VideoError(f"{source}: no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        start_s, end_s, note = _checked_times(start_s, end_s, *_span(container, video))
        key = _key_frame_at(container, video, start_s) if video.codec_context.name in COPY_VIDEO_CODECS else None
        if key is not None:
            start_s = float(key * video.time_base)
        try:  # PyAV opens its output at the first packet: a folder that refuses it is said here
            partial.open("wb").close()
        except OSError as err:
            raise ClipError(f"{target}: cannot write it ({err.strerror})") from None
        try:
            with av.open(str(partial), "w", format="mp4") as out:
                if key is None:
                    _reencode(container, video, audio, out, start_s, end_s, source)
                else:
                    _copy(container, video, audio, out, key, start_s, end_s)
            if not force and target.exists():
                raise ClipError(f"{target} exists: --force to overwrite it")
            os.replace(partial, target)
        except av.FFmpegError as err:
            partial.unlink(missing_ok=True)
            raise VideoError(f"{source}: cannot cut {start_s:g}-{end_s:g} s ({_reason(err)})") from None
        except BaseException:  # Ctrl-C included: no half file
            partial.unlink(missing_ok=True)
            raise
    with av.open(str(target)) as written:
        duration = written.duration / 1e6 if written.duration else 0.0
    return Clip(target, start_s, end_s, key is not None, duration, note)


def _reason(err: Exception) -> str:
    """FFmpeg's reason without the errno and file name PyAV adds to it."""
    return getattr(err, "strerror", None) or one_line(err)


def _span(container, video) -> tuple[float, float]:
    """The video's first and end presentation times, seconds."""
    first = float((video.start_time or 0) * video.time_base)
    if video.duration:
        return first, first + float(video.duration * video.time_base)
    if container.duration:  # Matroska: the container's
        return first, (container.start_time or 0) / 1e6 + container.duration / 1e6
    raise VideoError("the video does not say how long it is")


def _checked_times(start_s: float, end_s: float, first_s: float, last_s: float) -> tuple[float, float, str | None]:
    if math.isnan(end_s) or not math.isfinite(start_s):
        raise ClipError(f"the start ({start_s:g}) and end ({end_s:g}) are seconds into the video")
    if start_s < first_s - 1e-3:
        raise ClipError(f"the start ({start_s:g} s) is before the video's first frame ({first_s:.3f} s)")
    if end_s <= start_s:
        raise ClipError(f"the end ({end_s:g} s) must come after the start ({start_s:g} s)")
    if start_s >= last_s:
        raise ClipError(f"the start ({start_s:g} s) is at or past the video's end ({last_s:.3f} s)")
    if end_s > last_s + 1e-3:
        return start_s, last_s, f"the end ({end_s:g} s) is past the video's end: the clip ends there ({last_s:.3f} s)"
    return start_s, end_s, None


def _frame_s(video) -> float:
    return float(1 / (video.average_rate or video.guessed_rate or Fraction(30)))


def _key_frame_at(container, video, start_s: float) -> int | None:
    """The pts of the key frame within a frame's duration of `start_s`, or None. Reads the
    packets from the key frame before it (no decoding)."""
    tolerance = _frame_s(video) - 1e-6
    limit = int((start_s + tolerance) / video.time_base)
    container.seek(limit, stream=video, backward=True)
    key = None
    for packet in container.demux(video):
        if packet.pts is None:
            continue
        if _decode_time(packet) > limit:
            break
        if packet.is_keyframe and packet.pts <= limit:
            key = packet.pts
    if key is None or float(key * video.time_base) < start_s - tolerance:
        return None
    return key


def _decode_time(packet) -> int:
    """The packet's dts, or its pts where the container gives none (Matroska, for key frames)."""
    return packet.pts if packet.dts is None else packet.dts


def _copy(container, video, audio, out, key: int, start_s: float, end_s: float) -> None:
    out_video = out.add_stream_from_template(video)
    end, started = int(end_s / video.time_base), False

    def take(packet) -> bool:
        nonlocal started
        if packet.pts is None:
            return False
        started = started or (packet.is_keyframe and packet.pts == key)
        if not started or packet.pts < key:  # before it, or a leading frame of an open GOP
            return False
        if _decode_time(packet) >= end:
            return True
        packet.pts, packet.dts = packet.pts - key, None if packet.dts is None else packet.dts - key
        packet.stream = out_video
        out.mux(packet)
        return False

    container.seek(key, stream=video, backward=True)
    _demux(container, video, _Audio(audio, out, start_s, end_s) if audio else None, take)


def _reencode(container, video, audio, out, start_s: float, end_s: float, source: Path) -> None:
    """From the frame shown at `start_s` (the last one at or before it) to the last one before `end_s`."""
    from feature_pipeline_dagster.core.decode.backends.base import display_rotation

    out_video = out.add_stream("libx264", rate=video.average_rate or video.guessed_rate or Fraction(30))
    out_video.width, out_video.height = video.codec_context.width & ~1, video.codec_context.height & ~1
    out_video.pix_fmt = "yuv420p"
    out_video.codec_context.time_base = video.time_base  # the source's clock: a variable frame rate stays
    out_video.options = dict(X264_OPTIONS)
    if rotation := display_rotation(source):
        out_video.set_display_rotation(rotation)
    video.thread_type = "AUTO"
    frame_s, zero = _frame_s(video), None

    def take(packet) -> bool:
        nonlocal zero
        for frame in packet.decode():  # the empty packet at the end flushes the decoder
            if frame.time + frame_s <= start_s + 1e-6:  # replaced by a later frame before the start
                continue
            if frame.time >= end_s - 1e-6:
                return True
            zero = frame.pts if zero is None else zero
            frame.pts -= zero
            for encoded in out_video.encode(frame):
                out.mux(encoded)
        return False

    container.seek(int(start_s / video.time_base), stream=video, backward=True)
    _demux(container, video, _Audio(audio, out, start_s, end_s) if audio else None, take)
    for encoded in out_video.encode():
        out.mux(encoded)


def _demux(container, video, sound: _Audio | None, take) -> None:
    """Packets from the seek on: the video's to `take` until it says the cut's end is
    reached, the audio's to `sound` until its own end."""
    finished = False
    for packet in container.demux(*filter(None, (video, sound and sound.source))):
        if packet.stream.index != video.index:
            sound.add(packet)
        elif not finished:
            finished = take(packet)
        if finished and (sound is None or sound.finished):
            break
    if sound:
        sound.close()


class _Audio:
    """The source's first audio stream from `zero_s` to `end_s`, on the clip's clock (0 at
    `zero_s`): packets copied where browsers play the codec in MP4, else decoded and
    encoded to AAC."""

    def __init__(self, stream, out, zero_s: float, end_s: float):
        self.source, self.out_container = stream, out
        self.copy = stream.codec_context.name in COPY_AUDIO_CODECS
        self.first, self.end = int(zero_s / stream.time_base), int(end_s / stream.time_base)
        if self.copy:
            self.stream = out.add_stream_from_template(stream)
        else:
            self.stream = out.add_stream("aac", rate=stream.codec_context.sample_rate)
            layout = stream.codec_context.layout  # Matroska's PCM says "1 channels", which AAC refuses
            unordered = layout.name.endswith(" channels")
            self.stream.layout = {1: "mono", 2: "stereo"}.get(layout.nb_channels, layout) if unordered else layout
            self.stream.bit_rate = AAC_BIT_RATE
        self.finished = False

    def add(self, packet) -> None:
        if self.finished or packet.pts is None or packet.pts < self.first:
            return
        if packet.pts >= self.end:
            self.finished = True
            return
        if self.copy:
            packet.pts, packet.dts = packet.pts - self.first, None if packet.dts is None else packet.dts - self.first
            packet.stream = self.stream
            self.out_container.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None  # the encoder counts samples from 0
            for encoded in self.stream.encode(frame):
                self.out_container.mux(encoded)

    def close(self) -> None:
        if not self.copy:
            for encoded in self.stream.encode():
                self.out_container.mux(encoded)
