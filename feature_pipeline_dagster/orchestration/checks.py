"""Blocking checks on what each run wrote: the rows in Milvus are the rows the run
produced, and every vector is finite and of the collection's dimension. A warning
check names the videos embedded only in part (a file cut short, a damaged stream).

Each check covers every video of its run and fails if any video fails, naming it.
(Dagster 1.13 cannot run partitioned checks in a ranged run, so the checks are not
partitioned; their metadata lists the videos.)"""

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    asset_check,
)

from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.orchestration.names import CHECK_NAMES
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource


def build_embedding_checks(settings: Settings, feature: str) -> list[AssetChecksDefinition]:
    spec = settings.collection_for(feature)

    def check_videos(context: AssetCheckExecutionContext, vector_store: VectorStoreResource, problem,
                     **result) -> AssetCheckResult:
        """Run `problem(context, store, key)` (a message or None) on each video the run wrote."""
        context_op = context.op_execution_context
        keys = context_op.partition_keys if context_op.has_partition_key_range or context_op.has_partition_key else []
        milvus = vector_store.open()
        try:
            problems = {relpath_of(k): p for k in keys if (p := problem(context, milvus, k))}
        finally:
            milvus.close()
        return AssetCheckResult(passed=not problems, metadata={"videos": len(keys), "problems": problems}, **result)

    def latest_metadata(context, key: str) -> dict:
        from dagster import AssetRecordsFilter

        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(feature), asset_partitions=[key]), limit=1).records
        return records[0].asset_materialization.metadata if records else {}

    def rows_differ(context, milvus, key: str) -> str | None:
        meta = latest_metadata(context, key)
        if "rows" not in meta:
            return None  # this run did not materialize it (the video failed): nothing to compare
        found, written = milvus.count_rows(spec, relpath_of(key)), int(meta["rows"].value)
        return None if found == written else f"{found} rows in Milvus, {written} written"

    def bad_vectors(context, milvus, key: str) -> str | None:
        vectors = milvus.video_vectors(spec, relpath_of(key))  # (rows, dim): the store gives the collection's dim
        wrong_dim = 0 if vectors.shape[1:] == (spec.vector_field.dim,) else len(vectors)
        not_finite = int((~np.isfinite(vectors).all(axis=1)).sum())
        if wrong_dim or not_finite:
            return f"{not_finite} non-finite and {wrong_dim} wrong-dimension vector(s) of {len(vectors)}"
        return None

    rows_name, vectors_name, complete_name = CHECK_NAMES

    @asset_check(asset=feature, name=rows_name, blocking=True,
                 description="Rows in Milvus equal the rows the run wrote, for each of its videos.")
    def rows_match_run(context: AssetCheckExecutionContext, vector_store: VectorStoreResource) -> AssetCheckResult:
        return check_videos(context, vector_store, rows_differ)

    @asset_check(asset=feature, name=vectors_name, blocking=True,
                 description=f"Every vector of each video of the run is finite and {spec.vector_field.dim}-d.")
    def vectors_valid(context: AssetCheckExecutionContext, vector_store: VectorStoreResource) -> AssetCheckResult:
        return check_videos(context, vector_store, bad_vectors)

    @asset_check(asset=feature, name=complete_name,
                 description="Every sampled frame of each video of the run was embedded (warns on a file "
                 "cut short or a damaged stream, whose sound part alone is in Milvus).")
    def videos_complete(context: AssetCheckExecutionContext, vector_store: VectorStoreResource) -> AssetCheckResult:
        def partial(context, milvus, key: str) -> str | None:
            note = latest_metadata(context, key).get("partial")
            return note.value if note is not None else None

        return check_videos(context, vector_store, partial, severity=AssetCheckSeverity.WARN)

    return [rows_match_run, vectors_valid, videos_complete]
