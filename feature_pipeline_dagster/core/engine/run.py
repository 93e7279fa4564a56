"""A run's videos on one device, streamed: decode lanes ahead across videos, model
batches that may span videos, checked in-stream (Dagster-free). The stream is lazy: the
embedding asset returns it, and the IO manager's `write_run` (writer.py) consumes it
into the store.

    decode lanes (child processes) ─▶ model batches by frame size ─▶ in-stream checks ─▶ write_run

A bad video (unreadable, damaged, values that do not fit, non-finite vectors) fails
alone: the run goes on and its attempt leaves no rows. A fault of the model, the
device or the database ends the run, and its `retryable` flag says whether trying
again could help.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from feature_pipeline_dagster.core.batches import EmbeddingBatch, FrameBatch
from feature_pipeline_dagster.core.decode.backends.nvdec_reader import unusable
from feature_pipeline_dagster.core.decode.heap import fix_mmap_threshold
from feature_pipeline_dagster.core.decode.local import LocalDecoder
from feature_pipeline_dagster.core.decode.process import ahead_bytes, decoder_pool
from feature_pipeline_dagster.core.engine.job import EmbeddingJob, ShotTrack
from feature_pipeline_dagster.core.engine.lanes import cores, decode_ahead, decode_lanes, decode_threads
from feature_pipeline_dagster.core.engine.outcomes import RunReport
from feature_pipeline_dagster.core.engine.stopping import stop_requested
from feature_pipeline_dagster.core.engine.writer import JobDone, JobFailed, Rows, StreamEnd, StreamItem, write_run
from feature_pipeline_dagster.core.errors import ConfigError, DeviceMemoryError, ModelError, PipelineError, VideoError
from feature_pipeline_dagster.core.leases import DeviceLease, acquire, busy_slots, scheduled
from feature_pipeline_dagster.core.models import FAMILIES, load_extractor
from feature_pipeline_dagster.core.search.watch import Watch
from feature_pipeline_dagster.core.settings import CollectionSpec, Settings
from feature_pipeline_dagster.core.shots import segments_of
from feature_pipeline_dagster.core.store import VectorStore

log = logging.getLogger("feature_pipeline.engine")


@dataclass
class EmbeddingRun:
    """A run's videos (relative paths) into one collection, as a lazy stream: iterating
    it leases the first of `devices` with a free slot, loads the model and yields what
    the writer takes (writer.py: rows, videos done or failed, the end); nothing runs
    before. The embedding asset returns it; the IO manager hands it to `write_run`.
    `extractor` given: that model on its device, no lease (tests, benchmarks)."""

    settings: Settings
    spec: CollectionSpec
    videos: list[str]
    devices: list[str] = field(default_factory=list)
    leases_root: Path | None = None  # None: the scheduler gave this run its device (a Kubernetes pod)
    extractor: object | None = None
    lanes: int | None = None  # decode lanes; None: as many as the run's videos and the cores allow
    lease: dict = field(default_factory=dict)  # device_lease, lease_slot, lease_acquired_at/released_at

    @property
    def first_feature(self) -> bool:
        """The first feature's videos are split into shots as they stream (as its summary
        is summed) and scored against the saved searches."""
        return self.spec == self.settings.collection_for(self.settings.model.features[0])

    @property
    def segments(self) -> CollectionSpec | None:
        """Where the videos' shots go (core/shots.py), for the first feature's run."""
        return segments_of(self.spec) if self.first_feature else None

    def __iter__(self) -> Iterator[StreamItem]:
        if self.extractor is not None:
            yield from self._stream(self.extractor)
            return
        lease = take_device(self.devices, self.settings.runs_per_device, self.leases_root)
        log.info("%d video(s) on %s (slot %d): %s", len(self.videos), lease.device, lease.slot + 1,
                 ", ".join(self.videos[:5]) + (" ..." if len(self.videos) > 5 else ""))
        try:
            yield from self._stream(load_extractor(self.settings.model, lease.device))
        except PipelineError as err:
            log.error("%s", err)
            raise
        finally:
            self.lease = {"device_lease": lease.device, "lease_slot": lease.slot + 1,
                          "lease_acquired_at": lease.acquired_at, "lease_released_at": lease.release()}

    def _stream(self, extractor) -> Iterator[StreamItem]:
        """Decode, embed and check every video; raises `PipelineError` for a run-level fault."""
        settings, spec = self.settings, self.spec
        if extractor.dim != spec.vector_field.dim:
            raise ModelError(f"{extractor.description} gives {extractor.dim}-d vectors but collection {spec.name} "
                             f"field {spec.vector_field.name} has dim {spec.vector_field.dim} ({settings.source})")
        fix_mmap_threshold()
        family = FAMILIES[settings.model.name]
        grid = extractor.grid if family.patch_grid else None
        watch = Watch.for_run(settings, extractor) if self.first_feature else None
        jobs = [EmbeddingJob(v, settings.video_input.path / v) for v in self.videos]
        model = ModelStage(extractor, family, settings.model.batch_size)
        out: list[StreamItem] = []  # what the callbacks below produced, yielded after each event

        def close(job: EmbeddingJob) -> None:
            if watch is not None:
                job.saved_searches = watch.matches(job.best_frames)
            out.append(JobDone(job))

        def failed(job: EmbeddingJob, err: PipelineError) -> None:
            job.failed = True
            model.drop(job)
            out.append(JobFailed(job, err))

        def deliver(rows: EmbeddingBatch, owners: list[tuple[EmbeddingJob, int]]) -> None:
            """In-stream checks (finite, the collection's dimension) and the summary's sums,
            then to the writer; a video with a bad vector fails, its rows never stored."""
            keep, kept_owners, start = [], [], 0
            for job, n in owners:
                vectors = rows.vectors[start:start + n]
                start += n
                dim, bad = vectors.shape[1:], int((~np.isfinite(vectors).all(axis=1)).sum()) if n else 0
                if bad or dim != (spec.vector_field.dim,):
                    what = (f"{bad} non-finite vector(s) of {n}" if bad
                            else f"vectors of shape {dim}, not ({spec.vector_field.dim},)")
                    failed(job, VideoError(f"{job.path}: the model gave {what}; none of its rows are kept"))
                    keep.append(np.zeros(n, bool))
                    continue
                columns = {k: v[start - n:start] for k, v in rows.columns.items()}
                job.add_vectors(vectors, columns)
                if watch is not None:
                    job.best_frames = watch.update(job.best_frames, vectors, columns["timestamp_ms"])
                keep.append(np.ones(n, bool))
                kept_owners.append((job, n))
            if len(kept_owners) < len(owners):
                mask = np.concatenate(keep)
                rows = EmbeddingBatch(rows.vectors[mask], {k: v[mask] for k, v in rows.columns.items()})
            if kept_owners:
                out.append(Rows(rows, kept_owners))
            model.close_done(kept_owners, close)

        lanes = self.lanes or decode_lanes(len(jobs))
        decode = lane_spec(settings, lanes)

        def open_job(job: EmbeddingJob, decoder) -> None:
            job.open(settings, spec, decoder, decode, grid)
            job.model, job.device = extractor.description, extractor.device
            if self.first_feature:
                job.shots = ShotTrack()
            job.decode_batch = model.frames_per_batch((job.video.info.height, job.video.info.width))

        events = decode_ahead(jobs, open_job, settings.model.batch_size, lanes,
                              decoders=local_decoders(settings, extractor.device, lanes))
        try:
            for event in events:
                if stop_requested():
                    continue  # the lanes are stopping: drain what they still hand over
                if event is None:  # nothing decoded is waiting: embed what is pending rather than idle
                    model.flush(deliver, largest_only=True)
                elif event.job.failed:
                    continue
                elif event.error is not None:
                    failed(event.job, event.error)
                elif event.ended:
                    event.job.decoded = True
                    model.close_if_done(event.job, close)
                else:
                    model.add(event.job, event.frames)
                    model.flush(deliver, full_only=True)
                yield from _taken(out)
            interrupted = stop_requested()
            if not interrupted:
                model.flush(deliver)
            yield from _taken(out)
            yield StreamEnd(interrupted)
        finally:
            events.close()


def decode_first(settings: Settings, videos: list[str] | None = None) -> None:
    """This process' decoder children started now (their imports off the run's path), and
    with `videos` (the run it is about to start) asked to decode them ahead (decode/process.py:
    prefetch) while the process imports, opens Dagster and loads the model on one GIL and the
    other cores idle: as many children as cores less one, each a share of the videos. The GPU
    stand-in's 1000 clips (2 cores): 117 of them decoded before the run's first request, `run` /
    ceiling 0.75-0.85 against 0.73-0.77 in alternated runs (docs/performance.md). Not for nvdec
    (in this process); patch models get their children started, nothing decoded ahead (their
    batches follow the grid)."""
    decode = settings.video_input.decode
    if decode.in_process:
        return
    lanes = decode_lanes(len(videos) if videos else 1 << 20)
    decoders = decoder_pool(lanes)
    if not videos or FAMILIES[settings.model.name].patch_grid:
        for decoder in decoders:
            decoder.start()
        return
    spec = lane_spec(settings, lanes)
    root = settings.video_input.path
    ahead = decoders[: max(1, cores() - 1)]  # the run's process takes one core while it starts
    for i, decoder in enumerate(ahead):
        decoder.prefetch([root / v for v in videos[i::len(ahead)][:AHEAD_VIDEOS]], spec, settings.model.batch_size,
                         ahead_bytes() // len(ahead))


def lane_spec(settings: Settings, lanes: int):
    """What each of a run's `lanes` decodes: the config's spec with its share of the cores.
    One place for the run and for `decode_first`, whose videos are answered from memory only
    under the very spec the run asks with."""
    return replace(settings.video_input.decode, threads=decode_threads(lanes))


AHEAD_VIDEOS = 1024  # per decoder, at most: its lane takes these first (engine/lanes.py)


def take_device(devices: list[str], slots: int, root: Path | None) -> DeviceLease:
    """The least busy of `devices`; waits for one of its `slots` if all are busy. Without
    a leases folder the device is the run's own (its pod's GPU)."""
    if root is None:
        return scheduled(devices[0])
    return acquire(sorted(devices, key=lambda d: busy_slots(d, slots, root)), slots, root)


def embed_videos(settings: Settings, spec: CollectionSpec, store: VectorStore, extractor, videos: list[str],
                 report: RunReport, lanes: int | None = None) -> RunReport:
    """Stream `videos` through `extractor` into `store`; raises `PipelineError` for a
    run-level fault (with `report` filled in as far as the run got)."""
    return write_run(EmbeddingRun(settings, spec, videos, extractor=extractor, lanes=lanes), store, report)


def _taken(items: list) -> list:
    taken = items[:]
    items.clear()
    return taken


def local_decoders(settings: Settings, device: str, lanes: int) -> list | None:
    """For nvdec, decoders in this process on the run's device (its frames stay there);
    None for the CPU backends, which decode in child processes. A run that cannot use
    nvdec fails at once with one line, before any video."""
    if not settings.video_input.decode.in_process:
        return None

    if why := unusable(device):
        raise ConfigError(f"{settings.source}: video_input.decoder: {why}")
    return [LocalDecoder(device) for _ in range(lanes)]


# The most rows one model batch may give. A batch's host memory follows its rows, not its
# frames: its output (4.6 MB of float32 per 720p NaViT frame: 1008 rows of 1152-d), and on
# CPU the model's activations (~45 KB a row at 1152-d, MLP included), the decoded frames
# and the queues between the stages holding batches of that size. At 32 frames a batch,
# a 720p NaViT run's peak was 2.1x that of a 10-second video (3.0 vs 1.45 GiB,
# bench/bench_long_video.py --navit); at 8192 rows (8 such frames) a long video stays
# within the peak of its first batch. One row a frame (CLIP) is never bound by it.
ROWS_PER_BATCH = 8192


class ModelStage:
    """Frames wait here, grouped by size (frames of one size stack into one tensor),
    until a group holds a batch; a batch may hold frames of several videos. A batch holds
    at most `batch_size` frames and, for a patch model, at most ROWS_PER_BATCH rows."""

    def __init__(self, extractor, family, batch_size: int):
        self.extractor, self.family, self.batch_size = extractor, family, batch_size
        self.groups: dict[tuple, list[tuple[EmbeddingJob, FrameBatch]]] = {}
        self.checked = False

    def frames_per_batch(self, shape: tuple) -> int:
        """Frames of this (height, width, ...) in one batch: `batch_size`, fewer where
        their rows would pass ROWS_PER_BATCH."""
        rows = 1
        if self.family.patch_grid:
            grid_rows, grid_cols = self.extractor.grid(int(shape[0]), int(shape[1]))
            rows = grid_rows * grid_cols
        return max(1, min(self.batch_size, ROWS_PER_BATCH // max(1, rows)))

    def add(self, job: EmbeddingJob, frames: FrameBatch) -> None:
        job.keep_thumbnails(frames.frame_ids, frames.timestamps_ms, frames.frames)
        if job.shots is not None:
            job.shots.add_frames(frames.frame_ids, frames.frames)
        job.frames_in_flight += len(frames)
        self.groups.setdefault(frames.frames.shape[1:], []).append((job, frames))

    def drop(self, job: EmbeddingJob) -> None:
        for key in list(self.groups):
            self.groups[key] = [(j, f) for j, f in self.groups[key] if j is not job]
            if not self.groups[key]:
                del self.groups[key]

    def close_if_done(self, job: EmbeddingJob, close: Callable[[EmbeddingJob], None]) -> None:
        if job.decoded and not job.frames_in_flight:
            if job.shots is not None:
                job.shots.finish(job.duration_ms())
            close(job)

    def close_done(self, owners: list[tuple[EmbeddingJob, int]], close: Callable[[EmbeddingJob], None]) -> None:
        """After a delivery: each of its videos now whole goes to the writer once. A batch
        may hold two parts of one video (the rest of a split chunk, then its last chunk);
        closed twice, a video was committed twice and the run failed (seen in CI)."""
        for job in dict.fromkeys(job for job, _ in owners):
            self.close_if_done(job, close)

    def flush(self, deliver, full_only: bool = False, largest_only: bool = False) -> None:
        """Embed full groups (`full_only`), the largest group (`largest_only`), or all."""
        while self.groups:
            key = max(self.groups, key=lambda k: sum(len(f) for _, f in self.groups[k]))
            if full_only and sum(len(f) for _, f in self.groups[key]) < self.frames_per_batch(key):
                return
            self._embed_group(key, deliver)
            if largest_only:
                return

    def _embed_group(self, key, deliver) -> None:
        parts, taken, limit = [], 0, self.frames_per_batch(key)
        group = self.groups[key]
        while group and taken < limit:
            job, frames = group[0]
            room = limit - taken
            if len(frames) > room:
                group[0] = (job, _frames_slice(frames, room, len(frames)))
                frames = _frames_slice(frames, 0, room)
            else:
                group.pop(0)
            parts.append((job, frames))
            taken += len(frames)
        if not group:
            del self.groups[key]
        batch = FrameBatch(concat_frames([f.frames for _, f in parts]), np.concatenate([f.frame_ids for _, f in parts]),
                           np.concatenate([f.timestamps_ms for _, f in parts]))
        started = time.perf_counter()
        rows = self._embed(batch, parts[0][0])
        spent = time.perf_counter() - started
        if not self.checked:
            self.family.check_columns(rows)
            self.checked = True
        per_frame = len(rows) // len(batch)
        owners = []
        for job, frames in parts:
            job.seconds_model += spent * len(frames) / len(batch)
            job.frames_in_flight -= len(frames)
            job.frames_embedded += len(frames)
            job.batch_size = min(limit, self.batch_size)  # after a halving, what fits
            owners.append((job, per_frame * len(frames)))
        deliver(rows, owners)

    def _embed(self, batch: FrameBatch, first: EmbeddingJob) -> EmbeddingBatch:
        """The extractor's rows; out of device memory, the batch halves until it fits
        (and later batches stay at the size that fit)."""
        try:
            return self.extractor.embed(batch)
        except Exception as err:
            if type(err).__name__ != "OutOfMemoryError":
                raise
        _free_device_memory()
        if len(batch) == 1:
            raise DeviceMemoryError(f"{first.relpath}: out of memory on {self.extractor.device} even one frame at a time")
        self.batch_size = max(1, len(batch) // 2)
        log.warning("out of memory on %s, batch size now %d", self.extractor.device, self.batch_size)
        halves = [_frames_slice(batch, 0, self.batch_size), _frames_slice(batch, self.batch_size, len(batch))]
        return EmbeddingBatch.concat([self._embed(half, first) for half in halves])


def concat_frames(parts: list):
    """Frame arrays into one: numpy, or CUDA tensors from nvdec (no host copy)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


def _frames_slice(frames: FrameBatch, start: int, stop: int) -> FrameBatch:
    return FrameBatch(frames.frames[start:stop], frames.frame_ids[start:stop], frames.timestamps_ms[start:stop])


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
