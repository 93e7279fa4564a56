"""`feature-pipeline run`: every new or changed video, materialized through Dagster and
spread over the configured devices.

One worker per device materializes videos in-process, one Dagster run per video, so the
model loads once per device. Workers pull the next video when they finish one, so a
long video does not hold the others back; a worker that dies (a native crash, the OOM
killer) fails only the video it held, and a fresh worker takes over the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Queue
from typing import Iterable, Iterator

from feature_pipeline_dagster.orchestration.names import DEVICE_TAG

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

    todo: set[str] = set()
    for feature in settings.model.features:
        key = AssetKey(feature)
        current = defs.resolve_assets_def(key).code_versions_by_key[key]
        done = {} if everything else _latest_fingerprints(instance, key, list(videos))
        todo |= {k for k, v in videos.items() if done.get(k) != (v.fingerprint, current)}
    return sorted(todo)


def _latest_fingerprints(instance, asset_key, keys: list[str]) -> dict[str, tuple[str, str]]:
    from dagster import AssetRecordsFilter

    latest: dict[str, tuple[str, str]] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key, asset_partitions=keys), limit=1000, cursor=cursor, ascending=False
        )
        for record in page.records:
            event = record.asset_materialization
            if event is None or record.partition_key in latest:
                continue
            fingerprint = event.metadata.get("file_fingerprint")
            latest[record.partition_key] = (
                fingerprint.value if fingerprint is not None else "",
                (event.tags or {}).get("dagster/code_version", ""),
            )
        if not page.has_more:
            return latest
        cursor = page.cursor


def materialize_videos(keys: Iterable[str], device: str) -> Iterator[VideoResult]:
    """In this process: one Dagster run per video, tagged with the device."""
    from dagster import DagsterInstance, materialize

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    assets = [*defs.assets, *defs.asset_checks]
    targets = [a.key for a in defs.assets if getattr(a, "is_executable", False)]
    instance = DagsterInstance.get()
    for key in keys:
        result = materialize(assets, selection=targets, instance=instance, partition_key=key,
                             resources=defs.resources, run_config=QUIET, raise_on_error=False,
                             tags={DEVICE_TAG: device})
        metadata = [e.materialization.metadata for e in result.get_asset_materialization_events()]
        rows = sum(m["rows"].value for m in metadata if "rows" in m)
        partial = "; ".join(m["partial"].value for m in metadata if "partial" in m)
        yield VideoResult(key, result.success, rows, "" if result.success else failure_message(result), partial)


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


def run_on_devices(keys: list[str], devices: list[str], logs_dir: Path) -> Iterator[VideoResult]:
    if len(devices) == 1 or len(keys) <= 1:
        yield from materialize_videos(keys, devices[0])
        return
    pending, lock, results = deque(keys), threading.Lock(), Queue()

    def next_key() -> str | None:
        with lock:
            return pending.popleft() if pending else None

    def drive(device: str) -> None:
        worker = _Worker(device, logs_dir)
        try:
            while (key := next_key()) is not None:
                result = worker.embed(key)
                if result is None:
                    results.put(VideoResult(key, False, 0, f"worker on {device} died (exit code {worker.exit_code()})"))
                    worker = _Worker(device, logs_dir)
                else:
                    results.put(result)
        finally:
            worker.close()
            results.put(None)

    threads = [threading.Thread(target=drive, args=(d,), daemon=True) for d in devices[: len(keys)]]
    for thread in threads:
        thread.start()
    finished = 0
    while finished < len(threads):
        result = results.get()
        if result is None:
            finished += 1
        else:
            yield result


class _Worker:
    """A `python -m feature_pipeline_dagster.cli.workers DEVICE` process: keys in on stdin, one
    JSON result per line out; its own log goes to logs/worker-<device>-<time>.log."""

    def __init__(self, device: str, logs_dir: Path):
        logs_dir.mkdir(parents=True, exist_ok=True)
        log = logs_dir / f"worker-{device.replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "feature_pipeline_dagster.cli.workers", device],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
            )

    def embed(self, key: str) -> VideoResult | None:
        try:
            self.process.stdin.write(json.dumps(key) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        line = self.process.stdout.readline()
        return VideoResult(**json.loads(line)) if line else None

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

    def keys() -> Iterator[str]:
        for line in sys.stdin:
            yield json.loads(line)

    for result in materialize_videos(keys(), device):
        results.write(json.dumps(asdict(result)) + "\n")


if __name__ == "__main__":
    _worker_main(sys.argv[1])
