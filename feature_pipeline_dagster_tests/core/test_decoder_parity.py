"""Every installed backend gives the same frames: the same sampled frame ids and
`timestamp_ms`, pixels equal within PIXEL_TOLERANCE, vectors of the same frame at cos
>= 0.999 through the tiny CLIP; keyframe sampling picks the same key frames everywhere.
(Failures, VFR, rotation and files cut short or damaged: test_decode.py, per backend.)
Also: the choice of backend, and nvdec's one-line failures on a machine without it."""

import numpy as np
import pytest

from feature_pipeline_dagster.core.decode.backends import DECODERS, resolve
from feature_pipeline_dagster.core.decode.reader import SamplingPlan, VideoReader
from feature_pipeline_dagster.core.engine.batches import FrameBatch
from feature_pipeline_dagster.core.errors import ConfigError, VideoError
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.core.test_decode import BACKENDS, write_vfr

# Measured here (decord 0.6 with its bundled FFmpeg 4, torchcodec 0.17 on Debian's FFmpeg
# 5.1, PyAV 18 with its bundled FFmpeg): every pixel equal (mean and max difference 0) on
# these videos, since all three convert YUV to RGB through swscale's default BT.601
# path. The bound leaves room for another FFmpeg build's rounding: 1 level on average,
# 3 at the 99.9th percentile.
PIXEL_TOLERANCE = {"mean": 1.0, "p999": 3}
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity")
    return {
        # texture and grain, B-frames (presentation order differs from decode order), a key frame every 45 frames
        "detailed": write_video(folder / "detailed.mp4", seconds=4, size=(320, 240), detail=True, gop=45),
        "odd size": write_video(folder / "odd.mp4", seconds=2, size=(322, 182), seed=3),
        "vfr": write_vfr(folder / "vfr.mp4"),
        "rotated": write_video(folder / "rotated.mp4", seconds=2, rotation=270, seed=2),
    }


def decode(path, backend, sampling="fps", sample_fps=1.0):
    reader = VideoReader(path, decoder=backend)
    plan = reader.plan(sample_fps, None, sampling)
    batches = list(reader.batches(plan, 8))
    reader.close()
    return reader, plan, np.concatenate([b.frames for b in batches])


@pytest.fixture(scope="module")
def decoded(videos):
    return {(name, backend): decode(path, backend) for name, path in videos.items() for backend in BACKENDS}


@pytest.mark.skipif(len(BACKENDS) < 2, reason="one backend installed: nothing to compare")
def test_same_frames_timestamps_and_pixels(videos, decoded):
    first = BACKENDS[0]
    for name in videos:
        reader, plan, frames = decoded[(name, first)]
        for backend in BACKENDS[1:]:
            other, other_plan, other_frames = decoded[(name, backend)]
            assert other_plan.frame_ids.tolist() == plan.frame_ids.tolist(), (name, backend)
            assert other_plan.timestamps_ms.tolist() == plan.timestamps_ms.tolist(), (name, backend)
            assert (other.info.width, other.info.height, other.info.frame_count) == \
                (reader.info.width, reader.info.height, reader.info.frame_count), (name, backend)
            assert other_frames.shape == frames.shape, (name, backend)
            diff = np.abs(other_frames.astype(np.int16) - frames.astype(np.int16))
            assert diff.mean() <= PIXEL_TOLERANCE["mean"], (name, backend, diff.mean())
            assert np.percentile(diff, 99.9) <= PIXEL_TOLERANCE["p999"], (name, backend, np.percentile(diff, 99.9))


@pytest.mark.skipif(len(BACKENDS) < 2, reason="one backend installed: nothing to compare")
def test_vectors_of_the_same_frame_agree(tiny_clip, videos, decoded):
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.settings import ModelSettings

    extractor = load_extractor(ModelSettings(name="CLIP", path=str(tiny_clip), source="folder"), "cpu")

    def embed(frames):
        n = len(frames)
        return extractor.embed(FrameBatch(frames, np.arange(n), np.zeros(n, np.int64))).vectors

    for name in videos:
        reference = embed(decoded[(name, BACKENDS[0])][2])
        for backend in BACKENDS[1:]:
            vectors = embed(decoded[(name, backend)][2])
            cos = (reference * vectors).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(vectors, axis=1)
            assert cos.min() >= MIN_COSINE, (name, backend, cos.min())


