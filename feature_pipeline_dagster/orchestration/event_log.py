"""Dagster's SQLite event log, with a ranged step's materializations written in one
transaction per database instead of two each, and one open connection to its index
database instead of a new engine per query.

A ranged run's step reports one materialization per partition, as one batch when
`DAGSTER_EVENT_BATCH_SIZE` is set (Dagster's own switch). Dagster's Postgres storage writes
such a batch in one statement; its SQLite storage (the default) stores the events one by
one, each with a new connection and a commit in the run's database and again in the
index database: 6.7 ms an event alone here, 13 ms beside the Lite server's writes, three
events a video (the embedding, the summary, the shots). This class writes the batch as
the Postgres storage does, into both databases, each event serialized once for both and
inserted by one `executemany` (a batch's multi-row INSERT cost SQLAlchemy a compile): 1000
embedding materializations (18 KB each, their contact sheets) stored in 0.50 s instead of
0.87, 1000 of the summary's 0.21 s instead of 0.45 (stored again from a run's log); reads
are Dagster's.

Each per-partition metadata call (`add_asset_metadata(partition_key=...)`, one or two a
video) checks the key by reading every dynamic partition back: three queries, and for each
Dagster's SQLite storage creates an engine, connects, and asks SQLite whether the partitions
table exists: 18 ms a call at 1000 partitions here (py-spy). This class keeps one connection
to the index database per process (used under Dagster's own lock, one thread at a time,
made anew after a fork) and remembers which tables exist.

And Dagster checks that key by reading every partition of the library back, a read a
call: 1.4 ms at 1000 partitions, 19.5 at 10,000, 109 at 50,000 here. Under
`partitions_read_once` (the IO manager's per-partition loops; `feature-pipeline run`'s
runs whole) one read serves them all.

`config/dagster-instance.yaml` names it as the instance's `event_log_storage`, its
databases where Dagster's default puts them (`$DAGSTER_HOME/history/runs/`), and every
process that opens the instance (a run's, the daemon's, `feature-pipeline`) batches
(`DAGSTER_EVENT_BATCH_SIZE` 1000 unless exported; 0 turns it off). 300 stand-in clips
(bench_gpu_standin.py's), `feature-pipeline run`: 28.7 s on Dagster's own, 21.9 s with
the batches, 18.9 s with the one connection too.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

from dagster import DagsterEventType, EventLogEntry, Field, StringSource

# `dagster._` imports, which test_architecture.py allows here (and the run launcher's one):
# the module path Dagster's docs give for this class in dagster.yaml (`event_log_storage:
# module: dagster._core.storage.event_log`), which this module extends, and in
# `report_observations` what a runless event is built from. Checked against Dagster's own log
# by orchestration/test_event_log.py; dagster is pinned to 1.13.
from dagster._core.storage.event_log import SqlEventLogStorageTable, SqliteEventLogStorage
from sqlalchemy import create_engine, select
from sqlalchemy.pool import StaticPool

from feature_pipeline_dagster.orchestration.names import PLANNED_EVENTS_ENV

BATCH_ENV, BATCH_EVENTS = "DAGSTER_EVENT_BATCH_SIZE", "1000"
INDEX_SHARD, BUSY_TIMEOUT_S = "index", 30  # Dagster's index database (index.db) and its SQLite busy timeout
RUNLESS_SHARD = ""  # where Dagster's SQLite log keeps the events of no run (its RUNLESS_RUN_ID)


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    def __init__(self, base_dir: str, inst_data=None):
        self._engines, self._engines_pid, self._tables = {}, None, set()
        self._read_once = threading.local()  # .partitions: name -> (keys, set) under `partitions_read_once`
        super().__init__(base_dir, inst_data)
        os.environ.setdefault(BATCH_ENV, BATCH_EVENTS)

    @contextmanager
    def _kept(self, shard: str) -> Iterator:
        """A connection to `shard` kept open in this process (the index, the runless events)."""
        with self._db_lock:  # Dagster's: one thread at a time, as its own connections are used
            if self._engines_pid != os.getpid():
                self._engines, self._engines_pid = {}, os.getpid()
            if shard not in self._engines:
                engine = create_engine(self.conn_string_for_shard(shard), poolclass=StaticPool,
                                       connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
                self._initdb(engine)
                self._engines[shard] = engine
            with self._engines[shard].connect() as conn, conn.begin():
                yield conn

    def index_connection(self):
        return self._kept(INDEX_SHARD)

    def run_connection(self, run_id: str | None = None):
        """Dagster's, but the events of no run go through a kept connection: the folder
        sensor's observations of new files, which the daemon writes one by one before it
        creates the tick's runs: 1.2 ms an observation against Dagster's own 6.8
        (`bench_sensor.py`; 3.7 with the kept index connection alone)."""
        return self._kept(run_id) if run_id == RUNLESS_SHARD else super().run_connection(run_id)

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before each partition query; a table, once there, stays."""
        if table_name not in self._tables and super().has_table(table_name):
            self._tables.add(table_name)
        return table_name in self._tables

    @contextmanager
    def partitions_read_once(self) -> Iterator[None]:
        """Within it, this thread reads each dynamic partitions definition's keys once."""
        if getattr(self._read_once, "partitions", None) is not None:
            yield
            return
        self._read_once.partitions = {}
        try:
            yield
        finally:
            self._read_once.partitions = None

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        read = getattr(self._read_once, "partitions", None)
        if read is None:
            return super().get_dynamic_partitions(partitions_def_name)
        return self._keys(read, partitions_def_name)[0]

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        read = getattr(self._read_once, "partitions", None)
        if read is None:
            return super().has_dynamic_partition(partitions_def_name, partition_key)
        return partition_key in self._keys(read, partitions_def_name)[1]

    def _keys(self, read: dict, name: str) -> tuple[Sequence[str], frozenset]:
        if name not in read:
            keys = super().get_dynamic_partitions(name)
            read[name] = (keys, frozenset(keys))
        return read[name]

    def add_dynamic_partitions(self, partitions_def_name: str, partition_keys: Sequence[str]) -> None:
        self._forget(partitions_def_name)
        super().add_dynamic_partitions(partitions_def_name, partition_keys)

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._forget(partitions_def_name)
        super().delete_dynamic_partition(partitions_def_name, partition_key)

    def _forget(self, name: str) -> None:
        if getattr(self._read_once, "partitions", None) is not None:
            self._read_once.partitions.pop(name, None)

    def dispose(self) -> None:
        if self._engines_pid == os.getpid():
            for engine in self._engines.values():
                engine.dispose()
        self._engines = {}
        super().dispose()

    @classmethod
    def config_type(cls):
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        """`base_dir` by default where Dagster's own log keeps its files in the instance's folder."""
        base_dir = config_value.get("base_dir")
        if not base_dir:
            if not os.environ.get("DAGSTER_HOME"):
                raise ValueError(f"{cls.__name__}: set DAGSTER_HOME, or the event log's config.base_dir")
            base_dir = os.path.join(os.environ["DAGSTER_HOME"], "history", "runs")
        return cls(base_dir=base_dir, inst_data=inst_data)

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        """A run plans each asset once with its partitions as a subset, not once per
        partition, unless `DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=0` is exported
        (Dagster's switch, off by default; `feature-pipeline run` sets it for any storage).
        A sensor's run of 400 videos planned 1200 events (three assets) one by one in the
        daemon before it queued the run: 3.7-8.5 s of each run's start beside the running
        ones (bench_gpu_standin.py's sensor). What is lost: the UI does not mark a failed
        run's partitions failed (`videos_complete` and `<collection>_failed` name them)."""
        return os.environ.get(PLANNED_EVENTS_ENV, "1").strip().lower() not in ("0", "false", "")

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        kinds = {e.get_dagster_event().event_type for e in events}
        keys = {e.get_dagster_event().asset_key for e in events}
        if (kinds not in ({DagsterEventType.ASSET_MATERIALIZATION}, {DagsterEventType.ASSET_OBSERVATION})
                or len(keys) != 1 or None in keys or len({e.run_id for e in events}) != 1):
            return super().store_event_batch(events)
        table, rows = SqlEventLogStorageTable, [self._event_to_row(event) for event in events]  # serialized once
        with self.run_connection(events[0].run_id) as conn:
            conn.execute(table.insert(), rows)
        with self.index_transaction() as conn:
            conn.execute(table.insert(), rows)
            # their ids: the newest rows, as the transaction holds SQLite's write lock since its insert
            newest = select(table.c.id).order_by(table.c.id.desc()).limit(len(rows))
            ids = sorted(row[0] for row in conn.execute(newest))
            self._store_asset_event_tags(conn, events, ids)
            self._store_asset_event(conn, events[-1], ids[-1])  # the asset's latest event, as Postgres keeps it


