"""VL3-SigLIP-NaViT through transformers' native VideoLlama3VisionModel: a tiny model of
the real architecture, written in the hub checkpoint's own layout, loaded strictly,
compared with the reference processor + model, and run end to end into Milvus Lite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_pipeline_dagster.core.decode.spec import DecodeSpec
from feature_pipeline_dagster.core.settings import ModelSettings, load_settings
from feature_pipeline_dagster.core.errors import ConfigError, ModelError
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.models.tensors import model_dtype
from feature_pipeline_dagster.core.decode.reader import VideoReader
from feature_pipeline_dagster.core.models.navit import model as navit
from feature_pipeline_dagster.core.models.navit.weights import make_random
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.conftest import clip_config, stop_lite_server, write_config
from feature_pipeline_dagster_tests.store_rows import stored_rows

TINY_NAVIT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
NAME = "VL3-SigLIP-NaViT"


@pytest.fixture(scope="module")
def tiny_navit(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-navit"
    return make_random(ModelSettings(name=NAME, path=str(folder), source="folder"), folder, TINY_NAVIT)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test reaches a model hub: offline mode, and any download attempt fails loudly."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the model hub")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def settings(folder: Path, **kwargs) -> ModelSettings:
    return ModelSettings(name=NAME, path=str(folder), source="folder", **kwargs)


def frame_batch(frames: np.ndarray, first_id: int = 0) -> FrameBatch:
    ids = np.arange(first_id, first_id + len(frames))
    return FrameBatch(frames, ids, ids * 1000)


def noise(height: int, width: int, count: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# 1. Native code, real checkpoint format ------------------------------------------------


def test_hub_layout_loads_strictly_into_the_native_class(tiny_navit):
    from safetensors import safe_open
    from transformers import VideoLlama3VisionModel

    config = json.loads((tiny_navit / "config.json").read_text())
    assert config["model_type"] == "videollama3_vision_encoder" and config["torch_dtype"] == "bfloat16"
    assert json.loads((tiny_navit / "preprocessor_config.json").read_text())["max_tokens"] == 16384
    assert not list(tiny_navit.glob("*.py")) and not list(tiny_navit.glob("*.bin"))
    with safe_open(str(tiny_navit / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
        assert f.get_tensor("post_layernorm.weight").dtype == torch.bfloat16

    model = navit.load_native_model(tiny_navit, torch.float32)  # raises on any missing/unexpected key
    assert isinstance(model, VideoLlama3VisionModel)
    assert set(model.state_dict()) == stored
    assert model.config.num_hidden_layers == 2 and model.config.rope_parameters["rope_theta"] == 10000.0


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_a_checkpoint_that_does_not_fit_is_refused(tiny_navit, tmp_path, damage):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_navit, folder)
    state = load_file(str(folder / "model.safetensors"))
    if damage == "missing":
        del state["encoder.layers.1.mlp.fc2.bias"]
    else:
        state["vision_tower.extra.weight"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match=f"do not fit VideoLlama3VisionModel.*{damage} keys"):
        navit.load(settings(folder), "cpu")


def test_folder_mistakes_are_one_clear_line(tiny_navit, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_navit, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="preprocessor_config.json: missing"):
        navit.load(settings(folder), "cpu")
    config = json.loads((tiny_navit / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "siglip_vision_model"}))
    with pytest.raises(ModelError, match="model_type 'siglip_vision_model' is not a VL3-SigLIP-NaViT"):
        navit.load(settings(folder), "cpu")
    with pytest.raises(ModelError, match="expected a folder"):
        navit.load(settings(tmp_path / "nowhere"), "cpu")


def test_huggingface_source_fetches_only_config_and_weights(tiny_navit, monkeypatch):
    import huggingface_hub

    asked = {}

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(tiny_navit)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    extractor = navit.load(ModelSettings(name=NAME, path="DAMO-NLP-SG/VL3-SigLIP-NaViT"), "cpu")
    assert extractor.dim == 64
    assert asked["repo_id"] == "DAMO-NLP-SG/VL3-SigLIP-NaViT"
    assert not any(p.endswith(".py") or p == "*" for p in asked["allow_patterns"])

    def offline(*args, **kwargs):
        raise OSError("We have no connection or you passed local_files_only\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError, match=r"download failed \(We have no connection.*\); is the hub reachable"):
        navit.load(ModelSettings(name=NAME, path="DAMO-NLP-SG/VL3-SigLIP-NaViT"), "cpu")


# 2. dtype on purpose ------------------------------------------------------------------


def test_dtype_is_float32_on_cpu_whatever_the_checkpoint_says(tiny_navit):
    assert navit.load(settings(tiny_navit), "cpu").model.dtype == torch.float32
    assert navit.load(settings(tiny_navit, dtype="bfloat16"), "cpu").model.dtype == torch.bfloat16
    assert model_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16


# 3. Preprocessing equal to the model's own --------------------------------------------


@pytest.fixture(scope="module")
def video_frames(tmp_path_factory) -> list[np.ndarray]:
    """Decoded frames of several sizes and aspect ratios, as the pipeline sees them."""
    folder = tmp_path_factory.mktemp("sizes")
    out = []
    for size in [(320, 240), (640, 360), (200, 300), (1280, 720)]:
        reader = VideoReader(write_video(folder / f"{size[0]}x{size[1]}.mp4", seconds=2, size=size, seed=size[0]))
        out += [b.frames for b in reader.batches(reader.plan(DecodeSpec()), 2)]
    return out + [noise(30, 40, 2), noise(98, 140, 2)]  # upscaled to min_tokens; kept as it is


@pytest.fixture(scope="module")
def reference_model(tiny_navit):
    """VideoLlama3VisionModel loaded by plain strict load_state_dict, not through our code."""
    from safetensors.torch import load_file
    from transformers import VideoLlama3VisionModel

    model = VideoLlama3VisionModel(navit.native_config(tiny_navit))
    model.load_state_dict({k: v.float() for k, v in load_file(str(tiny_navit / "model.safetensors")).items()},
                          strict=True)
    return model.eval()


def reference_rows(model, folder: Path, frame: np.ndarray, max_tokens: int, merge_size: int):
    """transformers' VideoLlama3ImageProcessorPil with explicit bounds and merge_size, one
    frame per call (the checkpoint's values from preprocessor_config.json), then the model."""
    from transformers import VideoLlama3ImageProcessorPil

    pre = json.loads((folder / "preprocessor_config.json").read_text())
    factor = pre["patch_size"] * merge_size
    processor = VideoLlama3ImageProcessorPil(
        size={"shortest_edge": pre["min_tokens"] * factor**2, "longest_edge": max_tokens * factor**2},
        patch_size=pre["patch_size"], merge_size=merge_size, image_mean=pre["image_mean"],
        image_std=pre["image_std"], resample=pre["resample"],
    )
    inputs = processor(images=[frame], return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], grid_thw=inputs["image_grid_thw"],
                                   merge_sizes=inputs["image_merge_sizes"]).last_hidden_state
    _, h, w = inputs["image_grid_thw"][0].tolist()
    return out.numpy(), (h // merge_size, w // merge_size)


@pytest.mark.parametrize("merge_size,max_tokens", [(1, 64), (2, 48), (1, 400)])
def test_rows_match_reference_processor_and_model(tiny_navit, reference_model, video_frames, merge_size, max_tokens):
    extractor = navit.load(settings(tiny_navit, merge_size=merge_size, max_tokens_per_frame=max_tokens), "cpu")
    cosines, grids = [], set()
    for frames in video_frames:
        ours = extractor.embed(frame_batch(frames))
        per_frame = len(ours) // len(frames)
        for i, frame in enumerate(frames):
            ref, grid = reference_rows(reference_model, tiny_navit, frame, max_tokens, merge_size)
            assert extractor.grid(*frame.shape[:2]) == grid and per_frame == grid[0] * grid[1]
            rows = ours.slice(i * per_frame, (i + 1) * per_frame)
            assert (rows.columns["row_idx"] * grid[1] + rows.columns["col_idx"] == np.arange(per_frame)).all()
            a, b = rows.vectors, ref
            cosines += ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).tolist()
            grids.add((frame.shape[:2], grid))
    print(f"merge_size {merge_size}, max_tokens {max_tokens}: min cosine vs reference over {len(cosines)} rows "
          f"of {len(grids)} frame sizes: {min(cosines):.7f}; grids {sorted(grids)}")
    assert min(cosines) >= 0.9999


