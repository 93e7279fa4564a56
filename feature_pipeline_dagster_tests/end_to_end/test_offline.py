"""The default config (a pretrained tag on the Hugging Face hub) on a machine that cannot
reach the hub, as subprocesses the way a user runs them: the model is a run-level failure,
tried once per run (a transient hub error once more), reported as one complete line that
says what to do, without tracebacks or retry spam.

Attempts are counted, not timed: a `sitecustomize` on PYTHONPATH records every name lookup
of the hub's host made by the child process (huggingface_hub's once-per-process fetch of its
"agent harnesses" registry is left out: it is not a model download), and a local stand-in
hub that answers HTTP 503 counts the requests for the model's repository.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from feature_pipeline_dagster.core.samples import write_samples
from feature_pipeline_dagster_tests.conftest import REPO

TAG, ARCH, REPO_ID = "laion2b_s34b_b79k", "ViT-B-32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
PREFIX = f"model.path {TAG}: cannot load CLIP {ARCH}: download failed ("
ENDING = "set model.source: folder and model.path to it"
ADVICE = "`feature-pipeline models download`"

SITECUSTOMIZE = '''
import os, socket, sys

_log, _host = os.environ.get("HUB_LOOKUP_LOG"), os.environ.get("HUB_LOOKUP_HOST")
if _log and _host:
    _getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == _host:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_name != "_fetch_registry":
                frame = frame.f_back
            if frame is None:  # not huggingface_hub's registry of agent harnesses
                with open(_log, "a") as f:
                    f.write(host + "\\n")
        return _getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
'''


def _hub_reachable() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub_project(tmp_path_factory):
    """The default config with its videos, logs and database under a temporary folder,
    a fresh Dagster home and an empty Hugging Face cache."""
    root = tmp_path_factory.mktemp("offline")
    config = yaml.safe_load((REPO / "config" / "clip-config.yaml").read_text())
    assert (config["model"]["source"], config["model"]["path"], config["model"]["arch"]) == ("huggingface", TAG, ARCH)
    config["video_input"]["path"] = str(root / "videos")
    config["db"]["uri"] = str(root / "db" / "test.db")
    config["logs"] = {"path": str(root / "logs")}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    write_samples(root / "videos", 3, seconds=2.0)
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text((REPO / "config" / "dagster-instance.yaml").read_text())
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    yield root
    from feature_pipeline_dagster.core.store.lite_server import LiteServer

    LiteServer(root / "db" / "test.db").stop()


def _run(root: Path, name: str, *args: str, **env_overrides: str):
    """`feature-pipeline --config CFG ARGS`: the result and the number of lookups of the
    hub's host. Without extra settings the hub is the real one, unreachable here; on a
    machine that reaches it, a closed local port stands in for it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(DAGSTER_HOME=str(root / "dagster_home"), FEATURE_PIPELINE_CONFIG=str(root / "config.yaml"),
               HF_HOME=str(root / f"hf-{name}"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(root / "site"), os.environ.get("PYTHONPATH")])),
               HUB_LOOKUP_LOG=str(root / f"lookups-{name}.txt"), HUB_LOOKUP_HOST="huggingface.co")
    if "HF_ENDPOINT" not in env_overrides and "HF_HUB_OFFLINE" not in env_overrides and _hub_reachable():
        env_overrides = {**env_overrides, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    env.update(env_overrides)
    if "HF_ENDPOINT" in env:
        env["HUB_LOOKUP_HOST"] = "127.0.0.1"
    command = [sys.executable, "-m", "feature_pipeline_dagster.cli", "--config", str(root / "config.yaml"), *args]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, timeout=600)
    # decoded without newline translation, so a progress bar's carriage returns stay as they are
    result.stdout, result.stderr = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    log = root / f"lookups-{name}.txt"
    return result, len(log.read_text().splitlines()) if log.exists() else 0


