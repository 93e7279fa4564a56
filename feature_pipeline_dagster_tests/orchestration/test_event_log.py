"""The instance template's event log (orchestration/event_log.py) keeps what Dagster's own
SQLite event log keeps: the same ranged runs, recorded by each, read back alike."""

import subprocess
import sys

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.orchestration.event_log import BatchedSqliteEventLogStorage
from feature_pipeline_dagster.orchestration.materializations import latest_materializations, metadata_values
from feature_pipeline_dagster.orchestration.names import SEGMENTS_ASSET, SUMMARY_ASSET
from feature_pipeline_dagster_tests.conftest import REPO, subprocess_env

ASSETS = [AssetKey("video_embedding"), AssetKey(SUMMARY_ASSET), AssetKey(SEGMENTS_ASSET)]
VOLATILE = {"lease_acquired_at", "lease_released_at", "seconds", "frames_per_s", "decode_s"}


def recorded(home, keys: list[str]) -> tuple[dict, str]:
    """What the instance at `home` says of each asset's partitions: the materialized ones,
    each one's metadata names and data-version tags, the tags its index holds, and whether
    the asset's latest materialization is the last one stored (the step's partitions come
    in no fixed order); and the instance's event log class."""
    with DagsterInstance.from_config(str(home)) as instance:
        seen = {}
        for asset in ASSETS:
            latest = latest_materializations(instance, asset, keys)
            tags = instance.get_event_tags_for_asset(asset)
            records = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset, asset_partitions=keys),
                                                      limit=100).records
            seen[asset.to_user_string()] = {
                "materialized": sorted(instance.get_materialized_partitions(asset)),
                "metadata": {k: sorted(set(metadata_values(m)) - VOLATILE) for k, m in latest.items()},
                "tags": {k: sorted(m.tags or {}) for k, m in latest.items()},
                "indexed_tags": sorted(sorted(t) for t in tags),
                "each event's indexed tags are its own": all(
                    instance.get_event_tags_for_asset(asset, filter_event_id=r.storage_id)[0].items()
                    <= (r.asset_materialization.tags or {}).items() for r in records),
                "latest is the last stored": instance.get_latest_materialization_event(asset).dagster_event.partition
                == instance.fetch_materializations(asset, limit=1).records[0].partition_key,
            }
        return seen, type(instance.event_log_storage).__name__


def test_a_ranged_run_is_recorded_as_dagsters_own_event_log_records_it(project):
    for i in range(3):
        write_video(project.videos / f"v{i}.mp4", seconds=1.5, seed=i)
    homes = {"batched": project.root / "dagster_home", "dagster": project.root / "plain_home"}
    homes["dagster"].mkdir()
    template = yaml.safe_load((REPO / "config" / "dagster-instance.yaml").read_text())
    assert template.pop("event_log_storage")["class"] == BatchedSqliteEventLogStorage.__name__
    (homes["dagster"] / "dagster.yaml").write_text(yaml.safe_dump(template))  # Dagster's default storage
    for name, home in homes.items():
        env = {**subprocess_env(project), "DAGSTER_HOME": str(home)}
        env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
        done = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "run", "--all"], cwd=project.root,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "embedded 3 of 3 video(s)" in done.stderr, done.stderr[-2000:]
    keys = [f"v{i}.mp4" for i in range(3)]
    batched, batched_kind = recorded(homes["batched"], keys)
    plain, plain_kind = recorded(homes["dagster"], keys)
    assert (batched_kind, plain_kind) == (BatchedSqliteEventLogStorage.__name__, "SqliteEventLogStorage")
    assert batched["video_embedding"]["materialized"] == keys
    assert all(batched[a]["tags"][k] for a in batched for k in keys)  # data versions, per partition
    assert all(batched[a]["each event's indexed tags are its own"] for a in batched)
    assert batched == plain


def test_a_run_plans_each_asset_once_unless_dagsters_switch_says_0(tmp_path, monkeypatch):
    """The daemon plans a sensor's run before it queues it: per partition, a run of 400
    videos was 1200 events written one by one (orchestration/event_log.py)."""
    (tmp_path / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text())
    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        assert storage.supports_partition_subset_in_asset_materialization_planned_events
        monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "0")
        assert not storage.supports_partition_subset_in_asset_materialization_planned_events


