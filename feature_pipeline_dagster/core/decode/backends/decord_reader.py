"""decord: the x86_64 default. It indexes every packet when it opens a file, seeks to
the key frame before each wanted frame, and applies the display matrix itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.backends.base import Backend, DecodeFailed, OpenFailed
from feature_pipeline_dagster.core.errors import one_line


def _errors() -> tuple[type[BaseException], ...]:
    from decord._ffi.base import DECORDError

    return (RuntimeError, DECORDError)


class DecordBackend(Backend):
    name = "decord"

    def __init__(self, path: Path):
        self.path = path
        try:
            self._reader = self._open()
        except _errors() as err:
            raise OpenFailed(one_line(err), no_stream="cannot find video stream" in str(err)) from None
        count = len(self._reader)
        try:
            stamps = self._reader.get_frame_timestamp(range(count)) if count else np.zeros((0, 2))
            self.starts = np.asarray(stamps[:, 0], np.float64)
        except _errors() as err:
            raise DecodeFailed(one_line(err)) from None
        self.keyframes = np.asarray(self._reader.get_key_indices(), np.int64)
        self.fps = float(self._reader.get_avg_fps())

    def _open(self):
        import decord

        return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=0)

    def frames(self, ids: np.ndarray) -> np.ndarray:
        try:
            return self._reader.get_batch(ids).asnumpy()
        except _errors() as err:
            raise DecodeFailed("decoder error: " + one_line(err).rsplit(": ", 1)[-1]) from None

    def restart(self) -> None:
        self._reader = self._open()

    def close(self) -> None:
        self._reader = None


def open_video(path: Path, device: str | None = None) -> DecordBackend:
    return DecordBackend(path)
