"""Many processes share one Milvus Lite database through the loopback server."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store.lite_server import LiteServer
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import clip_config, stop_lite_server, write_config

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from feature_pipeline_dagster.core.settings import load_settings
    from feature_pipeline_dagster.core.batches import EmbeddingBatch
    from feature_pipeline_dagster.core.store import new_generation, store_for

    config, name, batches, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    settings = load_settings(config)
    spec = settings.db.collections[0]
    store = store_for(settings.db)

    def rows():
        for i in range(batches):
            ids = np.arange(i * 10, i * 10 + 10)
            yield EmbeddingBatch(np.random.rand(10, 32).astype(np.float32), {"frame_id": ids, "timestamp_ms": ids})
            time.sleep(pause)

    generation, written = new_generation(), 0
    for batch in rows():  # inserted as they come, committed at the end, as the engine's RunWriter does
        store.insert(spec, batch, [name] * len(batch), generation)
        written += len(batch)
    store.commit(spec, [name], generation)
    print(written)
""")


@pytest.fixture
def config(tmp_path, tiny_clip):
    yield write_config(tmp_path, clip_config(tmp_path, tiny_clip, tmp_path))
    stop_lite_server(tmp_path)


def writer(config, name, batches=5, pause=0.0):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(config), name, str(batches), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def counts(config, names):
    settings = load_settings(config)
    store = store_for(settings.db)
    try:
        return {n: store.count_rows(settings.db.collections[0], n) for n in names}
    finally:
        store.close()


def test_four_processes_write_at_once(config):
    procs = [writer(config, f"video{i}.mp4", batches=8) for i in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert out.strip() == "80"
    assert counts(config, [f"video{i}.mp4" for i in range(4)]) == {f"video{i}.mp4": 80 for i in range(4)}
    servers = [c for c in command_lines() if "milvus_lite server" in c and str(config.parent) in c]
    assert len(servers) == 1 and "--host 127.0.0.1" in servers[0]


def command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return lines


def test_delete_from_another_process_while_a_run_writes(config):
    first = writer(config, "gone.mp4", batches=3)
    assert first.communicate(timeout=300)[0].strip() == "30"
    slow = writer(config, "long.mp4", batches=20, pause=0.1)
    settings = load_settings(config)
    store = store_for(settings.db)
    store.delete_video(settings.db.collections[0], "gone.mp4")  # as the sensor does for a deleted file
    store.close()
    out, err = slow.communicate(timeout=300)
    assert slow.returncode == 0, err[-2000:]
    assert counts(config, ["gone.mp4", "long.mp4"]) == {"gone.mp4": 0, "long.mp4": 200}


def test_killed_server_is_restarted_with_data_kept(config):
    assert writer(config, "kept.mp4", batches=4).communicate(timeout=300)[0].strip() == "40"
    server = LiteServer(load_settings(config).db.uri)
    state = server.running()
    os.kill(state.pid, signal.SIGKILL)
    assert counts(config, ["kept.mp4"]) == {"kept.mp4": 40}
    restarted = server.running()
    assert restarted is not None and restarted.pid != state.pid
    assert json.loads(server.state_file.read_text())["pid"] == restarted.pid


def test_stale_state_file_is_replaced(config):
    server = LiteServer(load_settings(config).db.uri)
    server.data_dir.parent.mkdir(parents=True, exist_ok=True)
    server.state_file.write_text(json.dumps({"pid": 999999, "port": 1, "data_dir": str(server.data_dir)}))
    assert server.running() is None
    assert server.ensure_running().pid != 999999
    stopped = server.stop()
    assert stopped is not None and server.running() is None and not server.state_file.exists()


def test_a_server_started_with_signals_ignored_still_stops_cleanly(tmp_path):
    """A background Dagster process ignores SIGINT and, through Dagster's mapping, SIGTERM;
    the server it starts must not inherit that: `stop` ends it the clean way (it drains
    and closes the database), not by SIGKILL after the timeout."""
    starter = textwrap.dedent(f"""
        import signal
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from feature_pipeline_dagster.core.store.lite_server import LiteServer
        print(LiteServer({str(tmp_path / "db" / "a.db")!r}).ensure_running().pid)
    """)
    pid = int(subprocess.run([sys.executable, "-c", starter], capture_output=True, text=True, check=True).stdout)
    server = LiteServer(tmp_path / "db" / "a.db")
    assert server.stop(timeout=60).pid == pid
    assert "Shutting down" in server.log_file.read_text()