@pytest.fixture
def library(project, monkeypatch):
    """Videos of 1 s in a library of 200 more partitions; `reads` lists each read of every
    dynamic partition (Dagster's SQLite event log's own query, counted)."""
    from dagster._core.storage.event_log import SqliteEventLogStorage

    reads = []
    read = SqliteEventLogStorage.get_dynamic_partitions
    monkeypatch.setattr(SqliteEventLogStorage, "get_dynamic_partitions",
                        lambda self, name: reads.append(name) or read(self, name))
    names = [f"v{i}.mp4" for i in range(6)]
    for i, name in enumerate(names):
        write_video(project.videos / name, seconds=1.0, seed=i)
    with DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, BatchedSqliteEventLogStorage)
        instance.add_dynamic_partitions("videos", [f"library/{i:04d}.mp4" for i in range(200)] + names)
    reads.clear()
    return type("Library", (), {"names": names, "reads": reads})


def test_a_runs_partition_reads_do_not_grow_with_its_videos(library):
    """Dagster checks each per-partition metadata call's key by reading every partition of
    the library back (orchestration/event_log.py): a read a call, three calls a video,
    19 ms a read at 10,000 partitions. A run reads them a fixed number of times, whatever
    its videos."""
    from dagster import materialize

    from feature_pipeline_dagster.orchestration.definitions import build_definitions
    from feature_pipeline_dagster.orchestration.names import RANGE_END_TAG, RANGE_START_TAG

    defs = build_definitions()
    targets = [a.key for a in defs.assets if getattr(a, "is_executable", False)]
    counts = []
    with DagsterInstance.get() as instance:
        for run in (library.names[:2], library.names[2:]):
            library.reads.clear()
            result = materialize([*defs.assets, *defs.asset_checks], selection=targets, instance=instance,
                                 resources=defs.resources, tags={RANGE_START_TAG: run[0], RANGE_END_TAG: run[-1]})
            assert result.success
            counts.append(len(library.reads))
    assert counts[0] == counts[1], counts  # 2 videos, then 4


def test_the_steps_after_the_embedding_read_what_it_left_as_the_log_gives_it_back(library, monkeypatch):
    """The embedding's step leaves its videos' metadata for the checks and the summary in the
    same process (`remember_in_run`): they read no materialization back, and what they get
    is what the event log gives back for each partition."""
    from dagster import materialize

    from feature_pipeline_dagster.orchestration import materializations
    from feature_pipeline_dagster.orchestration.definitions import build_definitions
    from feature_pipeline_dagster.orchestration.names import RANGE_END_TAG, RANGE_START_TAG

    reads, read = [], materializations.latest_materializations
    monkeypatch.setattr(materializations, "latest_materializations", lambda *a: reads.append(a[1]) or read(*a))
    defs = build_definitions()
    targets = [a.key for a in defs.assets if getattr(a, "is_executable", False)]
    with DagsterInstance.get() as instance:
        result = materialize([*defs.assets, *defs.asset_checks], selection=targets, instance=instance,
                             resources=defs.resources,
                             tags={RANGE_START_TAG: library.names[0], RANGE_END_TAG: library.names[-1]})
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
        assert reads == []
        (key, left), = materializations._in_run.items()
        assert key == (result.run_id, AssetKey("video_embedding"))
        logged = read(instance, AssetKey("video_embedding"), library.names)
        assert left == {name: metadata_values(m) for name, m in logged.items()}
        assert sorted(left) == library.names and all(m["rows"] == 1 for m in left.values())


def test_feature_pipeline_runs_read_the_librarys_partitions_once_a_run(library):
    """`feature-pipeline run`'s runs (orchestration/local_runs.py) read them once each, where
    Dagster's own steps read them 18 times a run (test above): 2 s a run at 50,000."""
    from feature_pipeline_dagster.orchestration.local_runs import materialize_chunks

    outcomes = []
    materialize_chunks(iter([library.names[:2], library.names[2:]]), "cpu", outcomes.append)
    assert sorted(o.key for o in outcomes) == library.names
    assert all(type(o).__name__ == "Embedded" for o in outcomes)
    assert len(library.reads) == 2, library.reads  # one a run


