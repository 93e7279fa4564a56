"""decord: the x86_64 default. It indexes every packet when it opens a file, seeks to
the key frame before each wanted frame, and applies the display matrix itself."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.backends.base import Backend, DecodeFailed, OpenFailed
from feature_pipeline_dagster.core.errors import one_line


def _errors() -> tuple[type[BaseException], ...]:
    from decord._ffi.base import DECORDError

    return (RuntimeError, DECORDError)


# After get_batch, decord's decoder thread goes on decoding every packet pushed on the way
# to the last wanted frame, into memory, until the next call (dmlc/decord#157, #208). A
# consumer slower than decoding (a model on the CPU) gives it the time to fill memory with
# frames nobody asked for, and decord keeps that memory: 1.1-1.7 GiB more in the decoder
# process after one 2-second wait on a 90-second 720p video (bench_long_video.py --navit
# measured the decoder process at 1.7 GiB against 0.15 for a 10-second video). So when
# IDLE_S pass without a next call, a seek empties decord's queues. It costs decoding again
# from the key frame before the next wanted frame, only where the decoder waits on its
# consumer anyway; when decoding binds, the calls come back to back and nothing changes.
IDLE_S = 0.1


class DecordBackend(Backend):
    name = "decord"

    def __init__(self, path: Path, threads: int = 0):
        self.path, self.threads = path, threads
        self._lock = threading.Lock()  # decord is called from here and from the idle timer
        self._calls = 0
        self._idle: threading.Timer | None = None
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

        return decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)

    def frames(self, ids: np.ndarray, final: bool = False) -> np.ndarray:
        with self._lock:
            self._calls += 1
            try:
                frames = self._reader.get_batch(ids).asnumpy()
            except _errors() as err:
                raise DecodeFailed("decoder error: " + one_line(err).rsplit(": ", 1)[-1]) from None
            self._idle = threading.Timer(IDLE_S, self._stop_decoding_ahead, (self._calls,))
            self._idle.daemon = True
            self._idle.start()
        return frames

    def _stop_decoding_ahead(self, call: int) -> None:
        """No call since `call` for IDLE_S: empty decord's queues (see IDLE_S)."""
        with self._lock:
            if call == self._calls and self._reader is not None:
                with contextlib.suppress(*_errors()):
                    self._reader.seek(0)

    def restart(self) -> None:
        with self._lock:
            self._calls += 1
            self._reader = self._open()

    def close(self) -> None:
        with self._lock:
            self._calls += 1
            if self._idle is not None:
                self._idle.cancel()
            self._reader = None


def open_video(path: Path, device: str | None = None, threads: int = 0) -> DecordBackend:
    return DecordBackend(path, threads)
