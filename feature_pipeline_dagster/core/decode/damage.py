"""Which decoded frames are sound: FFmpeg's log lines that mean damaged bytes, and a
judge that says how many of a batch's frames come before the damage.

A backend's own log cannot say which frame it was about. decord decodes on a thread of
its own that reads ahead of the frame asked for: 0.3 s after `get_batch([0])` it had
logged the damage of packet 95 (CI once failed a damaged video at 0.0 s that way), and
FFmpeg's frame threads run up to a thread count of packets ahead. So when a batch is
found damaged, `sound_count` decodes it again on one thread through PyAV, packet by
packet, and a log line then belongs to the packet just sent."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.errors import one_line
from feature_pipeline_dagster.core.decode.backends.base import OpenFailed, key_before, packet_index, pyav_lines

# "[h264 @ 0x..] error while decoding MB 3 5"; the pixel converter's warnings say
# nothing about the data.
_DAMAGE = re.compile(r"^\[(?!swscaler|swresample)[^\]@]+ @ 0x[0-9a-f]+\] .*"
                     r"(error|conceal|corrupt|invalid|missing|partial|truncat|overread|out of range|unavailable|fail)",
                     re.IGNORECASE)
_PREFIX = re.compile(r"^\[([^\]@]+) @ 0x[0-9a-f]+\] ")


def damage_in(lines: list[str]) -> str | None:
    """The first log line that reports damaged data, as "h264: <message>"."""
    return next((_PREFIX.sub(r"\1: ", line) for line in lines if _DAMAGE.search(line)), None)


def sound_count(path: Path, ids: np.ndarray, key_frames_only: bool = False) -> tuple[int, str | None]:
    """How many of frames `ids` (ascending, presentation order) decode before any damage,
    and the damage (None if all do). A frame counts only if the decoder gave it out
    before the packet that logged damage or failed was sent."""
    import av
    import av.logging

    try:
        index = packet_index(path)
    except OpenFailed as err:
        return 0, str(err)
    want = index.pts[ids].tolist()
    start = key_before(index.keyframes, int(ids[0]))
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    got = 0
    try:
        with av.open(str(path)) as container, av.logging.Capture(local=False) as log:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1
            if key_frames_only:
                stream.codec_context.skip_frame = "NONKEY"
            container.seek(int(index.pts[start]), stream=stream, backward=True, any_frame=False)
            for packet in container.demux(stream):
                try:
                    frames = stream.decode(packet)
                except (av.FFmpegError, ValueError) as err:
                    return got, "decoder error: " + one_line(err)
                if why := damage_in(pyav_lines(log)):
                    return got, why
                log.clear()
                for frame in frames:
                    if frame.pts is None or frame.pts < want[got]:
                        continue
                    if frame.pts > want[got]:
                        return got, f"decoder error: frame {ids[got]} was not decoded"
                    got += 1
                    if got == len(want):
                        return got, None
    except (av.FFmpegError, ValueError, OSError) as err:
        return got, "decoder error: " + one_line(err)
    finally:
        av.logging.set_level(level)
    return got, f"decoder error: frame {ids[got]} was not decoded"
