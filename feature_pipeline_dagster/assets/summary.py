"""`video_summary_embedding`: one L2-normalized mean vector per video, in its own
collection, materialized after its upstream partition once the embedding's blocking
checks have passed: in the folder sensor's runs, or automatically after other runs."""

import numpy as np
from dagster import AssetIn, AssetsDefinition, AutomationCondition, BackfillPolicy, Failure, asset

from feature_pipeline_dagster.assets.embeddings import MAX_VIDEOS_PER_RUN, RETRY_POLICY
from feature_pipeline_dagster.config import CollectionSpec, Settings
from feature_pipeline_dagster.partitions import relpath_of, videos_partitions

SUMMARY_ASSET = "video_summary_embedding"


def summary_collection(settings: Settings) -> CollectionSpec:
    frames = settings.collection_for(settings.model.features[0])
    keep = ("id", "video_path", "timestamp_ms", "generation", frames.vector_field.name)
    return CollectionSpec(f"{frames.name}_summary", tuple(f for f in frames.fields if f.name in keep))


def mean_vector(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.astype(np.float64).mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def build_summary_asset(settings: Settings) -> AssetsDefinition:
    feature = settings.model.features[0]

    @asset(
        name=SUMMARY_ASSET,
        partitions_def=videos_partitions,
        ins={"frames": AssetIn(feature)},
        io_manager_key="milvus_io_manager",
        automation_condition=AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_VIDEOS_PER_RUN),
        retry_policy=RETRY_POLICY,
        kinds={"milvus"},
        description=f"The mean of each video's {feature} vectors, L2-normalized: one row per video "
        f"in collection {summary_collection(settings).name}.",
    )
    def _summary(frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        empty = [relpath_of(k) for k, v in frames.items() if not len(v)]
        if empty:
            raise Failure(f"no {feature} rows in Milvus for: {', '.join(empty)}", allow_retries=False)
        return {key: mean_vector(vectors) for key, vectors in frames.items()}

    return _summary
