"""Resources: the vector store, one per deployment, its token read from an environment
variable through `EnvVar` (never from the config file)."""

from __future__ import annotations

from dagster import ConfigurableResource, EnvVar

from feature_pipeline_dagster.core.settings import DbSettings
from feature_pipeline_dagster.core.store import VectorStore, open_store


class VectorStoreResource(ConfigurableResource):
    """The store assets, checks and the sensor write to and read from."""

    uri: str
    token: str | None = None
    lite_idle_minutes: float | None = None  # db.lite_idle_minutes, for a Lite server a run starts

    def open(self) -> VectorStore:
        """A connection of the caller's own; close it when done."""
        return open_store(self.uri, self.token, self.lite_idle_minutes)


def vector_store_resource(db: DbSettings) -> VectorStoreResource:
    return VectorStoreResource(uri=db.uri, token=EnvVar(db.token_env) if db.token_env else None,
                               lite_idle_minutes=db.lite_idle_minutes)
