"""A run's videos on one device, streamed: decode lanes ahead across videos, model
batches that may span videos, writes batched across videos (Dagster-free; the IO
manager reports the result).

    decode lanes (child processes) ─▶ model batches by frame size ─▶ in-stream checks ─▶ RunWriter

A bad video (unreadable, damaged, values that do not fit, non-finite vectors) fails
alone: the run goes on and its attempt leaves no rows. A fault of the model, the
device or the database ends the run, and its `retryable` flag says whether trying
again could help.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.decode.heap import fix_mmap_threshold
from feature_pipeline_dagster.core.batches import EmbeddingBatch, FrameBatch
from feature_pipeline_dagster.core.engine.lanes import decode_ahead, decode_lanes
from feature_pipeline_dagster.core.engine.stopping import stop_requested
from feature_pipeline_dagster.core.engine.video import ShotTrack, VideoJob
from feature_pipeline_dagster.core.engine.writer import RunWriter
from feature_pipeline_dagster.core.errors import ConfigError, DeviceMemoryError, ModelError, PipelineError, VideoError
from feature_pipeline_dagster.core.leases import DeviceLease, acquire, busy_slots, scheduled
from feature_pipeline_dagster.core.search.watch import Watch
from feature_pipeline_dagster.core.settings import CollectionSpec, Settings
from feature_pipeline_dagster.core.shots import segments_of
from feature_pipeline_dagster.core.store import VectorStore
from feature_pipeline_dagster.core.models import FAMILIES, code_version, load_extractor
from feature_pipeline_dagster.core.ledger import FailureRecord
from feature_pipeline_dagster.core.videos import content_digest, fingerprint
from feature_pipeline_dagster.core.decode.backends import in_process
from feature_pipeline_dagster.core.decode.backends.nvdec_reader import unusable
from feature_pipeline_dagster.core.decode.local import LocalDecoder

log = logging.getLogger("feature_pipeline.engine")


@dataclass
class VideoRun:
    """What a run embeds: its videos (relative paths) into one collection, on the first
    of `devices` with a free slot. The embedding asset hands this to its IO manager."""

    settings: Settings
    spec: CollectionSpec
    videos: list[str]
    devices: list[str]
    leases_root: Path | None  # None: the scheduler gave this run its device (a Kubernetes pod)


@dataclass
class RunReport:
    """Filled in as the run goes, so a run-level failure still says how far it got."""

    written: dict[str, dict] = field(default_factory=dict)  # video -> its metadata
    failed: dict[str, str] = field(default_factory=dict)  # video -> one-line reason
    interrupted: list[str] = field(default_factory=list)  # not finished: a stop was asked for
    lease: dict = field(default_factory=dict)  # device, slot, acquired_at, released_at


def take_device(devices: list[str], slots: int, root: Path | None) -> DeviceLease:
    """The least busy of `devices`; waits for one of its `slots` if all are busy. Without
    a leases folder the device is the run's own (its pod's GPU)."""
    if root is None:
        return scheduled(devices[0])
    return acquire(sorted(devices, key=lambda d: busy_slots(d, slots, root)), slots, root)


def embed_run(run: VideoRun, store: VectorStore, report: RunReport) -> RunReport:
    """Lease a device, load the model once, embed every video of the run."""
    lease = take_device(run.devices, run.settings.runs_per_device, run.leases_root)
    log.info("%d video(s) on %s (slot %d): %s", len(run.videos), lease.device, lease.slot + 1,
             ", ".join(run.videos[:5]) + (" ..." if len(run.videos) > 5 else ""))
    try:
        extractor = load_extractor(run.settings.model, lease.device)
        return embed_videos(run.settings, run.spec, store, extractor, run.videos, report)
    except PipelineError as err:
        log.error("%s", err)
        raise
    finally:
        report.lease = {"device_lease": lease.device, "lease_slot": lease.slot + 1,
                        "lease_acquired_at": lease.acquired_at, "lease_released_at": lease.release()}


def embed_videos(settings: Settings, spec: CollectionSpec, store: VectorStore, extractor, videos: list[str],
                 report: RunReport, lanes: int | None = None) -> RunReport:
    """Write every video; raises `PipelineError` for a run-level fault."""
    if extractor.dim != spec.vector_field.dim:
        raise ModelError(f"{extractor.description} gives {extractor.dim}-d vectors but collection {spec.name} "
                         f"field {spec.vector_field.name} has dim {spec.vector_field.dim} ({settings.source})")
    fix_mmap_threshold()
    family = FAMILIES[settings.model.name]
    grid = extractor.grid if family.patch_grid else None
    # The first feature's videos are split into shots as they stream (as its summary is
    # summed) and scored against the saved searches.
    first_feature = spec == settings.collection_for(settings.model.features[0])
    watch = Watch.for_run(settings, extractor) if first_feature else None
    jobs = [VideoJob(v, settings.video_input.path / v) for v in videos]
    model = ModelStage(extractor, family, settings.model.batch_size)
    done = iter(range(1, len(jobs) + 1))

    def committed(batch: list[VideoJob]) -> None:
        for job in batch:
            meta = report.written[job.relpath] = job.metadata(spec, extractor)
            if watch is not None:
                meta["saved_searches"] = watch.matches(job.best_frames)
            if job.partial:
                log.warning("%s: partial: %s", job.relpath, job.partial)
            log.info("[%d/%d] %s: %d rows from %d frames in %.1fs", next(done), len(jobs), job.relpath,
                     job.rows, job.frames_embedded, meta["seconds"],
                     extra={"video_done": {"video": job.relpath, "rows": job.rows, "partial": job.partial,
                                            "saved_searches": meta.get("saved_searches", {})}})

    def failed(job: VideoJob, err: PipelineError) -> None:
        job.failed = True
        model.drop(job)
        writer.fail(job)
        report.failed[job.relpath] = str(err)
        if isinstance(err, VideoError) and not err.retryable and (record := failure_record(job, err, version)):
            failures.append(record)
        log.error("%s", err, extra={"video_failed": job.relpath})
        next(done)

    def deliver(rows: EmbeddingBatch, owners: list[tuple[VideoJob, int]]) -> None:
        """In-stream checks (finite, the collection's dimension) and the summary's sums,
        then to the writer; a video with a bad vector fails, its rows never stored."""
        keep, kept_owners, start = [], [], 0
        for job, n in owners:
            vectors = rows.vectors[start:start + n]
            start += n
            dim, bad = vectors.shape[1:], int((~np.isfinite(vectors).all(axis=1)).sum()) if n else 0
            if bad or dim != (spec.vector_field.dim,):
                what = f"{bad} non-finite vector(s) of {n}" if bad else f"vectors of shape {dim}, not ({spec.vector_field.dim},)"
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
            writer.add(rows, kept_owners)
        model.close_done(kept_owners, writer)

    version, failures = code_version(settings), []
    segments = segments_of(spec) if first_feature else None
    writer = RunWriter(store, spec, settings.db.batch_size, version, committed, segments=segments)

    def open_job(job: VideoJob, decoder) -> None:
        job.open(settings, spec, decoder, grid)
        if segments is not None:
            job.shots = ShotTrack()
        job.decode_batch = model.frames_per_batch((job.video.info.height, job.video.info.width))

    lanes = lanes or decode_lanes(len(jobs))
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
                model.close_if_done(event.job, writer)
            else:
                model.add(event.job, event.frames)
                model.flush(deliver, full_only=True)
        if stop_requested():
            writer.finish(interrupted=True)
            report.interrupted = [v for v in videos if v not in report.written and v not in report.failed]
            log.warning("stopped on request: %d of %d video(s) done", len(report.written), len(videos))
        else:
            model.flush(deliver)
            writer.finish()
        store.record_failures(spec, failures, cleared=list(report.written))  # one request for the run
    except BaseException:
        writer.abort()
        raise
    finally:
        events.close()
    return report


def failure_record(job: VideoJob, err: VideoError, version: str):
    """What the ledger keeps of a video that failed for its content (core/ledger.py): the
    file as it was opened (or is now, if it never opened); None if it cannot be read."""
    try:
        stat = job.stat or job.path.stat()
        digest = job.digest or content_digest(job.path)
    except OSError:
        return None
    return FailureRecord(job.relpath, fingerprint(stat.st_size, stat.st_mtime_ns), digest, version, str(err))


def local_decoders(settings: Settings, device: str, lanes: int) -> list | None:
    """For nvdec, decoders in this process on the run's device (its frames stay there);
    None for the CPU backends, which decode in child processes. A run that cannot use
    nvdec fails at once with one line, before any video."""
    if not in_process(settings.video_input.decoder):
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
        self.groups: dict[tuple, list[tuple[VideoJob, FrameBatch]]] = {}
        self.checked = False

    def frames_per_batch(self, shape: tuple) -> int:
        """Frames of this (height, width, ...) in one batch: `batch_size`, fewer where
        their rows would pass ROWS_PER_BATCH."""
        rows = 1
        if self.family.patch_grid:
            grid_rows, grid_cols = self.extractor.grid(int(shape[0]), int(shape[1]))
            rows = grid_rows * grid_cols
        return max(1, min(self.batch_size, ROWS_PER_BATCH // max(1, rows)))

    def add(self, job: VideoJob, frames: FrameBatch) -> None:
        job.keep_thumbnails(frames.frame_ids, frames.timestamps_ms, frames.frames)
        if job.shots is not None:
            job.shots.add_frames(frames.frame_ids, frames.frames)
        job.frames_in_flight += len(frames)
        self.groups.setdefault(frames.frames.shape[1:], []).append((job, frames))

    def drop(self, job: VideoJob) -> None:
        for key in list(self.groups):
            self.groups[key] = [(j, f) for j, f in self.groups[key] if j is not job]
            if not self.groups[key]:
                del self.groups[key]

    def close_if_done(self, job: VideoJob, writer: RunWriter) -> None:
        if job.decoded and not job.frames_in_flight:
            if job.shots is not None:
                job.shots.finish(job.duration_ms())
            writer.close(job)

    def close_done(self, owners: list[tuple[VideoJob, int]], writer: RunWriter) -> None:
        """After a delivery: each of its videos now whole goes to the writer once. A batch
        may hold two parts of one video (the rest of a split chunk, then its last chunk);
        closed twice, a video was committed twice and the run failed (seen in CI)."""
        for job in dict.fromkeys(job for job, _ in owners):
            self.close_if_done(job, writer)

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

    def _embed(self, batch: FrameBatch, first: VideoJob) -> EmbeddingBatch:
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


def write_one_video(settings: Settings, spec: CollectionSpec, store: VectorStore, extractor, relpath: str) -> dict:
    """One video into its collection; its metadata, or its one-line VideoError."""
    report = embed_videos(settings, spec, store, extractor, [relpath], RunReport(), lanes=1)
    if relpath in report.failed:
        raise VideoError(report.failed[relpath])
    return report.written[relpath]
