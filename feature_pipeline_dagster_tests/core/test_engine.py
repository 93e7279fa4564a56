"""The engine streams a run's videos: model batches span videos, writes batch across
videos, and every video still ends with exactly its rows; a bad video fails alone and
its attempt leaves none; vectors are checked before they are stored."""

import dataclasses

import numpy as np
import pytest
import yaml

from feature_pipeline_dagster.core.decode.backends import resolve
from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.engine.job import decode_vector
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.core.summary import mean_of_pages
from feature_pipeline_dagster_tests.store_rows import stored_rows

CLIPS = [f"clip{i}.mp4" for i in range(7)]


class Spy:
    """The real extractor, recording each batch's size; `poison(frame)` says which
    frames come out as NaN (a model gone wrong on some input)."""

    def __init__(self, extractor, poison=lambda frame_shape, frame_id: False):
        self.extractor, self.poison, self.sizes = extractor, poison, []

    def __getattr__(self, name):
        return getattr(self.extractor, name)

    def embed(self, batch):
        self.sizes.append(len(batch))
        rows = self.extractor.embed(batch)
        for i, frame_id in enumerate(batch.frame_ids.tolist()):
            if self.poison(batch.frames.shape[1:3], frame_id):
                rows.vectors[i] = np.nan
        return rows


@pytest.fixture
def engine(project):
    config = yaml.safe_load(project.config.read_text())
    config["model"]["batch_size"] = 8
    config["db"]["batch_size"] = 4
    project.config.write_text(yaml.safe_dump(config))
    settings = load_settings(project.config)
    store = store_for(settings.db)
    yield settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu")
    store.close()


def stored(store, spec, name):
    rows = stored_rows(store, spec, name, ("frame_id", "timestamp_ms", "generation"))
    return sorted((r["frame_id"], r["timestamp_ms"]) for r in rows), {r["generation"] for r in rows}


def test_batches_span_videos_and_every_video_keeps_exactly_its_rows(project, engine):
    settings, spec, store, extractor = engine
    for i, name in enumerate(CLIPS):
        write_video(project.videos / name, seconds=2.5, seed=i)  # 3 sampled frames each
    spy = Spy(extractor)
    report = embed_videos(settings, spec, store, spy, CLIPS, RunReport(), lanes=2)
    assert not report.failed and set(report.written) == set(CLIPS)
    assert max(spy.sizes) > 3  # every video has 3 frames: a larger batch held frames of several videos
    for i, name in enumerate(CLIPS):
        rows, generations = stored(store, spec, name)
        assert rows == [(0, 0), (30, 1000), (60, 2000)] and len(generations) == 1, name
        alone = extractor.embed(next(iter(_frames_of(project.videos / name))))
        ours = np.concatenate(list(store.vector_pages(spec, name)))
        assert len(ours) == 3
        # the summary's in-stream mean equals the mean of what was stored
        mean = decode_vector(report.written[name]["mean_vector"])
        assert np.dot(mean, mean_of_pages([ours])) > 0.99999
        assert np.dot(mean, mean_of_pages([alone.vectors])) > 0.9999  # batch company changes nothing
        assert report.written[name]["decoder"] == resolve("auto")  # the backend that ran, named per video


def test_one_bad_video_among_many_fails_alone(project, engine):
    settings, spec, store, extractor = engine
    for i, name in enumerate(CLIPS):
        write_video(project.videos / name, seconds=2.5, seed=i)
    (project.videos / "clip3.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    write_video(project.videos / "clip5.mp4", seconds=2.5, size=(160, 120), seed=5)  # its own frame size
    spy = Spy(extractor, poison=lambda shape, frame_id: shape == (120, 160))
    report = embed_videos(settings, spec, store, spy, CLIPS, RunReport(), lanes=2)
    assert set(report.failed) == {"clip3.mp4", "clip5.mp4"}
    assert "cannot open video" in report.failed["clip3.mp4"]
    assert "non-finite" in report.failed["clip5.mp4"] and "\n" not in report.failed["clip5.mp4"]
    assert store.count_rows(spec, "clip5.mp4") == 0  # checked before insert: nothing of it reached the store
    for name in set(CLIPS) - {"clip3.mp4", "clip5.mp4"}:
        assert stored(store, spec, name)[0] == [(0, 0), (30, 1000), (60, 2000)], name


def test_a_video_failing_after_rows_were_inserted_leaves_none_of_its_attempt(project, engine):
    """The attempt's rows (already inserted: one row per request) are taken back; the
    previous run's rows of that video stay until a write of it succeeds."""
    settings, spec, store, extractor = engine
    names = ["a.mp4", "b.mp4", "c.mp4"]
    for i, name in enumerate(names):
        write_video(project.videos / name, seconds=6.5, seed=i, size=(160, 120) if name == "b.mp4" else (320, 240))
    first = embed_videos(settings, spec, store, extractor, names, RunReport())
    assert not first.failed
    before = {name: stored(store, spec, name) for name in names}
    settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, batch_size=2),
                                   db=dataclasses.replace(settings.db, batch_size=1))
    spy = Spy(extractor, poison=lambda shape, frame_id: shape == (120, 160) and frame_id >= 150)
    report = embed_videos(settings, spec, store, spy, names, RunReport(), lanes=1)
    assert set(report.failed) == {"b.mp4"} and "non-finite" in report.failed["b.mp4"]
    assert stored(store, spec, "b.mp4") == before["b.mp4"]  # the old generation, whole; none of the attempt
    for name in ("a.mp4", "c.mp4"):
        rows, generations = stored(store, spec, name)
        assert rows == before[name][0] and generations != before[name][1]


