"""PyAV: installs everywhere (its wheels bundle FFmpeg). Frames are found by pts in a
decode that runs forward from the key frame before each wanted frame, and goes on
without a seek while no key frame lies between; `key_frames` tells the decoder to skip
every other frame (`skip_frame = "NONKEY"`), so keyframe sampling decodes key frames
only. PyAV logs through Python, so damage is read from its log, not from fd 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.backends.base import (
    Backend, DecodeFailed, OpenFailed, key_before, packet_index, pyav_lines, rotate,
)
from feature_pipeline_dagster.core.errors import one_line


class PyAVBackend(Backend):
    name = "pyav"

    def __init__(self, path: Path):
        import av
        import av.logging

        self.path = path
        index = packet_index(path)
        self.starts, self._pts, self.keyframes, self.fps = index.starts, index.pts, index.keyframes, index.fps
        self.cut_short = index.cut_short
        self._container = None
        self._open()
        av.logging.set_level(av.logging.WARNING)  # PyAV logs nothing unless asked
        self._capture = av.logging.Capture(local=False)
        self._log = self._capture.__enter__()

    def _open(self) -> None:
        import av

        if self._container is not None:
            self._container.close()
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, ValueError, OSError) as err:
            raise OpenFailed(one_line(err)) from None
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threads, as decord's num_threads=0
        self._decoded = None  # the running decode: a generator of frames
        self._at = -1  # the last frame id it gave

    def _seek(self, frame_id: int) -> None:
        key = key_before(self.keyframes, frame_id)
        self._container.seek(int(self._pts[key]), stream=self._stream, backward=True, any_frame=False)
        self._decoded = self._container.decode(self._stream)
        self._at = -1

    def frames(self, ids: np.ndarray) -> np.ndarray:
        import av

        self._stream.codec_context.skip_frame = "DEFAULT"
        out = []
        try:
            for frame_id in ids.tolist():
                if self._decoded is None or frame_id <= self._at or key_before(self.keyframes, frame_id) > self._at:
                    self._seek(frame_id)
                out.append(self._take(frame_id))
        except (av.FFmpegError, ValueError) as err:
            self._decoded = None
            raise DecodeFailed("decoder error: " + one_line(err)) from None
        return np.stack(out)

    def key_frames(self, ids: np.ndarray) -> np.ndarray:
        """Key frames only: the decoder drops every other packet unread."""
        import av

        self._open()
        self._stream.codec_context.skip_frame = "NONKEY"
        self._decoded = self._container.decode(self._stream)
        try:
            out = [self._take(frame_id) for frame_id in ids.tolist()]
        except (av.FFmpegError, ValueError) as err:
            raise DecodeFailed("decoder error: " + one_line(err)) from None
        finally:
            self._decoded = None
        return np.stack(out)

    def _take(self, frame_id: int) -> np.ndarray:
        want = self._pts[frame_id]
        for frame in self._decoded:
            if frame.pts is None or frame.pts < want:
                continue
            if frame.pts != want:
                break
            self._at = frame_id
            return rotate(frame.to_ndarray(format="rgb24")[None], frame.rotation or 0)[0]
        self._decoded = None
        raise DecodeFailed(f"decoder error: frame {frame_id} (pts {want}) was not decoded")

    def logged(self) -> list[str]:
        lines = pyav_lines(self._log)
        self._log.clear()
        return lines

    def restart(self) -> None:
        self._open()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._capture.__exit__(None, None, None)


def open_video(path: Path, device: str | None = None) -> PyAVBackend:
    return PyAVBackend(path)
