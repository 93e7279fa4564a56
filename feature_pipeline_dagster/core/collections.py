"""Every Milvus collection a config owns, for what reaches them all (`db status`, a deleted
file's rows in the sensor): one per feature with its ledger and its failed videos, the summary
and the shots. Above the modules that name each, so none of them imports another's."""

from __future__ import annotations

from feature_pipeline_dagster.core.ledger import failures_collection, ledger_collection
from feature_pipeline_dagster.core.settings import CollectionSpec, Settings
from feature_pipeline_dagster.core.shots import segments_collection
from feature_pipeline_dagster.core.summary import summary_collection


def owned_collections(settings: Settings) -> list[CollectionSpec]:
    features = [settings.collection_for(f) for f in settings.model.features]
    return (features + [ledger_collection(spec) for spec in features] + [failures_collection(spec) for spec in features]
            + [summary_collection(settings), segments_collection(settings)])