def _frames_of(path):
    from feature_pipeline_dagster.core.decode.reader import VideoReader

    reader = VideoReader(path)
    return reader.batches(reader.plan(DecodeSpec()), 8)


def test_a_run_decodes_with_the_configured_backend_and_sampling(project, engine):
    """`video_input.decoder` reaches the decoder process and each video's metadata names
    it; `sampling: keyframes` embeds key frames (here at 0, 0.67, 1.33 and 2 s), at most
    sample_fps (1) a second: 0 and 1.33 s."""
    settings, spec, store, extractor = engine
    settings = dataclasses.replace(settings, video_input=dataclasses.replace(
        settings.video_input, decoder="pyav", sampling="keyframes"))
    write_video(project.videos / "k.mp4", seconds=2.5, gop=20)
    report = embed_videos(settings, spec, store, extractor, ["k.mp4"], RunReport(), lanes=1)
    assert not report.failed and report.written["k.mp4"]["decoder"] == "pyav"
    assert stored(store, spec, "k.mp4")[0] == [(0, 0), (40, 1333)]


def test_a_patch_model_batch_is_bounded_by_its_rows_not_only_its_frames():
    """Host memory follows a batch's rows (its output, the model's activations on CPU): a
    720p NaViT frame gives 1008 rows, so 32 frames a batch held 148 MB of output alone.
    The model stage takes at most ROWS_PER_BATCH rows of such frames; one row a frame is
    never bound by it."""
    from types import SimpleNamespace

    from feature_pipeline_dagster.core.batches import EmbeddingBatch, FrameBatch
    from feature_pipeline_dagster.core.engine.run import ROWS_PER_BATCH, ModelStage
    from feature_pipeline_dagster.core.engine.job import EmbeddingJob

    class Patches:
        def grid(self, height, width):
            return height // 30, width // 30  # 720p: 24 x 42 = 1008 rows a frame

        def embed(self, batch):
            rows = len(batch) * 1008
            return EmbeddingBatch(np.zeros((rows, 4), np.float32), {"frame_id": np.repeat(batch.frame_ids, 1008)})

    patch = SimpleNamespace(patch_grid=True, check_columns=lambda rows: None)
    stage = ModelStage(Patches(), patch, batch_size=32)
    assert stage.frames_per_batch((720, 1280, 3)) == ROWS_PER_BATCH // 1008 == 8
    assert stage.frames_per_batch((64, 64, 3)) == 32  # 4 rows a frame: the frame count binds
    assert ModelStage(Patches(), SimpleNamespace(patch_grid=False), 32).frames_per_batch((720, 1280, 3)) == 32

    job, sizes = EmbeddingJob("a.mp4", None), []
    ids = np.arange(20)
    stage.add(job, FrameBatch(np.zeros((20, 720, 1280, 3), np.uint8), ids, ids * 1000))
    stage.flush(lambda rows, owners: sizes.append(sum(n for _, n in owners) // 1008), full_only=True)
    assert sizes == [8, 8]  # 4 frames wait for more
    stage.flush(lambda rows, owners: sizes.append(sum(n for _, n in owners) // 1008))
    assert sizes == [8, 8, 4] and job.frames_embedded == 20 and job.batch_size == 8


def test_a_video_whose_last_batch_holds_two_of_its_parts_is_committed_once(project, engine):
    """A model batch may hold two parts of one video (the rest of a split chunk, then its
    last chunk). The video goes to the writer once: closed once per part, its commit
    counted it twice and the run's progress counter ran out (a daemon run failed so)."""
    from feature_pipeline_dagster.core.batches import FrameBatch
    from feature_pipeline_dagster.core.engine.run import ModelStage
    from feature_pipeline_dagster.core.engine.job import EmbeddingJob
    from feature_pipeline_dagster.core.engine.writer import RunWriter
    from feature_pipeline_dagster.core.models import FAMILIES

    settings, spec, store, extractor = engine
    path = write_video(project.videos / "parts.mp4", seconds=1, seed=1)
    job = EmbeddingJob("parts.mp4", path, stat=path.stat())
    stage = ModelStage(extractor, FAMILIES[settings.model.name], batch_size=8)
    committed = []
    writer = RunWriter(store, spec, 4, "v", committed.extend)
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    stage.add(job, FrameBatch(frames[:2], np.array([0, 1]), np.array([0, 1000])))
    stage.add(job, FrameBatch(frames[2:], np.array([2]), np.array([2000])))
    job.decoded = True

    def deliver(rows, owners):
        assert owners == [(job, 2), (job, 1)]
        writer.add(rows, owners)
        stage.close_done(owners, writer.close)

    stage.flush(deliver)
    writer.finish()
    assert committed == [job]
    assert store.count_rows(spec, "parts.mp4") == 3


def test_rows_wait_for_the_writer_while_two_requests_of_earlier_rows_are_still_to_go(project, engine):
    """A model faster than the store (a patch model on the CPU) waits for the writer once
    two requests' worth of rows wait: it does not queue batch after batch of rows in
    memory (a long NaViT video's peak), nor wait out every insert (a fast CLIP's)."""
    import threading

    from feature_pipeline_dagster.core.batches import FrameBatch
    from feature_pipeline_dagster.core.engine.job import EmbeddingJob
    from feature_pipeline_dagster.core.engine.writer import RunWriter

    settings, spec, store, extractor = engine
    path = write_video(project.videos / "slow_store.mp4", seconds=1, seed=2)
    job = EmbeddingJob("slow_store.mp4", path, stat=path.stat())
    frames = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    inserting, go_on = threading.Event(), threading.Event()
    insert = store.insert

    def gated_insert(*args, **kwargs):  # the real insert, once the test lets it go on
        inserting.set()
        go_on.wait(30)
        return insert(*args, **kwargs)

    store.insert = gated_insert
    writer = RunWriter(store, spec, 4, "v", lambda jobs: None)  # 4 rows a request
    added = []

    def model():
        for start in range(0, 18, 6):
            rows = extractor.embed(FrameBatch(frames, np.arange(start, start + 6), np.arange(6) * 1000))
            writer.add(rows, [(job, 6)])
            added.append(start)

    thread = threading.Thread(target=model)
    thread.start()
    assert inserting.wait(30)
    thread.join(0.5)
    assert added == [0, 6]  # 12 rows handed over, the first request's 4 not in yet: the third batch waits
    go_on.set()
    thread.join(30)
    assert added == [0, 6, 12]
    job.decoded = True
    writer.close(job)
    writer.finish()
    assert store.count_rows(spec, "slow_store.mp4") == 18


def test_a_run_is_a_lazy_stream_and_each_video_ends_in_one_outcome_event(project, engine, tmp_path):
    """The embedding asset returns an `EmbeddingRun`: nothing happens (no device lease, no
    model, no decoding) until the writer consumes it. Each video then ends in one typed
    event to whoever listens (the local scheduler; logs stay logs): committed with its
    rows, or failed alone with its one line; both survive a worker's JSON pipe."""
    from feature_pipeline_dagster.core.engine.outcomes import Embedded, Failed, from_json, listening, to_json
    from feature_pipeline_dagster.core.engine.run import EmbeddingRun
    from feature_pipeline_dagster.core.engine.writer import write_run

    settings, spec, store, _ = engine
    write_video(project.videos / "good.mp4", seconds=2, seed=4)
    (project.videos / "bad.mp4").write_bytes(b"\x00" * 4096)
    leases = tmp_path / "leases"
    run = EmbeddingRun(settings, spec, ["bad.mp4", "good.mp4"], ["cpu"], leases)
    iter(run)
    assert not leases.exists() and run.lease == {}
    heard = []
    with listening(heard.append):
        report = write_run(run, store)
    failed, committed = sorted(heard, key=lambda o: o.video)  # bad.mp4, good.mp4: one event each
    assert len(heard) == 2 and isinstance(failed, Failed) and isinstance(committed, Embedded), heard
    assert failed.video == "bad.mp4" and "bad.mp4" in failed.error and "\n" not in failed.error
    assert committed.video == "good.mp4" and committed.rows == store.count_rows(spec, "good.mp4") == 2
    assert committed.metadata["rows"] == 2 and report.written == {"good.mp4": committed.metadata}
    assert report.failed == {"bad.mp4": failed.error} and store.count_rows(spec, "bad.mp4") == 0
    lease = report.lease
    assert lease["device_lease"] == "cpu" and lease["lease_released_at"] >= lease["lease_acquired_at"]
    assert [from_json(to_json(o)) for o in heard] == heard and "metadata" not in to_json(committed)
    assert committed.key == "good.mp4"
