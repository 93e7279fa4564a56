"""`feature-pipeline search --json` and `feature-pipeline serve` as subprocesses, with no
browser (test_search_page.py skips as a whole without Chromium): issue 24, point 6.

- `--json` returned the query quoted (`"'a red square'"`), not as typed;
- the random-weights warning was printed twice per command: the model load's log line and
  the result's warning (`search`), the log line and the banner (`serve`);
- a SIGINT sent right after a search was once reported ignored by `serve`.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml

from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
from feature_pipeline_dagster.core.models import load_extractor
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import clip_config, write_config

SYS_TGKILL = 234  # x86_64; a signal to one thread of a process


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_clip):
    """Two generated videos embedded into Milvus Lite with the tiny random CLIP."""
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    root = tmp_path_factory.mktemp("search")
    videos = root / "videos"
    for seed, name in enumerate(("alpha.mp4", "beta.mp4")):
        write_video(videos / name, seconds=2.0, seed=seed)
    config = write_config(root, clip_config(root, tiny_clip, videos))
    settings = load_settings(config)
    store = store_for(settings.db)
    try:
        report = embed_videos(settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu"),
                              ["alpha.mp4", "beta.mp4"], RunReport())
    finally:
        store.close()
    assert not report.failed, report.failed
    env = {**os.environ, "FEATURE_PIPELINE_CONFIG": str(config), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    yield type("Embedded", (), {"root": root, "env": env})
    LiteServer(settings.db.uri).stop()


def cli(embedded, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", *args], cwd=embedded.root,
                          env=embedded.env, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def serve(embedded, log: Path) -> tuple[subprocess.Popen, int]:
    """`feature-pipeline serve` on a free port of 127.0.0.1, answering."""
    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "feature_pipeline_dagster.cli", "serve", "--port", str(port)],
                                  cwd=embedded.root, env=embedded.env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            if get(f"http://127.0.0.1:{port}/")[0] == 200:
                return server, port
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def end(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.kill()
        server.wait(timeout=30)


def test_search_json_gives_the_query_as_typed_and_the_random_warning_once(embedded, tmp_path):
    result = cli(embedded, "search", "a red square", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["query"] == "a red square" and answer["random_weights"]
    assert result.stderr.count("RANDOM WEIGHTS") == 1, result.stderr
    plain = cli(embedded, "search", "a red square", "-k", "1")
    assert plain.returncode == 0 and plain.stderr.count("RANDOM WEIGHTS") == 1, plain.stderr

    log = tmp_path / "serve.log"
    server, port = serve(embedded, log)
    try:
        status, page = get(f"http://127.0.0.1:{port}/search?" + urlencode({"q": "a red square", "k": "1"}))
        assert status == 200 and "moment(s) for \u201ca red square\u201d in" in page
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        end(server)
    assert log.read_text().count("RANDOM WEIGHTS") == 1, log.read_text()[-3000:]
    assert LOADING in log.read_text() and "model loaded in " in log.read_text(), log.read_text()[-3000:]


LOADING = "loading the model (ViT-B-32 on cpu; ~3 s the first time)..."


def test_search_says_how_long_the_model_load_takes(embedded):
    result = cli(embedded, "search", "a red square", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    loaded = [i for i, line in enumerate(lines) if re.fullmatch(r"model loaded in \d+\.\d s", line)]
    assert LOADING in lines and len(loaded) == 1 and lines.index(LOADING) < loaded[0], result.stderr
    assert json.loads(result.stdout)["query"] == "a red square"  # stdout stays JSON


def test_nothing_embedded_names_the_config_and_the_database_it_looked_at(embedded):
    """A newcomer's search after the quick start read another config and advised `run`,
    which then started that config (real weights, offline)."""
    config = yaml.safe_load((embedded.root / "config.yaml").read_text())
    config["db"]["collections"][0]["name"] = "never_written"
    other = write_config(embedded.root, config, "other.yaml")
    result = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "search", "a red square"],
                            cwd=embedded.root, env={**embedded.env, "FEATURE_PIPELINE_CONFIG": str(other)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: collection never_written does not exist in the Milvus Lite file {config['db']['uri']}, the database "
        f"of config {other}: embed videos first (feature-pipeline --config {other} run)"], result.stderr


@pytest.mark.parametrize("to", ["process", "search thread"])
def test_ctrl_c_right_after_a_search_stops_serve_and_closes_its_port(embedded, tmp_path, to):
    """SIGINT at once after a search's answer, to the process, or (tgkill) to a thread the
    search started: the kernel hands a process's signal to any thread that does not block
    it, and CPython runs the handler in the main thread only. Either way the process ends
    within seconds, says so, and nothing listens on its port any more."""
    log = tmp_path / "serve.log"
    server, port = serve(embedded, log)
    try:
        before = set(os.listdir(f"/proc/{server.pid}/task"))
        status, _ = get(f"http://127.0.0.1:{port}/search?" + urlencode({"q": "a red square", "k": "3"}))
        assert status == 200, log.read_text()[-3000:]
        if to == "process":
            os.kill(server.pid, signal.SIGINT)
        else:
            threads = sorted(set(os.listdir(f"/proc/{server.pid}/task")) - before, key=int)
            assert threads, "the search started no thread"
            assert ctypes.CDLL(None).syscall(SYS_TGKILL, server.pid, int(threads[0]), signal.SIGINT) == 0
        started = time.monotonic()
        assert server.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 15, log.read_text()[-3000:]
    finally:
        end(server)
    assert log.read_text().endswith("search page stopped\n"), log.read_text()[-3000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more
