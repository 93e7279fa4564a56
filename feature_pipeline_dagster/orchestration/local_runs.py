"""`feature-pipeline run`: every new or changed video, materialized through Dagster in
ranged runs spread over the configured devices, as the sensor hands them out.

Videos go out in chunks of consecutive partitions sized by their work (frames to embed,
core/run_sizing.py), one Dagster run per chunk, so a run's start-up serves many videos,
the engine streams across them, and the model, loaded once per process (in the
background from the start), serves every chunk. One chunk: its run executes in this
process. More: up to two runners per accelerator (`runners_per_device`; one on the CPU),
each pulling the next chunk when it finishes one, so while one run records its Dagster
events and computes its checks, shots and summary the other has the device; the device
lease keeps the runs on it one at a time. One device: the first runner is this process,
the second a worker process; several: a worker process each. On the CPU a second runner
only competes for the cores the first embeds with (figures at `runners_per_device`). Each
run reads the library's dynamic partitions once (event_log.partitions_read_once), where
Dagster's steps read them 18 times a run (0.11 s a read at 50,000 partitions). A
worker that dies (a native crash, the OOM killer) fails only the videos of its chunk that
had no result yet, and a fresh worker takes over the rest.
Each video's outcome comes as the engine's event (core/engine/outcomes.py) when it is
committed or fails, so progress shows per video, not per run.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from feature_pipeline_dagster.core.engine.outcomes import Failed, Interrupted, Outcome, from_json, listening, to_json
from feature_pipeline_dagster.core.engine.stopping import request_stop, stop_requested
from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, RANGE_END_TAG, RANGE_START_TAG

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # each failure reaches the user as one line; logs/ and the UI keep the rest


def videos_to_embed(settings, videos: dict, everything: bool = False) -> list[str]:
    """Keys of the videos whose current rows the configured database does not hold, in
    every feature's collection (core/ledger.py: the database is the truth, not Dagster's
    records, which a new database or collection, or rows deleted by hand, would belie)."""
    from feature_pipeline_dagster.core.ledger import done_in_every_collection
    from feature_pipeline_dagster.core.store import store_for

    if everything:
        return sorted(videos)
    store = store_for(settings.db)
    try:
        done = done_in_every_collection(store, settings, list(videos.values()))
    finally:
        store.close()
    return sorted(key for key, video in videos.items() if video.relpath not in done)


def materialize_chunks(chunks: Iterator[list[str]], device: str, sink: Callable[[Outcome], None]) -> None:
    """In this process: one Dagster run per chunk, tagged with the device; every video of
    each chunk gets exactly one outcome in `sink`."""
    from dagster import DagsterInstance, materialize

    from feature_pipeline_dagster.orchestration.definitions import build_definitions
    from feature_pipeline_dagster.orchestration.event_log import partitions_read_once

    defs = build_definitions()
    assets = [*defs.assets, *defs.asset_checks]
    targets = [a.key for a in defs.assets if getattr(a, "is_executable", False)]
    instance = DagsterInstance.get()
    for keys in chunks:
        seen: set[str] = set()
        wanted = set(keys)

        def record(outcome: Outcome) -> None:
            if outcome.key in wanted and outcome.key not in seen:
                seen.add(outcome.key)
                sink(outcome)

        tags = {DEVICE_TAG: device}
        if len(keys) > 1:
            tags.update({RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})
        with listening(record), partitions_read_once(instance):
            result = materialize(assets, selection=targets, instance=instance, resources=defs.resources,
                                 partition_key=keys[0] if len(keys) == 1 else None, run_config=QUIET,
                                 raise_on_error=False, tags=tags)
        if missing := [key for key in keys if key not in seen]:  # stopped on request; or a run-level failure
            message = None if stop_requested() else failure_message(result)  # it reads every event of the run
            for key in missing:
                video = relpath_of(key)
                record(Failed(video, message) if message else Interrupted(video))


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


RUNNERS_ENV = "FEATURE_PIPELINE_RUNNERS_PER_DEVICE"


def runners_per_device(device: str) -> int:
    """Runs in flight per device: on an accelerator two, so that one run's tail (its checks,
    shots and summary: CPU and database work) overlaps the next run's model work; on the CPU
    one, since there the two share the same cores and the second only adds its process's
    start-up: the GPU stand-in's 1000 clips took 22.6-24.0 s in one run against 24.1-26.8 s
    in two, 33-35 core-seconds against 39-43 (bench_gpu_standin.py's clips, 2 cores).
    `FEATURE_PIPELINE_RUNNERS_PER_DEVICE` (1 or more) sets it for every device."""
    if value := os.environ.get(RUNNERS_ENV, "").strip():
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"{RUNNERS_ENV}: expected a whole number of at least 1, got {value!r}")
        return int(value)
    return 1 if device.split(":")[0] == "cpu" else 2


class DeviceRuns:
    """The chunks spread over `runners_per_device` runners per device: this process
    (one device, or one chunk) and worker processes. `stop` is the first Ctrl-C: no new
    chunk starts and the engine finishes what it can commit (workers get SIGTERM for it);
    `kill` is the second."""

    def __init__(self, chunks: list[list[str]], devices: list[str], logs_dir: Path):
        self.devices, self.logs_dir = devices, logs_dir
        self.pending, self.lock = list(chunks), threading.Lock()
        self.workers: list[_Worker] = []
        self.results: queue.Queue = queue.Queue()
        per_device = {device: runners_per_device(device) for device in devices}
        self.runners = [device for turn in range(max(per_device.values()))  # each device once, then again
                        for device in devices if turn < per_device[device]][: len(self.pending)]
        here = len(devices) == 1 or len(self.runners) == 1  # this process has the model (cli/commands.py)
        self.first_here = self.pending.pop(0) if here and self.pending else None  # this process' first run

    def _next_chunk(self) -> list[str] | None:
        with self.lock:
            return self.pending.pop(0) if self.pending and not stop_requested() else None

    def _chunks(self) -> Iterator[list[str]]:
        if self.first_here is not None and not stop_requested():
            yield self.first_here
        while (chunk := self._next_chunk()) is not None:
            yield chunk

    def _drive_here(self, device: str) -> None:
        _keep_ctrl_c_from_children()
        try:
            materialize_chunks(self._chunks(), device, self.results.put)
        except BaseException as err:  # handed to the caller
            self.results.put(err)
        finally:
            self.results.put(None)

    def _drive_worker(self, device: str) -> None:
        _keep_ctrl_c_from_children()
        worker = self._start_worker(device)
        try:
            while (chunk := self._next_chunk()) is not None:
                if worker.embed(chunk, self.results.put) is None:
                    code = worker.exit_code()
                    for key in chunk:
                        self.results.put(Failed(relpath_of(key), f"worker on {device} died (exit code {code})"))
                    worker = self._start_worker(device)
        finally:
            worker.close()
            self.results.put(None)

    def _start_worker(self, device: str) -> "_Worker":
        worker = _Worker(device, self.logs_dir)
        with self.lock:
            self.workers.append(worker)
        if stop_requested():
            worker.process.terminate()
        return worker

    def __iter__(self) -> Iterator[Outcome]:
        """Every video's outcome, as it comes."""
        here = self.first_here is not None
        threads = [threading.Thread(target=self._drive_here if here and i == 0 else self._drive_worker,
                                    args=(device,), daemon=True) for i, device in enumerate(self.runners)]
        for thread in threads:
            thread.start()
        finished = 0
        while finished < len(threads):
            try:
                result = self.results.get(timeout=0.5)  # wakes up for signal handlers
            except queue.Empty:
                continue
            if result is None:
                finished += 1
            elif isinstance(result, BaseException):
                raise result
            else:
                yield result

    def stop(self) -> None:
        request_stop()
        with self.lock:
            for worker in self.workers:
                worker.process.terminate()  # the worker's SIGTERM handler asks its engine to stop

    def kill(self) -> None:
        with self.lock:
            for worker in self.workers:
                worker.process.kill()


def _keep_ctrl_c_from_children() -> None:
    """Block SIGINT in this runner thread: the processes it starts (workers, decoders,
    Dagster's log-capture helpers) inherit the mask, so a terminal's Ctrl-C, sent to the
    whole process group, reaches only this process, whose main thread decides (a worker
    hears it as SIGTERM). Dagster's `watch_orphans` helper printed a KeyboardInterrupt
    traceback under the command's last line otherwise."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


class _Worker:
    """A `python -m feature_pipeline_dagster.orchestration.local_runs DEVICE` process: a chunk of keys
    in on stdin per line, one JSON outcome per video out; its
    own log goes to logs/worker-<device>-<time>.log."""

    def __init__(self, device: str, logs_dir: Path):
        logs_dir.mkdir(parents=True, exist_ok=True)
        log = logs_dir / f"worker-{device.replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "feature_pipeline_dagster.orchestration.local_runs", device],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
            )

    def embed(self, chunk: list[str], sink: Callable[[Outcome], None]) -> bool | None:
        """True once every video of the chunk has its outcome; None if the worker died
        (the videos already reported keep their outcomes; the caller fails the rest)."""
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
            outcome = from_json(json.loads(line))
            left.discard(outcome.key)
            sink(outcome)
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
    # The terminal's Ctrl-C reaches every process of the group: the parent decides, and
    # forwards a stop as SIGTERM. Dagster runs in a thread, so it installs no handler of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: request_stop())

    def chunks() -> Iterator[list[str]]:
        for line in sys.stdin:
            if stop_requested():
                return
            yield json.loads(line)

    def send(outcome: Outcome) -> None:
        results.write(json.dumps(to_json(outcome)) + "\n")

    from feature_pipeline_dagster.core.models import preload
    from feature_pipeline_dagster.core.settings import load_settings

    preload(load_settings().model, device)  # while this worker imports Dagster and waits for its first chunk
    work = threading.Thread(target=materialize_chunks, args=(chunks(), device, send), daemon=True)
    work.start()
    while work.is_alive():
        work.join(0.5)


if __name__ == "__main__":
    _worker_main(sys.argv[1])
