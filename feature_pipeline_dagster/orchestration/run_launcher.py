"""The instance's run launcher: each run in a process of its own at a time, as Dagster's
default launcher gives it, but a process already warm, and used again.

Dagster's DefaultRunLauncher has the code server spawn a fresh interpreter per run, which
imports dagster, this project and torch and loads the model before its first batch: 3.5-4.2 s
from a sensor run's creation to its embedding done for a one-clip run on the GPU stand-in
(bench/bench_gpu_standin.py, figure 5, 2 cores), every run; on a GPU box each run also loads
the model onto the device again. Here a device's processes stay: when a run of a device is
launched and no process of that device is idle, one more starts at once (up to the queue's
limit for the device tag: more could never be busy), imports what a run imports, builds the
code location and loads the model, then waits. A run takes an idle process of its device
(0.4-0.6 s from creation to embedding done, figure 5) or, the first of a burst, a fresh one;
a process whose run succeeded waits for the next (and builds the code location again if the
config file changed meanwhile), and one idle for `idle_seconds` exits, freeing its memory and
its copy of the model.

A process runs one run at a time, so a crash fails one run: a run whose process ends without
finishing it is reported failed (the instance's run_retries start it again), and a process
whose run did not succeed exits rather than serve another. The run's `feature_pipeline/pid`
tag lets the UI's Terminate, in the webserver's process, reach it. A run whose process dies
while the daemon is down stays started, as under the default launcher when its code server
goes: run monitoring checks workers only through a health check whose types Dagster keeps
private. A run without a device tag, or whose code runs on another Python (another code
location), goes Dagster's default way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from dagster import DefaultRunLauncher, Field, IntSource

from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, PID_TAG

IDLE_SECONDS = 120
DONE = "done"  # a process's line after a run that succeeded: it takes another
LAUNCHED = "Run process (pid "  # how the run's launch event begins, the pid next


class _RunProcess:
    """One `python -m feature_pipeline_dagster.orchestration.run_launcher` child: run ids in
    on stdin; out on stdout, a `done` line after each run when it will take another."""

    def __init__(self, device: str, instance_ref: str):
        self.device, self.born, self.runs, self.run_id, self.idle_since = device, time.monotonic(), 0, None, None
        self.popen = subprocess.Popen([sys.executable, "-m", __name__, device, instance_ref],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.pid = self.popen.pid

    def take(self, run_id: str) -> bool:
        self.run_id = run_id  # before it can read it: a death from here on fails the run
        try:
            self.popen.stdin.write(run_id + "\n")
            self.popen.stdin.flush()
        except OSError:  # it has exited (an idle process retired, a crash)
            self.run_id = None
            return False
        self.runs += 1
        return True

    def retire(self) -> None:
        try:
            self.popen.stdin.close()  # it reads EOF and exits
        except OSError:
            pass


class WarmRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher with warm, reused processes per device (see the module's docstring)."""

    def __init__(self, inst_data=None, idle_seconds: int = IDLE_SECONDS):
        super().__init__(inst_data=inst_data)
        self._idle_seconds = idle_seconds
        self._idle: dict[str, list[_RunProcess]] = {}
        self._alive: dict[str, set[_RunProcess]] = {}
        self._lock = threading.Lock()

    @classmethod
    def config_type(cls):
        return {"idle_seconds": Field(IntSource, is_required=False, default_value=IDLE_SECONDS,
                                      description="How long a run process waits for a run before it exits.")}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context) -> None:
        run = context.dagster_run
        device, origin = run.tags.get(DEVICE_TAG), run.job_code_origin
        if device is None or origin is None or origin.executable_path != sys.executable:
            return super().launch_run(context)
        with self._lock:
            idle = self._idle.get(device, [])
            process = idle.pop() if idle else None  # the last parked: the others age out
        if process is not None and self._hand(process, run):
            how = (f"warm, started {time.monotonic() - process.born:.1f} s before the run, "
                   f"run {process.runs} in it")
        else:
            process, how = self._start(device), "cold, no process of the device was idle"
            if not self._hand(process, run):
                raise RuntimeError(f"the run's process (pid {process.pid}) exited at once")
        self._instance.report_engine_event(f"{LAUNCHED}{process.pid}): {how}.", run)
        self._run_ids.add(run.run_id)
        most = self._most(device)
        with self._lock:
            more = not self._idle.get(device) and len(self._alive.get(device, ())) < most
        if more:
            self._park(self._start(device))

    def _most(self, device: str) -> int:
        """The queue's limit of runs in flight for the device tag: more processes would idle."""
        for limit in self._instance.get_concurrency_config().run_queue_config.tag_concurrency_limits:
            if limit.get("key") == DEVICE_TAG:
                return int(limit["limit"])
        return 2  # no limit for the tag: one process running, one ready

    def _start(self, device: str) -> _RunProcess:
        from dagster import serialize_value

        process = _RunProcess(device, serialize_value(self._instance.get_ref()))
        with self._lock:
            self._alive.setdefault(device, set()).add(process)
        threading.Thread(target=self._watch, args=(process,), name=f"run-process-{process.pid}", daemon=True).start()
        return process

    def _hand(self, process: _RunProcess, run) -> bool:
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(process.pid)})
        return process.take(run.run_id)

    def _park(self, process: _RunProcess) -> None:
        """Idle until a run takes it, or `idle_seconds` pass and it retires."""
        with self._lock:
            process.run_id, process.idle_since = None, time.monotonic()
            self._idle.setdefault(process.device, []).append(process)
        retire = threading.Timer(self._idle_seconds, self._retire, args=(process, process.idle_since))
        retire.daemon = True
        retire.start()

    def _retire(self, process: _RunProcess, idle_since: float) -> None:
        with self._lock:
            idle = self._idle.get(process.device, [])
            if process not in idle or process.idle_since != idle_since:  # taken since
                return
            idle.remove(process)
        process.retire()

    def _watch(self, process: _RunProcess) -> None:
        """Park the process after each run it finished; when it exits, fail its run if
        unfinished (a native crash, the OOM killer), as the code server does for its runs."""
        for line in process.popen.stdout:
            if line.strip() == DONE:
                self._park(process)
        code = process.popen.wait()
        with self._lock:
            self._alive[process.device].discard(process)
            if process in self._idle.get(process.device, []):
                self._idle[process.device].remove(process)
        run = self._instance.get_run_by_id(process.run_id) if process.run_id else None
        if run is not None and not run.is_finished:
            self._instance.report_run_failed(run, f"the run's process (pid {process.pid}) exited with code {code}")

    def dispose(self) -> None:
        with self._lock:
            alive = [p for processes in self._alive.values() for p in processes]
        for process in alive:
            process.retire()
        super().dispose()

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        pid = self._pid_of(run)
        if pid is None:
            return super().terminate(run_id)
        self._instance.report_run_canceling(run)
        try:
            os.kill(pid, signal.SIGINT)  # as the code server interrupts its runs: Dagster cancels the run
        except ProcessLookupError:
            return False
        return True

    def _pid_of(self, run) -> int | None:
        """The pid of an unfinished run's process if this launcher started it: its tag, else
        the run's launch event. Dagster's run storage writes a run's record by reading it
        and writing it back, so a concurrent write can drop a tag for a while (once in CI, a
        running run's record lacked it; its storage notes the same of the status)."""
        if run is None or run.is_finished:
            return None
        if PID_TAG in run.tags:
            return int(run.tags[PID_TAG])
        from dagster import DagsterEventType

        for entry in self._instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            if entry.message.startswith(LAUNCHED):
                return int(entry.message[len(LAUNCHED):].split(")")[0])
        return None


