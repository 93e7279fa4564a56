"""Writes an embedding asset's partition (one video) into its Milvus collection."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
from dagster import ConfigurableIOManager, InputContext, OutputContext

from feature_pipeline_dagster.config import Settings, load_settings
from feature_pipeline_dagster.errors import PipelineError
from feature_pipeline_dagster.partitions import relpath_of
from feature_pipeline_dagster.run_logs import attach_run_log


@functools.lru_cache(maxsize=4)
def _settings(path: str, mtime_ns: int) -> Settings:
    return load_settings(path, check_paths=False)


class MilvusIOManager(ConfigurableIOManager):
    """Consumes a `VideoEmbeddings` in `db.batch_size` chunks; replaces the video's rows."""

    config_path: str

    @property
    def settings(self) -> Settings:
        return _settings(self.config_path, Path(self.config_path).stat().st_mtime_ns)

    def _store(self):
        from feature_pipeline_dagster.store.milvus import MilvusStore

        return MilvusStore.from_settings(self.settings.db)

    def handle_output(self, context: OutputContext, obj) -> None:
        from feature_pipeline_dagster.assets.embeddings import as_failure

        settings = self.settings
        spec = settings.collection_for(context.asset_key.path[-1])
        log = attach_run_log(context.run_id, context.log, settings.logs_dir)
        store = self._store()
        started = time.perf_counter()
        try:
            rows = store.write_video(spec, obj.video_path, obj, settings.db.batch_size)
        except PipelineError as err:
            log.error("%s", err)
            raise as_failure(err) from None
        finally:
            store.close()
        total = time.perf_counter() - started
        seconds = {"decode": obj.seconds.decode, "model": obj.seconds.model}
        seconds["write"] = max(0.0, total - sum(seconds.values()))
        log.info("%s: %d rows from %d frames in %.1fs into %s", obj.video_path, rows, obj.frames, total, spec.name)
        stat = obj.path.stat()
        context.add_output_metadata({
            "video_path": obj.video_path,
            "rows": rows,
            "frames": obj.frames,
            "model": obj.extractor.description,
            "device": obj.extractor.device,
            "collection": spec.name,
            "seconds": round(total, 3),
            **{f"seconds_{stage}": round(s, 3) for stage, s in seconds.items()},
            "file_fingerprint": f"{stat.st_size}-{stat.st_mtime_ns}",
        })

    def load_input(self, context: InputContext) -> np.ndarray:
        """A video's vectors (rows, dim), for downstream per-video assets."""
        spec = self.settings.collection_for(context.asset_key.path[-1])
        store = self._store()
        try:
            rows = store.fetch_video(spec, relpath_of(context.asset_partition_key))
        finally:
            store.close()
        return np.asarray([r[spec.vector_field.name] for r in rows], dtype=np.float32)
