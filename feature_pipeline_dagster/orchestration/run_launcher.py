"""The instance's run launcher: each run in a process of its own at a time, as Dagster's
default launcher gives it, but a process already warm, and used again.

Dagster's DefaultRunLauncher has the code server spawn a fresh interpreter per run, which
imports dagster, this project and torch and loads the model before its first batch: 3.5-4.2 s
from a sensor run's creation to its embedding done for a one-clip run on the GPU stand-in
(bench/bench_gpu_standin.py, figure 5, 2 cores), every run; on a GPU box each run also loads
the model onto the device again. Here a device's processes stay: when a run of a device is
launched and no process of that device is idle, one more starts at once (up to the queue's
limit for the device tag less one, `_spare_up_to`), forked from the launcher's zygote, which
imported what a run imports once (`_Zygote`); it builds the code location and loads the
model, then waits. A run takes an idle process of its device (0.4-1.2 s from creation to
embedding done, figure 5) or, the first of a burst, a fresh one (0.7 s after a quiet spell,
the zygote up; 4.3 s for the daemon's first, which waits for the zygote's imports); a process
whose run succeeded waits for the next (and builds the code location again if the config
file changed meanwhile), and one idle for `idle_seconds` exits, freeing its memory and its
copy of the model.

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
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable

from dagster import DefaultRunLauncher, Field, IntSource

from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, PID_TAG

IDLE_SECONDS = 120
ZYGOTE = "--zygote"
RUN_IMPORTS = ("dagster._cli.api", "feature_pipeline_dagster.orchestration.definitions",
               "feature_pipeline_dagster.core.engine.run", "feature_pipeline_dagster.core.store.fast_insert")
FORK_TIMEOUT_S = 120  # the zygote answers its first fork after its imports: ~3 s here, more on a loaded box
REAP_EVERY_S, REAP_WAIT_S = 0.2, 5.0
DONE = "done"  # a process's line after a run that succeeded: it takes another
LAUNCHED = "Run process (pid "  # how the run's launch event begins, the pid next


class _RunProcess:
    """One run process of a device: run ids in on `runs_in`; out on `replies`, a `done` line
    after each run when it will take another. Forked by the zygote, or started cold."""

    def __init__(self, device: str, pid: int, runs_in, replies, wait: Callable[[], int | None]):
        self.device, self.pid, self.runs_in, self.replies, self.wait = device, pid, runs_in, replies, wait
        self.born, self.runs, self.run_id, self.idle_since = time.monotonic(), 0, None, None

    @classmethod
    def cold(cls, device: str, instance_ref: str) -> "_RunProcess":
        """`python -m feature_pipeline_dagster.orchestration.run_launcher`, its pipes the channels."""
        popen = subprocess.Popen([sys.executable, "-m", __name__, device, instance_ref],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        return cls(device, popen.pid, popen.stdin, popen.stdout, popen.wait)

    def take(self, run_id: str) -> bool:
        self.run_id = run_id  # before it can read it: a death from here on fails the run
        try:
            self.runs_in.write(run_id + "\n")
            self.runs_in.flush()
        except OSError:  # it has exited (an idle process retired, a crash)
            self.run_id = None
            return False
        self.runs += 1
        return True

    def retire(self) -> None:
        try:
            self.runs_in.close()  # it reads EOF and exits
        except OSError:
            pass


class _Zygote:
    """`python -m feature_pipeline_dagster.orchestration.run_launcher --zygote`: a process that
    has imported what a run process imports (dagster's run API, this package, pymilvus, torch
    and the configured model's code: 2.7-3.1 s of CPU here) and forks each run process from
    it, which then builds the code location, opens the instance and loads the weights: 0.5 s
    of CPU (GPU stand-in, 2 cores). One per launcher, from its first run process on; it exits
    when the launcher does, and its forks go on with their runs.

    Requests and answers are messages on a socket pair: a device name with the two ends of
    the new process' channels (`socket.send_fds`), answered `pid N`; `exit N CODE` as it
    reaps one, which a run's failure names."""

    def __init__(self, instance_ref: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.popen = subprocess.Popen([sys.executable, "-m", __name__, ZYGOTE, str(theirs.fileno()), instance_ref],
                                          pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._sock, self._lock, self._pids = ours, threading.Lock(), queue.Queue()
        self._exits: dict[int, int] = {}
        self._changed, self._gone = threading.Condition(), False
        threading.Thread(target=self._read, name="run-process-zygote", daemon=True).start()

    @property
    def alive(self) -> bool:
        return not self._gone and self.popen.poll() is None

    def fork(self, device: str) -> _RunProcess | None:
        """A new run process of `device`; None if the zygote is gone (then it is closed)."""
        runs_r, runs_w = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            with self._lock:  # one request in flight: the answers come in order
                socket.send_fds(self._sock, [device.encode()], [runs_r, replies_w])
                pid = self._pids.get(timeout=FORK_TIMEOUT_S)
        except (OSError, queue.Empty):
            pid = None
        finally:
            os.close(runs_r)
            os.close(replies_w)
        if pid is None:
            os.close(runs_w)
            os.close(replies_r)
            self.close()
            return None
        return _RunProcess(device, pid, os.fdopen(runs_w, "w", buffering=1), os.fdopen(replies_r),
                           lambda: self._exit_code(pid))

    def _read(self) -> None:
        while message := self._receive():
            kind, pid, *code = message.split()
            if kind == "pid":
                self._pids.put(int(pid))
            else:
                with self._changed:
                    self._exits[int(pid)] = int(code[0])
                    self._changed.notify_all()
        self._pids.put(None)
        with self._changed:
            self._gone = True
            self._changed.notify_all()

    def _receive(self) -> str:
        try:
            return self._sock.recv(64).decode()
        except OSError:
            return ""

    def _exit_code(self, pid: int) -> int | None:
        """How a forked process ended, as the zygote reaped it (None if the zygote is gone)."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._gone, timeout=REAP_WAIT_S)
            return self._exits.pop(pid, None)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # it reads EOF and exits; its forks go on
        except OSError:
            pass
        self._sock.close()


class WarmRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher with warm, reused processes per device (see the module's docstring)."""

    def __init__(self, inst_data=None, idle_seconds: int = IDLE_SECONDS):
        super().__init__(inst_data=inst_data)
        self._idle_seconds = idle_seconds
        self._idle: dict[str, list[_RunProcess]] = {}
        self._alive: dict[str, set[_RunProcess]] = {}
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()

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
        with self._lock:
            more = not self._idle.get(device) and len(self._alive.get(device, ())) < self._spare_up_to(device)
        if more:
            self._park(self._start(device))

    def _spare_up_to(self, device: str) -> int:
        """How many processes of the device a spare may make: the queue's limit of runs in
        flight for the device tag less the one past its embedding, whose process is free
        again before the run after next can have the device (a third spare, started and
        never used, cost a 1000-clip sensor burst 5 core-seconds on 2 cores)."""
        for limit in self._instance.get_concurrency_config().run_queue_config.tag_concurrency_limits:
            if limit.get("key") == DEVICE_TAG:
                return max(int(limit["limit"]) - 1, 1)
        return 2  # no limit for the tag: one process running, one ready

    def _start(self, device: str) -> _RunProcess:
        """A new process of the device: forked by the zygote (started with the first), or
        started cold if the zygote is gone."""
        from dagster import serialize_value

        instance_ref = serialize_value(self._instance.get_ref())
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive:
                self._zygote = _Zygote(instance_ref)
            process = self._zygote.fork(device)
        process = process or _RunProcess.cold(device, instance_ref)
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
        for line in process.replies:
            if line.strip() == DONE:
                self._park(process)
        code = process.wait()
        with self._lock:
            self._alive[process.device].discard(process)
            if process in self._idle.get(process.device, []):
                self._idle[process.device].remove(process)
        run = self._instance.get_run_by_id(process.run_id) if process.run_id else None
        if run is not None and not run.is_finished:
            how = "exited" if code is None else f"exited with code {code}"
            self._instance.report_run_failed(run, f"the run's process (pid {process.pid}) {how}")

    def dispose(self) -> None:
        with self._lock:
            alive = [p for processes in self._alive.values() for p in processes]
        for process in alive:
            process.retire()
        with self._zygote_lock:
            if self._zygote is not None:
                self._zygote.close()
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


def _serve(device: str, instance_ref: str, runs, control) -> int:
    """Warm up, then execute each run id read from `runs` (EOF: retired), saying `done` on
    `control` after each run that succeeded; exit after one that did not."""
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
    for line in runs:
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


def _serve_cold(device: str, instance_ref: str) -> int:
    """A process the launcher started itself: its stdin and stdout are the channels."""
    control = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what a library prints goes to the log, not into the launcher's channel
    return _serve(device, instance_ref, sys.stdin, control)


def _zygote(sock_fd: int, instance_ref: str) -> int:
    """Import what a run process imports, then fork one per request and answer its pid;
    say each one's exit code as it is reaped; exit when the launcher has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: its forks and the daemon act on it
    sock = socket.socket(fileno=sock_fd)
    _import_ahead()
    while True:
        readable, _, _ = select.select([sock], [], [], REAP_EVERY_S)
        _reap(sock)
        if not readable:
            continue
        try:
            device, fds, _, _ = socket.recv_fds(sock, 256, 2)
        except OSError:
            return 0
        if not device:
            return 0
        pid = os.fork()
        if pid == 0:
            sock.close()
            _forked(device.decode(), instance_ref, *fds)
        for fd in fds:
            os.close(fd)
        sock.send(f"pid {pid}".encode())


def _import_ahead() -> None:
    """What every run process imports, once, in the zygote: fork inherits it."""
    import importlib

    for module in RUN_IMPORTS:
        importlib.import_module(module)
    try:
        from feature_pipeline_dagster.core.models import import_model_code
        from feature_pipeline_dagster.core.settings import load_settings

        import_model_code(load_settings().model)
    except Exception:  # a config or a model that cannot load: each run says why
        pass


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            sock.send(f"exit {pid} {os.waitstatus_to_exitcode(status)}".encode())
        except OSError:
            return


def _forked(device: str, instance_ref: str, runs_fd: int, control_fd: int) -> None:
    """A forked run process: serve, then exit without returning to the zygote's loop."""
    code = 1
    try:
        code = _serve(device, instance_ref, os.fdopen(runs_fd), os.fdopen(control_fd, "w", buffering=1))
    except SystemExit as leaving:  # _leave
        code = leaving.code if isinstance(leaving.code, int) else 0
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)


if __name__ == "__main__":
    if sys.argv[1] == ZYGOTE:
        sys.exit(_zygote(int(sys.argv[2]), sys.argv[3]))
    sys.exit(_serve_cold(sys.argv[1], sys.argv[2]))
