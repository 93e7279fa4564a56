"""Shared fixtures: a tiny CLIP of the real architecture saved through the same folder
format users load, generated videos, and a config file that ties them together."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from feature_pipeline_dagster.core.settings import ModelSettings
from feature_pipeline_dagster.core.samples import write_video

REPO = Path(__file__).resolve().parents[1]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    # open_clip's own tokenizer (49408 tokens) feeds the text tower in search tests
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


TINY_CLIP_ENV = "FP_TEST_TINY_CLIP"  # a pytest run inside another (test_milvus_server.py) reuses its model


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from feature_pipeline_dagster.core.models.clip.weights import make_random

    if os.environ.get(TINY_CLIP_ENV):
        return Path(os.environ[TINY_CLIP_ENV])

    folder = tmp_path_factory.mktemp("models") / "tiny-clip"
    return make_random(ModelSettings(name="CLIP", path=str(folder), source="folder"), folder, TINY_CLIP)


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("videos") / "sample.mp4", seconds=3.0, fps=30)


def clip_config(tmp_path: Path, model_path: Path, videos: Path, **overrides) -> dict:
    config = {
        "model": {"name": "CLIP", "arch": "ViT-B-32", "path": str(model_path), "source": "folder",
                  "features": ["video_embedding"], "batch_size": 4},
        "video_input": {"path": str(videos), "sample_fps": 1.0},
        "gpus": ["cpu"],
        "db": {"type": "milvus", "uri": str(tmp_path / "db" / "test.db"), "batch_size": 5,
               "collections": [{"name": "frames", "fields": [
                   {"name": "id", "dtype": "INT64", "is_primary": True, "auto_id": True},
                   {"name": "video_path", "dtype": "VARCHAR", "max_length": 1024},
                   {"name": "frame_id", "dtype": "INT32"},
                   {"name": "timestamp_ms", "dtype": "INT64"},
                   {"name": "embeddings", "dtype": "FLOAT_VECTOR", "dim": 32}]}]},
        "logs": {"path": str(tmp_path / "logs")},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return config


def write_config(tmp_path: Path, config: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


@pytest.fixture
def project(tmp_path, tiny_clip, monkeypatch):
    """A working directory with a video folder, a config for the tiny CLIP and a
    Dagster home, as a user would set them up."""
    videos = tmp_path / "videos"
    videos.mkdir()
    config = write_config(tmp_path, clip_config(tmp_path, tiny_clip, videos))
    monkeypatch.setenv("FEATURE_PIPELINE_CONFIG", str(config))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    yield type("Project", (), {"root": tmp_path, "videos": videos, "config": config})
    stop_lite_server(tmp_path)


def stop_lite_server(tmp_path: Path) -> None:
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    LiteServer(tmp_path / "db" / "test.db").stop()


def subprocess_env(project) -> dict:
    """The user's environment: the project's config and instance, and the virtual
    environment's commands (`dagster`, `feature-pipeline`) first on PATH, as when it is
    activated (CI runs `.venv/bin/python -m pytest` without activating it)."""
    env = dict(os.environ)
    env.update(FEATURE_PIPELINE_CONFIG=str(project.config), DAGSTER_HOME=str(project.root / "dagster_home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


DECODER_MODULE = "feature_pipeline_dagster.core.decode.process"


def parent_of(pid) -> int:
    """A live process' parent's pid, from /proc (Linux)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def readers_of(paths, parent: int | None = None) -> list[int]:
    """Pids of the decoder processes (children of `parent`, if given) that have one of
    `paths` open: how tests find the decoder child while it reads a given video. Decoders
    only: the run's own process opens a video for a moment too (its content digest), and a
    test that signalled every reader once killed the run (SIGSEGV, CI)."""
    wanted, found = {str(p) for p in paths}, []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if parent is not None and parent_of(pid) != parent:
                continue
            if DECODER_MODULE not in Path(f"/proc/{pid}/cmdline").read_text():
                continue
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in os.listdir(f"/proc/{pid}/fd")):
                found.append(int(pid))
        except (OSError, IndexError):
            continue
    return found


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (feature_pipeline_dagster_tests/postgres.py)."""
    from feature_pipeline_dagster_tests.postgres import postgres_bin, start_postgres

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_instance(project, postgres_server, monkeypatch, request):
    """The project's Dagster instance on the production template, deploy/dagster.yaml:
    Postgres storage in a database of this test's own, credentials from the environment."""
    from feature_pipeline_dagster.cli.instance import instance_yaml
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.orchestration.placement import device_queue_limit

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    postgres_server.create_database(name)
    for key, value in postgres_server.env(name).items():
        monkeypatch.setenv(key, value)
    production = instance_yaml(device_queue_limit(load_settings(project.config)), REPO / "deploy" / "dagster.yaml")
    (project.root / "dagster_home" / "dagster.yaml").write_text(production)
    return project


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory):
    """The real Milvus server (feature_pipeline_dagster_tests/milvus_server.py), once per
    session, only inside the namespace end_to_end/test_milvus_server.py makes for it."""
    from feature_pipeline_dagster_tests.milvus_server import MilvusStandalone, inside_namespace

    if not inside_namespace():
        pytest.skip("the Milvus server runs only in its own network namespace (end_to_end/test_milvus_server.py)")
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone") / "data")
    server.start()
    yield server
    print(f"\nmilvus-server start-up: {', '.join(f'{s:.1f}s' for s in server.start_seconds)}")
    server.kill()


@pytest.fixture
def milvus_server(milvus_standalone):
    """The session's Milvus server, running and empty."""
    milvus_standalone.reset()
    return milvus_standalone


def pytest_collection_finish(session):
    """test_platforms.py's resolves wait on the package registry more than on the CPU: when
    it is among the tests, they start now and run beside the others (130 s off a fresh CI)."""
    if any(item.path.name == "test_platforms.py" for item in session.items):
        from feature_pipeline_dagster_tests import test_platforms

        test_platforms.start_resolves()


def pytest_sessionfinish(session):
    from feature_pipeline_dagster_tests import test_platforms

    test_platforms.stop_resolves()
