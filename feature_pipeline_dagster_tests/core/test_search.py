"""Search on real components: the tiny CLIP (random weights) and tiny NaViT of the real
architectures, generated videos embedded by the real engine into a real Milvus Lite file
(one collection for the module), and open_clip's own text path as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feature_pipeline_dagster.core.decode.reader import SamplingPlan, VideoReader
from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.errors import SearchError
from feature_pipeline_dagster.core.ledger import LedgerRecord
from feature_pipeline_dagster.core.models import code_version, load_extractor, load_text_encoder
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.search import Hit, Shot, group_by_shot, merge_hits, search
from feature_pipeline_dagster.core.search.patches import maxsim
from feature_pipeline_dagster.core.search.query import encode_image, load_image
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import RowFilter, store_for
from feature_pipeline_dagster.core.store.milvus.filters import expression
from feature_pipeline_dagster_tests.conftest import clip_config, write_config
from feature_pipeline_dagster_tests.store_rows import stored_rows

VIDEOS = {"red car.mp4": 0, 'it\'s "quoted" [x].mp4': 1, "sub/third.mp4": 2}  # name -> seed


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_clip):
    """Three generated videos embedded by the engine into one Milvus Lite collection."""
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    root = tmp_path_factory.mktemp("search")
    for name, seed in VIDEOS.items():
        write_video(root / "videos" / name, seconds=4.0, seed=seed)
    settings = load_settings(write_config(root, clip_config(root, tiny_clip, root / "videos")))
    store = store_for(settings.db)
    spec = settings.db.collections[0]
    report = embed_videos(settings, spec, store, load_extractor(settings.model, "cpu"), list(VIDEOS), RunReport())
    assert not report.failed and set(report.written) == set(VIDEOS)
    yield type("Indexed", (), {"settings": settings, "store": store, "spec": spec, "root": root})
    store.close()
    LiteServer(settings.db.uri).stop()


def decoded_frame(path: Path, index: int = 2) -> tuple[np.ndarray, int, int]:
    """A sampled frame of the video as the engine decodes it: (frame, frame_id, timestamp_ms)."""
    reader = VideoReader(path)
    plan = reader.plan(DecodeSpec())
    one = SamplingPlan(plan.frame_ids[index:index + 1], plan.timestamps_ms[index:index + 1])
    batch = next(reader.batches(one, 1))
    reader.close()
    return batch.frames[0], int(batch.frame_ids[0]), int(batch.timestamps_ms[0])


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


# 5. Fidelity ---------------------------------------------------------------------------


def test_text_vectors_equal_open_clips_own_tokenizer_and_encode_text(tiny_clip):
    import open_clip
    import torch

    from feature_pipeline_dagster.core.settings import ModelSettings

    model = ModelSettings(name="CLIP", path=str(tiny_clip), source="folder")
    ours = load_text_encoder(model, "cpu")
    reference = open_clip.create_model(f"local-dir:{tiny_clip}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_clip}")
    texts = ["a red car at night", "Ünïcode ✓ and a very long sentence that runs past the context length", "x"]
    with torch.no_grad():
        expected = reference.encode_text(tokenizer(texts), normalize=True).numpy()
    got = ours.encode(texts)
    sims = [cos(a, b) for a, b in zip(got, expected)]
    print(f"text fidelity: min cos {min(sims):.7f}")
    assert min(sims) >= 0.9999


def test_image_query_path_equals_the_stored_frame_path(indexed, tmp_path):
    from PIL import Image

    frame, frame_id, _ = decoded_frame(indexed.root / "videos" / "red car.mp4")
    picture = tmp_path / "frame.png"  # lossless: the same pixels the decoder gave
    Image.fromarray(frame).save(picture)
    query, _ = encode_image(indexed.settings.model, "cpu", load_image(picture))
    stored = [r for r in stored_rows(indexed.store, indexed.spec, "red car.mp4", ("frame_id",))
              if r["frame_id"] == frame_id]
    similarity = cos(query[0], np.asarray(stored[0]["embeddings"], np.float32))
    print(f"image query vs stored frame: cos {similarity:.7f}")
    assert len(stored) == 1 and similarity >= 0.99999


def test_self_retrieval_returns_the_video_first_at_that_timestamp(indexed):
    for name in VIDEOS:
        frame, _, timestamp_ms = decoded_frame(indexed.root / "videos" / name, index=2)
        result = search(indexed.settings, image=frame, k=3, store=indexed.store)
        top = result.moments[0]
        assert (top.video_path, top.best_s) == (name, timestamp_ms / 1000), result.moments
        assert top.score == pytest.approx(1.0, abs=1e-4) and top.start_s <= top.best_s <= top.end_s
        assert result.random_weights and "RANDOM WEIGHTS" in result.warnings[0]


# 1. The search's options --------------------------------------------------------------


def test_text_search_answers_moments_with_filters(indexed):
    everything = search(indexed.settings, text="a red car at night", k=10, gap=0, store=indexed.store)
    assert {m.video_path for m in everything.moments} == set(VIDEOS)
    assert [m.score for m in everything.moments] == sorted((m.score for m in everything.moments), reverse=True)
    assert "RANDOM WEIGHTS" in everything.model
    quoted = search(indexed.settings, text="a car", k=10, videos="it's*", store=indexed.store)
    assert {m.video_path for m in quoted.moments} == {'it\'s "quoted" [x].mp4'}
    window = search(indexed.settings, text="a car", k=10, since=1, until=2, gap=0, store=indexed.store)
    assert window.moments and all(1 <= h.timestamp_s <= 2 for m in window.moments for h in m.hits)
    merged = search(indexed.settings, text="a car", k=1, gap=10, videos="sub/*", store=indexed.store, by="gap")
    (one,) = merged.moments
    assert (one.video_path, one.start_s, one.end_s) == ("sub/third.mp4", 0.0, 3.0) and len(one.hits) == 4
    (shot,) = search(indexed.settings, text="a car", k=1, videos="sub/*", store=indexed.store).moments
    assert shot.shot is not None and (shot.start_s, shot.end_s) == (shot.shot.start_s, shot.shot.end_s)
    assert shot.start_s == 0.0 and shot.end_s >= 3.0 and len(shot.hits) == 4  # one steady shot: the whole video
    nothing = search(indexed.settings, text="a car", videos="*.mkv", store=indexed.store)
    assert nothing.moments == [] and "no embedded video matches '*.mkv'" in nothing.warnings


def test_text_queries_search_with_their_own_wider_ef(indexed, monkeypatch, tiny_clip):
    """The search API tells the store a query's kind: a text query (across CLIP's modality
    gap) walks HNSW with `ef_text`, by default by the collection's rows (EF_TEXT), an image
    query with `ef`, each never under the rows a grouped search asks (10 videos x 8); the
    defaults, a larger collection's and a config's own values reach the real Milvus Lite."""
    from feature_pipeline_dagster.core.store.milvus import store as milvus

    sent = []
    real = indexed.store.client.search
    monkeypatch.setattr(indexed.store.client, "search",
                        lambda *args, **kw: sent.append(kw["search_params"]) or real(*args, **kw))
    frame, _, _ = decoded_frame(indexed.root / "videos" / "red car.mp4")
    config = clip_config(indexed.root, tiny_clip, indexed.root / "videos")
    config["db"]["collections"][0]["index"] = {"search_params": {"ef": 100, "ef_text": 700, "nprobe": 3}}
    configured = load_settings(write_config(indexed.root, config, "wide.yaml"))
    rows = indexed.store.row_count(indexed.spec)
    assert rows == sum(indexed.store.count_rows(indexed.spec, v) for v in VIDEOS) > 0
    for settings, size_rule, image_ef, text_ef in (
            (indexed.settings, milvus.EF_TEXT, 80, 256),  # the defaults, a small collection
            (indexed.settings, ((rows - 1, 256), (None, 1024)), 80, 1024),  # a collection past the first step
            (configured, ((rows - 1, 256), (None, 1024)), 100, 700)):  # the config's own values win
        monkeypatch.setattr(milvus, "EF_TEXT", size_rule)
        sent.clear()
        assert search(settings, image=frame, k=10, store=indexed.store).moments
        assert search(settings, text="a red car", k=10, store=indexed.store).moments
        assert [p["params"]["ef"] for p in sent] == [image_ef, text_ef], sent
        assert all("ef_text" not in p["params"] for p in sent)  # ours, never sent to Milvus
    assert sent[0]["params"]["nprobe"] == 3  # other search parameters pass through


def test_only_current_rows_answer(indexed):
    """Rows a crash left (an older generation), rows of a write never committed and rows of
    a video recorded with another code version never come back, even as exact matches."""
    store, spec = indexed.store, indexed.spec
    frame, _, _ = decoded_frame(indexed.root / "videos" / "red car.mp4", index=1)
    vector, _ = encode_image(indexed.settings.model, "cpu", frame)
    planted = EmbeddingBatch(vector, {"frame_id": np.array([999]), "timestamp_ms": np.array([99_000])})
    store.insert(spec, planted, ["red car.mp4"], generation=1)  # stale: older than the committed one
    store.insert(spec, planted, ["uncommitted.mp4"], generation=2)  # no ledger record
    store.insert(spec, planted, ["old model.mp4"], generation=3)
    store.record_videos(spec, [LedgerRecord("old model.mp4", "0-0", "d", "CLIP-0123456789ab", 1)], 3)
    store._flush(spec)
    try:
        result = search(indexed.settings, image=frame, k=5, gap=0, store=store)
        times = {(m.video_path, h.timestamp_s) for m in result.moments for h in m.hits}
        assert ("red car.mp4", 1.0) in times and result.moments[0].video_path == "red car.mp4"
        assert not {v for v, t in times if t == 99.0}, times
        assert any("1 video(s) written by another code version were left out" in w for w in result.warnings)
    finally:
        store.client.delete(spec.name, filter="generation in [1, 2, 3]")
        store.client.delete(f"{spec.name}_videos", filter="generation == 3")


def test_refusals_are_one_line(indexed, tmp_path, tiny_clip):
    other = load_settings(write_config(tmp_path, clip_config(indexed.root, tiny_clip, indexed.root / "videos",
                                                             **{"video_input.sample_fps": 2.0})))
    assert code_version(other) != code_version(indexed.settings)
    with pytest.raises(SearchError, match=r"was written by code version CLIP-\w+, but this config's query encoder "
                                          r"\(CLIP ViT-B-32\) is CLIP-\w+: their vectors do not compare") as err:
        search(other, text="a car", store=indexed.store)
    assert "\n" not in str(err.value)
    with pytest.raises(SearchError, match="cannot read it"):
        search(indexed.settings, image=tmp_path / "missing.jpg", store=indexed.store)
    (tmp_path / "not.jpg").write_bytes(b"not an image")
    with pytest.raises(SearchError, match="not.jpg: not an image this can read"):
        search(indexed.settings, image=tmp_path / "not.jpg", store=indexed.store)
    with pytest.raises(SearchError, match="not both or neither"):
        search(indexed.settings, store=indexed.store)


def test_filters_are_built_from_typed_values_never_pasted():
    name = '" or video_path != "" or "'
    where = RowFilter(videos=(name,), exclude=("a\\b\n",), current=(("c.mp4", 7),), since_ms=1000, until_ms=2000,
                      frame_ids=(1, 2))
    text = expression(where)
    assert 'video_path in ["\\" or video_path != \\"\\" or \\""]' in text
    assert 'video_path not in ["a\\\\b\\n"]' in text
    assert '(video_path not in ["c.mp4"] or (generation == 7 and video_path in ["c.mp4"]))' in text
    assert "timestamp_ms >= 1000 and timestamp_ms <= 2000 and frame_id in [1, 2]" in text
    # every video named has a generation: no `not in`, and no names again for one generation
    assert expression(RowFilter(videos=("a", "b"), current=(("a", 7), ("b", 7)))) == (
        'video_path in ["a", "b"] and generation == 7')
    assert expression(RowFilter(videos=("a", "b"), current=(("a", 7), ("b", 8), ("c", 9)))) == (
        'video_path in ["a", "b"] and ((generation == 7 and video_path in ["a"]) or '
        '(generation == 8 and video_path in ["b"]) or (generation == 9 and video_path in ["c"]))')


# Moments from hand-made hits ------------------------------------------------------------


def test_hits_merge_into_moments_ranked_by_best_score():
    hits = [Hit("a.mp4", t, int(t), s) for t, s in [(0, 0.2), (1, 0.5), (2, 0.3), (6, 0.9), (7, 0.1), (20, 0.4)]]
    hits += [Hit("b.mp4", 3, 3, 0.7), Hit("b.mp4", 3, 3, 0.6), Hit("b.mp4", 4.5, 4, 0.7)]
    moments = merge_hits(hits, gap_s=2.0)
    got = [(m.video_path, m.start_s, m.end_s, m.best_s, m.score, len(m.hits)) for m in moments]
    assert got == [("a.mp4", 6, 7, 6, 0.9, 2), ("b.mp4", 3, 4.5, 3, 0.7, 2), ("a.mp4", 0, 2, 1, 0.5, 3),
                   ("a.mp4", 20, 20, 20, 0.4, 1)]
    assert [m.score for m in merge_hits(hits, gap_s=100, k=2)] == [0.9, 0.7]
    assert len(merge_hits(hits, gap_s=0)) == 8  # nothing joins but the frame hit twice
    assert merge_hits([], 2.0) == []


def test_hits_group_by_the_shot_they_lie_in():
    hits = [Hit("a.mp4", t, int(t), s) for t, s in [(0, 0.2), (1, 0.5), (2, 0.3), (6, 0.9), (7, 0.1), (20, 0.4)]]
    hits += [Hit("b.mp4", 3, 3, 0.7), Hit("b.mp4", 4.5, 4, 0.6)]
    shots = {"a.mp4": [Shot(5.5, 21.0, 9, 9.0), Shot(0.0, 1.5, 0, 0.0), Shot(1.5, 5.5, 3, 3.0)]}  # in no order
    got = [(m.video_path, m.start_s, m.end_s, m.best_s, m.score, len(m.hits), m.shot is not None)
           for m in group_by_shot(hits, shots, gap_s=2.0)]
    assert got == [("a.mp4", 5.5, 21.0, 6, 0.9, 3, True),  # 6, 7 and 20 s: one shot, however far apart
                   ("b.mp4", 3, 4.5, 3, 0.7, 2, False),  # no shots: merged by the gap
                   ("a.mp4", 0.0, 1.5, 1, 0.5, 2, True), ("a.mp4", 1.5, 5.5, 2, 0.3, 1, True)]
    assert len(group_by_shot(hits, shots, k=1)) == 1 and group_by_shot([], shots) == []


# 2. NaViT: patch-level answers ----------------------------------------------------------


def test_maxsim_finds_where_the_query_matches():
    rng = np.random.default_rng(0)
    cells = rng.standard_normal((12, 16)).astype(np.float32)  # a 3 x 4 grid in raster order
    rows, cols = np.arange(12) // 4, np.arange(12) % 4
    query = np.stack([cells[6] * 2.0, cells[1]])  # cells (1, 2) and (0, 1), any norm
    match = maxsim(query, cells, rows, cols, best=2)
    assert match.grid == (3, 4) and set(match.best) == {(1, 2), (0, 1)}
    assert match.scores[1][2] == pytest.approx(1.0, abs=1e-4) and match.score == pytest.approx(1.0, abs=1e-4)
    assert max(v for r in match.scores for v in r if (r, v)) <= 1.0001


def test_navit_image_search_reports_patches_and_text_is_refused(tmp_path):
    from feature_pipeline_dagster.core.models.navit.weights import make_random
    from feature_pipeline_dagster.core.settings import ModelSettings
    from feature_pipeline_dagster.core.store.lite_server import LiteServer
    from feature_pipeline_dagster_tests.core.test_navit import NAME, TINY_NAVIT, navit_config

    folder = make_random(ModelSettings(name=NAME, path=str(tmp_path / "navit"), source="folder"),
                         tmp_path / "navit", TINY_NAVIT)
    for seed, name in enumerate(["one.mp4", "two.mp4"]):
        write_video(tmp_path / "videos" / name, seconds=3.0, seed=seed + 5)
    settings = load_settings(write_config(tmp_path, navit_config(tmp_path, folder, tmp_path / "videos",
                                                                 max_tokens_per_frame=64)))
    with pytest.raises(SearchError, match="^model VL3-SigLIP-NaViT has no text tower: search its collection frames "
                                          r"with an image \(--image\)$"):
        search(settings, text="a red car")
    store = store_for(settings.db)
    try:
        spec = settings.db.collections[0]
        report = embed_videos(settings, spec, store, load_extractor(settings.model, "cpu"), ["one.mp4", "two.mp4"],
                              RunReport())
        assert not report.failed
        frame, frame_id, timestamp_ms = decoded_frame(tmp_path / "videos" / "two.mp4", index=1)
        result = search(settings, image=frame, k=2, gap=0, store=store)
        top = result.moments[0]
        assert (top.video_path, top.best_s) == ("two.mp4", timestamp_ms / 1000)
        match = top.best.patches
        assert top.best.frame_id == frame_id and match.grid == (6, 9) and len(match.scores) == 6
        assert match.score == pytest.approx(1.0, abs=1e-4) and len(match.best) == 5
        assert all(0 <= r < 6 and 0 <= c < 9 for r, c in match.best)
        assert all(m.best.patches is not None for m in result.moments)
    finally:
        store.close()
        LiteServer(settings.db.uri).stop()
