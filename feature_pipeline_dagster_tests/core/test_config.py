from pathlib import Path

import pytest

from feature_pipeline_dagster.core.settings import ConfigError, load_settings
from feature_pipeline_dagster_tests.conftest import clip_config, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["clip-config.yaml", "navit-config.yaml", "smoke-config.yaml"])
def test_shipped_configs_parse(name):
    settings = load_settings(REPO / "config" / name, check_paths=False)
    spec = settings.collection_for("video_embedding")
    assert spec.vector_field.dim == {"CLIP": 512, "VL3-SigLIP-NaViT": 1152}[settings.model.name]
    assert spec.field("frame_id").dtype in ("INT32", "INT64")
    assert spec.field("timestamp_ms") is not None and spec.field("generation") is not None


def test_defaults(tmp_path, tiny_clip):
    settings = load_settings(write_config(tmp_path, clip_config(tmp_path, tiny_clip, tmp_path)))
    assert settings.video_input.sample_fps == 1.0 and settings.video_input.max_frames is None
    assert settings.video_input.decoder == "auto" and settings.video_input.sampling == "fps"
    assert settings.db.is_lite and settings.gpus == ("cpu",)


def test_lite_file_defaults_to_db_folder(tmp_path, tiny_clip):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    del config["db"]["uri"]
    config["db"]["name"] = "x.db"
    assert load_settings(write_config(tmp_path, config)).db.uri == str(Path("db") / "x.db")


BAD = [
    ({"model.name": None}, "model.name: missing required key"),
    ({"model.name": "ResNet"}, "model.name: unknown model 'ResNet' (expected one of: CLIP, VL3-SigLIP-NaViT)"),
    ({"model.merge_size": 2}, "model.merge_size: only VL3-SigLIP-NaViT takes merge_size (model.name is CLIP)"),
    ({"model.batch_size": 0}, "model.batch_size: must be positive, got 0"),
    ({"model.batch_size": True}, "model.batch_size: expected int, got True"),
    ({"model.dtype": "fp8"}, "model.dtype: unknown dtype 'fp8' (expected auto, float32, bfloat16 or float16)"),
    ({"model.features": ["ok", "not ok"]}, "model.features: expected a list of asset names"),
    ({"model.extra": 1}, "model.extra: unknown key (expected one of: arch, batch_size, dtype, features, "
                         "max_tokens_per_frame, merge_size, name, path, quick_gelu, source)"),
    ({"video_input.extensions": []}, "video_input.extensions: expected a list of file extensions such as .mp4"),
    ({"gpus": 3}, "gpus: expected list or str, got 3"),
    ({"gpus": ["auto", "cpu"]}, "gpus: 'auto' stands alone"),
    ({"placement": "cloud"}, "placement: unknown placement 'cloud' (expected local or kubernetes)"),
    ({"db.type": "pg"}, "db.type: only 'milvus' is supported"),
    ({"db.lite_idle_minutes": -1}, "db.lite_idle_minutes: expected a positive number of minutes (0: the default, 10)"),
    ({"model.source": "huggingface", "model.path": "openai", "model.arch": "ViT-Q-99"}, "model.arch: unknown open_clip architecture 'ViT-Q-99'"),
    ({"model.path": "/nonexistent/weights"}, "model.path: no such file or folder"),
    ({"video_input.path": "/nonexistent/videos"}, "video_input.path: no such folder"),
    ({"video_input.sample_fps": -1}, "video_input.sample_fps: must be positive"),
    ({"video_input.decoder": "ffmpeg"},
     "video_input.decoder: unknown decoder 'ffmpeg' (expected one of: auto, decord, torchcodec, pyav, nvdec)"),
    ({"video_input.sampling": "scenes"},
     "video_input.sampling: unknown sampling 'scenes' (expected fps, keyframes or nearest)"),
    ({"video_input.sampling": "nearest", "video_input.max_shift_ms": -5},
     "video_input.max_shift_ms: must be a number of milliseconds >= 0, got -5.0"),
    ({"video_input.sampling": "nearest", "video_input.max_shift_ms": "100ms"},
     "video_input.max_shift_ms: expected float, got '100ms'"),
    ({"video_input.max_shift_ms": float("nan")}, "video_input.max_shift_ms: must be a number of milliseconds >= 0"),
    ({"gpus": ["cuda:0", "tpu:1"]}, "gpus[1]: unknown device 'tpu:1'"),
    ({"db.uri": "mysql://x"}, "db.uri: expected a Milvus server URL"),
    ({"db.token": "secret"}, "credentials never go in the file"),
    ({"db.collections": []}, "db.collections: 0 collection(s) for 1 feature(s)"),
    ({"search": {"saved": []}}, "search.saved: unknown key (expected one of: watch)"),
    ({"search": {"watch": "red car"}}, "search.watch: expected list, got 'red car'"),
    ({"search": {"watch": ["red car"]}}, "search.watch[0]: expected a mapping, got str"),
    ({"search": {"watch": [{"text": "a car", "threshold": 0.3}]}}, "search.watch[0].name: missing required key"),
    ({"search": {"watch": [{"name": "car", "threshold": 0.3}]}}, "search.watch[0]: give text or image, not both or neither"),
    ({"search": {"watch": [{"name": "car", "text": "a car"}]}}, "search.watch[0].threshold: missing required key"),
    ({"search": {"watch": [{"name": "car", "text": "a car", "threshold": 31}]}},
     "search.watch[0].threshold: a cosine, between -1 and 1, got 31.0"),
    ({"search": {"watch": [{"name": "car", "image": "/nonexistent/car.png", "threshold": 0.9}]}},
     "search.watch[0].image: no such file: /nonexistent/car.png"),
    ({"search": {"watch": [{"name": "car", "text": "a", "threshold": 0.3}, {"name": "car", "text": "b", "threshold": 0.3}]}},
     "search.watch[1].name: a second saved search named 'car'"),
]


