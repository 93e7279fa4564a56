"""A run's stream (run.py) into one collection, batched across videos (Dagster-free):
`write_run` is what the IO manager calls, `RunWriter` what it drives.

Rows of many videos share insert requests (`db.batch_size` rows each, whatever video
they belong to), all as the run's one `generation`. A video is committed (the store
flushes, deletes its older generations, and records it in the ledger) once all its rows
are in, and commits are amortized: one flush and one delete for many videos, never one
per video (per video, flush-delete-flush and a read-back cost about 0.85 s of each short
clip).
Crash-safe as before: the new generation is durable before older ones are deleted, so
a kill leaves a duplicate that the next write removes, never a loss; a video that
fails takes back the rows of its attempt.

A commit comes every `commit_seconds` (5 s), or sooner at `commit_videos` (512) videos,
so the seconds bind at every rate a Milvus Lite server keeps up with: its one Python
process spends ~0.26 s of CPU on a commit's flushes, deletes and the compaction they bring.
A commit every 64 videos, the rule before, cost it 4.49 s of CPU for 1000 short clips'
rows against 0.81 s at 512 (bench/bench_commits.py), so commits alone filled that process
past ~250 clips/s, a rate a GPU box's decoders pass; and a commit's delete walks every
stored row (0.4-1.0 s at 200,000 rows).

Inserts run in their own thread, overlapping the model; its errors (the store's)
re-raise in the caller at its next call. Each video ends in exactly one outcome event
(outcomes.py): committed, failed or interrupted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Union

import numpy as np

from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.engine.job import EmbeddingJob
from feature_pipeline_dagster.core.engine.outcomes import Embedded, Failed, Interrupted, Outcome, RunReport, emit
from feature_pipeline_dagster.core.errors import PipelineError, VideoError
from feature_pipeline_dagster.core.ledger import FailureRecord
from feature_pipeline_dagster.core.models import code_version
from feature_pipeline_dagster.core.settings import CollectionSpec
from feature_pipeline_dagster.core.store import VectorStore, new_generation
from feature_pipeline_dagster.core.store.milvus.client import rows_per_request
from feature_pipeline_dagster.core.videos import content_digest, fingerprint

if TYPE_CHECKING:
    from feature_pipeline_dagster.core.engine.run import EmbeddingRun

log = logging.getLogger("feature_pipeline.writer")
engine_log = logging.getLogger("feature_pipeline.engine")


# What a run's stream yields, in order: rows as the model gives them, each video once
# whole or once failed (its rows taken back), and the end.

@dataclass
class Rows:
    rows: EmbeddingBatch
    owners: list[tuple[EmbeddingJob, int]]  # which video owns how many of the rows, in order


@dataclass
class JobDone:
    job: EmbeddingJob  # every row of it is in the stream


@dataclass
class JobFailed:
    job: EmbeddingJob
    error: PipelineError


@dataclass
class StreamEnd:
    interrupted: bool  # a stop was asked for: commit the whole videos, take back the rest


StreamItem = Union[Rows, JobDone, JobFailed, StreamEnd]


def write_run(run: EmbeddingRun, store: VectorStore, report: RunReport | None = None,
              on_commit: Callable[[list[str]], None] | None = None) -> RunReport:
    """Consume `run`'s stream into `store`: each video committed (rows, shots, ledger) or
    failed alone, each with one outcome event into `report` and to `outcomes.listening`,
    and each commit's videos to `on_commit` (from the writer's thread).
    Raises the `PipelineError` of a run-level fault (the model, the device, the database),
    `report` filled in as far as the run got."""

    report = report if report is not None else RunReport()
    settings, spec, videos = run.settings, run.spec, run.videos
    version, failures, count = code_version(settings), [], iter(range(1, len(videos) + 1))

    def settle(outcome: Outcome) -> None:
        report.add(outcome)
        emit(outcome)

    def committed(jobs: list[EmbeddingJob]) -> None:
        for job in jobs:
            meta = job.metadata(spec)
            if job.partial:
                engine_log.warning("%s: partial: %s", job.relpath, job.partial)
            engine_log.info("[%d/%d] %s: %d rows from %d frames in %.1fs", next(count), len(videos), job.relpath,
                            job.rows, job.frames_embedded, meta["seconds"], extra={"progress": True})
            settle(Embedded(job.relpath, job.rows, job.partial or "", job.saved_searches or {}, meta))
        if on_commit is not None:
            on_commit([job.relpath for job in jobs])

    writer, stream = None, iter(run)
    try:
        for item in stream:
            # Made at the first item, after the lease and the model load: its commit clock
            # (commit_seconds) starts then, so the first commit still gathers many videos.
            writer = writer or RunWriter(store, spec, settings.db.batch_size, version, committed,
                                         segments=run.segments)
            if isinstance(item, Rows):
                writer.add(item.rows, item.owners)
            elif isinstance(item, JobDone):
                writer.close(item.job)
            elif isinstance(item, JobFailed):
                writer.fail(item.job)
                err = item.error
                if isinstance(err, VideoError) and not err.retryable and (record := failure_record(item.job, err,
                                                                                                     version)):
                    failures.append(record)
                engine_log.error("%s", err)
                next(count)
                settle(Failed(item.job.relpath, str(err)))
            else:
                writer.finish(interrupted=item.interrupted)
                if item.interrupted:
                    for video in videos:
                        if video not in report.written and video not in report.failed:
                            settle(Interrupted(video))
                    engine_log.warning("stopped on request: %d of %d video(s) done", len(report.written), len(videos))
                store.record_failures(spec, failures, cleared=list(report.written))  # one request for the run
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        stream.close()
        report.lease = run.lease
    return report


def failure_record(job: EmbeddingJob, err: VideoError, version: str):
    """What the ledger keeps of a video that failed for its content (core/ledger.py): the
    file as it was opened (or is now, if it never opened); None if it cannot be read."""
    try:
        stat = job.stat or job.path.stat()
        digest = job.digest or content_digest(job.path)
    except OSError:
        return None
    return FailureRecord(job.relpath, fingerprint(stat.st_size, stat.st_mtime_ns), digest, version, str(err))


class RunWriter:
    def __init__(self, store: VectorStore, spec: CollectionSpec, insert_rows: int, code_version: str,
                 on_commit: Callable[[list[EmbeddingJob]], None], commit_videos: int = 512, commit_seconds: float = 5.0,
                 segments: CollectionSpec | None = None):
        self.store, self.spec, self.on_commit, self.code_version = store, spec, on_commit, code_version
        self.segments = segments  # where the videos' shots go (core/shots.py), with each commit
        self.insert_rows = max(1, min(insert_rows, rows_per_request(spec)))
        self.commit_videos, self.commit_seconds = commit_videos, commit_seconds
        self.generation = new_generation()
        self._buffer: list[tuple[EmbeddingBatch, list[tuple[EmbeddingJob, int]]]] = []
        self._buffered = 0
        self._inserted: set[EmbeddingJob] = set()  # videos with rows of this generation in the store
        self._closed: list[EmbeddingJob] = []  # every row handed over, not committed yet
        self._last_commit = time.perf_counter()
        self._tasks: queue.Queue = queue.Queue(maxsize=4)
        self._room = threading.Condition()  # rows handed over, not yet inserted (see `add`)
        self._pending = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="write", daemon=True)
        self._thread.start()

    # The caller's side: each call queues work for the writer thread.

    def add(self, rows: EmbeddingBatch, owners: list[tuple[EmbeddingJob, int]]) -> None:
        """Rows in order, `owners` saying which video owns how many of them. Waits while
        two full insert requests of earlier rows are still to go (one in the store's hands,
        one filling): the store inserts slower than a patch model embeds on the CPU (about
        1900 against 5200 rows/s of 1152-d, bench_throughput.py --only 6), and queued tasks
        held up to four model batches of rows (37 MB each at 8064 rows) beside the model's
        working set, which a long video's peak memory showed and a short one's never
        reaches (bench_long_video.py --navit). Two, not one: a fast model's small batches (CLIP: 32
        rows) go on filling the next request while the store takes one."""
        with self._room:
            while self._pending >= 2 * self.insert_rows and self._error is None and self._thread.is_alive():
                self._room.wait(0.1)
            self._pending += len(rows)
        self._submit(self._add, rows, owners)

    def close(self, job: EmbeddingJob) -> None:
        """Every row of `job` has been added."""
        self._submit(self._close, job)

    def fail(self, job: EmbeddingJob) -> None:
        """Drop `job`'s rows: those buffered, and those already inserted."""
        self._submit(self._fail, job)

    def finish(self, interrupted: bool = False) -> None:
        """Insert and commit everything (`interrupted`: only the videos whose rows are
        all in; the rows of the others are taken back); wait for it."""
        self._submit(self._finish, interrupted)
        self._submit(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Stop without committing (the run failed); what was inserted stays uncommitted,
        as after a kill: the next write of each video replaces it."""
        if self._thread.is_alive():
            self._tasks.put(None)
            self._thread.join(timeout=60)

    def _submit(self, fn, *args) -> None:
        self._raise()
        while self._thread.is_alive():
            try:
                self._tasks.put((fn, args) if fn else None, timeout=0.1)
                return
            except queue.Full:
                continue
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            if self._error is not None:
                continue  # drain: the caller re-raises the first error
            fn, args = task
            try:
                fn(*args)
            except BaseException as err:
                self._error = err

    # The writer thread's side.

    def _add(self, rows: EmbeddingBatch, owners: list[tuple[EmbeddingJob, int]]) -> None:
        self._buffer.append((rows, owners))
        self._buffered += len(rows)
        while self._buffered >= self.insert_rows:
            self._insert(self.insert_rows)

    def _insert(self, limit: int | None = None) -> None:
        """Insert up to `limit` buffered rows (all if None) as one request."""
        taken, owners, count = [], [], 0
        while self._buffer and (limit is None or count < limit):
            rows, row_owners = self._buffer[0]
            room = len(rows) if limit is None else min(len(rows), limit - count)
            if room < len(rows):
                self._buffer[0] = (rows.slice(room, len(rows)), _split_owners(row_owners, room)[1])
                rows, row_owners = rows.slice(0, room), _split_owners(row_owners, room)[0]
            else:
                self._buffer.pop(0)
            taken.append(rows)
            owners += row_owners
            count += len(rows)
        if not count:
            return
        self._buffered -= count
        paths = [job.relpath for job, n in owners for _ in range(n)]
        started = time.perf_counter()
        self.store.insert(self.spec, EmbeddingBatch.concat(taken), paths, self.generation)
        self._settled(count)
        spent = time.perf_counter() - started
        for job, n in owners:
            job.seconds_write += spent * n / count
            self._inserted.add(job)

    def _settled(self, rows: int) -> None:
        """`rows` handed over are inserted or dropped: room for the caller's next."""
        with self._room:
            self._pending -= rows
            self._room.notify_all()

    def _close(self, job: EmbeddingJob) -> None:
        self._closed.append(job)
        if (len(self._closed) >= self.commit_videos
                or time.perf_counter() - self._last_commit >= self.commit_seconds):
            self._commit()

    def _commit(self) -> None:
        self._insert()
        if not self._closed:
            return
        jobs, self._closed = self._closed, []
        started = time.perf_counter()
        self.store.commit(self.spec, [job.relpath for job in jobs], self.generation)
        if self.segments is not None:
            self._write_segments(jobs)
        self.store.record_videos(self.spec, [job.record(self.code_version) for job in jobs], self.generation)
        spent = time.perf_counter() - started
        for job in jobs:
            job.seconds_write += spent / len(jobs)
            self._inserted.discard(job)
        self._last_commit = time.perf_counter()
        self.on_commit(jobs)

    def _write_segments(self, jobs: list[EmbeddingJob]) -> None:
        """The videos' shots, as their frames' generation (search matches the two by it),
        in one insert and one commit: before the ledger, so a video recorded done has them."""
        shots = [job for job in jobs if job.shots is not None and job.shots.rows is not None]
        if shots:
            rows = [job.shots.rows for job in shots]
            batch = EmbeddingBatch(np.concatenate([r.vectors for r in rows]),
                                   {k: np.concatenate([r.columns[k] for r in rows]) for k in rows[0].columns})
            self.store.insert(self.segments, batch, [job.relpath for job, r in zip(shots, rows) for _ in r.vectors],
                              self.generation)
        self.store.commit(self.segments, [job.relpath for job in jobs], self.generation)

    def _fail(self, job: EmbeddingJob) -> None:
        kept = []
        for rows, owners in self._buffer:
            keep = np.concatenate([np.full(n, j is not job) for j, n in owners]) if owners else np.zeros(0, bool)
            if keep.all():
                kept.append((rows, owners))
            elif keep.any():
                kept.append((_select(rows, keep), [(j, n) for j, n in owners if j is not job]))
        self._buffer = kept
        buffered, self._buffered = self._buffered, sum(len(rows) for rows, _ in kept)
        self._settled(buffered - self._buffered)
        if job in self._inserted:
            self.store.discard(self.spec, job.relpath, self.generation)
            self._inserted.discard(job)

    def _finish(self, interrupted: bool) -> None:
        if interrupted:
            open_jobs = {job for _, owners in self._buffer for job, _ in owners} | self._inserted
            for job in open_jobs - set(self._closed):
                self._fail(job)
        self._commit()


def _split_owners(owners: list[tuple[EmbeddingJob, int]], at: int) -> tuple[list, list]:
    head, tail, seen = [], [], 0
    for job, n in owners:
        if seen + n <= at:
            head.append((job, n))
        elif seen >= at:
            tail.append((job, n))
        else:
            head.append((job, at - seen))
            tail.append((job, seen + n - at))
        seen += n
    return head, tail


def _select(rows: EmbeddingBatch, keep: np.ndarray) -> EmbeddingBatch:
    return EmbeddingBatch(rows.vectors[keep], {k: v[keep] for k, v in rows.columns.items()})
