"""`feature-pipeline run`: every new or changed video, materialized through Dagster in
ranged runs spread over the configured devices, as the sensor hands them out.

Videos go out in chunks of consecutive partitions (about one per device, at most
`MAX_VIDEOS_PER_RUN` each), one Dagster run per chunk, so a run's start-up and model
load serve many videos and the engine streams across them. One device: the runs
execute in this process. Several: one worker process per device pulls the next chunk
when it finishes one; a worker that dies (a native crash, the OOM killer) fails only the
videos of its chunk that had no result yet, and a fresh worker takes over the rest.
Per-video results come from the engine's log records as each video is committed, so
progress shows per video, not per run.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from feature_pipeline_dagster.core.videos import partition_key
from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, MAX_VIDEOS_PER_RUN, RANGE_END_TAG, RANGE_START_TAG

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@dataclass
class VideoResult:
    key: str
    ok: bool
    rows: int = 0
    error: str = ""
    partial: str = ""  # embedded, but only the sound part of a damaged or cut-short file


def videos_to_embed(settings, instance, defs, videos: dict, everything: bool = False) -> list[str]:
    """Keys whose latest materialization is missing, or was of other file content or code."""
    from dagster import AssetKey

    from feature_pipeline_dagster.orchestration.materializations import latest_materializations

    todo: set[str] = set()
    for feature in settings.model.features:
        key = AssetKey(feature)
        current = defs.resolve_assets_def(key).code_versions_by_key[key]
        latest = {} if everything else latest_materializations(instance, key, list(videos))
        for k, video in videos.items():
            event = latest.get(k)
            fingerprint = event.metadata.get("file_fingerprint") if event else None
            done = event is not None and fingerprint is not None and (
                (fingerprint.value, (event.tags or {}).get("dagster/code_version")) == (video.fingerprint, current))
            if not done:
                todo.add(k)
    return sorted(todo)


def plan_runs(todo: list[str], partitions: list[str], devices: int) -> list[list[str]]:
    """Ranged runs: consecutive partitions only (a range covers every partition between
    its ends), about one run per device, at most MAX_VIDEOS_PER_RUN each."""
    from feature_pipeline_dagster.core.folder_watch import split_contiguous

    wanted = set(todo)
    spans, span = [], []
    for key in partitions:
        if key in wanted:
            span.append(key)
        elif span:
            spans.append(span)
            span = []
    if span:
        spans.append(span)
    size = max(1, min(MAX_VIDEOS_PER_RUN, -(-len(todo) // max(1, devices))))
    return [chunk for span in spans for chunk in split_contiguous(span, -(-len(span) // size), MAX_VIDEOS_PER_RUN)]


class _EngineOutcomes(logging.Handler):
    """Each video's outcome, as the engine logs it when the video is committed or fails."""

    def __init__(self, sink: Callable[[VideoResult], None]):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if done := getattr(record, "video_done", None):
            self.sink(VideoResult(partition_key(done["video"]), True, done["rows"], "", done.get("partial") or ""))
        elif failed := getattr(record, "video_failed", None):
            self.sink(VideoResult(partition_key(failed), False, 0, record.getMessage()))


def materialize_chunks(chunks: Iterator[list[str]], device: str, sink: Callable[[VideoResult], None]) -> None:
    """In this process: one Dagster run per chunk, tagged with the device; every video of
    each chunk gets exactly one result in `sink`."""
    from dagster import DagsterInstance, materialize

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    assets = [*defs.assets, *defs.asset_checks]
    targets = [a.key for a in defs.assets if getattr(a, "is_executable", False)]
    instance = DagsterInstance.get()
    engine_log = logging.getLogger("feature_pipeline.engine")
    for keys in chunks:
        seen: set[str] = set()

        def record(result: VideoResult) -> None:
            if result.key in keys and result.key not in seen:
                seen.add(result.key)
                sink(result)

        handler = _EngineOutcomes(record)
        engine_log.addHandler(handler)
        try:
            tags = {DEVICE_TAG: device}
            if len(keys) > 1:
                tags.update({RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})
            result = materialize(assets, selection=targets, instance=instance, resources=defs.resources,
                                 partition_key=keys[0] if len(keys) == 1 else None, run_config=QUIET,
                                 raise_on_error=False, tags=tags)
        finally:
            engine_log.removeHandler(handler)
        for key in keys:  # a run-level failure (the model, the database) names every video left
            record(VideoResult(key, False, 0, failure_message(result)))