# 4. A frame's grid never depends on the batch; 6. exact batching -------------------------


def test_same_frame_same_rows_whatever_the_batch(tiny_navit, video_frames):
    extractor = navit.load(settings(tiny_navit, max_tokens_per_frame=64), "cpu")
    frames = np.concatenate([video_frames[1], noise(360, 640, 3), video_frames[1][::-1]])  # 640x360 frames
    whole = extractor.embed(frame_batch(frames))
    for size in (1, 2, 4):
        parts = [extractor.embed(frame_batch(frames[i:i + size], i)) for i in range(0, len(frames), size)]
        joined = type(whole).concat(parts)
        for column, values in whole.columns.items():
            assert (joined.columns[column] == values).all(), column
        assert np.allclose(joined.vectors, whole.vectors, rtol=1e-4, atol=1e-5)
    assert len(whole) == len(frames) * 60  # 640x360 under 64 tokens: a 6x10 grid, in any batch


def test_frame_inside_a_batch_equals_the_frame_alone(tiny_navit):
    extractor = navit.load(settings(tiny_navit, merge_size=2, max_tokens_per_frame=32), "cpu")
    frames = noise(180, 250, count=5, seed=3)
    batch = extractor.embed(frame_batch(frames))
    per_frame = len(batch) // len(frames)
    for i in range(len(frames)):
        alone = extractor.embed(frame_batch(frames[i:i + 1], i))
        assert np.abs(alone.vectors - batch.slice(i * per_frame, (i + 1) * per_frame).vectors).max() < 1e-5


