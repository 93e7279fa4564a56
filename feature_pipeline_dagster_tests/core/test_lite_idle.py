"""The Milvus Lite server stops itself once it has had no client for `db.lite_idle_minutes`,
never while one is connected, and the next use starts it again; `db status` starts
nothing and lists every collection the config owns. Real processes throughout."""

import fcntl
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from feature_pipeline_dagster.core.batches import EmbeddingBatch
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store.lite_server import LiteServer
from feature_pipeline_dagster.core.store.milvus.store import MilvusStore
from feature_pipeline_dagster_tests.conftest import clip_config, stop_lite_server, write_config
from feature_pipeline_dagster_tests import store_rows

IDLE_MINUTES = 0.05  # 3 s


@pytest.fixture
def config(tmp_path, tiny_clip):
    yield write_config(tmp_path, clip_config(tmp_path, tiny_clip, tmp_path, **{"db.lite_idle_minutes": IDLE_MINUTES}))
    stop_lite_server(tmp_path)


def open_store(config) -> MilvusStore:
    db = load_settings(config).db
    return MilvusStore(db.uri, lite_idle_minutes=db.lite_idle_minutes)


def write_rows(store: MilvusStore, config, video: str, rows: int) -> None:
    ids = np.arange(rows)
    batch = EmbeddingBatch(np.random.rand(rows, 32).astype(np.float32), {"frame_id": ids, "timestamp_ms": ids})
    assert store_rows.write_rows(store, load_settings(config).db.collections[0], video, batch) == rows


def wait_until_stopped(server: LiteServer, pid: int, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if not alive(pid):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"server pid {pid} still running after {within} s")


def alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child when this process started it
    except ChildProcessError:
        pass
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def servers_of(data_dir) -> list[str]:
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "milvus_lite server" in line and f"--data-dir {data_dir} " in line and alive(int(pid)):
            lines.append(line)
    return lines


def cli(config, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def test_it_stays_while_a_client_is_connected_stops_once_none_is_and_the_next_use_restarts_it(config):
    spec = load_settings(config).db.collections[0]
    server = LiteServer(load_settings(config).db.uri)
    store = open_store(config)
    write_rows(store, config, "kept.mp4", 30)
    state = server.running()
    assert state.idle_minutes == IDLE_MINUTES
    time.sleep(IDLE_MINUTES * 60 * 2)  # idle for longer than its idle time, but with a store open
    assert server.running() == state
    store.close()
    assert wait_until_stopped(server, state.pid, within=20) >= IDLE_MINUTES * 60 * 0.8
    assert not server.state_file.exists() and servers_of(server.data_dir) == []
    log = server.log_file.read_text()
    assert "no client for 0.05 minutes: stopping" in log and "Shutting down" in log  # the clean path, as SIGTERM
    store = open_store(config)
    try:
        assert store.count_rows(spec, "kept.mp4") == 30
    finally:
        store.close()
    again = server.running()
    assert again is not None and again.pid != state.pid


def idle_server_holding_the_lock(config):
    """A server with 5 rows, left idle while this test holds the starters' lock (returned
    open: closing it releases the lock), so that its watchdog is waiting for it."""
    spec = load_settings(config).db.collections[0]
    server = LiteServer(load_settings(config).db.uri)
    store = open_store(config)
    write_rows(store, config, "v.mp4", 5)
    store.close()
    state = server.running()
    lock = open(server.lock_file, "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)
    time.sleep(IDLE_MINUTES * 60 + 1.5)
    return spec, server, state, lock


def test_a_client_that_comes_as_it_decides_to_stop_keeps_it(config):
    """The server has been idle and waits for the starters' lock to retire; meanwhile a
    client that read the state file connects: the server sees it, puts its record back
    and stays."""
    spec, server, state, lock = idle_server_holding_the_lock(config)
    with lock:  # idle: its watchdog now waits for this lock
        late = MilvusStore(state.uri)
        late.client  # connected to the address the state file gave
    try:
        time.sleep(1.5)
        assert server.running() == state and server.state_file.exists()
        assert late.count_rows(spec, "v.mp4") == 5
    finally:
        late.close()


def test_a_newcomer_while_it_stops_itself_gets_a_fresh_server(config):
    """Once the idle server has removed its record, a process that needs the database
    waits for the lock, which the old server keeps until it has exited, then starts a
    new one over the same data."""
    spec, server, old, lock = idle_server_holding_the_lock(config)
    lock.close()
    deadline = time.monotonic() + 5
    while server.state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server.state_file.exists()  # retiring: record gone, lock held
    new = server.ensure_running()
    assert new.started_now and new.pid != old.pid and not alive(old.pid)
    store = open_store(config)
    try:
        assert store.count_rows(spec, "v.mp4") == 5
    finally:
        store.close()
    assert len(servers_of(server.data_dir)) == 1


def test_a_start_is_said_once_by_the_process_that_started_it(config):
    program = textwrap.dedent("""
        import logging, sys
        from feature_pipeline_dagster.core.settings import load_settings
        from feature_pipeline_dagster.core.store.lite_server import start_lite_server

        settings = load_settings(sys.argv[1])
        start_lite_server(settings.db)
        start_lite_server(settings.db)
    """)
    first = subprocess.run([sys.executable, "-c", program, str(config)], capture_output=True, text=True, timeout=120)
    state = LiteServer(load_settings(config).db.uri).running()
    lines = first.stderr.strip().splitlines()
    assert lines == [f"started Milvus Lite server for {load_settings(config).db.uri} on 127.0.0.1:{state.port} "
                     f"(pid {state.pid}); it stops itself after 0.05 idle minutes, or: feature-pipeline db stop"]
    again = subprocess.run([sys.executable, "-c", program, str(config)], capture_output=True, text=True, timeout=120)
    assert again.stderr == "" and LiteServer(load_settings(config).db.uri).running() == state


def test_db_status_after_db_stop_starts_nothing(config):
    server = LiteServer(load_settings(config).db.uri)
    pid = server.ensure_running().pid
    assert "stopped Milvus Lite server" in cli(config, "db", "stop").stdout
    status = cli(config, "db", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"Milvus Lite server: not running ({load_settings(config).db.uri})")
    assert "collection frames: rows not counted while no server runs" in status.stdout
    assert "collection frames_summary: rows not counted while no server runs" in status.stdout
    assert not alive(pid) and servers_of(server.data_dir) == [] and not server.state_file.exists()


def test_db_status_lists_every_owned_collection_without_creating_one(config):
    store = open_store(config)
    write_rows(store, config, "a.mp4", 12)
    store.close()
    server = LiteServer(load_settings(config).db.uri)
    state = server.running()
    status = cli(config, "db", "status")
    assert status.returncode == 0, status.stderr
    assert f"address:  {state.uri}" in status.stdout and f"pid:      {state.pid}" in status.stdout
    assert "collection frames: 12 rows" in status.stdout
    assert "collection frames_summary: not created yet" in status.stdout
    store = open_store(config)
    try:
        assert not store.client.has_collection("frames_summary")
    finally:
        store.close()
    assert server.running() == state
