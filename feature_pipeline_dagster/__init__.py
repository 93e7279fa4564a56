"""feature-pipeline-dagster: folders of videos to searchable embeddings in Milvus.

`defs` (the Dagster code location) is resolved on first access, so importing the core
(`feature_pipeline_dagster.core`) reads no config file and never imports dagster.
"""


def __getattr__(name: str):
    if name == "defs":
        from feature_pipeline_dagster.orchestration.definitions import build_definitions

        globals()["defs"] = defs = build_definitions()
        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "defs"])
