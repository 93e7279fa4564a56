"""`video_summary_embedding`: one L2-normalized mean vector per video, in its own
collection, materialized after its upstream partition once the embedding's blocking
checks have passed: in the folder sensor's runs, or automatically after other runs.

The vectors are read from the store one video at a time (never every video of a
ranged run at once) and the mean rows handed to the Milvus IO manager."""

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    BackfillPolicy,
    Failure,
    asset,
)

from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.summary import SummaryRows, mean_vector, summary_collection
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.orchestration.failures import RETRY_POLICY, as_failure
from feature_pipeline_dagster.orchestration.names import MAX_VIDEOS_PER_RUN, SUMMARY_ASSET
from feature_pipeline_dagster.orchestration.partitions import videos_partitions
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource
from feature_pipeline_dagster.core.errors import PipelineError


def build_summary_asset(settings: Settings) -> AssetsDefinition:
    feature = settings.model.features[0]
    frames, spec = settings.collection_for(feature), summary_collection(settings)

    @asset(
        name=SUMMARY_ASSET,
        partitions_def=videos_partitions,
        deps=[AssetDep(feature)],
        io_manager_key="milvus_io_manager",
        automation_condition=AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_VIDEOS_PER_RUN),
        retry_policy=RETRY_POLICY,
        kinds={"milvus"},
        description=f"The mean of each video's {feature} vectors, L2-normalized: one row per video "
        f"in collection {spec.name}.",
    )
    def _summary(context: AssetExecutionContext, vector_store: VectorStoreResource) -> SummaryRows:
        store = vector_store.open()
        means, empty = {}, []
        try:
            for video in map(relpath_of, context.partition_keys):
                vectors = store.video_vectors(frames, video)
                if len(vectors):
                    means[video] = mean_vector(vectors)
                else:
                    empty.append(video)
        except PipelineError as err:
            raise as_failure(err) from None
        finally:
            store.close()
        if empty:
            raise Failure(f"no {feature} rows in Milvus for: {', '.join(empty)}", allow_retries=False)
        return SummaryRows(spec, means)

    return _summary
