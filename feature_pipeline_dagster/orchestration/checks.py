"""Blocking checks on what each run wrote: the rows in Milvus are the rows the run
produced, and every vector is finite and of the collection's dimension. A warning
check names the videos embedded only in part (a file cut short, a damaged stream).

Each check covers every video of its run and fails if any video fails, naming it.
(Dagster 1.13 cannot run partitioned checks in a ranged run, so the checks are not
partitioned; their metadata lists the videos.) Nothing is read back per video on the
way: the run's metadata is read once for all its videos, rows are counted in one query
per batch of videos, and vectors were checked in-stream before they were inserted (a
video embedded before that existed is read back a page at a time).
"""

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
from feature_pipeline_dagster.orchestration.materializations import recorded_in_run
from feature_pipeline_dagster.orchestration.names import CHECK_NAMES
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource


def build_embedding_checks(settings: Settings, feature: str) -> list[AssetChecksDefinition]:
    spec = settings.collection_for(feature)

    def written(context: AssetCheckExecutionContext) -> dict[str, dict]:
        """Each video of the run with the metadata its latest materialization recorded."""
        op = context.op_execution_context
        keys = list(op.partition_keys) if op.has_partition_key_range or op.has_partition_key else []
        return recorded_in_run(context, AssetKey(feature), keys)

    rows_name, vectors_name, complete_name = CHECK_NAMES

    @asset_check(asset=feature, name=rows_name, blocking=True,
                 description="Rows in Milvus equal the rows the run wrote, for each of its videos.")
    def rows_match_run(context: AssetCheckExecutionContext, vector_store: VectorStoreResource) -> AssetCheckResult:
        return AssetCheckResult(**rows_match(spec, written(context), vector_store.open))

    @asset_check(asset=feature, name=vectors_name, blocking=True,
                 description=f"Every vector of each video of the run is finite and {spec.vector_field.dim}-d.")
    def vectors_valid(context: AssetCheckExecutionContext, vector_store: VectorStoreResource) -> AssetCheckResult:
        return AssetCheckResult(**vectors_checked(spec, written(context), vector_store.open))

    @asset_check(asset=feature, name=complete_name,
                 description="Every sampled frame of each video of the run was embedded (warns on a file "
                 "cut short or a damaged stream, whose sound part alone is in Milvus, and names a video "
                 "of the run that failed).")
    def videos_complete(context: AssetCheckExecutionContext) -> AssetCheckResult:
        return AssetCheckResult(**complete(written(context)))

    return [rows_match_run, vectors_valid, videos_complete]


# Each check as a function of the run's videos (partition key -> the metadata its run
# recorded; {"failed": reason} for a video that failed), so the IO manager can report the
# checks of a run some of whose videos failed: Dagster skips the check steps after the
# failed embedding step.

def _result(videos: dict, problems: dict, severity=AssetCheckSeverity.ERROR, **metadata) -> dict:
    return {"passed": not problems, "severity": severity,
            "metadata": {"videos": len(videos), **metadata, "problems": problems}}


def rows_match(spec, videos: dict[str, dict], open_store) -> dict:
    # A video without rows in its metadata failed in this run: nothing to compare.
    expected = {relpath_of(k): int(m["rows"]) for k, m in videos.items() if "rows" in m}
    problems = {}
    if expected:
        store = open_store()
        try:
            if store.count_videos(spec, list(expected)) != sum(expected.values()):
                found = {video: store.count_rows(spec, video) for video in expected}
                problems = {v: f"{found[v]} rows in Milvus, {n} written" for v, n in expected.items() if found[v] != n}
        finally:
            store.close()
    return _result(videos, problems)


def vectors_checked(spec, videos: dict[str, dict], open_store) -> dict:
    unchecked = [relpath_of(k) for k, m in videos.items() if "rows" in m and "vectors_checked" not in m]
    problems = {}
    store = open_store() if unchecked else None
    try:
        for video in unchecked:
            if problem := _bad_vectors(store.vector_pages(spec, video), spec.vector_field.dim):
                problems[video] = problem
    finally:
        if store is not None:
            store.close()
    written = [k for k, m in videos.items() if "rows" in m]
    return _result(videos, problems, checked_in_stream=len(written) - len(unchecked), read_back=len(unchecked))


def complete(videos: dict[str, dict]) -> dict:
    problems = {relpath_of(k): m["partial"] for k, m in videos.items() if "partial" in m}
    problems.update({relpath_of(k): f"failed: {m['failed']}" for k, m in videos.items() if "failed" in m})
    return _result(videos, problems, severity=AssetCheckSeverity.WARN)


def evaluate(spec, videos: dict[str, dict], open_store) -> dict[str, dict]:
    """Every check of the run's videos, by name: AssetCheckResult's arguments."""
    rows_name, vectors_name, complete_name = CHECK_NAMES
    return {rows_name: rows_match(spec, videos, open_store), vectors_name: vectors_checked(spec, videos, open_store),
            complete_name: complete(videos)}


def _bad_vectors(pages, dim: int) -> str | None:
    total = not_finite = wrong_dim = 0
    for page in pages:
        total += len(page)
        if page.shape[1:] != (dim,):
            wrong_dim += len(page)
        else:
            not_finite += int((~np.isfinite(page).all(axis=1)).sum())
    if wrong_dim or not_finite:
        return f"{not_finite} non-finite and {wrong_dim} wrong-dimension vector(s) of {total}"
    return None