def test_observations_of_no_run_read_back_as_in_dagsters_own_log(tmp_path, monkeypatch):
    """The folder sensor's observations (events of no run: one by one through the kept
    connection, and as `report_observations`' batch) read back, by another instance, as
    Dagster's own SQLite log gives them one by one: each partition's latest data version, the
    asset's latest observation, and the runless shard's records."""
    from dagster import AssetObservation

    from feature_pipeline_dagster.orchestration.event_log import report_observations

    template = yaml.safe_load((REPO / "config" / "dagster-instance.yaml").read_text())
    plain = {k: v for k, v in template.items() if k != "event_log_storage"}

    def one_by_one(instance, observations):
        for observation in observations:
            instance.report_runless_asset_event(observation)

    seen = {}
    for name, config, write in (("batched", template, one_by_one), ("dagster", plain, one_by_one),
                                ("batched, as a batch", template, report_observations),
                                ("dagster, as a batch", plain, report_observations)):
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with DagsterInstance.from_config(str(home)) as instance:
            for version in (1, 2):
                write(instance, [AssetObservation("video_file", partition=f"v{i}.mp4",
                                                  tags={"dagster/data_version": f"{i}-{version}"}) for i in range(3)])
        with DagsterInstance.from_config(str(home)) as instance:  # another reader: only what was committed
            records = instance.fetch_observations(AssetRecordsFilter(asset_key=AssetKey("video_file")), limit=100)
            latest = {}
            for record in records.records:  # newest first
                latest.setdefault(record.partition_key, record.asset_observation.tags["dagster/data_version"])
            seen[name] = (type(instance.event_log_storage).__name__, latest, len(records.records),
                          len(instance.all_logs("")),
                          instance.get_latest_data_version_record(AssetKey("video_file"), partition_key="v1.mp4")
                          .asset_observation.tags["dagster/data_version"])
    assert seen["batched"][0] == seen["batched, as a batch"][0] == BatchedSqliteEventLogStorage.__name__
    assert seen["dagster"][0] == seen["dagster, as a batch"][0] == "SqliteEventLogStorage"
    expected = ({f"v{i}.mp4": f"{i}-2" for i in range(3)}, 6, 6, "1-2")
    assert {name: found[1:] for name, found in seen.items()} == {name: expected for name in seen}


def test_a_batchs_indexed_tags_are_each_its_own_events(tmp_path):
    """One transaction writes a batch of materializations into the index database, then the
    tags Dagster indexes by their event ids (a partition's data version, which the sensor's
    runs compare): each id must be its own event's."""
    import time

    from dagster import AssetMaterialization, AssetRecordsFilter, DagsterEventType, EventLogEntry
    from dagster._core.events import DagsterEvent, StepMaterializationData

    asset, storage = AssetKey("video_embedding"), BatchedSqliteEventLogStorage(str(tmp_path))

    def materialized(i: int) -> EventLogEntry:
        event = AssetMaterialization(asset, partition=f"v{i}.mp4", tags={"dagster/data_version": f"d{i}"})
        return EventLogEntry(error_info=None, level=20, user_message="", run_id="r", timestamp=time.time(),
                             dagster_event=DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "job",
                                                        event_specific_data=StepMaterializationData(event)))

    storage.store_event_batch([materialized(i) for i in range(5)])
    storage.store_event_batch([materialized(i) for i in range(5, 8)])
    records = storage.fetch_materializations(AssetRecordsFilter(asset_key=asset), limit=10).records
    tags = {r.partition_key: storage.get_event_tags_for_asset(asset, filter_event_id=r.storage_id) for r in records}
    assert tags == {f"v{i}.mp4": [{"dagster/data_version": f"d{i}"}] for i in range(8)}
    assert storage.get_latest_materialization_events([asset])[asset].dagster_event.partition == "v7.mp4"
