"""The Milvus IO manager: writes the embedding assets, the summary and the shots into Milvus.

An embedding asset's output is its run's stream of batches (core/engine/run.py, lazy:
it decodes and embeds as it is consumed); this writes it with the core's `write_run`
into the store resource and reports per partition. The summary's mean rows and the
shots the run did not write go straight to the store.
Embedding assets are never loaded into memory (a NaViT video can hold millions of
rows): downstream assets read what they need through the store resource.
"""

from __future__ import annotations

from collections import Counter

from dagster import (
    AssetKey,
    AssetMaterialization,
    ConfigurableIOManager,
    Failure,
    InputContext,
    MetadataValue,
    OutputContext,
)

from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.engine.job import decode_vector
from feature_pipeline_dagster.core.engine.outcomes import RunReport
from feature_pipeline_dagster.core.engine.run import EmbeddingRun
from feature_pipeline_dagster.core.engine.writer import write_run
from feature_pipeline_dagster.core.errors import PipelineError
from feature_pipeline_dagster.core.shots import SegmentRows, segments_collection
from feature_pipeline_dagster.core.store import new_generation
from feature_pipeline_dagster.core.summary import SummaryRows, summary_collection
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.orchestration.assets.embeddings import asset_version
from feature_pipeline_dagster.orchestration.assets.summary import hand_over
from feature_pipeline_dagster.orchestration.checks import evaluate
from feature_pipeline_dagster.orchestration.event_log import partitions_read_once
from feature_pipeline_dagster.orchestration.failures import as_failure, interrupts_not_retried
from feature_pipeline_dagster.orchestration.materializations import remember_in_run
from feature_pipeline_dagster.orchestration.names import SEGMENTS_ASSET, SUMMARY_ASSET
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource
from feature_pipeline_dagster.orchestration.run_logs import attach_run_log


