"""Every installed backend gives the same frames: the same sampled frame ids and
`timestamp_ms`, pixels equal within PIXEL_TOLERANCE, vectors of the same frame at cos
>= 0.999 through the tiny CLIP; keyframe sampling picks the same key frames everywhere.
(Failures, VFR, rotation and files cut short or damaged: test_decode.py, per backend.)
Also: the choice of backend, and nvdec's one-line failures on a machine without it."""

import numpy as np
import pytest

from feature_pipeline_dagster.core.decode.backends import DECODERS, resolve
from feature_pipeline_dagster.core.decode.reader import SamplingPlan, VideoReader
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.decode.spec import DecodeSpec
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
    plan = reader.plan(DecodeSpec(sample_fps=sample_fps, sampling=sampling))
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


def test_auto_picks_pyav_never_nvdec():
    assert resolve("auto") == "pyav" and resolve("decord") == "decord"
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


def pyav_every_frame(path):
    """Every frame as PyAV decodes it (all of them, nothing skipped), presentation order:
    pts in ms, key flags, RGB; and the pts that FFmpeg's decoder still gives out when told
    to skip the frames nothing references (skip_frame NONREF): the reference frames."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sorted(((f.pts, f.key_frame, f.to_ndarray(format="rgb24")) for f in container.decode(stream)),
                        key=lambda f: f[0])
        ms = np.round(np.array([f[0] for f in frames]) * float(stream.time_base) * 1000).astype(np.int64)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        references = {f.pts for f in container.decode(stream)}
    with av.open(str(path)) as container:
        stream_order = [p.pts for p in container.demux(video=0) if p.size]
    pts = [f[0] for f in frames]
    return ms, np.array([f[1] for f in frames], bool), np.stack([f[2] for f in frames]), \
        np.array([p in references for p in pts], bool), np.array([stream_order.index(p) for p in pts])


# (sample_fps, max_shift_ms): the default window, a wide one (holding key frames off their targets), a dense plan
NEAREST_CASES = [(1.0, None), (1.0, 600.0), (3.0, None)]


@pytest.mark.parametrize("sample_fps,shift_ms", NEAREST_CASES)
def test_nearest_sampling_takes_the_cheapest_frame_in_the_window(videos, tiny_clip, sample_fps, shift_ms):
    """On a textured B-frame video (x264's B-pyramid: P, then a referenced B, then the
    B-frames nothing references) with a key frame every 1.5 s, on every backend: one frame
    per 1/sample_fps s within max_shift_ms of its time; a key frame wherever one lies in
    the window; else the frame that costs the fewest reference frames decoded on the way
    (as computed here from PyAV's packets and a NONREF decode); frame_id and timestamp_ms
    those of the frame PyAV decodes there, its pixels and vector (open_clip's own
    preprocessing on PyAV's frame, cos >= 0.9999) equal to it."""
    import open_clip
    import torch
    from PIL import Image

    from feature_pipeline_dagster.core.decode.backends.base import packet_index
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.settings import ModelSettings

    path = videos["detailed"]
    ms, keys, every, references, decode_order = pyav_every_frame(path)
    assert keys.nonzero()[0].tolist() == [0, 45, 90]
    assert 0 < references.sum() < len(references)  # B-frames that nothing references
    assert packet_index(path).reference.tolist() == references.tolist()  # the NAL headers say what FFmpeg skips
    assert packet_index(path).decode_order.tolist() == decode_order.tolist()
    by_decode = np.argsort(decode_order)

    def cost(frame, at):  # reference frames decoded on the way in decode order, seeking if a key frame lies between
        way = by_decode[at + 1 : decode_order[frame]] if at >= 0 else []
        if at < 0 or decode_order[frame] <= at or keys[way].any():
            start = max(d for d in range(decode_order[frame] + 1) if keys[by_decode[d]])
            way = by_decode[start : decode_order[frame]]
        return references[way].sum() + 1

    shift = 250.0 / sample_fps if shift_ms is None else shift_ms
    targets = np.arange(int(ms[-1] / 1000 * sample_fps) + 1) * 1000 / sample_fps
    expected, last = [], -1
    for target in targets:  # the rule, from PyAV's frames and packets
        window = [i for i in range(last + 1, len(ms)) if abs(ms[i] - target) <= shift + 0.5]
        in_key = [i for i in window if keys[i]]
        at = decode_order[last] if last >= 0 else -1
        last = min(in_key or window, key=lambda i: (0 if in_key else cost(i, at), abs(ms[i] - target), i))
        expected.append(last)
    off_target = np.abs(ms[expected] - targets) > 0.5
    assert (keys[expected] & off_target).any() == (shift_ms == 600.0)  # a key frame taken off its target time
    assert (~keys[expected] & off_target).any()  # a frame other than the one nearest its target

    extractor = load_extractor(ModelSettings(name="CLIP", path=str(tiny_clip), source="folder"), "cpu")
    reference, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_clip}")
    reference.eval()
    with torch.no_grad():
        wanted = reference.encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in every[expected]]))
    wanted = torch.nn.functional.normalize(wanted, dim=-1).numpy()
    for backend in BACKENDS:
        reader = VideoReader(path, decoder=backend)
        plan = reader.plan(DecodeSpec(sample_fps=sample_fps, sampling="nearest", max_shift_ms=shift_ms))
        batches = list(reader.batches(plan, 4))
        reader.close()
        ids = np.concatenate([b.frame_ids for b in batches])
        assert ids.tolist() == expected, backend
        assert np.concatenate([b.timestamps_ms for b in batches]).tolist() == ms[expected].tolist(), backend
        assert np.all(np.abs(ms[expected] - targets) <= shift + 0.5), backend
        frames = np.concatenate([b.frames for b in batches])
        diff = np.abs(frames.astype(np.int16) - every[expected].astype(np.int16))
        assert diff.mean() <= PIXEL_TOLERANCE["mean"] and np.percentile(diff, 99.9) <= PIXEL_TOLERANCE["p999"], backend
        vectors = extractor.embed(FrameBatch(frames, ids, np.zeros(len(ids), np.int64))).vectors
        assert (vectors * wanted).sum(1).min() >= 0.9999, backend


