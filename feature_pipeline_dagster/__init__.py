"""feature-pipeline-dagster: folders of videos to searchable embeddings in Milvus.

`defs` (the Dagster code location) is resolved on first access, so importing the core
(`feature_pipeline_dagster.config`, `.extract`, `.store`) reads no config file.
"""


def __getattr__(name: str):
    if name == "defs":
        from feature_pipeline_dagster.definitions import build_definitions

        globals()["defs"] = defs = build_definitions()
        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "defs"])
