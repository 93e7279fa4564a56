"""The Dagster instance the CLI works in (DAGSTER_HOME, default ./.dagster, made from
the project's template on first use) and the videos it registers as partitions."""

from __future__ import annotations

import json
import os
from pathlib import Path

from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.core.videos import list_videos, partition_key
from feature_pipeline_dagster.orchestration.placement import device_queue_limit

DEFAULT_DAGSTER_HOME = ".dagster"
FOLDER_MARKER = "feature_pipeline_folder.json"
INSTANCE_TEMPLATE = Path(__file__).resolve().parents[2] / "config" / "dagster-instance.yaml"


def dagster_instance(settings: Settings):
    """The instance at DAGSTER_HOME, made from the project's template on first use, and
    refused if its partitions are another folder's videos (a partition is a path
    relative to the folder: two folders in one instance would take each other's)."""
    from dagster import DagsterInstance

    instance_home(settings)
    return DagsterInstance.get()


def instance_home(settings: Settings) -> Path:
    """DAGSTER_HOME, made from the template on first use and claimed for the config's
    folder (or a ConfigError), without opening the instance."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(DEFAULT_DAGSTER_HOME).resolve())))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and INSTANCE_TEMPLATE.exists():
        (home / "dagster.yaml").write_text(instance_yaml(device_queue_limit(settings)))
    claim_folder(home, settings)
    return home


def claim_folder(home: Path, settings: Settings) -> None:
    """The instance's video folder, recorded on first use; another folder is refused."""
    marker = home / FOLDER_MARKER
    folder = str(settings.video_input.path.resolve())
    try:
        owner = json.loads(marker.read_text())["video_input"]
    except (OSError, ValueError, KeyError):
        marker.write_text(json.dumps({"video_input": folder}) + "\n")
        return
    if owner != folder:
        raise ConfigError(
            f"{settings.source}: video_input.path is {folder}, but the Dagster instance at {home} holds the "
            f"partitions of {owner}: give each folder its own instance (export DAGSTER_HOME=<another folder>)")


def instance_yaml(queue_limit: int, template: Path = INSTANCE_TEMPLATE) -> str:
    """The instance template (or deploy/dagster.yaml, the production one) with the queue's
    limit per device tag (orchestration/placement.py: `device_queue_limit`)."""
    return template.read_text().replace(
        "limit: 3  # runs_per_device + 2", f"limit: {queue_limit}  # runs_per_device + 2")


def register_videos(settings: Settings, instance, videos: dict | None = None) -> tuple[dict[str, object], list[str]]:
    """Add a partition for every video (key -> FolderEntry; default: the folder's) not yet
    known; returns the videos, and every partition key in Dagster's order (new ones last)."""
    from feature_pipeline_dagster.orchestration.partitions import videos_partitions

    if videos is None:
        videos = {partition_key(v.relpath): v for v in list_videos(settings.video_input)}
    known = instance.get_dynamic_partitions(videos_partitions.name)
    seen = set(known)
    new = [key for key in videos if key not in seen]
    if new:
        instance.add_dynamic_partitions(videos_partitions.name, new)
    return videos, [*known, *new]