def _config_text() -> str | None:
    from feature_pipeline_dagster.core.settings import config_path

    try:
        return config_path().read_text(encoding="utf-8")
    except OSError:
        return None


def _leave(*_) -> None:
    """A terminal's Ctrl-C while idle: leave quietly."""
    sys.exit(0)


def _serve(device: str, instance_ref: str) -> int:
    """Warm up, then execute each run id read from stdin (EOF: retired), saying `done` after
    each run that succeeded; exit after one that did not."""
    control = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what a library prints goes to the log, not into the launcher's channel
    signal.signal(signal.SIGINT, _leave)
    config = _config_text()
    try:  # what a run does first, done ahead; a failure is left for the run to report, once
        from feature_pipeline_dagster.core.models import preload
        from feature_pipeline_dagster.core.settings import load_settings

        preload(load_settings().model, device)
        import feature_pipeline_dagster

        feature_pipeline_dagster.defs  # noqa: B018 - the code location, built once
    except Exception:
        pass
    from dagster import DagsterInstance, DagsterRunStatus, deserialize_value
    # What `dagster api execute_run` calls: no public entry executes an existing run in this process.
    from dagster._cli.api import _execute_run_command_body

    instance = DagsterInstance.from_ref(deserialize_value(instance_ref))
    for line in sys.stdin:
        run_id = line.strip()
        if (now := _config_text()) != config:  # edited since: the code location is built again from it
            sys.modules["feature_pipeline_dagster"].__dict__.pop("defs", None)
            config = now
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Terminate: KeyboardInterrupt, the run canceled
        _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
        signal.signal(signal.SIGINT, _leave)
        if instance.get_run_by_id(run_id).status != DagsterRunStatus.SUCCESS:
            return 0  # what went wrong (an interrupt, a fault) may have left this process unsound
        control.write(DONE + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2]))
