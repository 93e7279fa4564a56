"""The user's UI path, in a real browser: `feature-pipeline scan`, then `dagster-webserver`
and `dagster-daemon` (what `dagster dev` starts), then Materialize one video's partition
from the asset page and watch its run succeed; the rows land in Milvus for that video only.

Needs Debian's Chromium at /usr/bin/chromium and the `playwright` package (its own browser
download is never used); skipped without them. CI installs both (`.ci/run`, `.[dev]`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.videos import partition_key
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import stop_lite_server, subprocess_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
INSTANCE_TEMPLATE = Path(__file__).resolve().parents[2] / "config" / "dagster-instance.yaml"
VIDEOS = {"alpha.mp4": 2.5, "beta.mp4": 3.5}  # name -> seconds; at 1 fps: 3 and 4 rows
CHOSEN, OTHER = "alpha.mp4", "beta.mp4"
SERVER_WAIT_S = 90
RUN_WAIT_S = 120
TERMINAL = ("Success", "Failure", "Canceled")

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (CI installs Debian's chromium; see .ci/run)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """Its own process group, so stopping it takes its code servers and runs with it."""
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster-webserver exited ({proc.returncode}):\n{tail(log)}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"dagster-webserver did not answer {url} within {SERVER_WAIT_S}s:\n{tail(log)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def rows_by_video(config: Path) -> dict[str, int]:
    settings = load_settings(config)
    store = store_for(settings.db)
    try:
        spec = settings.db.collections[0]
        return {name: store.count_rows(spec, name) for name in VIDEOS}
    finally:
        store.close()


def test_materialize_one_partition_from_the_ui(project):
    # The daemon runs the file-arrival sensor too: fresh files that must settle for an hour
    # keep it from embedding anything itself, so only the UI's run writes rows.
    config = yaml.safe_load(project.config.read_text())
    config["video_input"]["settle_seconds"] = 3600
    project.config.write_text(yaml.safe_dump(config, allow_unicode=True))
    for seed, (name, seconds) in enumerate(VIDEOS.items()):
        os.utime(write_video(project.videos / name, seconds=seconds, seed=seed))
    home = project.root / "dagster_home"
    home.mkdir(exist_ok=True)
    if not (home / "dagster.yaml").exists():  # the instance template, as `feature-pipeline` installs it
        shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    # A fresh instance greets the first visitor with a "Join the Dagster community" dialog, late
    # enough to land on top of the Materialize dialog; as for a user who dismissed it once, it stays away.
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    env = subprocess_env(project)
    scan = subprocess.run([sys.executable, "-m", "feature_pipeline_dagster.cli", "scan"], cwd=project.root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert scan.returncode == 0, scan.stderr[-3000:]
    keys = {name: partition_key(name) for name in VIDEOS}
    assert sorted(scan.stdout.split()) == sorted(keys.values())

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    daemon_log, web_log = project.root / "daemon.log", project.root / "webserver.log"
    screenshot = project.root / "ui-failure.png"
    daemon = webserver = None
    try:
        daemon = start([str(bin_dir / "dagster-daemon"), "run", "-m", "feature_pipeline_dagster"],
                       env, project.root, daemon_log)
        webserver = start([str(bin_dir / "dagster-webserver"), "-m", "feature_pipeline_dagster",
                           "-h", "127.0.0.1", "-p", str(port)], env, project.root, web_log)
        wait_http(f"{base}/server_info", webserver, web_log)

        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(30_000)
                try:
                    drive_ui(page, base, keys, daemon)
                except Exception as err:
                    try:
                        page.screenshot(path=str(screenshot), full_page=True)
                    except Exception:
                        pass
                    raise AssertionError(
                        f"UI step failed: {err}\nscreenshot: {screenshot}\n"
                        f"daemon log ({daemon_log}):\n{tail(daemon_log)}\nwebserver log ({web_log}):\n{tail(web_log)}"
                    ) from err
            finally:
                browser.close()
        from dagster import DagsterInstance, RunsFilter

        with DagsterInstance.get() as instance:
            by_sensor = instance.get_runs(RunsFilter(tags={"dagster/sensor_name": "video_folder_sensor"}))
        assert not by_sensor, f"the file-arrival sensor launched runs during the test: {by_sensor}"
    finally:
        stop(daemon)
        stop(webserver)
    try:
        rows = rows_by_video(project.config)
    finally:
        stop_lite_server(project.root)
    assert rows == {CHOSEN: 3, OTHER: 0}, rows


def drive_ui(page, base: str, keys: dict[str, str], daemon: subprocess.Popen) -> None:
    """Asset page -> partitions -> Materialize one -> the run's page until it ends."""
    page.goto(f"{base}/assets/video_embedding?view=partitions")
    page.get_by_text("Missing (2)").wait_for()
    for key in keys.values():
        page.get_by_text(key, exact=True).first.wait_for()

    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize video_embedding")
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem").filter(has_text=keys[CHOSEN]).click()
    dialog.get_by_text("Launch runs to materialize video_embedding").click()  # closes the partition list
    dialog.get_by_text("1 partition", exact=True).wait_for()
    dialog.get_by_role("button", name="Launch 1 run").click()

    page.get_by_text("Launched run").wait_for()  # the toast, with a link to the run
    page.get_by_role("link", name="View").or_(page.get_by_role("button", name="View")).first.click()
    page.wait_for_url(f"{base}/runs/**")
    page.get_by_text(f"partition: {keys[CHOSEN]}").wait_for()

    statuses = {s: page.get_by_text(s, exact=True).first for s in TERMINAL}  # the run's status tag
    deadline = time.monotonic() + RUN_WAIT_S
    while (status := next((s for s, tag in statuses.items() if tag.is_visible()), None)) is None:
        assert time.monotonic() < deadline, f"the run did not end within {RUN_WAIT_S}s (url {page.url})"
        assert daemon.poll() is None, f"dagster-daemon exited ({daemon.returncode})"
        page.wait_for_timeout(1000)
    assert status == "Success", f"the run ended: {status} (url {page.url})"

    # Back on the asset page: one partition materialized, the other still missing.
    page.goto(f"{base}/assets/video_embedding?view=partitions")
    page.get_by_text("Materialized (1)").wait_for()
    page.get_by_text("Missing (1)").wait_for()
