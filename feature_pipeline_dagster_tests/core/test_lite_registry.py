"""`db status --all` and `db stop --all`: every Milvus Lite server this working folder
started, whichever config started it (issue 24, point 4: after trying two configs, `db stop`
with one left the other's server running)."""

import json
import os
import signal
import time

from feature_pipeline_dagster.cli import main
from feature_pipeline_dagster.core.store.lite_server import REGISTRY, LiteServer, _alive, registered
from feature_pipeline_dagster_tests.conftest import clip_config, write_config


def test_status_all_lists_every_config_server_and_stop_all_stops_them(tmp_path, tiny_clip, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    configs = {}
    for name in ("a", "b"):
        config = clip_config(tmp_path, tiny_clip, tmp_path)
        config["db"]["uri"] = str(tmp_path / "db" / f"{name}.db")
        configs[name] = write_config(tmp_path, config, f"{name}.yaml")
    servers = {name: LiteServer(tmp_path / "db" / f"{name}.db") for name in configs}
    states = {}
    try:
        for name, server in servers.items():
            states[name] = server.ensure_running()
        # a stale entry: a server that died without its record being removed
        gone = LiteServer(tmp_path / "db" / "gone.db")
        stale = gone._entry(tmp_path / REGISTRY)
        stale.write_text(json.dumps({"data_dir": str(gone.data_dir), "pid": 2 ** 22 + 7, "port": 1}))
        (tmp_path / "db" / "gone.db.server.json").write_text(
            json.dumps({"pid": 2 ** 22 + 7, "port": 1, "data_dir": str(gone.data_dir), "idle_minutes": 10}))

        capsys.readouterr()
        assert main(["db", "status", "--all"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2, lines
        for name, state in states.items():
            [line] = [line for line in lines if line.startswith(f"{tmp_path / 'db' / name}.db ")]
            assert f"http://127.0.0.1:{state.port}" in line and f"pid {state.pid}" in line
            assert "stops itself after 10 idle minutes" in line
        assert not stale.exists() and "gone.db" not in "".join(lines)

        # a server that died (SIGKILL: no clean-up of its own) is not listed, its entry removed
        os.kill(states["b"].pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(states["b"].pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [s.pid for _, s in registered()] == [states["a"].pid]
        assert len(list((tmp_path / REGISTRY).glob("*.json"))) == 1
        states["b"] = servers["b"].ensure_running()  # started again from here: listed again
        assert sorted(s.pid for _, s in registered()) == sorted(s.pid for s in states.values())

        # `db stop` with one config leaves the other; `--all` stops them all, no config needed
        monkeypatch.setenv("FEATURE_PIPELINE_CONFIG", str(configs["a"]))
        assert main(["db", "stop"]) == 0
        assert not _alive(states["a"].pid) and _alive(states["b"].pid)
        monkeypatch.setenv("FEATURE_PIPELINE_CONFIG", str(tmp_path / "missing.yaml"))
        capsys.readouterr()
        assert main(["db", "stop", "--all"]) == 0
        assert capsys.readouterr().out.strip() == (
            f"stopped Milvus Lite server pid {states['b'].pid} on {states['b'].uri} ({servers['b'].data_dir})")
        assert not _alive(states["b"].pid)
        assert main(["db", "status", "--all"]) == 0
        assert capsys.readouterr().out.startswith("no Milvus Lite server started from this folder is running")
        assert not list((tmp_path / REGISTRY).glob("*.json"))
    finally:
        for server in servers.values():
            server.stop()
