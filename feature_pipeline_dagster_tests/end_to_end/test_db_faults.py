"""Database faults against a real Milvus server (`milvus-lite server` on loopback, started
here; and, inside the namespace end_to_end/test_milvus_server.py makes, a real Milvus 2.3
standalone) that is killed in the middle of a ranged run: the step is retried with backoff and,
once the server is back, every video ends with exactly its rows; if it stays down, the run
fails after its retries with one line naming the URI and what failed, and the next run,
once the server is back, works at once."""

import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from dagster import AssetKey, Backoff, DagsterEventType, DagsterInstance, RetryPolicy, materialize

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.decode.reader import VideoReader
from feature_pipeline_dagster.core.videos import partition_key
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store.milvus.store import MilvusStore
from feature_pipeline_dagster_tests.milvus_server import MilvusStandalone, backends

HOST = "127.0.0.1"
VIDEOS = ["f0.mp4", "f1.mp4", "f2.mp4", "f3.mp4"]


class Server:
    """`milvus-lite server` on loopback, killed and started again on the same port and
    data directory."""

    def __init__(self, data_dir):
        self.data_dir, self.process = data_dir, None
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        self.uri = f"http://{HOST}:{self.port}"

    def start(self) -> None:
        with open(self.data_dir.with_suffix(".log"), "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                 "--host", HOST, "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self._accepts():
            assert self.process.poll() is None and time.monotonic() < deadline, "milvus-lite server did not start"
            time.sleep(0.05)

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((HOST, self.port)) == 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(params=backends("lite_server"))
def server(request, tmp_path):
    if request.param != "lite_server":
        yield request.getfixturevalue("milvus_server")  # killed by the test, started again by the next reset
        return
    server = Server(tmp_path / "milvus-server")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def expected(project, server):
    """Four videos written to the server two rows per insert; each video's frame ids
    from its sampling plan."""
    config = yaml.safe_load(project.config.read_text())
    config["db"].update(uri=server.uri, batch_size=2)
    config["model"]["batch_size"] = 2
    project.config.write_text(yaml.safe_dump(config))
    sampling = load_settings(project.config).video_input
    frame_ids = {}
    for i, name in enumerate(VIDEOS):
        write_video(project.videos / name, seconds=10, fps=10, seed=i)
        plan = VideoReader(project.videos / name).plan(sampling.decode)
        frame_ids[name] = sorted(plan.frame_ids.tolist())
    return frame_ids


class KillOnceRowsLand(threading.Thread):
    """Kills the server once the run's first insert has returned, and starts it again
    `down_for` seconds later (None: it stays down). The run's writer waits for the kill,
    so the kill falls mid-run however fast the run is (polling the server for rows could
    see them only after a 1 s run had ended: Milvus 2.3's counts lag its inserts)."""

    def __init__(self, server, monkeypatch, down_for: float | None):
        super().__init__(daemon=True)
        self.server, self.down_for = server, down_for
        self.rows_in, self.killed, self.run_over = threading.Event(), threading.Event(), threading.Event()
        self.killed_at = self.back_at = None
        insert = MilvusStore.insert

        def insert_then_wait_for_the_kill(store, *args, **kwargs):
            insert(store, *args, **kwargs)
            if not self.rows_in.is_set():
                self.rows_in.set()
                self.killed.wait(timeout=60)

        monkeypatch.setattr(MilvusStore, "insert", insert_then_wait_for_the_kill)

    def run(self):
        while not self.rows_in.wait(0.05):
            if self.run_over.is_set():
                return
        self.server.kill()
        self.killed_at = time.time()
        self.killed.set()
        if self.down_for is not None:
            time.sleep(self.down_for)
            self.server.start()
            self.back_at = time.time()


def row_count(client, collection: str) -> int:
    return client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"]


def materialize_range(watcher: KillOnceRowsLand | None = None):
    """The four videos in one Dagster run, in this process; returns the result and its
    retries as {time: error with its causes}."""
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    with DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("videos", [partition_key(v) for v in VIDEOS])
        if watcher:
            watcher.start()
        try:
            result = materialize([*defs.assets], selection=[AssetKey("video_embedding")], instance=instance,
                                 resources=defs.resources, raise_on_error=False,
                                 tags={"dagster/asset_partition_range_start": partition_key(VIDEOS[0]),
                                       "dagster/asset_partition_range_end": partition_key(VIDEOS[-1])})
        finally:
            if watcher:
                watcher.run_over.set()
                watcher.join(timeout=120)
        retries = {e.timestamp: causes(e.dagster_event.event_specific_data.error)
                   for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)}
    if watcher:
        assert watcher.killed_at is not None, "the run ended before its first rows reached the server"
    return result, retries