def report_observations(instance, observations: Sequence) -> None:
    """Observations of no run (the folder sensor's new files), written as one batch: one
    transaction per database with this log, where Dagster's sensor daemon writes a tick's
    asset events one by one before it creates the tick's runs (1.2 ms of CPU an observation
    here, its tick 2 s long beside the runs with 200 new files). Under any other event log,
    or with `DAGSTER_EVENT_BATCH_SIZE=0`, Dagster stores them one by one."""
    import uuid

    from dagster import DagsterEvent
    from dagster._core.events import AssetObservationData, DagsterEventBatchMetadata
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    batch = uuid.uuid4().hex
    for i, observation in enumerate(observations):
        event = DagsterEvent(DagsterEventType.ASSET_OBSERVATION.value, job_name=RUNLESS_JOB_NAME,
                             event_specific_data=AssetObservationData(observation))
        instance.report_dagster_event(event, run_id=RUNLESS_RUN_ID,
                                      batch_metadata=DagsterEventBatchMetadata(batch, i == len(observations) - 1))


@contextmanager
def partitions_read_once(instance) -> Iterator[None]:
    """Per-partition metadata calls on `instance` within it read the library's partitions
    once (this module's docstring); on another event log, as Dagster does."""
    storage = instance.event_log_storage
    if isinstance(storage, BatchedSqliteEventLogStorage):
        with storage.partitions_read_once():
            yield
    else:
        yield
