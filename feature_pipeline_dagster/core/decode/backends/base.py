"""What every decoder backend provides to `VideoReader`, and the packet index that the
backends without one of their own (PyAV, torchcodec) share.

A backend holds one open file. Frames are numbered in presentation order (sorted pts),
as decord numbers them, so a frame id means the same picture whatever decodes it; times
are the stream's pts in seconds (not shifted to start at 0), as decord gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class OpenFailed(Exception):
    """The backend cannot open the file. `no_stream`: it holds no video stream (no
    salvage can help); otherwise the reader tries salvaging a file cut short."""

    def __init__(self, message: str, no_stream: bool = False):
        super().__init__(message)
        self.no_stream = no_stream


class DecodeFailed(Exception):
    """A frame could not be decoded: the reader stops the video before it."""


class Backend:
    """One open video. Subclasses set the attributes in `__init__`."""

    name: str
    starts: np.ndarray  # float64 pts in seconds of every frame, presentation order
    keyframes: np.ndarray  # int64 ids of the key frames
    fps: float
    cut_short: bool = False  # opened, but its index promises frames its data lacks

    def frames(self, ids: np.ndarray):
        """uint8 (N, H, W, 3) RGB of frames `ids` (ascending), rotated as displayed; a
        numpy array, or for nvdec a CUDA tensor. Raises DecodeFailed."""
        raise NotImplementedError

    def key_frames(self, ids: np.ndarray):
        """As `frames`, for ids that are all key frames: decoding those frames only."""
        return self.frames(ids)

    def logged(self) -> list[str]:
        """Decoder log lines ("[h264 @ 0x..] error ...") since the last call, for a backend
        whose library logs through Python rather than to file descriptor 2."""
        return []

    def restart(self) -> None:
        """A fresh decoder state (after damage the old one may be left mid-packet)."""

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class PacketIndex:
    starts: np.ndarray  # pts in seconds, presentation order
    pts: np.ndarray  # the same in the stream's time base (int64)
    keyframes: np.ndarray
    fps: float
    cut_short: bool  # a packet past the end of the data, or one the demuxer flags corrupt


def packet_index(path: Path) -> PacketIndex:
    """Every video packet's pts and key flag from one pass of PyAV's demuxer (no
    decoding: about 1 ms per 100 packets here). Raises OpenFailed."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as err:
        raise OpenFailed(_ffmpeg_line(err)) from None
    with container:
        if not container.streams.video:
            raise OpenFailed("cannot find video stream", no_stream=True)
        stream = container.streams.video[0]
        pts, keys, cut = [], [], False
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                if packet.is_corrupt:
                    cut = True
                    break
                pts.append(packet.pts)
                keys.append(packet.is_keyframe)
        except (av.FFmpegError, ValueError) as err:
            if not pts:
                raise OpenFailed(_ffmpeg_line(err)) from None
            cut = True
        declared = stream.frames or 0
        cut = cut or (declared > len(pts) and container.format.name.startswith("mov"))
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        sorted_pts = np.asarray(pts, np.int64)[order]
        keyframes = np.flatnonzero(np.asarray(keys, bool)[order]).astype(np.int64)
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        return PacketIndex(sorted_pts * float(stream.time_base), sorted_pts, keyframes, fps, cut)


def key_before(keyframes: np.ndarray, frame_id: int) -> int:
    """The last key frame at or before `frame_id` (0 if the stream flags none)."""
    if not len(keyframes):
        return 0
    return int(keyframes[max(np.searchsorted(keyframes, frame_id, side="right") - 1, 0)])


def pyav_lines(log) -> list[str]:
    """What `av.logging.Capture` caught, as FFmpeg writes it to fd 2 ("[h264 @ 0x0] ...")."""
    return [f"[{name} @ 0x0] {message.strip()}" for _level, name, message in log]


def rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """(N, H, W, 3) frames turned as the display matrix says (decord's convention)."""
    k = rotation // 90 % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _ffmpeg_line(err: BaseException) -> str:
    from feature_pipeline_dagster.core.errors import one_line

    return one_line(err)


def display_rotation(path: Path) -> int:
    """The display matrix's rotation (counter-clockwise degrees) for a decoder that does
    not apply it: PyAV reports it on decoded frames only, so one frame is decoded."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return int(frame.rotation or 0)
    return 0
