"""What is done is what the configured database holds: a new database or collection, or
rows deleted by hand, make videos to do; a copy or a `touch` does not; an instance
holds one folder's partitions."""

import os
import shutil

import yaml

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import write_config
from feature_pipeline_dagster_tests.end_to_end.test_end_to_end import cli


def rows(config, name: str) -> int:
    settings = load_settings(config)
    store = store_for(settings.db)
    try:
        return store.count_rows(settings.db.collections[0], name)
    finally:
        store.close()


def test_a_new_database_or_collection_or_deleted_rows_make_videos_to_do(project):
    write_video(project.videos / "a.mp4", seconds=2.5, seed=1)
    write_video(project.videos / "b.mp4", seconds=3.5, seed=2)
    assert "2 new or changed" in cli(project, "run").stderr
    assert "0 new or changed" in cli(project, "run").stderr

    config = yaml.safe_load(project.config.read_text())
    config["db"]["uri"] = str(project.root / "db" / "other.db")  # the same folder into another database
    other = write_config(project.root, config, "other.yaml")
    result = cli(project, "--config", str(other), "run")
    assert "2 new or changed" in result.stderr and (rows(other, "a.mp4"), rows(other, "b.mp4")) == (3, 4)

    config["db"]["collections"][0]["name"] = "frames_again"  # another collection
    again = write_config(project.root, config, "again.yaml")
    assert "2 new or changed" in cli(project, "run", "--config", str(again)).stderr

    settings = load_settings(project.config)  # rows deleted by hand
    store = store_for(settings.db)
    store.delete_video(settings.db.collections[0], "b.mp4")
    store.close()
    result = cli(project, "run")
    assert "1 new or changed" in result.stderr and rows(project.config, "b.mp4") == 4


def test_a_copy_or_a_touch_is_not_a_change(project):
    write_video(project.videos / "a.mp4", seconds=2.5, seed=1)
    cli(project, "run")
    os.utime(project.videos / "a.mp4")  # touch
    assert "0 new or changed" in cli(project, "run").stderr
    shutil.copy(project.videos / "a.mp4", project.root / "a-copy.mp4")  # a copy of the same content back in place
    (project.root / "a-copy.mp4").replace(project.videos / "a.mp4")
    assert "0 new or changed" in cli(project, "run").stderr
    write_video(project.videos / "a.mp4", seconds=3.5, seed=7)  # new content
    assert "1 new or changed" in cli(project, "run").stderr


def test_another_folder_in_the_same_instance_is_refused_in_one_line(project):
    write_video(project.videos / "a.mp4", seconds=2.5, seed=1)
    cli(project, "scan")
    elsewhere = project.root / "elsewhere"
    write_video(elsewhere / "a.mp4", seconds=2.5, seed=2)
    config = yaml.safe_load(project.config.read_text())
    config["video_input"]["path"] = str(elsewhere)
    other = write_config(project.root, config, "elsewhere.yaml")
    result = cli(project, "--config", str(other), "run", check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(elsewhere) in lines[0] and str(project.videos) in lines[0]
    assert "DAGSTER_HOME" in lines[0]


def test_materializations_into_another_database_show_as_stale(project):
    """The UI's code version of the embedding asset names where its rows are kept."""
    from dagster import AssetKey

    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    key = AssetKey("video_embedding")
    config = yaml.safe_load(project.config.read_text())
    config["db"]["uri"] = str(project.root / "db" / "other.db")
    other = write_config(project.root, config, "other.yaml")
    versions = {build_definitions(str(path)).resolve_assets_def(key).code_versions_by_key[key]
                for path in (project.config, other)}
    assert len(versions) == 2
