"""Decode lanes: a run's videos opened and decoded ahead, across video boundaries, by
several decoder processes at once (Dagster-free).

Each lane is a thread driving its own decoder child process (so a native crash fails
one video, and decoders run on separate cores); a lane takes the next video as soon as
it finishes one, so the next video is opened and decoded while the current one is
embedded. What the lanes produce meets in one bounded queue: memory is bounded by its
depth in frame batches and by QUEUE_BYTES of frames, not by the videos.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from feature_pipeline_dagster.core.decode.process import DecoderProcess, decoder_pool
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.engine.stopping import stop_requested
from feature_pipeline_dagster.core.engine.job import EmbeddingJob
from feature_pipeline_dagster.core.errors import VideoError


@dataclass
class Decoded:
    """One event of the stream: frames of a video, its end, or its failure."""

    job: EmbeddingJob
    frames: FrameBatch | None = None
    error: VideoError | None = None  # the video failed (before or after some frames)

    @property
    def ended(self) -> bool:
        return self.frames is None and self.error is None


def put_unless_stopped(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting for room; False (not put) once `stop` is set."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_lanes(videos: int) -> int:
    """Lanes for a run: half the cores (the model and the writer need the rest), at least
    two where there is more than one video, so opening the next video overlaps decoding."""
    return max(1, min(videos, max(2, cores() // 2)))


def decode_threads(lanes: int) -> int:
    """FFmpeg threads per decoder: the cores shared among the lanes, or FFmpeg's own choice
    (0: a thread per core) for a lone lane. At FFmpeg's choice, two lanes on 2 cores ran
    frame threads that decode past the wanted frame before each seek and contend for the
    cores: PyAV at 720p, 1 fps, gave 20.4 sampled frames/s (`nearest`) and 17.0 (`fps`)
    against 28.6 and 21.2 at one thread a lane, 96 against 68 CPU ms a `nearest` frame
    (bench_decoders.py --nearest-only, 2 repeats each)."""
    return 0 if lanes <= 1 else max(1, cores() // lanes)


_DONE = object()
# Decoded frames waiting in the queue, at most (one batch always fits): the queue's depth
# in batches alone let four 32-frame batches of 720p (350 MB) wait while a model on the CPU
# worked, memory a long video reaches and a short one never does.
QUEUE_BYTES = 32 * 1024 * 1024
# Events waiting in the queue, at most: a short clip is two (its frames, its end), and the
# model batches what waits when the queue runs dry. At 4, no more than two clips' frames
# could wait: 300 clips of 3 s in model batches of 4.8 frames on average, 8.5 ms a frame
# against the stand-in's 1.2 bare (bench_gpu_standin.py's clips, the core alone); at 64,
# 10.5 frames a batch and 71 -> 85 sampled frames/s. Memory stays bounded by QUEUE_BYTES.
QUEUE_EVENTS = 64


class _Budget:
    """Bytes of frames in the queue: a lane waits for room unless the queue is empty."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.room = threading.Condition()

    def take(self, n: int, stop: threading.Event) -> bool:
        with self.room:
            while self.used and self.used + n > self.limit:
                if stop.is_set():
                    return False
                self.room.wait(0.1)
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.room:
            self.used -= n
            self.room.notify_all()


def _nbytes(event) -> int:
    """Host bytes of an event's frames (nvdec's CUDA frames take none)."""
    frames = getattr(getattr(event, "frames", None), "frames", None)
    return frames.nbytes if isinstance(frames, np.ndarray) else 0


class _Pending:
    """The jobs no lane has taken, in order. A lane takes first those its decoder was asked
    to decode ahead (`DecoderProcess.ahead`), in order; then those no decoder was; then the
    last another was, the least likely to be held already (a held one is read from memory
    by its own lane at once, so a lane that took it would decode it again)."""

    def __init__(self, jobs: list[EmbeddingJob], decoders: list):
        self.jobs = {str(job.path): job for job in jobs}  # insertion-ordered
        self.own = {id(d): [p for p in getattr(d, "ahead", ()) if p in self.jobs][::-1] for d in decoders}
        self.reserved = {p for paths in self.own.values() for p in paths}

    def take(self, decoder) -> EmbeddingJob | None:
        own = self.own.get(id(decoder), [])
        while own:
            path = own.pop()
            if path in self.jobs:
                return self._taken(path)
        path = next((p for p in self.jobs if p not in self.reserved), None) or next(reversed(self.jobs), None)
        return self._taken(path) if path is not None else None

    def _taken(self, path: str) -> EmbeddingJob:
        self.reserved.discard(path)
        return self.jobs.pop(path)


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def decode_ahead(jobs: list[EmbeddingJob], open_job: Callable[[EmbeddingJob, DecoderProcess], None], batch_size: int,
                 lanes: int, depth: int = QUEUE_EVENTS, decoders: list | None = None) -> Iterator[Decoded | None]:
    """Every job's frame batches, then its end (or failure), lanes interleaved; None
    when nothing is ready at the moment (the consumer may use the pause). Closing the
    iterator stops the lanes at their next batch. `decoders`: one per lane (default:
    this process's decoder children)."""
    decoders = decoders or decoder_pool(lanes)
    pending = _Pending(jobs, decoders)
    take = threading.Lock()
    ready: queue.Queue = queue.Queue(maxsize=max(depth, 2 * lanes))
    stop = threading.Event()
    budget = _Budget(QUEUE_BYTES)

    def put(event) -> bool:
        n = _nbytes(event)
        if not budget.take(n, stop):
            return False
        if put_unless_stopped(ready, event, stop):
            return True
        budget.give(n)
        return False

    def lane(decoder: DecoderProcess) -> None:
        while not stop.is_set() and not stop_requested():
            with take:
                job = pending.take(decoder)
            if job is None:
                break
            try:
                open_job(job, decoder)
                batches = job.video.batches(job.decode_batch or batch_size)
                while True:
                    started = time.perf_counter()
                    frames = next(batches, None)
                    job.seconds_decode += time.perf_counter() - started
                    if frames is None:
                        break
                    if job.failed or stop_requested():  # given up (a bad vector), or the run stops
                        batches.close()
                        break
                    if not put(Decoded(job, frames)):
                        batches.close()
                        return
                if job.failed or stop_requested():
                    continue
                job.check_complete()
                put(Decoded(job))
            except VideoError as err:
                put(Decoded(job, error=err))
            except BaseException as err:  # not the video's fault: the run's, re-raised there
                put(_Raised(err))
                return

    def run_lane(decoder: DecoderProcess) -> None:
        try:
            lane(decoder)
        finally:
            put(_DONE)

    threads = [threading.Thread(target=run_lane, args=(d,), name=f"decode-{i}", daemon=True)
               for i, d in enumerate(decoders)]
    for thread in threads:
        thread.start()
    try:
        finished = 0
        while finished < len(threads):
            try:
                event = ready.get_nowait()
            except queue.Empty:
                yield None
                event = ready.get()
            if event is _DONE:
                finished += 1
            elif isinstance(event, _Raised):
                raise event.error
            else:
                budget.give(_nbytes(event))
                yield event
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