def test_nearest_plan_prices_frames_by_decode_order():
    """Synthetic 30 fps stream, a key frame every 60 frames: P frames at even ids, each
    odd id a B-frame decoded after the P that follows it and referenced by nothing
    (decode order 0, 2, 1, 4, 3, ...)."""
    from feature_pipeline_dagster.core.decode.backends.base import DecodeIndex

    count = 300
    starts = np.arange(count) / 30
    sequence = [0] + [f for k in range(1, count // 2) for f in (2 * k, 2 * k - 1)] + [count - 1]
    order = np.argsort(sequence)  # frame id -> decode position
    index = DecodeIndex(order, np.arange(count) % 2 == 0, np.arange(count) % 60 == 0)
    assert index.cost(0, -1) == (1, True)  # a key frame decodes alone
    assert index.cost(3, -1) == (4, True)  # I0, P2, P4 (B1 skipped), then B3
    assert index.cost(4, int(order[2])) == (1, False)  # on from P2: P4
    assert index.cost(61, int(order[10])) == (3, True)  # a key frame between: seek to 60, P62, then B61
    assert index.seek_target(75) == 60
    plan = SamplingPlan.for_nearest(starts, index, 1.0, None, 0.25)
    # even seconds: their key frames; odd ones: the first P frame in the window [t - 7.5, t + 7.5] frames
    assert plan.frame_ids.tolist() == [0, 24, 60, 84, 120, 144, 180, 204, 240, 264]
    assert plan.timestamps_ms.tolist() == [0, 800, 2000, 2800, 4000, 4800, 6000, 6800, 8000, 8800]
    assert SamplingPlan.for_nearest(starts, index, 1.0, None, 0.5).frame_ids.tolist()[:3] == [0, 16, 60]
    # max_frames: targets spread as fps sampling spreads frames (0, 4 and 9 s), each then chosen
    assert SamplingPlan.for_nearest(starts, index, 1.0, 3, 0.25).frame_ids.tolist() == [0, 120, 264]
    assert SamplingPlan.for_nearest(starts, index, 1.0, None, 0.0).frame_ids.tolist() == \
        SamplingPlan.for_timestamps(starts, 1.0, None).frame_ids.tolist()  # no window: the frames fps sampling takes


def test_nearest_sampling_through_the_decoder_process(tmp_path, videos):
    """`max_shift_ms` reaches the plan in the decoder child; 0 ms takes fps sampling's frames."""
    from feature_pipeline_dagster.core.decode.process import DecoderProcess

    process = DecoderProcess()
    try:
        for backend in BACKENDS:
            nearest = process.open(videos["detailed"], DecodeSpec(backend, sampling="nearest"))
            assert nearest.plan.frame_ids.tolist() == [0, 23, 53, 90], backend
            assert sum(len(b) for b in nearest.batches(4)) == 4
            exact = process.open(videos["detailed"], DecodeSpec(backend, sampling="nearest", max_shift_ms=0))
            assert exact.plan.frame_ids.tolist() == [0, 30, 60, 90], backend
            list(exact.batches(4))
    finally:
        process.stop()
