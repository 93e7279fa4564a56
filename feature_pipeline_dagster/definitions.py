"""The code location: settings from FEATURE_PIPELINE_CONFIG, one embedding asset (with
its checks) per configured feature, the per-video summary, the file-arrival sensor and
the Milvus IO manager. Importing this never imports torch."""

import warnings

from dagster import (
    AutomationConditionSensorDefinition,
    BetaWarning,
    DefaultSensorStatus,
    Definitions,
    PreviewWarning,
    in_process_executor,
)

from feature_pipeline_dagster.assets.embeddings import build_embedding_asset, video_file
from feature_pipeline_dagster.assets.summary import build_summary_asset
from feature_pipeline_dagster.checks import build_embedding_checks
from feature_pipeline_dagster.config import load_settings
from feature_pipeline_dagster.io_managers import MilvusIOManager
from feature_pipeline_dagster.sensors import build_video_sensor


# Ranged runs (backfill_policy) and partitioned checks are marked beta/preview in Dagster 1.13.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)


def build_definitions(config_path: str | None = None) -> Definitions:
    settings = load_settings(config_path)
    features = settings.model.features
    return Definitions(
        assets=[video_file, *(build_embedding_asset(settings, f) for f in features), build_summary_asset(settings)],
        asset_checks=[check for f in features for check in build_embedding_checks(settings, f)],
        sensors=[
            build_video_sensor(settings),
            AutomationConditionSensorDefinition(
                "summary_automation", target="*", default_status=DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=10,
            ),
        ],
        resources={"milvus_io_manager": MilvusIOManager(config_path=str(settings.source))},
        # A run's steps (embed, check, summarize) share its process: one start-up, one
        # model load, instead of a process and an import of torch per step.
        executor=in_process_executor,
    )