def test_keyframe_sampling_takes_key_frames_only(videos, decoded):
    """One frame per key frame (every 45 frames: 0, 1.5 s, 3 s), the same ids and pixels
    on every backend as fps sampling gives for those frames."""
    plans = {}
    for backend in BACKENDS:
        reader, plan, frames = decode(videos["detailed"], backend, sampling="keyframes", sample_fps=30.0)
        assert plan.key_frames_only and plan.frame_ids.tolist() == [0, 45, 90], backend
        assert plan.timestamps_ms.tolist() == [0, 1500, 3000], backend
        every = decode(videos["detailed"], backend, sample_fps=30.0)[2]
        assert np.abs(frames.astype(np.int16) - every[[0, 45, 90]]).mean() <= PIXEL_TOLERANCE["mean"], backend
        plans[backend] = plan.frame_ids.tolist()
    assert len({tuple(p) for p in plans.values()}) == 1


def test_keyframe_plan_caps_at_sample_fps_and_max_frames():
    starts = np.arange(300) / 30.0  # 10 s at 30 fps, a key frame every 0.5 s
    keys = np.arange(0, 300, 15)
    assert SamplingPlan.for_keyframes(starts, keys, 30.0, None).frame_ids.tolist() == keys.tolist()
    assert SamplingPlan.for_keyframes(starts, keys, 1.0, None).frame_ids.tolist() == list(range(0, 300, 30))
    capped = SamplingPlan.for_keyframes(starts, keys, 30.0, 3)
    assert capped.frame_ids.tolist() == [0, 150, 285] and capped.timestamps_ms.tolist() == [0, 5000, 9500]


def test_auto_never_picks_nvdec_and_prefers_decord():
    import importlib.util

    assert resolve("auto") in BACKENDS
    if importlib.util.find_spec("decord") is not None:
        assert resolve("auto") == "decord"
    with pytest.raises(ConfigError, match="unknown decoder 'gpu'"):
        resolve("gpu")
    assert DECODERS == ("auto", "decord", "torchcodec", "pyav", "nvdec")


def test_nvdec_without_cuda_fails_with_one_line(tmp_path, sample_video, tiny_clip):
    """Here there is no GPU: a reader asked for nvdec says why in one line, and so does
    a run (before any video: the engine asks first)."""
    import importlib.util

    from feature_pipeline_dagster.core.decode.backends.nvdec_reader import unusable
    from feature_pipeline_dagster.core.engine.run import local_decoders
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster_tests.conftest import clip_config, write_config

    assert unusable("cpu") == "nvdec decodes on the run's CUDA device, and this run's device is cpu"
    why = unusable("cuda:0")
    if importlib.util.find_spec("PyNvVideoCodec") is None:
        assert why == "nvdec needs PyNvVideoCodec: pip install 'feature-pipeline-dagster[gpu]'"
    else:
        assert why is None or "CUDA" in why
    with pytest.raises(VideoError) as err:
        VideoReader(sample_video, decoder="nvdec", device="cuda:0" if why else "cpu")
    assert str(err.value).startswith("video_input.decoder: nvdec") and "\n" not in str(err.value)
    videos = tmp_path / "videos"
    videos.mkdir()
    config = write_config(tmp_path, clip_config(tmp_path, tiny_clip, videos, **{"video_input.decoder": "nvdec"}))
    settings = load_settings(config, check_paths=False)
    assert settings.video_input.decoder == "nvdec"
    with pytest.raises(ConfigError, match=r"config.yaml: video_input.decoder: nvdec decodes on the run's CUDA device"):
        local_decoders(settings, "cpu", 2)
    assert local_decoders(load_settings(write_config(tmp_path, clip_config(tmp_path, tiny_clip, videos), "auto.yaml"),
                                        check_paths=False), "cpu", 2) is None
