"""`video_summary_embedding`: one L2-normalized mean vector per video, in its own
collection, materialized after its upstream partition once the embedding's blocking
checks have passed: in the folder sensor's runs, or automatically after other runs.

The mean comes from where the embedding run put it (its materialization metadata,
summed in-stream as rows were written): no vector is read back. A partition embedded
before that existed is averaged from the store a page at a time.

Each partition's metadata also names the run's videos' near-duplicates in the library
(`duplicates`, core/search/duplicates.py), looked for from the run's videos only: a
video embedded later shows up in its own partition's line, not in the older one's. The
embedding's step looks for them as it commits its videos (`RunDuplicates`) and hands the
search over (this process: the in-process executor), so that the search of its last commit
goes on beside the checks and the shots; only videos it did not cover are looked for here."""

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Failure

from feature_pipeline_dagster.core.engine.job import decode_vector
from feature_pipeline_dagster.core.errors import PipelineError, SearchError
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.summary import SummaryRows, mean_of_pages, summary_collection
from feature_pipeline_dagster.core.videos import relpath_of
from feature_pipeline_dagster.orchestration.assets.derived import derived_asset
from feature_pipeline_dagster.orchestration.failures import as_failure
from feature_pipeline_dagster.orchestration.materializations import recorded_in_run
from feature_pipeline_dagster.orchestration.names import SUMMARY_ASSET
from feature_pipeline_dagster.orchestration.resources import VectorStoreResource
from feature_pipeline_dagster.core.search.duplicates import RunDuplicates, find_duplicates


def build_summary_asset(settings: Settings) -> AssetsDefinition:
    feature = settings.model.features[0]
    frames, spec = settings.collection_for(feature), summary_collection(settings)

    @derived_asset(SUMMARY_ASSET, feature,
                   f"The mean of each video's {feature} vectors, L2-normalized: one row per video "
                   f"in collection {spec.name}.")
    def _summary(context: AssetExecutionContext, vector_store: VectorStoreResource) -> SummaryRows:
        keys = list(context.partition_keys)
        recorded = recorded_in_run(context, AssetKey(feature), keys)
        streamed = _handed_over.pop(context.run.run_id, None)
        means, empty, store, duplicates = {}, [], None, streamed.lines() if streamed else {}
        try:
            for key in keys:
                video, meta = relpath_of(key), recorded[key]
                if "mean_vector" in meta:
                    means[video] = decode_vector(meta["mean_vector"])
                    continue
                store = store or vector_store.open()
                mean = mean_of_pages(store.vector_pages(frames, video))
                if mean is None:
                    empty.append(video)
                else:
                    means[video] = mean
            if unsearched := [video for video in means if video not in duplicates]:
                store = store or vector_store.open()
                duplicates.update(_duplicates(context, settings, unsearched, store))
        except PipelineError as err:
            raise as_failure(err) from None
        finally:
            if store is not None:
                store.close()
        if empty:
            raise Failure(f"no {feature} rows in Milvus for: {', '.join(empty)}", allow_retries=False)
        return SummaryRows(spec, means, duplicates)

    return _summary


_handed_over: dict = {}  # run id -> its embedding step's RunDuplicates; one run's at most


def hand_over(run_id: str, search: RunDuplicates) -> None:
    """The embedding step's near-duplicates search, for this run's summary step to take.
    One at most: a search nobody took (the step ran elsewhere, or not at all) is stopped."""
    for older in _handed_over.values():
        older.stop()
    _handed_over.clear()
    _handed_over[run_id] = search


def _duplicates(context: AssetExecutionContext, settings: Settings, videos: list[str], store) -> dict[str, str]:
    """Each video's near-duplicates in one line. Where they cannot be looked for (a NaViT
    config has no frame vectors) the run's log says why and the summary goes on."""
    try:
        found = find_duplicates(settings, videos, store)
    except SearchError as err:
        context.log.warning(f"duplicates not looked for: {err}")
        return {}
    return found.lines(videos)
