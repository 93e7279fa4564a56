"""Resources: the vector store, one per deployment. Its config holds the name of the
token's environment variable (never the token): the store reads it when it opens, as the
CLI's does (`core/store.store_token`)."""

from __future__ import annotations

from dagster import ConfigurableResource

from feature_pipeline_dagster.core.settings import DbSettings
from feature_pipeline_dagster.core.store import VectorStore, open_store, store_token


class VectorStoreResource(ConfigurableResource):
    """The store assets, checks and the sensor write to and read from."""

    uri: str
    token_env: str | None = None  # db.token_env
    lite_idle_minutes: float | None = None  # db.lite_idle_minutes, for a Lite server a run starts

    def open(self) -> VectorStore:
        """A connection of the caller's own; close it when done."""
        return open_store(self.uri, store_token(self.token_env), self.lite_idle_minutes)


def vector_store_resource(db: DbSettings) -> VectorStoreResource:
    return VectorStoreResource(uri=db.uri, token_env=db.token_env, lite_idle_minutes=db.lite_idle_minutes)
