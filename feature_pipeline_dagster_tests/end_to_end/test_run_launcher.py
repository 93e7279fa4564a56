"""Real processes: dagster-daemon launches the sensor's runs through the instance template's
WarmRunLauncher (orchestration/run_launcher.py). A run after the first takes a warm process
(the first run's, used again); idle processes exit after `idle_seconds`; a run whose process
is killed is failed and started again by run_retries, its video's rows whole and not doubled;
the UI's Terminate, from another process, cancels a running run."""

import os
import signal
import subprocess
import time
from pathlib import Path

import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster.orchestration.names import PID_TAG
from feature_pipeline_dagster.orchestration.run_launcher import LAUNCHED, ZYGOTE
from feature_pipeline_dagster_tests.conftest import parent_of, subprocess_env
from feature_pipeline_dagster_tests.end_to_end.test_daemon import drop

DEADLINE_S = 240
STEP_START = DagsterEventType.STEP_START
IDLE_S = 15  # past the tick (5 s), settling (1 s) and a run between two drops
SPARE = "feature_pipeline_dagster.orchestration.run_launcher"


def launcher_processes() -> dict[int, int]:
    """The launcher's processes alive now (its zygote, the run processes it forked, any
    started cold), each with its parent's pid."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"\0-m\0{SPARE}\0" in Path(f"/proc/{pid}/cmdline").read_text():  # not the instance ref in others' argv
                found[int(pid)] = parent_of(pid)
        except OSError:
            continue
    return found


def zygotes() -> set[int]:
    """The launcher's zygotes: a fork of one has it for parent (and its command line)."""
    found = launcher_processes()
    return {pid for pid, parent in found.items() if parent not in found and ZYGOTE in cmdline(pid)}


def spares() -> set[int]:
    """Pids of the launcher's run processes alive now."""
    return set(launcher_processes()) - zygotes()


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def until(what, deadline_s: float = DEADLINE_S, every: float = 0.1):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if found := what():
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what.__doc__ or what}")


def runs_of(instance, video: str) -> list:
    """The sensor's runs (retries included) of one video, oldest first."""
    return instance.get_runs(RunsFilter(tags={"dagster/partition": video}))[::-1]


class Daemon:
    def __init__(self, project):
        config = yaml.safe_load(project.config.read_text())
        config["video_input"]["settle_seconds"] = 1
        project.config.write_text(yaml.safe_dump(config))
        home = project.root / "dagster_home" / "dagster.yaml"
        home.write_text(home.read_text().replace("idle_seconds: 120", f"idle_seconds: {IDLE_S}"))
        self.log = open(project.root / "daemon.log", "w")
        self.process = subprocess.Popen(["dagster-daemon", "run", "-m", "feature_pipeline_dagster"],
                                        env=subprocess_env(project), cwd=project.root, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


def engine_messages(instance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)]


def test_a_run_after_the_first_takes_a_warm_process_and_idle_processes_exit(project):
    daemon = Daemon(project)
    try:
        with DagsterInstance.get() as instance:
            launched = []
            for i, name in enumerate(["a.mp4", "b.mp4"]):
                drop(project.videos, name, seconds=2, seed=i)
                run = until(lambda: [r for r in runs_of(instance, name) if r.is_finished])[0]
                assert run.status == DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(run.run_id)][-5:]
                launched += [(run.tags[PID_TAG], m) for m in engine_messages(instance, run.run_id)
                             if m.startswith(LAUNCHED)]
                config = yaml.safe_load(project.config.read_text())
                config["video_input"]["sample_fps"] = 2.0  # b's run, in a's process, reads the edited config
                project.config.write_text(yaml.safe_dump(config))
            (first_pid, first), (second_pid, second) = launched
            assert first == f"Run process (pid {first_pid}): cold, no process of the device was idle."
            # b's run found a's process idle (a spare started beside a's run was idle too)
            assert second_pid == first_pid and second.startswith(f"Run process (pid {first_pid}): warm, started ")
            assert second.endswith(", run 2 in it."), second
            assert len(spares()) == 2  # a's process and the spare, both idle
            zygote, = zygotes()  # they were forked by one zygote, the daemon's child
            assert set(launcher_processes().values()) == {zygote, parent_of(zygote)}
            until(lambda: not spares(), deadline_s=IDLE_S + 30)  # they retire while the daemon runs on
            assert daemon.process.poll() is None and zygotes() == {zygote}  # it stays, to fork the next ones
    finally:
        daemon.stop()
    assert not spares() and not zygotes()
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        frames = settings.db.collections[0]
        assert {v: store.count_rows(frames, v) for v in ("a.mp4", "b.mp4")} == {"a.mp4": 2, "b.mp4": 4}
    finally:
        store.close()


