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

from feature_pipeline_dagster.core.errors import one_line


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

    def frames(self, ids: np.ndarray, final: bool = False):
        """uint8 (N, H, W, 3) RGB of frames `ids` (ascending), rotated as displayed; a
        numpy array, or for nvdec a CUDA tensor (`final`: the plan's last batch, after
        which PyAV decodes nothing ahead). Raises DecodeFailed."""
        raise NotImplementedError

    def key_frames(self, ids: np.ndarray):
        """As `frames`, for ids that are all key frames: decoding those frames only."""
        return self.frames(ids)

    def decode_index(self) -> DecodeIndex:
        """The decode order and reference flags of this backend's frames (`starts` order),
        from the shared packet index; every frame a reference, in presentation order,
        where that index numbers the frames otherwise than this backend does."""
        index = getattr(self, "_index", None) or packet_index(self.path)
        if len(index.pts) != len(self.starts):
            n = len(self.starts)
            return DecodeIndex(np.arange(n), np.ones(n, bool), _flags(self.keyframes, n))
        return DecodeIndex(index.decode_order, index.reference, _flags(index.keyframes, len(index.pts)))

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
    decode_order: np.ndarray | None = None  # int64, per frame (presentation order): its packet's place in the stream
    reference: np.ndarray | None = None  # bool, per frame: other frames may reference it (False: skippable)


@dataclass(frozen=True)
class DecodeIndex:
    """What `nearest` sampling prices a frame's decode with, and PyAV seeks by: per frame
    (presentation order) its place in decode order, whether other frames may reference
    it, whether it is a key frame. Decoding frame f costs one frame for each reference
    frame on the way to it in decode order (frames nothing references are skipped), plus
    f itself; the way starts where the decoder is, or at the key frame before f after a
    seek."""

    decode_order: np.ndarray
    reference: np.ndarray
    key: np.ndarray

    def __post_init__(self):
        order = np.argsort(self.decode_order, kind="stable")  # decode position -> frame id
        refs = np.concatenate([[0], np.cumsum(self.reference[order])]).astype(np.int64)
        positions = np.arange(len(order))
        keys = np.maximum.accumulate(np.where(self.key[order], positions, -1)) if len(order) else positions
        object.__setattr__(self, "_frame_at", order)
        object.__setattr__(self, "_refs_before", refs)  # reference frames before each decode position
        object.__setattr__(self, "_key_at_or_before", np.maximum(keys, 0))

    def seek_target(self, frame_id: int) -> int:
        """The key frame (an id) a seek for `frame_id` lands on: the last one before it in decode order."""
        return int(self._frame_at[self._key_at_or_before[self.decode_order[frame_id]]])

    def cost(self, frame_id: int, at: int) -> tuple[int, bool]:
        """(frames decoded, whether by a seek) to get `frame_id` with the decoder past
        decode position `at` (-1: a fresh decoder, which seeks)."""
        d = int(self.decode_order[frame_id])
        key = int(self._key_at_or_before[d])
        by_seek = int(self._refs_before[d] - self._refs_before[key]) + 1
        if at < 0 or d <= at or key > at:
            return by_seek, True
        return int(self._refs_before[d] - self._refs_before[at + 1]) + 1, False


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
        pts, keys, refs, cut = [], [], [], False
        is_reference = _reference_test(stream.codec_context)
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                if packet.is_corrupt:
                    cut = True
                    break
                pts.append(packet.pts)
                keys.append(packet.is_keyframe)
                refs.append(is_reference(packet))
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
        return PacketIndex(sorted_pts * float(stream.time_base), sorted_pts, keyframes, fps, cut,
                           order.astype(np.int64), np.asarray(refs, bool)[order])


def _reference_test(codec_context):
    """packet -> whether other frames may reference its frame. H.264 and HEVC say it in
    the first slice's NAL header (H.264: nal_ref_idc 0; HEVC: the sub-layer non-reference
    types), which is what FFmpeg's decoders test for `skip_frame = NONREF`. PyAV's
    `packet.is_disposable` (AV_PKT_FLAG_DISPOSABLE) would say it for any codec, but the
    demuxer sets it only from an MP4 `sdtp` box, which FFmpeg 5.1's muxer writes for none
    of the generated videos here: read where the header is not parsed, else every frame
    counts as a reference (never skipped)."""
    name = codec_context.name
    if name not in ("h264", "hevc"):
        return lambda packet: not packet.is_disposable
    extra = bytes(codec_context.extradata or b"")
    if name == "h264" and len(extra) > 4 and extra[0] == 1:  # avcC: NAL units prefixed by their length
        length_size = (extra[4] & 3) + 1
    elif name == "hevc" and len(extra) > 21 and extra[0] == 1:  # hvcC
        length_size = (extra[21] & 3) + 1
    else:
        length_size = 0  # Annex B: start codes

    def nal_headers(packet):
        if length_size:
            data, i = memoryview(packet), 0
            while i + length_size < len(data):
                size = int.from_bytes(data[i:i + length_size], "big")
                yield data[i + length_size]
                i += length_size + size
        else:
            data = bytes(packet)
            i = data.find(b"\0\0\1")
            while 0 <= i < len(data) - 3:
                yield data[i + 3]
                i = data.find(b"\0\0\1", i + 3)

    def reference(packet) -> bool:
        for header in nal_headers(packet):
            if name == "h264" and header & 0x1F in (1, 5):  # a slice
                return bool(header >> 5 & 3)
            if name == "hevc" and header >> 1 & 0x3F < 32:  # a slice (VCL)
                kind = header >> 1 & 0x3F
                return not (kind <= 14 and kind % 2 == 0)
        return not packet.is_disposable
    return reference


def _flags(ids: np.ndarray, count: int) -> np.ndarray:
    flags = np.zeros(count, bool)
    ids = np.asarray(ids, np.int64)
    flags[ids[(ids >= 0) & (ids < count)]] = True
    return flags


class Batch:
    """A batch's frames written in place as they are decoded, not kept one by one and
    stacked: half the memory at its peak (a PyAV decoder process at 720p, 187-189 -> 130-133
    MiB, bench_decoders.py). On this VM a page touched for the first time costs ~12 ms a MB:
    np.stack of 20 frames of 720p took 0.66-0.71 s in a fresh process, 13 ms after."""

    def __init__(self, count: int):
        self.count, self.frames, self._filled = count, None, 0

    def add(self, frame: np.ndarray) -> None:
        if self.frames is None:
            self.frames = np.empty((self.count, *frame.shape), frame.dtype)
        self.frames[self._filled] = frame
        self._filled += 1


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
    return one_line(err)


def display_rotation(path: Path) -> int:
    """The display matrix's rotation (counter-clockwise degrees) for a decoder that does
    not apply it: PyAV reports it on decoded frames only, so one frame is decoded."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return int(frame.rotation or 0)
    return 0
