"""Retries with judgement: a transient fault (Milvus unreachable) is retried with
backoff and then fails with one clear line; a bad video fails once, never retried."""

import os
import socket

import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, materialize

from feature_pipeline_dagster.core.samples import write_video


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_one(project, key):
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("videos", [key])
        result = materialize([*defs.assets], selection=[AssetKey("video_embedding")], instance=instance,
                             resources=defs.resources, partition_key=key, raise_on_error=False)
    retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    return result, len(retries), failure


def test_unreachable_milvus_is_retried_then_named(project, monkeypatch):
    import feature_pipeline_dagster.orchestration.assets.embeddings as embeddings
    from dagster import RetryPolicy

    monkeypatch.setattr(embeddings, "RETRY_POLICY", RetryPolicy(max_retries=2, delay=0.1))
    config = yaml.safe_load(project.config.read_text())
    uri = f"http://127.0.0.1:{closed_port()}"
    config["db"]["uri"] = uri
    project.config.write_text(yaml.safe_dump(config))
    write_video(project.videos / "a.mp4", seconds=1)
    result, retries, failure = run_one(project, "a.mp4")
    assert not result.success and retries == 2
    assert failure.startswith(f"Milvus at {uri}: ") and "\n" not in failure


def test_a_corrupt_video_fails_once(project):
    (project.videos / "bad.mp4").write_bytes(os.urandom(4096))
    result, retries, failure = run_one(project, "bad.mp4")
    assert not result.success and retries == 0
    assert "bad.mp4: cannot open video" in failure
