"""`feature-pipeline duplicates [--json]` as a subprocess after `feature-pipeline run`, and
the summary asset's per-partition `duplicates` line in the Dagster instance."""

from __future__ import annotations

import json
import subprocess
import sys

from feature_pipeline_dagster_tests.conftest import subprocess_env
from feature_pipeline_dagster_tests.duplicate_set import precision_recall, write_duplicate_set


def cli(project, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", *args], cwd=project.root,
                          env=subprocess_env(project), capture_output=True, text=True, timeout=600)


def test_duplicates_command_and_the_summarys_metadata(project):
    truth = write_duplicate_set(project.videos, originals=2, distinct=2)
    before = cli(project, "duplicates")
    assert before.returncode == 2 and before.stdout == ""
    assert before.stderr.strip().splitlines()[-1].endswith(
        f"embed videos first (feature-pipeline --config {project.config} run)"), before.stderr
    assert "Traceback" not in before.stderr

    run = cli(project, "run")
    assert run.returncode == 0, run.stderr[-3000:]
    listed = cli(project, "duplicates", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    groups = json.loads(listed.stdout)
    found = {tuple(sorted((p["a"]["video_path"], p["b"]["video_path"]))) for g in groups for p in g["pairs"]}
    implied = {(a, b) for g in groups for i, a in enumerate(g["videos"]) for b in g["videos"][i + 1:]}
    assert found <= implied
    precision, recall = precision_recall(implied, truth.true_pairs())
    assert precision >= 0.95 and recall >= 0.95, groups
    assert "RANDOM WEIGHTS" in listed.stderr
    assert cli(project, "duplicates", "--json").stdout == listed.stdout  # stable

    printed = cli(project, "duplicates")
    assert printed.returncode == 0, printed.stderr[-3000:]
    blocks = printed.stdout.strip().split("\n\n")
    assert len(blocks) == len(groups) == 2
    trim = truth.trims[0]
    assert any(trim.video in line and trim.original in line and " s ↔ " in line for line in blocks[0].splitlines())

    line = summary_duplicates(project, truth.families[0][0])
    assert all(v in line for v in truth.families[0][1:]) and "↔" in line, line
    assert summary_duplicates(project, truth.families[-1][0]) == "none"


def summary_duplicates(project, video: str) -> str:
    from dagster import AssetKey, DagsterInstance

    from feature_pipeline_dagster.core.videos import partition_key
    from feature_pipeline_dagster.orchestration.materializations import latest_materializations, metadata_values
    from feature_pipeline_dagster.orchestration.names import SUMMARY_ASSET

    with DagsterInstance.get() as instance:
        key = partition_key(video)
        latest = latest_materializations(instance, AssetKey(SUMMARY_ASSET), [key])
        return metadata_values(latest.get(key))["duplicates"]


def test_a_patch_model_is_refused_in_one_line_before_any_server(project):
    from feature_pipeline_dagster_tests.conftest import REPO

    (project.root / "video_samples").mkdir()
    refused = cli(project, "duplicates", "--config", str(REPO / "config" / "navit-config.yaml"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == ("error: duplicates need one vector per frame: model VL3-SigLIP-NaViT stores a "
                                      "row per patch in video_embedding_collection; use a CLIP config")
    assert not (project.root / "db").exists()
