"""The embedding asset: one partition per video, written by the Milvus IO manager.

A run covers one video or a range of them (`BackfillPolicy.multi_run`), so one process
and one model load serve many videos. The asset body only takes a device lease and
names the videos; decoding and inference happen while the IO manager writes, so a
video of any length passes through in bounded memory.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Backoff,
    BackfillPolicy,
    Failure,
    RetryPolicy,
    asset,
)

from feature_pipeline_dagster.config import Settings
from feature_pipeline_dagster.errors import PipelineError
from feature_pipeline_dagster.extract.devices import run_devices
from feature_pipeline_dagster.leases import DeviceLease, acquire, busy_slots
from feature_pipeline_dagster.partitions import relpath_of, videos_partitions
from feature_pipeline_dagster.run_logs import attach_run_log

DEVICE_TAG = "feature_pipeline/device"
VIDEO_FILE = "video_file"
MAX_VIDEOS_PER_RUN = 50
PREPROCESSING_VERSION = "1"  # bump when preprocessing changes what a model sees
RETRY_POLICY = RetryPolicy(max_retries=3, delay=2.0, backoff=Backoff.EXPONENTIAL)

video_file = AssetSpec(
    VIDEO_FILE,
    partitions_def=videos_partitions,
    description="A video file under video_input.path; its data version is a digest of its content.",
    kinds={"video"},
)


@dataclass
class VideoRun:
    """What the asset hands its IO manager: the run's videos and the device it holds."""

    keys: list[str]
    lease: DeviceLease

    @property
    def device(self) -> str:
        return self.lease.device


def as_failure(err: PipelineError, **metadata) -> Failure:
    """One clear line in the UI; retried only when trying again could help."""
    return Failure(description=str(err), allow_retries=err.retryable, metadata={"error": str(err), **metadata})


def code_version(settings: Settings) -> str:
    """Covers what changes the vectors: model, weights, dtype, preprocessing, sampling."""
    from feature_pipeline_dagster.extract.models import FAMILIES

    keep = ("name", "path", "source", "dtype", *FAMILIES[settings.model.name].settings_keys)
    model = {key: getattr(settings.model, key) for key in keep}
    sampling = {"sample_fps": settings.video_input.sample_fps, "max_frames": settings.video_input.max_frames}
    blob = json.dumps([model, sampling, PREPROCESSING_VERSION], sort_keys=True, default=str)
    return f"{settings.model.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def leases_root() -> Path:
    return Path(os.environ.get("DAGSTER_HOME") or ".dagster") / "device_leases"


def take_device(context: AssetExecutionContext, settings: Settings) -> DeviceLease:
    """The run's device tag if the queue placed it, else the least busy configured device;
    either way wait for one of its `runs_per_device` slots."""
    tagged = context.run.tags.get(DEVICE_TAG)
    devices = [tagged] if tagged else run_devices(settings.gpus)
    root = leases_root()
    devices.sort(key=lambda d: busy_slots(d, settings.runs_per_device, root))
    return acquire(devices, settings.runs_per_device, root)


def build_embedding_asset(settings: Settings, feature: str) -> AssetsDefinition:
    collection = settings.collection_for(feature)

    @asset(
        name=feature,
        partitions_def=videos_partitions,
        deps=[AssetDep(VIDEO_FILE)],
        io_manager_key="milvus_io_manager",
        code_version=code_version(settings),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_VIDEOS_PER_RUN),
        retry_policy=RETRY_POLICY,
        kinds={"pytorch", "milvus"},
        description=f"{settings.model.name} embeddings of each video's sampled frames, "
        f"in Milvus collection {collection.name}.",
        metadata={"collection": collection.name, "dim": collection.vector_field.dim, "model": settings.model.name},
    )
    def _embeddings(context: AssetExecutionContext) -> VideoRun:
        log = attach_run_log(context.run_id, context.log, settings.logs_dir)
        keys = list(context.partition_keys)
        lease = take_device(context, settings)
        log.info("%d video(s) on %s (slot %d): %s", len(keys), lease.device, lease.slot + 1,
                 ", ".join(relpath_of(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else ""))
        return VideoRun(keys, lease)

    return _embeddings
