"""Shots through the real engine, Milvus Lite and the tiny CLIP: generated videos with
known hard cuts and 1-s dissolves, sampled at the run's 1 fps, are split where they were
edited (F1 >= 0.9 within 1 s), and each shot's row holds what it says."""

import numpy as np
import pytest

from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.samples import write_edited_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.shots import boundaries, segments_collection
from feature_pipeline_dagster.core.store import RowFilter, store_for
from feature_pipeline_dagster_tests.store_rows import stored_rows

FIELDS = ("video_path", "start_ms", "end_ms", "first_frame_id", "last_frame_id", "frame_id", "timestamp_ms",
          "generation")
TOLERANCE_S = 1.0


def f1(found: list[float], truth: list[float]) -> tuple[int, int, int]:
    """(matched, found, true): each true boundary matched at most once, within the tolerance."""
    free, matched = list(truth), 0
    for t in found:
        near = [u for u in free if abs(u - t) <= TOLERANCE_S]
        if near:
            free.remove(min(near, key=lambda u: abs(u - t)))
            matched += 1
    return matched, len(found), len(truth)


@pytest.fixture
def edited(project):
    """Eight videos of five shots each (2.5-7 s), every boundary a hard cut or a 1-s
    dissolve, at random times (not on the 1-s sampling grid), embedded in one run."""
    truth = {}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        shots = [round(float(s), 2) for s in rng.uniform(2.5, 7.0, 5)]
        dissolves = [float(rng.choice([0.0, 1.0])) for _ in shots[:-1]]
        truth[f"edited{seed}.mp4"] = write_edited_video(project.videos / f"edited{seed}.mp4", shots, dissolves,
                                                        seed=seed)
    settings = load_settings(project.config)
    store = store_for(settings.db)
    report = embed_videos(settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu"),
                          sorted(truth), RunReport(), lanes=2)
    assert not report.failed, report.failed
    yield settings, store, truth, report
    store.close()


def test_shots_are_found_where_the_videos_were_cut_or_dissolved(edited):
    settings, store, truth, report = edited
    rows = store.query_rows(segments_collection(settings), RowFilter(videos=tuple(truth)), FIELDS)
    matched = found = true = 0
    for video, boundaries_s in truth.items():
        shots = sorted((r for r in rows if r["video_path"] == video), key=lambda r: r["start_ms"])
        assert len(shots) == report.written[video]["shots"]
        m, f, t = f1([r["start_ms"] / 1000 for r in shots[1:]], boundaries_s)
        matched, found, true = matched + m, found + f, true + t
    precision, recall = matched / max(found, 1), matched / true
    score = 2 * precision * recall / max(precision + recall, 1e-9)
    assert score >= 0.9, f"F1 {score:.3f} (precision {precision:.3f}, recall {recall:.3f})"


def test_each_shot_row_is_its_frames_mean_and_tiles_the_video(edited):
    settings, store, truth, report = edited
    frames = settings.db.collections[0]
    current = store.committed(frames, list(truth))
    for video in truth:
        shots = sorted(store.query_rows(segments_collection(settings), RowFilter(videos=(video,)),
                                        (*FIELDS, "embeddings")), key=lambda r: r["start_ms"])
        stored = stored_rows(store, frames, video, ("frame_id", "timestamp_ms"))
        by_frame = {r["frame_id"]: np.asarray(r["embeddings"], np.float32) for r in stored}
        assert shots[0]["start_ms"] == 0 and shots[-1]["end_ms"] >= max(r["timestamp_ms"] for r in stored)
        assert all(a["end_ms"] == b["start_ms"] for a, b in zip(shots, shots[1:]))  # no gap, no overlap
        assert {r["generation"] for r in shots} == {current[video].generation}  # the frames' own write
        covered = []
        for shot in shots:
            own = sorted(f for f in by_frame if shot["first_frame_id"] <= f <= shot["last_frame_id"])
            covered += own
            mean = np.mean([by_frame[f] for f in own], axis=0)
            mean /= np.linalg.norm(mean)
            vector = np.asarray(shot["embeddings"], np.float32)
            assert np.dot(vector, mean) > 0.9999
            assert shot["frame_id"] == max(own, key=lambda f: float(by_frame[f] @ mean))  # the closest frame
            assert shot["start_ms"] <= shot["timestamp_ms"] <= shot["end_ms"]
        assert covered == sorted(by_frame)  # every sampled frame in exactly one shot


def test_a_steady_video_is_one_shot_and_a_jump_is_a_cut():
    times = np.arange(10) * 1000
    steady = np.linspace(0, 0.3, 10)[:, None] * np.ones((1, 12))  # a slow drift: no boundary
    assert boundaries(steady.astype(np.float32), times) == []
    cut = steady.copy()
    cut[6:] += 0.4
    assert boundaries(cut.astype(np.float32), times) == [(5500, 6)]
    fade = steady.copy()
    fade[6] += 0.2  # half-way through a dissolve at sample 6
    fade[7:] += 0.4
    assert boundaries(fade.astype(np.float32), times) == [(6000, 6)]