def test_index_keys(tmp_path, tiny_clip):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    collection = config["db"]["collections"][0]
    collection["index"] = {"type": "hnsw", "params": {"M": 16}, "search_params": {"ef": 64}}
    spec = load_settings(write_config(tmp_path, config)).db.collections[0]
    assert (spec.index.type, spec.index.metric, spec.index.params, spec.index.search) == (
        "HNSW", "COSINE", (("M", 16),), (("ef", 64),))
    assert spec.partition_key
    collection["index"] = {"type": "IVF_SQ8", "metric": "dot"}
    with pytest.raises(ConfigError, match=r"db.collections\[0\].index.metric: unknown metric 'DOT'"):
        load_settings(write_config(tmp_path, config))
    collection["index"] = {"type": "ANNOY"}
    with pytest.raises(ConfigError, match=r"db.collections\[0\].index.type: unknown index type 'ANNOY'"):
        load_settings(write_config(tmp_path, config))


@pytest.mark.parametrize("search,message", [
    ({"ef_text": "wide"},
     "index.search_params.ef_text: must be a whole number from 1 to 16384 (HNSW's candidate list), got 'wide'"),
    ({"ef": 64, "ef_text": 0}, "index.search_params.ef_text: must be a whole number from 1 to 16384"),
    ({"ef": 20000}, "index.search_params.ef: must be a whole number from 1 to 16384"),
    ({"ef": 64.5}, "index.search_params.ef: must be a whole number"),
])
def test_search_ef_keys_are_checked(tmp_path, tiny_clip, search, message):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["db"]["collections"][0]["index"] = {"search_params": search}
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: db.collections[0].{message}") and "\n" not in str(err.value)
    config["db"]["collections"][0]["index"] = {"search_params": {"ef": 128, "ef_text": 512}}
    spec = load_settings(write_config(tmp_path, config)).db.collections[0]
    assert spec.index.search == (("ef", 128), ("ef_text", 512))


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_config_names_file_and_key(tmp_path, tiny_clip, overrides, message):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def _field_error(tmp_path, tiny_clip, index, **changes):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["db"]["collections"][0]["fields"][index].update(changes)
    path = write_config(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    return str(err.value)


def test_unknown_dtype(tmp_path, tiny_clip):
    message = _field_error(tmp_path, tiny_clip, 2, dtype="INT9")
    assert "db.collections[0].fields[2].dtype: unknown dtype 'INT9'" in message


def test_dim_must_match_model(tmp_path, tiny_clip):
    message = _field_error(tmp_path, tiny_clip, 4, dim=1152)
    assert "db.collections[0].fields[4].dim: dim 1152 does not match model CLIP" in message and "32-d" in message


def test_field_the_model_does_not_produce(tmp_path, tiny_clip):
    message = _field_error(tmp_path, tiny_clip, 2, name="row_idx")
    assert "'row_idx' is not produced by model CLIP" in message


def test_unknown_key_is_named(tmp_path, tiny_clip):
    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["db"]["bath_size"] = 3
    with pytest.raises(ConfigError, match=r"db\.bath_size: unknown key"):
        load_settings(write_config(tmp_path, config))


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_sampling_is_part_of_the_code_version_and_the_decoder_is_not(tmp_path, tiny_clip):
    """Keyframe sampling embeds other frames; another backend gives the same frames
    (test_decoder_parity.py). The default's code version is the one it was before."""
    from feature_pipeline_dagster.core.models import code_version

    def version(**overrides):
        return code_version(load_settings(write_config(tmp_path, clip_config(tmp_path, tiny_clip, tmp_path, **overrides))))

    fps = version()
    assert version(**{"video_input.sampling": "fps"}) == fps
    assert version(**{"video_input.decoder": "pyav"}) == fps == version(**{"video_input.decoder": "torchcodec"})
    assert version(**{"video_input.sampling": "keyframes"}) != fps
    nearest = version(**{"video_input.sampling": "nearest"})
    assert nearest not in (fps, version(**{"video_input.sampling": "keyframes"}))
    assert version(**{"video_input.sampling": "nearest", "video_input.max_shift_ms": 250}) == nearest  # the default
    assert version(**{"video_input.sampling": "nearest", "video_input.max_shift_ms": 100}) != nearest
    assert version(**{"video_input.max_shift_ms": 100}) == fps  # read with nearest only


def test_nearest_sampling_keys(tmp_path, tiny_clip):
    def video_input(**overrides):
        return load_settings(write_config(tmp_path, clip_config(tmp_path, tiny_clip, tmp_path, **overrides))).video_input

    default = video_input(**{"video_input.sampling": "nearest", "video_input.sample_fps": 2})
    assert (default.sampling, default.max_shift_ms, default.shift_ms) == ("nearest", None, 125.0)
    given = video_input(**{"video_input.sampling": "nearest", "video_input.max_shift_ms": 0})
    assert (given.max_shift_ms, given.shift_ms) == (0.0, 0.0)


def test_the_reference_in_docs_is_the_declared_keys():
    """docs/configuration.md's reference is generated from the keys' declarations
    (core/settings.py and each model family's): a key added, renamed or re-defaulted there
    and not regenerated fails here."""
    from feature_pipeline_dagster.core.settings import with_reference

    document = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert with_reference(document) == document, (
        "docs/configuration.md's reference differs from the declared keys: regenerate it with "
        "`python -m feature_pipeline_dagster.core.settings --reference docs/configuration.md`")
    for key in ("`sampling`", "`max_shift_ms`", "`merge_size`", "`quick_gelu`", "`search_params`", "`tolerations`"):
        assert key in document
