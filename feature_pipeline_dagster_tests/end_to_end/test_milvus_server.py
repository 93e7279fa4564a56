"""The store suite, the kill test and the database-fault test against a real Milvus 2.3
standalone server (PyPI `milvus` 2.3.5), as a third backend beside the Lite file and the
Lite server.

The server binds every interface, so pytest runs those tests again inside namespaces of
its own (`unshare`: network with only loopback up, mount with a private /run, PID so that
the whole tree dies with it), where feature_pipeline_dagster_tests/milvus_server.py
starts the server once for the session. Slow (minutes), so marked; `.ci/run` runs it.
"""

import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

from feature_pipeline_dagster_tests.conftest import REPO, TINY_CLIP_ENV
from feature_pipeline_dagster_tests.milvus_server import BACKEND, NAMESPACE_ENV, inside_namespace, milvus_server_command

SUITES = ["feature_pipeline_dagster_tests/core/test_store.py", "feature_pipeline_dagster_tests/end_to_end/test_kill.py",
          "feature_pipeline_dagster_tests/end_to_end/test_db_faults.py"]
NAMESPACE = 'ip link set lo up && mount -t tmpfs tmpfs /run && "$0" -m pytest "$@"'

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                       reason="the milvus package (Milvus 2.3.5 standalone) has x86_64 Linux wheels only"),
    pytest.mark.skipif(inside_namespace(), reason="already inside the server's namespace"),
]


def namespaces_available() -> str | None:
    """Why the server cannot run here, or None."""
    if milvus_server_command() is None:
        return "milvus-server is not installed (pip install -e '.[dev]' on x86_64 Linux)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-m", "-n", "-p", "--fork", "--kill-child", "--mount-proc", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make network namespaces here ({probe.stderr.strip() or probe.returncode}): needs root or CAP_SYS_ADMIN"
    return None


@pytest.mark.timeout(1200)
def test_store_kill_and_db_faults_against_a_real_milvus_server(tmp_path, tiny_clip):
    reason = namespaces_available()
    if reason:
        pytest.skip(reason)
    command = ["unshare", "-m", "-n", "-p", "--fork", "--kill-child", "--mount-proc", "sh", "-c", NAMESPACE, sys.executable,
               "-q", "-n", "0", "-p", "no:cacheprovider", "-k", f"{BACKEND} and not stays_down", "-s", "-rfEs", "--durations=8",
               f"--basetemp={tmp_path / 'inner'}", *SUITES]
    env = {**os.environ, NAMESPACE_ENV: "1", TINY_CLIP_ENV: str(tiny_clip)}  # the session's model, not a second one
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1150)
    print(result.stdout[-5000:])  # the inner durations and the server's start-up time
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    summary = re.search(r"(\d+) passed", last)
    assert summary and int(summary.group(1)) >= 17 and "skipped" not in last and "failed" not in last, last
    assert re.search(r"milvus-server start-up: [\d.]+s", result.stdout)
    # the namespace took its server with it: no process runs the binaries it unpacked
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/exe").startswith(str(tmp_path)):
                left.append(pid)
        except OSError:
            continue
    assert not left, f"milvus processes outlived the namespace: {left}"