# 5. Positions are true ------------------------------------------------------------------


def patch_local(extractor):
    """Zero every attention output: each patch's vector then depends on its own pixels
    only, so a change can be traced to exactly the rows that cover it."""
    for layer in extractor.model.encoder.layers:
        torch.nn.init.zeros_(layer.self_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.out_proj.bias)
    return extractor


@pytest.mark.parametrize("size,merge_size,max_tokens,region", [
    ((112, 168), 1, 1024, (30, 60, 70, 100)),   # no resize: 8x12 patches of 14 px
    ((112, 168), 2, 1024, (30, 60, 70, 100)),   # no resize: 4x6 cells of 28 px
    ((224, 336), 1, 96, (66, 118, 150, 174)),   # scaled by 1/2 to 112x168, then 8x12 cells
])
def test_changed_region_changes_exactly_the_rows_covering_it(tiny_navit, size, merge_size, max_tokens, region):
    extractor = patch_local(navit.load(settings(tiny_navit, merge_size=merge_size, max_tokens_per_frame=max_tokens),
                                       "cpu"))
    height, width = size
    y0, y1, x0, x1 = region
    before = noise(height, width, seed=7)
    after = before.copy()
    after[0, y0:y1, x0:x1] = 255 - after[0, y0:y1, x0:x1]
    a, b = extractor.embed(frame_batch(before)), extractor.embed(frame_batch(after))
    changed = np.abs(a.vectors - b.vectors).max(axis=1) > 1e-4
    rows, cols = extractor.grid(height, width)
    cell_h, cell_w = height / rows, width / cols  # frame pixels per row/col
    # Regions keep clear of cell edges by more than the bicubic filter's reach when resizing.
    expected = {(r, c) for r in range(rows) for c in range(cols)
                if r * cell_h < y1 and (r + 1) * cell_h > y0 and c * cell_w < x1 and (c + 1) * cell_w > x0}
    got = set(zip(a.columns["row_idx"][changed].tolist(), a.columns["col_idx"][changed].tolist()))
    print(f"{size} merge {merge_size}: grid {rows}x{cols}, region rows {y0}:{y1} cols {x0}:{x1} -> cells {sorted(got)}")
    assert got == expected and len(got) < rows * cols


def test_grid_bound_holds_for_extreme_frames():
    prep = navit.Preprocessing(14, 1, 16, 1024, (0.5,) * 3, (0.5,) * 3, 1 / 255, 3)
    bound = navit.max_grid_side(1024)
    sides = [max(prep.grid(h, w)) for h in (1, 7, 30, 360, 720, 2160, 4000) for w in (h, 2 * h, 20 * h, 199 * h)]
    assert max(sides) < bound
    assert prep.grid(720, 1280) == (24, 42) and prep.grid(1080, 1920) == (24, 42)


# Config keys ----------------------------------------------------------------------------


def navit_config(tmp_path: Path, model_path: Path, videos: Path, dim: int = 64, **model) -> dict:
    config = clip_config(tmp_path, model_path, videos)
    config["model"] = {"name": NAME, "path": str(model_path), "source": "folder",
                       "features": ["video_embedding"], "batch_size": 2, **model}
    config["db"]["collections"][0]["fields"][-1:] = [
        {"name": "row_idx", "dtype": "INT16"},
        {"name": "col_idx", "dtype": "INT16"},
        {"name": "embeddings", "dtype": "FLOAT_VECTOR", "dim": dim},
    ]
    return config


