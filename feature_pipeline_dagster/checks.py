"""Blocking checks on what each run wrote: the rows in Milvus are the rows the run
produced, and every vector is finite and of the collection's dimension."""

import numpy as np
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, AssetKey, asset_check

from feature_pipeline_dagster.config import Settings
from feature_pipeline_dagster.partitions import relpath_of, videos_partitions


def build_embedding_checks(settings: Settings, feature: str) -> list[AssetChecksDefinition]:
    spec = settings.collection_for(feature)

    def store():
        from feature_pipeline_dagster.store.milvus import MilvusStore

        return MilvusStore.from_settings(settings.db)

    @asset_check(asset=feature, name="rows_match_run", blocking=True, partitions_def=videos_partitions,
                 description="Rows in Milvus equal the rows the latest materialization wrote.")
    def rows_match_run(context: AssetCheckExecutionContext) -> AssetCheckResult:
        from dagster import AssetRecordsFilter

        key = context.partition_key
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(feature), asset_partitions=[key]), limit=1).records
        meta = records[0].asset_materialization.metadata if records else {}
        expected = int(meta["rows"].value) if "rows" in meta else None
        milvus = store()
        try:
            found = milvus.count_rows(spec, relpath_of(key))
        finally:
            milvus.close()
        return AssetCheckResult(passed=expected is not None and found == expected,
                                metadata={"rows_in_milvus": found, "rows_written": expected if expected is not None else -1})

    @asset_check(asset=feature, name="vectors_valid", blocking=True, partitions_def=videos_partitions,
                 description=f"Every vector is finite and {spec.vector_field.dim}-d.")
    def vectors_valid(context: AssetCheckExecutionContext) -> AssetCheckResult:
        milvus = store()
        try:
            rows = milvus.fetch_video(spec, relpath_of(context.partition_key))
        finally:
            milvus.close()
        vectors = [np.asarray(r[spec.vector_field.name], dtype=np.float32) for r in rows]
        wrong_dim = sum(v.shape != (spec.vector_field.dim,) for v in vectors)
        not_finite = sum(not np.isfinite(v).all() for v in vectors)
        return AssetCheckResult(passed=bool(vectors) and wrong_dim == 0 and not_finite == 0,
                                metadata={"rows": len(vectors), "wrong_dim": wrong_dim, "not_finite": not_finite})

    return [rows_match_run, vectors_valid]
