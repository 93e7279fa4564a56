"""A run's videos on one device: lease the device, load the model once, write each
video, and apply the failure policy (Dagster-free; the IO manager reports the result).

A bad video (unreadable, damaged, values that do not fit) fails alone: the run goes on
and the other videos are written. A fault of the model, the device or the database
ends the run, and its `retryable` flag says whether trying again could help.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from feature_pipeline_dagster.core.errors import PipelineError
from feature_pipeline_dagster.core.leases import DeviceLease, acquire, busy_slots
from feature_pipeline_dagster.core.settings import CollectionSpec, Settings
from feature_pipeline_dagster.core.store import VectorStore

log = logging.getLogger("feature_pipeline.engine")


@dataclass
class VideoRun:
    """What a run embeds: its videos (relative paths) into one collection, on the first
    of `devices` with a free slot. The embedding asset hands this to its IO manager."""

    settings: Settings
    spec: CollectionSpec
    videos: list[str]
    devices: list[str]
    leases_root: Path


@dataclass
class RunReport:
    """Filled in as the run goes, so a run-level failure still says how far it got."""

    written: dict[str, dict] = field(default_factory=dict)  # video -> its metadata
    failed: dict[str, str] = field(default_factory=dict)  # video -> one-line reason
    lease: dict = field(default_factory=dict)  # device, slot, acquired_at, released_at


def take_device(devices: list[str], slots: int, root: Path) -> DeviceLease:
    """The least busy of `devices`; waits for one of its `slots` if all are busy."""
    return acquire(sorted(devices, key=lambda d: busy_slots(d, slots, root)), slots, root)


def embed_run(run: VideoRun, store: VectorStore, report: RunReport) -> RunReport:
    """Write every video of the run; raises `PipelineError` for a run-level fault."""
    from feature_pipeline_dagster.core.engine.writer import write_one_video
    from feature_pipeline_dagster.core.models import load_extractor

    settings = run.settings
    lease = take_device(run.devices, settings.runs_per_device, run.leases_root)
    log.info("%d video(s) on %s (slot %d): %s", len(run.videos), lease.device, lease.slot + 1,
             ", ".join(run.videos[:5]) + (" ..." if len(run.videos) > 5 else ""))
    try:
        extractor = load_extractor(settings.model, lease.device)
        for i, video in enumerate(run.videos, 1):
            try:
                meta = write_one_video(settings, run.spec, store, extractor, video)
            except PipelineError as err:
                if err.retryable:
                    raise
                report.failed[video] = str(err)
                log.error("%s", err)
                continue
            report.written[video] = meta
            log.info("[%d/%d] %s: %d rows from %d frames in %.1fs", i, len(run.videos), video,
                     meta["rows"], meta["frames"], meta["seconds"])
    except PipelineError as err:
        log.error("%s", err)
        raise
    finally:
        report.lease = {"device_lease": lease.device, "lease_slot": lease.slot + 1,
                        "lease_acquired_at": lease.acquired_at, "lease_released_at": lease.release()}
    return report