def test_config_keys_are_validated(tmp_path, tiny_navit):
    videos = tmp_path / "videos"
    videos.mkdir()
    parsed = load_settings(write_config(tmp_path, navit_config(tmp_path, tiny_navit, videos)))
    assert (parsed.model.max_tokens_per_frame, parsed.model.merge_size) == (1024, 1)
    parsed = load_settings(write_config(tmp_path, navit_config(tmp_path, tiny_navit, videos, merge_size=2,
                                                               max_tokens_per_frame=256)))
    assert (parsed.model.max_tokens_per_frame, parsed.model.merge_size) == (256, 2)
    with pytest.raises(ConfigError, match="model.merge_size: expected 1 or 2, got 3"):
        load_settings(write_config(tmp_path, navit_config(tmp_path, tiny_navit, videos, merge_size=3)))
    with pytest.raises(ConfigError, match="model.max_tokens_per_frame: must be positive"):
        load_settings(write_config(tmp_path, navit_config(tmp_path, tiny_navit, videos, max_tokens_per_frame=0)))
    with pytest.raises(ConfigError, match="fields\\[6\\].dim: dim 1152 does not match.*64-d"):
        load_settings(write_config(tmp_path, navit_config(tmp_path, tiny_navit, videos, dim=1152)))
    clip = clip_config(tmp_path, tiny_navit, videos)
    clip["model"]["merge_size"] = 2
    with pytest.raises(ConfigError, match="model.merge_size: only VL3-SigLIP-NaViT takes merge_size"):
        load_settings(write_config(tmp_path, clip))


# End to end -----------------------------------------------------------------------------


def test_run_writes_every_patch_row_into_milvus(tmp_path, tiny_navit):
    from feature_pipeline_dagster.core.store import store_for

    videos = tmp_path / "videos"
    video = write_video(videos / "clip one.mp4", seconds=3.2, size=(320, 240), seed=4)
    config = write_config(tmp_path, navit_config(tmp_path, tiny_navit, videos, max_tokens_per_frame=64))
    env = {**os.environ, "FEATURE_PIPELINE_CONFIG": str(config),
           "DAGSTER_HOME": str(tmp_path / "dagster_home"), "HF_HUB_OFFLINE": "1"}
    try:
        result = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "run"], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        frames = len(VideoReader(video).plan(DecodeSpec()))
        rows, cols = navit.load(settings(tiny_navit, max_tokens_per_frame=64), "cpu").grid(240, 320)
        assert (frames, rows, cols) == (4, 6, 9)
        settings_ = load_settings(config)
        store = store_for(settings_.db)
        try:
            spec = settings_.db.collections[0]
            assert store.count_rows(spec, "clip one.mp4") == frames * rows * cols
            stored = stored_rows(store, spec, "clip one.mp4", ("frame_id", "row_idx", "col_idx"))
        finally:
            store.close()
        cells = {(r["frame_id"], r["row_idx"], r["col_idx"]) for r in stored}
        assert len(cells) == len(stored) == frames * rows * cols
        assert {r for _, r, _ in cells} == set(range(rows)) and {c for _, _, c in cells} == set(range(cols))
    finally:
        stop_lite_server(tmp_path)


def test_declared_row_fields_are_the_columns_embed_emits(tiny_navit, video_frames):
    from feature_pipeline_dagster.core.models import FAMILIES

    rows = navit.load(settings(tiny_navit, max_tokens_per_frame=64), "cpu").embed(frame_batch(video_frames[0]))
    FAMILIES[NAME].check_columns(rows)
    assert FAMILIES[NAME].patch_grid and not FAMILIES[NAME].text_tower


def test_what_a_navit_collection_costs_per_hour_of_video():
    """The per-hour figures of docs/operations.md (section "Milvus server: indexes at scale"), from the
    family's own defaults and grid: 1008 rows per 720p or 1080p frame at 1 fps."""
    from feature_pipeline_dagster.core.models import FAMILIES
    from feature_pipeline_dagster.core.models.navit.model import Preprocessing
    from feature_pipeline_dagster.core.settings import VideoInput

    family = FAMILIES["VL3-SigLIP-NaViT"]
    defaults = {key: option.default for key, option in family.options.items()}
    prep = Preprocessing(patch_size=14, merge_size=defaults["merge_size"], min_tokens=16,
                         max_tokens=defaults["max_tokens_per_frame"], mean=(0.5,) * 3, std=(0.5,) * 3,
                         rescale_factor=1 / 255, resample=3)
    assert prep.grid(720, 1280) == prep.grid(1080, 1920) == (24, 42)
    rows_per_hour = 3600 * VideoInput(path=None).sample_fps * 24 * 42
    assert rows_per_hour == 3_628_800
    row_bytes = 1152 * 4 + 8 + 44 + 4 + 8 + 2 + 2 + 8  # vector, id, video_path (~40 chars), frame_id ... generation
    assert round(rows_per_hour * row_bytes / 1e9, 1) == 17.0  # GB of raw rows per hour
    assert round(rows_per_hour * 1152 * 4 * 0.125 / 1e9, 1) == 2.1  # DISKANN's PQ codes in RAM per hour
    assert round(rows_per_hour * (1152 + 8) / 1e9, 1) == 4.2  # IVF_SQ8 per hour
    assert round(10**8 / rows_per_hour) == 28  # hours of video per 10^8 patch rows
