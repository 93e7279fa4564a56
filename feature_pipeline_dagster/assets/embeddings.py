"""The embedding asset: one partition per video, rows written by the Milvus IO manager.

The asset returns a lazy `VideoEmbeddings`; decoding and inference happen while the IO
manager writes, so a video of any length passes through in bounded memory.
"""


import hashlib
import json
from dataclasses import asdict

from dagster import AssetExecutionContext, AssetsDefinition, Failure, asset

from feature_pipeline_dagster.config import Settings
from feature_pipeline_dagster.errors import PipelineError
from feature_pipeline_dagster.partitions import relpath_of, videos_partitions
from feature_pipeline_dagster.run_logs import attach_run_log

DEVICE_TAG = "feature_pipeline/device"
PREPROCESSING_VERSION = "1"  # bump when preprocessing changes what a model sees


def as_failure(err: PipelineError) -> Failure:
    """One clear line in the UI; retried only when trying again could help."""
    return Failure(description=str(err), allow_retries=err.retryable, metadata={"error": str(err)})


def code_version(settings: Settings) -> str:
    """Covers what changes the vectors: model, weights, dtype, preprocessing, sampling."""
    model = {k: v for k, v in asdict(settings.model).items() if k not in ("features", "batch_size")}
    sampling = {"sample_fps": settings.video_input.sample_fps, "max_frames": settings.video_input.max_frames}
    blob = json.dumps([model, sampling, PREPROCESSING_VERSION], sort_keys=True, default=str)
    return f"{settings.model.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def run_device(context: AssetExecutionContext, settings: Settings) -> str:
    return context.run.tags.get(DEVICE_TAG) or settings.gpus[0]


def build_embedding_asset(settings: Settings, feature: str) -> AssetsDefinition:
    collection = settings.collection_for(feature)

    @asset(
        name=feature,
        partitions_def=videos_partitions,
        io_manager_key="milvus_io_manager",
        code_version=code_version(settings),
        kinds={"pytorch", "milvus"},
        description=f"{settings.model.name} embeddings of each video's sampled frames, "
        f"in Milvus collection {collection.name}.",
        metadata={"collection": collection.name, "dim": collection.vector_field.dim, "model": settings.model.name},
    )
    def _embeddings(context: AssetExecutionContext):
        from feature_pipeline_dagster.extract.models import load_extractor
        from feature_pipeline_dagster.extract.pipeline import VideoEmbeddings

        log = attach_run_log(context.run_id, context.log, settings.logs_dir)
        relpath = relpath_of(context.partition_key)
        device = run_device(context, settings)
        log.info("%s: loading %s on %s", relpath, settings.model.name, device)
        try:
            extractor = load_extractor(settings.model, device)
            return VideoEmbeddings(settings.video_input.path / relpath, relpath, settings, collection, extractor)
        except PipelineError as err:
            log.error("%s", err)
            raise as_failure(err) from None

    return _embeddings