class MilvusIOManager(ConfigurableIOManager):
    """Each video succeeds or fails alone: in a ranged run the good videos are written
    and marked materialized while a bad one fails with its own message."""

    vector_store: VectorStoreResource

    def handle_output(self, context: OutputContext, obj: EmbeddingRun | SummaryRows | SegmentRows):
        if isinstance(obj, EmbeddingRun):
            yield from self._write_videos(context, obj)
        elif isinstance(obj, SegmentRows):
            self._write_segments(context, obj)
        else:
            self._write_summary(context, obj)

    def _write_videos(self, context: OutputContext, run: EmbeddingRun):
        attach_run_log(context.run_id, context.log, run.settings.logs_dir)
        report = RunReport()
        store = self.vector_store.open()
        duplicates = _duplicates_search(context, run)
        try:
            with interrupts_not_retried():
                write_run(run, store, report, duplicates and duplicates.committed)
        except PipelineError as err:  # the model, the device or the database: the whole run
            fault = err
        except BaseException:
            if duplicates is not None:
                duplicates.stop()
            raise
        else:
            fault = None
        finally:
            store.close()
        if duplicates is not None:  # the summary's step takes it, unless a failure skips that step
            if fault is None and not report.failed and not report.interrupted:
                hand_over(context.run_id, duplicates)  # its last commit's search goes on beside the checks
            else:
                duplicates.stop()
        keys = {relpath_of(key): key for key in context.asset_partition_keys}
        written = {keys[video]: _ui_metadata({**meta, **report.lease}) for video, meta in report.written.items()}
        if fault is not None:
            if written:  # videos committed before the fault stay whole: materialized, summarized, checked
                yield from self._settle_partial_run(context, run, report, keys, written)
            raise as_failure(fault, videos_written=len(report.written)) from None
        _add_per_partition(context, written)  # each its own (the contact sheet first), so no entry is shared
        if report.failed or report.interrupted:
            yield from self._settle_partial_run(context, run, report, keys, written)
            summary = "; ".join(report.failed.values())
            if report.interrupted:
                summary = (f"interrupted: {len(written)} of {len(run.videos)} video(s) done"
                           + (f"; {summary}" if summary else ""))
            raise Failure(
                description=summary if len(run.videos) == 1 or report.interrupted else
                f"{len(report.failed)} of {len(run.videos)} video(s) failed: {summary}",
                allow_retries=False,
                metadata={"failed": list(report.failed), "interrupted": report.interrupted, "written": len(written)},
            )
        remember_in_run(context.run_id, context.asset_key, written)  # what the checks and the summary read next

    def _settle_partial_run(self, context: OutputContext, run: EmbeddingRun, report: RunReport, keys: dict[str, str],
                            written: dict[str, dict]):
        """What a run some of whose videos failed still owes its committed videos before
        its step fails: their materializations, their summary rows, and the run's checks.

        Dagster 1.13 cannot fail one partition of a ranged step (dagster-io/dagster#17836,
        open): the step fails, and every step after it is skipped, the summary's and the
        checks' among them, so the good videos of the run lacked their summary row for good
        (the next run finds them done) and the UI showed no check naming the failed video. Written here
        instead: the summary from the means summed in-stream, recorded as the summary
        asset's materializations; the checks' evaluations as their own steps would make
        them, the failed videos named by `videos_complete`."""
        from dagster import AssetCheckEvaluation, DagsterEvent

        yield from _flush_materializations(context, written, asset_version(run.settings, run.spec))
        settings = run.settings
        if _in_this_run(context, AssetKey(SUMMARY_ASSET)) and (
                run.first_feature):  # the summary's frames
            rows = SummaryRows(summary_collection(settings),
                               {video: decode_vector(meta["mean_vector"]) for video, meta in report.written.items()})
            try:
                self._insert_summary(rows)
            except PipelineError as err:  # the database, likely what failed the run: the step's failure says so
                context.log.warning(f"summary rows of {len(rows.means)} video(s) not written: {err}")
            else:
                for video in rows.means:
                    context.log_event(AssetMaterialization(
                        AssetKey(SUMMARY_ASSET), partition=keys[video],
                        metadata={"collection": rows.spec.name, "written_by": f"{context.asset_key.to_user_string()}'s "
                                  "step (the summary's own was skipped: some videos of the run failed)"}))
                yield {}
        if _in_this_run(context, AssetKey(SEGMENTS_ASSET)) and any("shots" in m for m in report.written.values()):
            for video, meta in report.written.items():  # the engine wrote their shots with their frames
                context.log_event(AssetMaterialization(
                    AssetKey(SEGMENTS_ASSET), partition=keys[video],
                    metadata={"shots": meta.get("shots", 0), "collection": segments_collection(settings).name,
                              "written_by": "the embedding run (the segments' own step was skipped: some videos "
                              "of the run failed)"}))
            yield {}
        videos = {keys[video]: meta for video, meta in report.written.items()}
        videos.update({keys[video]: {"failed": reason} for video, reason in report.failed.items()})
        try:
            results = evaluate(run.spec, videos, self.vector_store.open)
        except PipelineError as err:  # the database is what failed the run: the step's failure says so
            context.log.warning(f"checks of this run not evaluated: {err}")
            return
        for name, result in results.items():
            evaluation = AssetCheckEvaluation(asset_key=context.asset_key, check_name=name, **result)
            yield DagsterEvent.asset_check_evaluation(context.step_context, evaluation)

    def _write_summary(self, context: OutputContext, rows: SummaryRows) -> None:
        try:
            self._insert_summary(rows)
        except PipelineError as err:
            raise as_failure(err) from None
        context.add_output_metadata({"videos": len(rows.means), "collection": rows.spec.name})
        keys = {relpath_of(key): key for key in context.asset_partition_keys}
        _report_partitions(context, {keys[video]: {"duplicates": MetadataValue.text(line)}
                                    for video, line in rows.duplicates.items()})

    def _insert_summary(self, rows: SummaryRows) -> None:
        """Every video's row in one insert, then one commit (not a flush-delete-flush per video)."""
        import numpy as np

        videos = list(rows.means)
        if not videos:
            return
        store = self.vector_store.open()
        try:
            means = EmbeddingBatch(np.stack([rows.means[v] for v in videos]),
                                   {"timestamp_ms": np.zeros(len(videos), np.int64)})
            generation = new_generation()
            store.insert(rows.spec, means, videos, generation)
            store.commit(rows.spec, videos, generation)
        finally:
            store.close()

    def _write_segments(self, context: OutputContext, rows: SegmentRows) -> None:
        """The shots the embedding run did not write (core/shots.py), each video's as its
        frames' generation; then each partition's shot count."""
        if rows.to_write:
            store = self.vector_store.open()
            try:
                for video, (generation, shots) in rows.to_write.items():
                    store.insert(rows.spec, EmbeddingBatch(shots.vectors, shots.columns), [video] * len(shots.vectors),
                                 generation)
                    store.commit(rows.spec, [video], generation)
            except PipelineError as err:
                raise as_failure(err) from None
            finally:
                store.close()
        keys = {relpath_of(key): key for key in context.asset_partition_keys}
        _report_partitions(context, {keys[video]: {
            "shots": count, "collection": rows.spec.name,
            "written_by": "this step" if video in rows.to_write else "the embedding run"}
            for video, count in rows.shots.items()})

    def load_input(self, context: InputContext):
        raise NotImplementedError(
            f"{context.upstream_output.asset_key.to_user_string()} lives in Milvus and is not loaded into memory: "
            "depend on it with deps=[...] and read it through the vector_store resource")


