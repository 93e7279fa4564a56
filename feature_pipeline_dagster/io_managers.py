"""Writes an embedding asset's videos into Milvus and reads them back for downstream
assets. Each video succeeds or fails alone: in a ranged run the good videos are
written and marked materialized while a bad one fails with its own message."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from dagster import AssetMaterialization, ConfigurableIOManager, Failure, InputContext, MetadataValue, OutputContext

from feature_pipeline_dagster.config import CollectionSpec, Settings, load_settings
from feature_pipeline_dagster.errors import PipelineError
from feature_pipeline_dagster.partitions import relpath_of
from feature_pipeline_dagster.run_logs import attach_run_log


@functools.lru_cache(maxsize=4)
def _settings(path: str, mtime_ns: int) -> Settings:
    return load_settings(path, check_paths=False)


class MilvusIOManager(ConfigurableIOManager):
    """Consumes each video's lazy rows in `db.batch_size` chunks; replaces its rows."""

    config_path: str

    @property
    def settings(self) -> Settings:
        return _settings(self.config_path, Path(self.config_path).stat().st_mtime_ns)

    def _store(self):
        from feature_pipeline_dagster.store.milvus import MilvusStore

        return MilvusStore.from_settings(self.settings.db)

    def collection(self, asset_key) -> CollectionSpec:
        from feature_pipeline_dagster.assets.summary import SUMMARY_ASSET, summary_collection

        name = asset_key.path[-1]
        return summary_collection(self.settings) if name == SUMMARY_ASSET else self.settings.collection_for(name)

    def handle_output(self, context: OutputContext, obj):
        from feature_pipeline_dagster.assets.embeddings import VideoRun

        if isinstance(obj, VideoRun):
            yield from self._write_videos(context, obj)
        else:
            self._write_summary(context, obj)

    def _write_videos(self, context: OutputContext, run):
        from feature_pipeline_dagster.assets.embeddings import as_failure
        from feature_pipeline_dagster.extract.models import load_extractor
        from feature_pipeline_dagster.video_writer import write_one_video

        settings = self.settings
        spec = self.collection(context.asset_key)
        log = attach_run_log(context.run_id, context.log, settings.logs_dir)
        store = self._store()
        written, failed = {}, {}
        try:
            extractor = load_extractor(settings.model, run.device)
            for i, key in enumerate(run.keys, 1):
                try:
                    written[key] = write_one_video(settings, spec, store, extractor, relpath_of(key))
                except PipelineError as err:
                    if err.retryable:
                        raise
                    failed[key] = str(err)
                    log.error("%s", err)
                    continue
                log.info("[%d/%d] %s: %d rows from %d frames in %.1fs", i, len(run.keys), relpath_of(key),
                         written[key]["rows"], written[key]["frames"], written[key]["seconds"])
        except PipelineError as err:  # the model, the device or the database: the whole run
            log.error("%s", err)
            raise as_failure(err, videos_written=len(written)) from None
        finally:
            store.close()
            lease = {"device_lease": run.lease.device, "lease_slot": run.lease.slot + 1,
                     "lease_acquired_at": run.lease.acquired_at,
                     "lease_released_at": run.lease.release()}
        for key, meta in written.items():
            meta.update(lease)
            if "contact_sheet" in meta:  # thumbnails render as markdown in the UI
                meta["contact_sheet"] = MetadataValue.md(meta["contact_sheet"])
            context.step_context.add_asset_metadata(meta, context.asset_key, partition_key=key)
        if failed:
            # The good videos stay materialized: their events are logged, and flushed by
            # yielding (Dagster emits what handle_output logged each time it yields),
            # before the failure of the bad ones ends the step.
            for key, meta in written.items():
                context.log_event(AssetMaterialization(context.asset_key, partition=key, metadata=meta))
            yield {}
            summary = "; ".join(failed.values())
            raise Failure(
                description=summary if len(run.keys) == 1 else f"{len(failed)} of {len(run.keys)} video(s) failed: {summary}",
                allow_retries=False,
                metadata={"failed": list(map(relpath_of, failed)), "written": len(written)},
            )

    def _write_summary(self, context: OutputContext, vectors: dict) -> None:
        from feature_pipeline_dagster.assets.embeddings import as_failure
        from feature_pipeline_dagster.extract.batches import EmbeddingBatch

        spec = self.collection(context.asset_key)
        store = self._store()
        try:
            for key, vector in vectors.items():
                row = EmbeddingBatch(vector[None, :], {"timestamp_ms": np.zeros(1, np.int64)})
                store.write_video(spec, relpath_of(key), [row], 1)
        except PipelineError as err:
            raise as_failure(err) from None
        finally:
            store.close()
        context.add_output_metadata({"videos": len(vectors), "collection": spec.name})

    def load_input(self, context: InputContext) -> dict[str, np.ndarray]:
        """Each upstream video's vectors (rows, dim), keyed by partition."""
        spec = self.collection(context.upstream_output.asset_key)
        store = self._store()
        try:
            return {
                key: np.asarray([r[spec.vector_field.name] for r in store.fetch_video(spec, relpath_of(key))],
                                dtype=np.float32).reshape(-1, spec.vector_field.dim)
                for key in context.asset_partition_keys
            }
        finally:
            store.close()
