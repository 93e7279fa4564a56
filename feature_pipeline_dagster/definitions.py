"""The code location: settings from FEATURE_PIPELINE_CONFIG, one embedding asset per
configured feature, the Milvus IO manager. Importing this never imports torch."""

from dagster import Definitions

from feature_pipeline_dagster.assets.embeddings import build_embedding_asset
from feature_pipeline_dagster.config import load_settings
from feature_pipeline_dagster.io_managers import MilvusIOManager


def build_definitions(config_path: str | None = None) -> Definitions:
    settings = load_settings(config_path)
    return Definitions(
        assets=[build_embedding_asset(settings, feature) for feature in settings.model.features],
        resources={"milvus_io_manager": MilvusIOManager(config_path=str(settings.source))},
    )