def failure_message(result) -> str:
    """The one line a user needs: our Failure's description, else the error's last line."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            error = data.error.cause or data.error
            lines = error.message.strip().splitlines()
            return lines[-1] if lines else data.error.message
    return "run failed (see the Dagster UI or logs/)"


def run_on_devices(chunks: list[list[str]], devices: list[str], logs_dir: Path) -> Iterator[VideoResult]:
    """Every video's result, as it comes."""
    results: queue.Queue = queue.Queue()
    pending, lock = list(chunks), threading.Lock()

    def next_chunk() -> list[str] | None:
        with lock:
            return pending.pop(0) if pending else None

    def chunks_of_this_thread() -> Iterator[list[str]]:
        while (chunk := next_chunk()) is not None:
            yield chunk

    def drive_here() -> None:
        try:
            materialize_chunks(chunks_of_this_thread(), devices[0], results.put)
        except BaseException as err:  # handed to the caller
            results.put(err)
        finally:
            results.put(None)

    def drive_worker(device: str) -> None:
        worker = _Worker(device, logs_dir)
        try:
            while (chunk := next_chunk()) is not None:
                got = worker.embed(chunk, results.put)
                if got is None:
                    code = worker.exit_code()
                    for key in chunk:
                        results.put(VideoResult(key, False, 0, f"worker on {device} died (exit code {code})"))
                    worker = _Worker(device, logs_dir)
        finally:
            worker.close()
            results.put(None)

    if len(devices) == 1 or len(chunks) <= 1:
        threads = [threading.Thread(target=drive_here, daemon=True)]
    else:
        threads = [threading.Thread(target=drive_worker, args=(d,), daemon=True) for d in devices[: len(chunks)]]
    for thread in threads:
        thread.start()
    finished = 0
    while finished < len(threads):
        result = results.get()
        if result is None:
            finished += 1
        elif isinstance(result, BaseException):
            raise result
        else:
            yield result


class _Worker:
    """A `python -m feature_pipeline_dagster.cli.workers DEVICE` process: a chunk of keys
    in on stdin per line, one JSON result per video out and an end line per chunk; its
    own log goes to logs/worker-<device>-<time>.log."""

    def __init__(self, device: str, logs_dir: Path):
        logs_dir.mkdir(parents=True, exist_ok=True)
        log = logs_dir / f"worker-{device.replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "feature_pipeline_dagster.cli.workers", device],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
            )

    def embed(self, chunk: list[str], sink: Callable[[VideoResult], None]) -> bool | None:
        """True once every video of the chunk has its result; None if the worker died
        (the videos already reported keep their results; the caller fails the rest)."""
        try:
            self.process.stdin.write(json.dumps(chunk) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        left = set(chunk)
        while left:
            line = self.process.stdout.readline()
            if not line:
                chunk[:] = sorted(left)
                return None
            result = VideoResult(**json.loads(line))
            left.discard(result.key)
            sink(result)
        return True

    def exit_code(self) -> int | None:
        return self.process.wait()

    def close(self) -> None:
        if self.process.stdin:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        self.process.wait()


def _worker_main(device: str) -> None:
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the result stream

    def chunks() -> Iterator[list[str]]:
        for line in sys.stdin:
            yield json.loads(line)

    materialize_chunks(chunks(), device, lambda result: results.write(json.dumps(asdict(result)) + "\n"))


if __name__ == "__main__":
    _worker_main(sys.argv[1])
