"""PyAV: installs everywhere (its wheels bundle FFmpeg). `frames` (`fps` and `nearest`
sampling) feeds the packets itself, from the key frame before a wanted frame and on
without a seek while that is cheaper (`DecodeIndex.cost`), has the decoder skip each
frame that nothing references and nobody wants (`skip_frame = "NONREF"`, set per packet),
and finds frames by pts: at 1 fps on 720p, 72 -> 60 ms of CPU a sampled frame with `fps`
(its frames unchanged). `key_frames` tells the decoder to skip every other frame
(`skip_frame = "NONKEY"`), so keyframe sampling decodes key frames only. PyAV logs
through Python, so damage is read from its log, not from fd 2."""

from __future__ import annotations

from collections import deque

from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.backends.base import (
    Backend, Batch, DecodeFailed, OpenFailed, packet_index, pyav_lines, rotate,
)
from feature_pipeline_dagster.core.errors import one_line


class PyAVBackend(Backend):
    name = "pyav"

    def __init__(self, path: Path, threads: int = 0):
        import av
        import av.logging

        self.path, self.threads = path, threads
        self._index = index = packet_index(path)
        self.starts, self._pts, self.keyframes, self.fps = index.starts, index.pts, index.keyframes, index.fps
        self.cut_short = index.cut_short
        self._costs = None  # the DecodeIndex, for frames
        self._container = None
        self._open()
        av.logging.set_level(av.logging.WARNING)  # PyAV logs nothing unless asked
        self._capture = av.logging.Capture(local=False)
        self._log = self._capture.__enter__()

    def _open(self) -> None:
        import av

        if self._container is not None:
            self._end_feed()
            self._container.close()
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, ValueError, OSError) as err:
            raise OpenFailed(one_line(err)) from None
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threads: as many as the run gives (`threads`), else FFmpeg's choice
        if self.threads:
            self._stream.codec_context.thread_count = self.threads
        self._packets = None  # frames' running demux
        self._first, self._gave = None, False  # the first frame given (id, pixels), until asked again (`_give`)

    def key_frames(self, ids: np.ndarray) -> np.ndarray:
        """Key frames only: the decoder drops every other packet unread."""
        import av

        self._open()  # (also ends a `frames` demux)
        self._stream.codec_context.skip_frame = "NONKEY"
        decoded = self._container.decode(self._stream)
        out = Batch(len(ids))
        try:
            for frame_id in ids.tolist():
                out.add(self._take(decoded, frame_id))
        except (av.FFmpegError, ValueError) as err:
            raise DecodeFailed("decoder error: " + one_line(err)) from None
        return out.frames

    def frames(self, ids: np.ndarray, final: bool = False) -> np.ndarray:
        """The wanted frames, each reached the cheaper way `DecodeIndex.cost` prices: on
        from the packets already fed while no key frame lies between, else by a seek to
        the key frame before it; on the way, frames nothing references are not decoded.
        A frame that the next is not decoded on from (a seek follows, or none: `final`)
        is drained out of the decoder once its packet is fed: its reorder delay and frame
        threads would otherwise decode packets past it for nothing (at 720p, a reference
        frame costs 5.6 ms here and an I frame 16-19)."""
        import av

        if self._costs is None:
            self._costs = self.decode_index()
        wanted = set(self._pts[ids].tolist())
        out = Batch(len(ids))
        order = self._costs.decode_order
        try:
            ids = ids.tolist()
            for i, frame_id in enumerate(ids):
                if self._first and frame_id == self._first[0] and self._packets is not None:
                    out.add(self._again())
                    continue
                want = int(self._pts[frame_id])
                waiting = self._packets is not None and want in self._kept  # fed, not yet out
                if not waiting and (self._packets is None or self._ended or self._costs.cost(frame_id, self._fed)[1]):
                    self._seek(frame_id)
                drain = final if i + 1 == len(ids) else self._costs.cost(ids[i + 1], int(order[frame_id]))[1]
                out.add(self._take_fed(frame_id, want, wanted, drain))
        except (av.FFmpegError, ValueError) as err:
            self._packets = None
            raise DecodeFailed("decoder error: " + one_line(err)) from None
        return out.frames

    def _seek(self, frame_id: int) -> None:
        key = self._costs.seek_target(frame_id)
        self._container.seek(int(self._pts[key]), stream=self._stream, backward=True, any_frame=False)
        self._packets = self._container.demux(self._stream)
        self._pending = deque()  # frames decoded, not yet looked at
        self._kept = set()  # pts of the wanted frames fed with skipping off, not yet out
        self._fed = int(self._costs.decode_order[key]) - 1  # the decode position of the last packet fed
        self._skipping = None
        self._ended = False

    def _end_feed(self) -> None:
        """Drains a decode left mid-stream before its decoder is freed: freeing it waits
        for FFmpeg's frame threads while holding the GIL, and a frame thread that logs
        meanwhile waits for the GIL in PyAV's log callback (seen here as a hang in `close`
        after a partial decode with frame threads)."""
        import av

        if self._packets is not None and not self._ended:
            try:
                self._stream.codec_context.decode(None)
            except (av.FFmpegError, ValueError):
                pass
        self._packets = None
        self._pending = deque()

    def _take_fed(self, frame_id: int, want: int, wanted: set, drain: bool) -> np.ndarray:
        context = self._stream.codec_context
        last = int(self._costs.decode_order[frame_id])  # the decode position of its packet
        while True:
            if self._pending:
                frame = self._pending.popleft()
                self._kept.discard(frame.pts)
                if frame.pts is None or frame.pts < want:
                    continue  # a reference frame on the way: never converted
                if frame.pts == want:
                    return self._give(frame_id, frame)
                break  # past it: it was not decoded
            if self._ended:
                break
            packet = None if drain and self._fed >= last else next(self._packets, None)
            if packet is None or packet.size == 0:  # the end, or all it needs fed: drain the decoder
                self._ended = True
                self._pending.extend(context.decode(None))
                continue
            skip = packet.pts not in wanted
            if skip != self._skipping:
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                self._skipping = skip
            if packet.pts is not None:
                if not skip:
                    self._kept.add(packet.pts)
                at = int(np.searchsorted(self._pts, packet.pts))
                if at < len(self._pts) and self._pts[at] == packet.pts:
                    self._fed = int(self._costs.decode_order[at])
            self._pending.extend(context.decode(packet))
        self._packets = None
        raise DecodeFailed(f"decoder error: frame {frame_id} (pts {want}) was not decoded")

    def _take(self, decoded, frame_id: int) -> np.ndarray:
        want = self._pts[frame_id]
        for frame in decoded:
            if frame.pts is None or frame.pts < want:
                continue
            if frame.pts != want:
                break
            return self._give(frame_id, frame)
        raise DecodeFailed(f"decoder error: frame {frame_id} (pts {want}) was not decoded")

    def _give(self, frame_id: int, frame) -> np.ndarray:
        """A decoded frame's pixels. The first is kept until it is asked again: the reader
        decodes it on opening (its size), and a plan that begins with it takes it from
        here and decodes on from there, where it was decoded twice (2 of a short clip's
        16 ms, test_decode.py)."""
        pixels = rotate(frame.to_ndarray(format="rgb24")[None], frame.rotation or 0)[0]
        self._first = None if self._gave else (frame_id, pixels)
        self._gave = True
        return pixels

    def _again(self) -> np.ndarray:
        pixels, self._first = self._first[1], None
        return pixels

    def logged(self) -> list[str]:
        lines = pyav_lines(self._log)
        self._log.clear()
        return lines

    def restart(self) -> None:
        self._open()

    def close(self) -> None:
        self._end_feed()
        if self._container is not None:
            self._container.close()
            self._container = None
        self._capture.__exit__(None, None, None)


def open_video(path: Path, device: str | None = None, threads: int = 0) -> PyAVBackend:
    return PyAVBackend(path, threads)
