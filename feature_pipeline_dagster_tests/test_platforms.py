"""The package installs on macOS arm64 and Linux aarch64: pip resolves the project's
own dependencies (pyproject.toml) for each platform from wheels only, and fails if any
package has none there (decord, x86_64-only, must drop out through its marker).

pip's `--platform` picks wheel tags, but it evaluates environment markers against the
interpreter running it (here Linux x86_64: torch's `cuda-bindings; platform_system ==
"Linux"` would be wanted on macOS, decord's x86_64 marker would hold on arm64). So pip
runs with its marker environment set to the target's. A manylinux_2_28 system takes every
older manylinux tag too; pip 23's `--platform` does not add them itself.

This needs the package registry: 130 s on a fresh machine here, both platforms at once,
waiting on the registry more than on the CPU; so the resolves start with the test session
(conftest.py) and run beside the other tests. A resolution that passed is kept for a week
under ~/.cache/feature-pipeline-dagster/platforms/, keyed by the dependency list, so a
machine pays it once per change of dependencies (or week): FEATURE_PIPELINE_RESOLVE_AGAIN=1
resolves regardless. Without a route to the registry the test skips, saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from feature_pipeline_dagster_tests.conftest import REPO

TARGETS = {
    "macosx_14_0_arm64": {"platforms": ["macosx_14_0_arm64"],
                          "markers": {"sys_platform": "darwin", "platform_system": "Darwin",
                                      "platform_machine": "arm64", "os_name": "posix"}},
    "manylinux_2_28_aarch64": {"platforms": [f"manylinux_2_{v}_aarch64" for v in range(28, 16, -1)] + ["manylinux2014_aarch64"],
                               "markers": {"sys_platform": "linux", "platform_system": "Linux",
                                           "platform_machine": "aarch64", "os_name": "posix"}},
}
RESOLVE = """
import sys, json
import pip._vendor.packaging.markers as markers
target = json.loads(sys.argv[1])
environment = markers.default_environment
markers.default_environment = lambda: {**environment(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
KEEP_S = 7 * 24 * 3600
CACHE = Path.home() / ".cache" / "feature-pipeline-dagster" / "platforms"
NO_ROUTE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution", "Network is unreachable")


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project["dependencies"]


def passed_before(name: str) -> Path:
    key = hashlib.sha256(json.dumps([requirements(), TARGETS[name], sys.version_info[:2]]).encode()).hexdigest()[:16]
    return CACHE / f"{name}-{key}.json"


_STARTED: dict[str, tuple[subprocess.Popen, Path]] = {}  # platform: its pip, and the folder of its files


def start_resolves() -> None:
    """Start pip for each platform whose resolution is not kept (conftest.py calls this
    when the session starts); the test below waits for them. Output goes to a file: a
    pipe nobody reads for minutes could fill and stall pip."""
    again = os.environ.get("FEATURE_PIPELINE_RESOLVE_AGAIN") == "1"
    for name, target in TARGETS.items():
        kept = passed_before(name)
        if name in _STARTED or (not again and kept.exists() and time.time() - kept.stat().st_mtime < KEEP_S):
            continue
        folder = Path(tempfile.mkdtemp(prefix=f"feature-pipeline-{name}-"))
        (folder / "requirements.txt").write_text("\n".join(requirements()) + "\n")
        args = [sys.executable, "-c", RESOLVE, json.dumps(target["markers"]), "install", "--dry-run",
                "--only-binary=:all:", *[a for p in target["platforms"] for a in ("--platform", p)],
                "--python-version", "3.11", "--ignore-installed", "--target", str(folder / "target"),
                "--disable-pip-version-check", "--no-input", "--report", str(folder / "report.json"), "-q",
                "-r", str(folder / "requirements.txt")]
        with open(folder / "output.txt", "w") as output:
            _STARTED[name] = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT), folder


def stop_resolves() -> None:
    """Nothing left running or lying in /tmp when the session ends (before the test too)."""
    for run, folder in _STARTED.values():
        run.kill()
        run.wait()
        shutil.rmtree(folder, ignore_errors=True)
    _STARTED.clear()


def test_dependencies_resolve_to_wheels_on_macos_arm64_and_linux_aarch64():
    start_resolves()  # a no-op where the session started them
    try:
        for name, (run, folder) in _STARTED.items():
            run.wait(timeout=900)
            check_resolution(name, run.returncode, (folder / "output.txt").read_text(), folder / "report.json")
    finally:
        stop_resolves()


def check_resolution(name: str, returncode: int, output: str, report_file: Path) -> None:
    errors = "\n".join(line for line in output.splitlines() if "is ignored" not in line)
    if returncode != 0 and any(sign in errors for sign in NO_ROUTE):
        pytest.skip(f"no route to the package registry: {errors.splitlines()[-1]}")
    assert returncode == 0, f"{name}: {errors[-3000:]}"
    report = json.loads(report_file.read_text())
    wanted = {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item for item in report["install"]}
    assert all(item["download_info"]["url"].endswith(".whl") for item in wanted.values())
    assert "decord" not in wanted, name  # x86_64 only: its marker keeps it out
    assert wanted["torch"]["metadata"]["version"] == "2.14.1" and wanted["torchcodec"]["metadata"]["version"].startswith("0.17")
    assert {"av", "milvus-lite", "dagster", "open-clip-torch"} <= set(wanted), name
    CACHE.mkdir(parents=True, exist_ok=True)
    passed_before(name).write_text(json.dumps({n: item["metadata"]["version"] for n, item in sorted(wanted.items())}))


def test_decord_stays_on_x86_64_linux_and_windows():
    """Where decord has wheels (Linux and Windows x86_64), it is still a dependency."""
    from pip._vendor.packaging.requirements import Requirement

    decord = next(Requirement(r) for r in requirements() if r.startswith("decord"))
    env = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
    assert decord.marker.evaluate({**env, "platform_machine": "x86_64"})
    assert decord.marker.evaluate({"sys_platform": "win32", "platform_system": "Windows", "platform_machine": "AMD64"})
    assert not decord.marker.evaluate({**env, "platform_machine": "aarch64"})
    assert not decord.marker.evaluate({"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"})
    assert not decord.marker.evaluate({"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64"})
