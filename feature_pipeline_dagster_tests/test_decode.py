import numpy as np
import pytest

from feature_pipeline_dagster.errors import VideoError
from feature_pipeline_dagster.extract.decode import SamplingPlan, VideoReader
from feature_pipeline_dagster.samples import write_video


def test_plan_samples_at_fps():
    plan = SamplingPlan.for_video(frame_count=300, fps=30.0, sample_fps=1.0, max_frames=None)
    assert plan.frame_ids.tolist() == list(range(0, 300, 30))
    assert SamplingPlan.for_video(300, 30.0, 2.0, None).frame_ids.tolist() == list(range(0, 300, 15))


def test_plan_caps_at_max_frames_uniformly():
    ids = SamplingPlan.for_video(3000, 30.0, 1.0, max_frames=4).frame_ids
    assert len(ids) == 4 and ids[0] == 0 and ids[-1] == 2970


def test_plan_faster_than_source_takes_every_frame():
    assert SamplingPlan.for_video(10, 5.0, 30.0, None).frame_ids.tolist() == list(range(10))


def test_batches_carry_frame_ids_and_timestamps(sample_video):
    reader = VideoReader(sample_video)
    assert (reader.info.width, reader.info.height, reader.info.frame_count) == (320, 240, 90)
    plan = reader.plan(sample_fps=2.0, max_frames=None)
    batches = list(reader.batches(plan, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    ids = np.concatenate([b.frame_ids for b in batches])
    assert ids.tolist() == [0, 15, 30, 45, 60, 75]
    assert np.concatenate([b.timestamps_ms for b in batches]).tolist() == [0, 500, 1000, 1500, 2000, 2500]
    assert batches[0].frames.shape == (4, 240, 320, 3) and batches[0].frames.dtype == np.uint8


def test_random_bytes_give_one_clear_error(tmp_path):
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(VideoError) as err:
        VideoReader(bad)
    assert str(bad) in str(err.value) and "cannot open video" in str(err.value)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoError, match="empty file"):
        VideoReader(empty)


def test_truncated_file_with_index_at_end(tmp_path, sample_video):
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(sample_video.read_bytes()[: sample_video.stat().st_size // 2])
    with pytest.raises(VideoError, match="cut.mp4: cannot open video"):
        VideoReader(truncated)
