"""The embedding assets: one per `model.features` entry, one partition per video,
written into Milvus by the Milvus IO manager.

A run covers one video or a range of them (`BackfillPolicy.multi_run`), so one process
and one model load serve many videos. The asset body returns the run's embeddings as
the core engine's lazy stream of batches (its videos, the devices it may use); the IO
manager consumes it into Milvus, and only then does the engine lease a device, decode
and embed, so a video of any length passes through in bounded memory. A run that knows
its device starts loading the model at once: the queue lets one run per device wait at
the door (orchestration/placement.py), and its model is ready when the lease frees.
"""

import hashlib
import os
from pathlib import Path

from dagster import AssetDep, AssetExecutionContext, AssetsDefinition, AssetSpec, BackfillPolicy, asset

from feature_pipeline_dagster.core.engine.run import EmbeddingRun
from feature_pipeline_dagster.core.models import code_version, preload
from feature_pipeline_dagster.core.devices import run_devices
from feature_pipeline_dagster.core.leases import scheduler_owns_device
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.core.run_sizing import MAX_RUN_VIDEOS
from feature_pipeline_dagster.orchestration.failures import RETRY_POLICY
from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, KUBERNETES_DEVICE, VIDEO_FILE
from feature_pipeline_dagster.orchestration.partitions import videos_partitions
from feature_pipeline_dagster.orchestration.run_logs import attach_run_log

video_file = AssetSpec(
    VIDEO_FILE,
    partitions_def=videos_partitions,
    description="A video file under video_input.path; its data version is a digest of its content.",
    kinds={"video"},
)


def leases_root() -> Path:
    """Device leases live beside the instance, so every process of it sees them."""
    return Path(os.environ.get("DAGSTER_HOME") or ".dagster") / "device_leases"


def asset_version(settings: Settings, collection) -> str:
    """The vectors' code version and where they are kept: materializations made into
    another database or collection show as stale, not as this one's."""
    where = hashlib.sha256(f"{settings.db.uri}\0{collection.name}".encode()).hexdigest()[:8]
    return f"{code_version(settings)}-{where}"


def build_embedding_asset(settings: Settings, feature: str) -> AssetsDefinition:
    collection = settings.collection_for(feature)

    @asset(
        name=feature,
        partitions_def=videos_partitions,
        deps=[AssetDep(VIDEO_FILE)],
        io_manager_key="milvus_io_manager",
        code_version=asset_version(settings, collection),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_RUN_VIDEOS),
        retry_policy=RETRY_POLICY,
        kinds={"pytorch", "milvus"},
        description=f"{settings.model.name} embeddings of each video's sampled frames, "
        f"in Milvus collection {collection.name}.",
        metadata={"collection": collection.name, "dim": collection.vector_field.dim, "model": settings.model.name},
    )
    def _embeddings(context: AssetExecutionContext) -> EmbeddingRun:
        attach_run_log(context.run_id, context.log, settings.logs_dir)
        videos = [relpath_of(k) for k in context.partition_keys]
        if scheduler_owns_device(settings.placement):
            # A pod Kubernetes scheduled with its one GPU: cuda:0 there, no host lease.
            return EmbeddingRun(settings, collection, videos, ["cuda:0"], None)
        # The queue placed a tagged run on its device; other runs take the least busy one.
        tagged = context.run.tags.get(DEVICE_TAG)
        devices = [tagged] if tagged and tagged != KUBERNETES_DEVICE else run_devices(settings.gpus)
        if len(devices) == 1:  # loads while the run waits for the device's lease
            preload(settings.model, devices[0])
        return EmbeddingRun(settings, collection, videos, devices, leases_root())

    return _embeddings