def test_a_killed_run_is_failed_and_retried_and_terminate_cancels_a_run(project):
    long = write_video(project.root / "long.mp4", seconds=90, seed=5)
    daemon = Daemon(project)
    try:
        with DagsterInstance.get() as instance:
            drop(project.videos, "a.mp4", seconds=2, seed=1)  # the first run: a spare starts beside it
            until(lambda: [r for r in runs_of(instance, "a.mp4") if r.status == DagsterRunStatus.SUCCESS])

            os.link(long, project.videos / "killed.mp4")

            def started():
                """the run of killed.mp4 to start"""
                return [r for r in runs_of(instance, "killed.mp4") if r.status == DagsterRunStatus.STARTED]

            victim = until(started)[0]
            os.kill(int(victim.tags[PID_TAG]), signal.SIGKILL)

            def retried():
                """killed.mp4's retry to succeed"""
                runs = runs_of(instance, "killed.mp4")
                return len(runs) > 1 and runs[-1].status == DagsterRunStatus.SUCCESS and runs

            first, *_, retry = until(retried)
            assert first.run_id == victim.run_id and first.status == DagsterRunStatus.FAILURE
            assert retry.tags.get("dagster/parent_run_id") == victim.run_id
            failure = instance.all_logs(victim.run_id, of_type=DagsterEventType.RUN_FAILURE)
            assert f"pid {victim.tags[PID_TAG]}) exited with code -9" in failure[-1].message

            os.link(long, project.videos / "terminated.mp4")

            def embedding():
                """the run of terminated.mp4 to be embedding"""
                return [r for r in runs_of(instance, "terminated.mp4") if any(
                    e.step_key == "video_embedding" for e in instance.all_logs(r.run_id, of_type=STEP_START))]

            running = until(embedding, every=0.02)[0]
            with DagsterInstance.get() as other:  # as the webserver's Terminate: another process's launcher
                assert other.run_launcher.terminate(running.run_id)
            until(lambda: instance.get_run_by_id(running.run_id).is_finished)
            assert instance.get_run_by_id(running.run_id).status == DagsterRunStatus.CANCELED
            failed = instance.all_logs(running.run_id, of_type=DagsterEventType.STEP_FAILURE)
            assert [e.step_key for e in failed] == ["video_embedding"]  # failed once, not retried
            failure = failed[0].dagster_event.step_failure_data.user_failure_data
            assert failure is not None and failure.description == "interrupted (the run was terminated, or Ctrl-C)"
            assert not instance.all_logs(running.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
            launched = [m for m in engine_messages(instance, running.run_id) if m.startswith(LAUNCHED)]
            pid = int(launched[0].removeprefix(LAUNCHED).split(")")[0])
            until(lambda: pid not in spares(), deadline_s=30)  # a process whose run was canceled exits
    finally:
        daemon.stop()
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        frames = store.count_rows(settings.db.collections[0], "killed.mp4")
        assert frames == 90  # one generation: the retry replaced what the killed run had committed
    finally:
        store.close()
