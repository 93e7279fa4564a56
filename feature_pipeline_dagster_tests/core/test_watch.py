"""Saved searches (`search.watch`) in the engine: scored from the vectors a run has in
hand, at no cost when none is configured, and a query that cannot be embedded failing
the run once at its start (the end-to-end report: end_to_end/test_saved_searches.py)."""

from __future__ import annotations

import numpy as np
import pytest

from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.models import load_extractor, load_text_encoder
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.search.watch import Watch, report_lines
from feature_pipeline_dagster.core.settings import SavedSearch, load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import clip_config, write_config


def test_each_video_keeps_its_best_frame_per_saved_search_and_matches_by_threshold():
    searches = (SavedSearch("x", 0.9, text="x"), SavedSearch("y", 0.85, text="y"))
    watch = Watch(searches, np.eye(3, dtype=np.float32)[:2])
    best = watch.update(None, np.array([[1, 0, 0], [0.6, 0.8, 0]], np.float32) * 3, np.array([0, 1000]))
    best = watch.update(best, np.array([[0.8, 0, 0.6], [0, 0.7, 0.7]], np.float32), np.array([2000, 3000]))
    np.testing.assert_allclose(best.scores, [1.0, 0.8], atol=1e-6)  # cosines: the rows' norms do not count
    assert best.at_ms.tolist() == [0, 1000]
    assert watch.matches(best) == {"x": {"score": 1.0, "at_s": 0.0}}
    assert report_lines({"x": [("b.mp4", {"score": 0.3, "at_s": 3.0}), ("a.mp4", {"score": 0.31, "at_s": 12.0})]},
                        searches) == ['saved search "x": 2 new video(s): a.mp4 at 12.0 s (0.31), b.mp4 at 3.0 s (0.30)',
                                      'saved search "y": no new video']


def test_without_saved_searches_no_text_tower_loads_and_no_metadata_is_added(tmp_path, tiny_clip):
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    write_video(tmp_path / "videos" / "a.mp4", seconds=2.0)
    settings = load_settings(write_config(tmp_path, clip_config(tmp_path, tiny_clip, tmp_path / "videos")))
    extractor = load_extractor(settings.model, "cpu")
    loads = load_text_encoder.cache_info().misses
    store = store_for(settings.db)
    try:
        report = embed_videos(settings, settings.db.collections[0], store, extractor, ["a.mp4"], RunReport())
    finally:
        store.close()
        LiteServer(settings.db.uri).stop()
    assert list(report.written) == ["a.mp4"] and "saved_searches" not in report.written["a.mp4"]
    assert load_text_encoder.cache_info().misses == loads


def test_a_picture_that_cannot_be_read_fails_the_run_once_before_any_video(tmp_path, tiny_clip):
    write_video(tmp_path / "videos" / "a.mp4", seconds=2.0)
    query = tmp_path / "query.png"
    query.write_bytes(b"not a picture")  # exists, so the config loads; it is read at the run's start
    config = clip_config(tmp_path, tiny_clip, tmp_path / "videos")
    config["search"] = {"watch": [{"name": "car", "image": str(query), "threshold": 0.3}]}
    settings = load_settings(write_config(tmp_path, config))
    report = RunReport()
    with pytest.raises(ConfigError) as err:  # store None: nothing reaches the database
        embed_videos(settings, settings.db.collections[0], None, load_extractor(settings.model, "cpu"), ["a.mp4"],
                     report)
    assert str(err.value).startswith(f"{settings.source}: search.watch[0].image: {query}: not an image this can read")
    assert "\n" not in str(err.value) and not report.written and not report.failed