def _assert_reported_whole(stderr: str, message: str, keys=("sample_00.mp4", "sample_01.mp4", "sample_02.mp4")):
    """Every video is reported failed, the message is printed whole at least once, and
    no line carries a cut copy of it."""
    lines = stderr.split("\n")
    for key in keys:
        assert any(key in line and "failed" in line.lower() for line in lines), (key, stderr[-3000:])
    assert any(line.endswith(message) for line in lines), stderr[-3000:]
    for line in lines:
        if PREFIX in line:
            assert line.endswith(ENDING), line


def _logged_errors(root: Path) -> list[str]:
    """The engine's ERROR lines in the run logs under logs/, messages only."""
    lines = [line for path in sorted((root / "logs").glob("*.log")) for line in path.read_text().splitlines()]
    return [line.split(": ", 1)[1] for line in lines if " ERROR feature_pipeline.engine: " in line]


def _assert_complete_advice(message: str) -> None:
    assert message.startswith(PREFIX), message
    assert message.endswith(ENDING), message  # whole: never cut
    assert ADVICE in message and "model.source: folder" in message, message


@pytest.fixture(scope="module")
def offline_run(hub_project):
    return _run(hub_project, "offline", "run")


@pytest.mark.parametrize("mode", ["no connection", "HF_HUB_OFFLINE=1"])
def test_run_without_the_hub_tries_once_and_says_what_to_do(hub_project, offline_run, mode):
    if mode == "no connection":
        result, lookups = offline_run
    else:
        result, lookups = _run(hub_project, "hf-hub-offline", "run", HF_HUB_OFFLINE="1")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert lookups == (1 if mode == "no connection" else 0), f"{lookups} lookups of the hub in one run"
    assert "Traceback" not in output
    assert "Retrying in" not in output and "thrown while requesting" not in output, output[-3000:]

    # one load, so one error line in the run's log file under logs/, whole
    marker = "no connection to " if mode == "no connection" else "HF_HUB_OFFLINE is set"
    logged = [m for m in _logged_errors(hub_project) if marker in m]
    assert len(logged) == 1, logged
    _assert_complete_advice(logged[0])
    assert "no copy in the local Hugging Face cache" in logged[0]
    _assert_reported_whole(result.stderr, logged[0])


class _Hub503(http.server.BaseHTTPRequestHandler):
    """A hub that is down: every request answers HTTP 503."""

    requests: list[str] = []

    def _answer(self):
        type(self).requests.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args):
        pass


def test_a_hub_answering_503_is_tried_twice_per_run(hub_project):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result, _ = _run(hub_project, "503", "run", HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1, result.stderr[-3000:]
    model_requests = [r for r in _Hub503.requests if REPO_ID in r]
    assert len(model_requests) == 2, model_requests  # once, and once more for a transient fault
    assert "Traceback" not in result.stdout + result.stderr
    assert "Retrying in" not in result.stderr
    logged = [m for m in _logged_errors(hub_project) if "HTTP 503" in m]
    assert len(logged) == 1, logged
    _assert_complete_advice(logged[0])
    assert "answered HTTP 503, also on a second try" in logged[0] and "try again later" in logged[0]
    _assert_reported_whole(result.stderr, logged[0])


def test_models_download_without_the_hub_is_one_complete_line(hub_project):
    result, lookups = _run(hub_project, "download", "models", "download", "--dest", str(hub_project / "dl"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.split("\n") if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ")
    _assert_complete_advice(lines[0].removeprefix("error: "))
    assert lookups == 1
    assert result.stdout == ""
    assert not (hub_project / "dl").exists()


def test_run_without_the_hub_is_a_handful_of_lines(hub_project, offline_run):
    result, _ = offline_run
    output = result.stdout + result.stderr
    assert "Stack Trace" not in output and " - dagster - " not in output, output[-3000:]
    message = next(m for m in _logged_errors(hub_project) if "no connection to " in m)
    assert 1 <= output.count(message) <= 2  # the same fault of three videos: shown once, summed up once
    # what a terminal shows: of each line, what follows its last carriage return (progress bar frames)
    shown = [line.split("\r")[-1] for line in output.split("\n") if line.split("\r")[-1].strip()]
    assert len(shown) <= 8, shown