def materialized() -> set[str]:
    with DagsterInstance.get() as instance:
        return set(instance.get_materialized_partitions(AssetKey("video_embedding")))


def causes(error) -> str:
    """A retry's error and its causes (Dagster's RetryRequested wraps the asset's Failure)."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return " <- ".join(messages)


def assert_exact_rows(server, collection: str, expected: dict[str, list[int]]) -> None:
    """Every video has exactly the frames of its sampling plan, once, in one generation."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, dedicated=True)
    try:
        for name, frame_ids in expected.items():
            rows = client.query(collection, filter=f'video_path == "{name}"', output_fields=["frame_id", "generation"])
            assert sorted(r["frame_id"] for r in rows) == frame_ids, name  # none doubled, none missing
            assert len({r["generation"] for r in rows}) == 1, name
        assert row_count(client, collection) == sum(map(len, expected.values()))
    finally:
        client.close()


def test_server_killed_mid_run_and_back_ends_with_exact_rows(project, server, expected, monkeypatch):
    """The project's own retry policy (2 s, exponential: retries 2, 8 and 22 s after the
    first failure) rides out a 4 s outage, and no attempt fails once the server is back.
    A Milvus 2.3 standalone killed with SIGKILL is back only 10-30 s after its restart
    (it waits for the dead process's etcd sessions to expire; 26 s measured under load):
    there five retries (2 to 32 s apart) ride it out."""
    if isinstance(server, MilvusStandalone):
        import feature_pipeline_dagster.orchestration.assets.embeddings as embeddings

        monkeypatch.setattr(embeddings, "RETRY_POLICY", RetryPolicy(max_retries=5, delay=2.0, backoff=Backoff.EXPONENTIAL))
    collection = load_settings(project.config).db.collections[0].name
    watcher = KillOnceRowsLand(server, monkeypatch, down_for=4.0)
    result, retries = materialize_range(watcher)
    print(f"server back {watcher.back_at - watcher.killed_at:.1f}s after the kill; retries at "
          f"{[round(t - watcher.killed_at, 1) for t in retries]}s: {list(retries.values())}")
    assert result.success
    assert retries and all(f"Milvus at {server.uri}: " in error for error in retries.values())
    assert max(retries) < watcher.back_at  # the first attempt after the server is back succeeds
    assert materialized() == {partition_key(v) for v in VIDEOS}
    assert_exact_rows(server, collection, expected)


def test_server_that_stays_down_fails_with_one_line_then_works_once_back(project, server, expected, monkeypatch):
    """Down for good, the run fails after its retries (1, 3 and 7 s apart here: ~11 s of
    outage) with one line. The server comes back; the next run works at its first attempt,
    however long gRPC's reconnect backoff has grown, and replaces the partial rows."""
    import feature_pipeline_dagster.orchestration.assets.embeddings as embeddings

    monkeypatch.setattr(embeddings, "RETRY_POLICY", RetryPolicy(max_retries=3, delay=1.0, backoff=Backoff.EXPONENTIAL))
    collection = load_settings(project.config).db.collections[0].name
    result, retries = materialize_range(KillOnceRowsLand(server, monkeypatch, down_for=None))
    assert not result.success and len(retries) == 3
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    print(failure)
    assert re.fullmatch(rf"Milvus at {re.escape(server.uri)}: (cannot connect|\w+ failed) \([^\n]+\)", failure)
    assert "Traceback" not in failure
    assert not materialized()  # not even the videos written before the kill

    server.start()
    result, retries = materialize_range()
    assert result.success and not retries, list(retries.values())
    assert materialized() == {partition_key(v) for v in VIDEOS}
    assert_exact_rows(server, collection, expected)
