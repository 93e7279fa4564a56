"""What the per-video assets derived from the first feature's rows share (the summary, the
shots): the videos' partitions, materialized after their upstream partition once its
blocking checks pass (in the sensor's and `run`'s runs, or automatically after others),
written by the Milvus IO manager."""

from dagster import AssetDep, AutomationCondition, BackfillPolicy, asset

from feature_pipeline_dagster.core.run_sizing import MAX_RUN_VIDEOS
from feature_pipeline_dagster.orchestration.failures import RETRY_POLICY
from feature_pipeline_dagster.orchestration.partitions import videos_partitions


def derived_asset(name: str, feature: str, description: str):
    """The `@asset` decorator of a per-video asset computed from `feature`'s rows."""
    return asset(
        name=name,
        partitions_def=videos_partitions,
        deps=[AssetDep(feature)],
        io_manager_key="milvus_io_manager",
        automation_condition=AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_RUN_VIDEOS),
        retry_policy=RETRY_POLICY,
        kinds={"milvus"},
        description=description,
    )