def _report_partitions(context: OutputContext, metadata: dict[str, dict]) -> None:
    """Each partition's metadata (partition key -> its entries). An entry every partition
    has, with the value most of them share, goes once into the output's metadata, which
    each partition's materialization carries; the rest per partition."""
    if not metadata:
        return
    shared = {}
    for name in set.intersection(*(set(meta) for meta in metadata.values())):
        values = Counter(repr(meta[name]) for meta in metadata.values())
        shown, count = values.most_common(1)[0]
        if count > 1:
            shared[name] = next(meta[name] for meta in metadata.values() if repr(meta[name]) == shown)
    if shared:
        context.add_output_metadata(shared)
    _add_per_partition(context, {key: {name: value for name, value in meta.items()
                                       if name not in shared or repr(value) != repr(shared[name])}
                                 for key, meta in metadata.items()})


def _add_per_partition(context: OutputContext, metadata: dict[str, dict]) -> None:
    """Each partition's own entries (none: nothing added), under one read of the library's
    partitions (Dagster reads them all back at each per-partition call)."""
    with partitions_read_once(context.step_context.instance):
        for key, meta in metadata.items():
            if meta:
                context.step_context.add_asset_metadata(meta, context.asset_key, partition_key=key)


def _ui_metadata(meta: dict) -> dict:
    """As the UI shows it best: the contact sheet first (markdown, so its thumbnails
    render in the partition's metadata), lease times as timestamps."""
    ordered = {}
    if "contact_sheet" in meta:
        ordered["contact_sheet"] = MetadataValue.md(meta.pop("contact_sheet"))
    for key in ("lease_acquired_at", "lease_released_at"):
        if key in meta:
            meta[key] = MetadataValue.timestamp(meta[key])
    return {**ordered, **meta}


def _duplicates_search(context: OutputContext, run: EmbeddingRun):
    """The run's near-duplicates search as its videos are committed (core/search/duplicates.py
    `RunDuplicates`), where the run's summary will name them: frame vectors of the first
    feature, the summary in the run (its step, in this process: the in-process executor)."""
    from feature_pipeline_dagster.core.search.duplicates import RunDuplicates, has_frame_vectors

    if run.first_feature and has_frame_vectors(run.settings) and _in_this_run(context, AssetKey(SUMMARY_ASSET)):
        return RunDuplicates(run.settings)
    return None


def _in_this_run(context: OutputContext, key) -> bool:
    """Whether the run was asked to materialize `key` (a run of the embedding alone leaves
    the summary to its automation condition, as when every video succeeds)."""
    step = context.step_context
    selection = step.dagster_run.asset_selection  # empty in `materialize()`'s runs: the job holds the selection
    return key in selection if selection else key in step.job_def.asset_layer.executable_asset_keys


def _flush_materializations(context: OutputContext, written: dict[str, dict], version: str):
    """Keep the good videos of a partly failed run materialized.

    Dagster 1.13 limit (execute_step.py `_store_output`): the materializations a
    `handle_output` adds or yields are recorded only once it returns, so a step that fails
    records none; the events it logs go out at each of its yields. So they are logged
    here, with the code version a normal materialization records, and flushed with one
    yield, before the failure of the bad videos ends the step."""
    for key, meta in written.items():
        context.log_event(AssetMaterialization(context.asset_key, partition=key, metadata=meta,
                                               tags={"dagster/code_version": version}))
    yield {}
