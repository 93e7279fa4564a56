"""`video_segments`: each video's shots (core/shots.py), rows of `<collection>_segments`,
materialized after its upstream partition as the summary is: in the folder sensor's and
`feature-pipeline run`'s runs, or automatically after other runs.

The engine finds a video's shots while it streams and writes them with the video's frames,
as their generation, before the ledger: this step only confirms them (one query for the
run's videos). A video without them (embedded before shots were kept, or its rows deleted
by hand) is split here from its stored frame vectors, as its frames' generation."""

from dagster import AssetExecutionContext, AssetsDefinition, Failure

from feature_pipeline_dagster.core.errors import PipelineError
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.shots import SegmentRows, segments_collection, shots_from_rows
from feature_pipeline_dagster.core.store import RowFilter
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.orchestration.assets.derived import derived_asset
from feature_pipeline_dagster.orchestration.failures import as_failure
from feature_pipeline_dagster.orchestration.names import SEGMENTS_ASSET
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource


def build_segments_asset(settings: Settings) -> AssetsDefinition:
    feature = settings.model.features[0]
    frames, spec = settings.collection_for(feature), segments_collection(settings)

    @derived_asset(SEGMENTS_ASSET, feature,
                   f"Each video's shots (hard cuts and dissolves): start and end, first, last and representative "
                   f"frame, and the normalized mean of its {feature} vectors, one row per shot in collection {spec.name}.")
    def _segments(context: AssetExecutionContext, vector_store: VectorStoreResource) -> SegmentRows:
        videos = [relpath_of(key) for key in context.partition_keys]
        store = vector_store.open()
        try:
            current = {v: c.generation for v, c in store.committed(frames, videos).items()}
            have = store.query_rows(spec, RowFilter(videos=tuple(videos), current=tuple(current.items())),
                                    ("video_path",)) if store.exists(spec) else []
            shots = {v: 0 for v in videos}
            for row in have:
                shots[row["video_path"]] += 1
            split = {}
            for video in (v for v in videos if not shots[v] and v in current):
                rows = store.query_rows(frames, RowFilter(videos=(video,), current=((video, current[video]),)),
                                        ("frame_id", "timestamp_ms", frames.vector_field.name))
                if rows:
                    split[video] = shots_from_rows(rows, frames.vector_field.name)
                    shots[video] = len(split[video].vectors)
        except PipelineError as err:
            raise as_failure(err) from None
        finally:
            store.close()
        if empty := [v for v in videos if not shots[v]]:
            raise Failure(f"no {feature} rows in Milvus for: {', '.join(empty)}", allow_retries=False)
        return SegmentRows(spec, shots, {v: (current[v], rows) for v, rows in split.items()})

    return _segments
