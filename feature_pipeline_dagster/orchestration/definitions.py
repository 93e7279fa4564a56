"""The code location: settings from FEATURE_PIPELINE_CONFIG, one embedding asset (with
its checks) per configured feature, the per-video summary, the shots, the file-arrival sensor, the
vector store resource and the Milvus IO manager over it. Importing this never imports
torch."""

import warnings

from dagster import (
    AutomationConditionSensorDefinition,
    BetaWarning,
    DefaultSensorStatus,
    Definitions,
    PreviewWarning,
    in_process_executor,
)

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.orchestration.assets.embeddings import build_embedding_asset, video_file
from feature_pipeline_dagster.orchestration.assets.segments import build_segments_asset
from feature_pipeline_dagster.orchestration.assets.summary import build_summary_asset
from feature_pipeline_dagster.orchestration.checks import build_embedding_checks
from feature_pipeline_dagster.orchestration.io_manager import MilvusIOManager
from feature_pipeline_dagster.orchestration.resources import vector_store_resource
from feature_pipeline_dagster.orchestration.sensors import build_video_sensor


# Ranged runs (backfill_policy) and partitioned checks are marked beta/preview in Dagster 1.13.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)


def build_definitions(config_path: str | None = None) -> Definitions:
    settings = load_settings(config_path)
    features = settings.model.features
    store = vector_store_resource(settings.db)
    return Definitions(
        assets=[video_file, *(build_embedding_asset(settings, f) for f in features), build_summary_asset(settings),
                build_segments_asset(settings)],
        asset_checks=[check for f in features for check in build_embedding_checks(settings, f)],
        sensors=[
            build_video_sensor(settings),
            AutomationConditionSensorDefinition(
                "summary_automation", target="*", default_status=DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=10,
            ),
        ],
        resources={"vector_store": store, "milvus_io_manager": MilvusIOManager(vector_store=store)},
        # A run's steps (embed, check, summarize) share its process: one start-up, one
        # model load, instead of a process and an import of torch per step.
        executor=in_process_executor,
    )
