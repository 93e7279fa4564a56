"""Decoding in a child process, so a native crash in FFmpeg or a decoder library (decord
and FFmpeg have open reports of aborts and segfaults on odd files) fails that one video,
not the run. Every CPU backend decodes here; nvdec decodes in the run's process
(`decode/local.py`), since its frames stay on the GPU.

The child is started once per process and reused for every video; frames cross a pipe
as raw bytes (one copy; measured by bench/bench_decoder_process.py). The child takes
over its own file descriptor 2, so it can tell which batch FFmpeg complained about.

Protocol: the parent writes one JSON request per line on the child's stdin; the child
answers with a JSON line on its stdout, followed, for a batch, by the frames' bytes.

A `prefetch` request lets a child decode the first videos of a run while the run's process
is still starting (imports, Dagster, the model: one GIL, one busy core): it decodes them into
memory, within a budget (`ahead_bytes`), until the first other request arrives, then says
which it holds (one line, read before that request's answer), and answers their `open` and
`decode` from memory when the file's size, mtime and inode are still those it read and the
spec and batch size are the same.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from feature_pipeline_dagster.core.errors import VideoError, one_line
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.decode.reader import SamplingPlan, StreamInfo, VideoReader
from feature_pipeline_dagster.core.decode.heap import fix_mmap_threshold
from feature_pipeline_dagster.core.decode.spec import DecodeSpec


def ahead_bytes() -> int:
    """Frames the decoders of a process may hold decoded ahead, together: a 32nd of the
    machine's memory, from 128 MB to 2 GB (768 MB here: ~1100 clips of 3 frames at 320x240;
    on a 128 GB GPU box 2 GB, ~740 frames of 720p, a few seconds of its decoders). The run's
    first request ends it, so the start-up's length binds it before memory does here."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 0
    return min(max(memory // 32, 128 << 20), 2 << 30)


class OpenVideo:
    """A video opened in the decoder process: its info and plan, then its batches."""

    def __init__(self, decoder: DecoderProcess, path: Path, answer: dict):
        self.decoder, self.path = decoder, path
        self.info = StreamInfo(path, **{k: v for k, v in answer["info"].items() if k != "path"})
        self.plan = SamplingPlan(np.asarray(answer["frame_ids"], np.int64),
                                 np.asarray(answer["timestamps_ms"], np.int64), bool(answer.get("key_frames_only")))
        self.partial: str | None = answer["partial"]
        self.ahead: bool = answer.get("ahead", False)  # decoded before it was asked for

    def batches(self, batch_size: int) -> Iterator[FrameBatch]:
        """Every batch of the plan; a parent that stops early ends the child's video."""
        d = self.decoder
        d._send({"op": "decode", "batch_size": batch_size})
        finished = False
        try:
            while True:
                head = d._receive(self.path)
                if "error" in head:
                    finished = True
                    raise VideoError(head["error"])
                if head.get("end"):
                    finished = True
                    self.partial = head["partial"]
                    return
                start, count, shape = head["start"], head["count"], tuple(head["shape"])
                frames = np.empty(shape, np.uint8)
                d._read_into(memoryview(frames).cast("B"), self.path)
                ids = slice(start, start + count)
                yield FrameBatch(frames, self.plan.frame_ids[ids], self.plan.timestamps_ms[ids])
        finally:
            if not finished:
                d.stop()  # mid-stream: the cheapest way to a clean channel is a fresh child


class DecoderProcess:
    """The parent's handle on one decoder child, started on first use, restarted after
    a crash. One video at a time. `ahead`: the paths it was asked to prefetch and not
    opened yet (decode lanes take those first: engine/lanes.py)."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.ahead: list[str] = []
        self.held: list[str] | None = None  # what the child said it decoded ahead, once read

    def start(self) -> None:
        """Start the child now (0.15-0.2 s of imports) rather than at its first video."""
        with self._lock:
            self._running()

    def prefetch(self, paths: list[Path], spec: DecodeSpec, batch_size: int, budget: int) -> None:
        """Let the child decode `paths` ahead, holding at most `budget` bytes of frames (see
        the module's docstring)."""
        request = {"op": "prefetch", "paths": [str(p) for p in paths], "spec": asdict(spec), "batch_size": batch_size,
                   "budget": budget}
        with self._lock:
            self._send_surviving(request)  # an earlier prefetch's line read first: this request ended it
            self.ahead, self.held = request["paths"], None  # its line comes before the next answer

    def held_ahead(self) -> list[str]:
        """The paths the child decoded ahead, once it has stopped: at the end of the list or
        its budget, or at this process' next request (this waits for it)."""
        with self._lock:
            self._survived_ahead()
            return self.held or []

    def _survived_ahead(self) -> bool:
        """Reads the child's line on what it decoded ahead, once, before any other answer;
        False if the child died while decoding ahead (a crash no video asked for yet: the
        video it was on is tried again on a fresh child when the run asks for it)."""
        if self.held is None and self._proc is not None:
            line = self._proc.stdout.readline()
            if not line:
                self._proc.wait()
                self._proc, self.ahead, self.held = None, [], []
                return False
            self.held = json.loads(line)["held"]
        return True

    def open(self, path: Path, spec: DecodeSpec) -> OpenVideo:
        with self._lock:
            if str(path) in self.ahead:
                self.ahead.remove(str(path))
            self._send_surviving({"op": "open", "path": str(path), "spec": asdict(spec)})
            answer = self._receive(path)
        if "error" in answer:
            raise VideoError(answer["error"])
        return OpenVideo(self, path, answer)

    def _send_surviving(self, request: dict) -> None:
        """`request` to a live child, again to a fresh one if it died decoding ahead."""
        self._running()
        self._send(request)
        if not self._survived_ahead():
            self._running()
            self._send(request)

    def _running(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self.ahead, self.held = [], []  # a new child holds nothing decoded
            self._start()

    def _start(self) -> None:
        # Born with SIGINT blocked, until it ignores it: started with the command (engine/run.py:
        # decode_first), a terminal's Ctrl-C in its first 0.2 s printed a traceback from it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "feature_pipeline_dagster.core.decode.process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _send(self, request: dict) -> None:
        try:
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the next read says how

    def _receive(self, path: Path) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._crashed(path)
        return json.loads(line)

    def _read_into(self, view: memoryview, path: Path) -> None:
        got = 0
        while got < len(view):
            n = self._proc.stdout.readinto(view[got:])
            if not n:
                self._crashed(path)
            got += n

    def _crashed(self, path: Path):
        code = self._proc.wait()
        self._proc = None
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        raise VideoError(f"{path}: the decoder crashed on this file ({how}); the other videos go on")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


_pool: list[DecoderProcess] = []


def decoder_pool(size: int) -> list[DecoderProcess]:
    """This process's decoder children, `size` of them, kept for its later runs (each
    starts on first use: about 0.5 s of imports)."""
    while len(_pool) < size:
        _pool.append(DecoderProcess())
    return _pool[:size]


# The child side.

def _die_with_parent() -> None:
    """SIGKILL to the run process must not leave a decoder behind (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # it died before that took effect
        sys.exit(0)


class _Complaints:
    """FFmpeg's log lines since the last call: fd 2 goes to a file this process reads.

    fd 2 appends (O_APPEND) and the file is read with pread, so reading never moves where
    the decoder's threads write: with one shared offset a read could send their next line
    over the last one, and after `reset` a line began with the old length in NUL bytes
    (its "[h264 @" no longer first, the damage went unseen: a decord flake in CI). FFmpeg
    writes a line's "[h264 @ 0x..] " and its message apart, so a line without its newline
    waits for the next call."""

    def __init__(self, fd: int = 2):
        import fcntl
        import tempfile

        self._file = tempfile.TemporaryFile()
        self._fd = self._file.fileno()
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) | os.O_APPEND)
        os.dup2(self._fd, fd)
        self._offset = 0

    def reset(self) -> None:
        os.ftruncate(self._fd, 0)
        self._offset = 0

    def __call__(self) -> list[str]:
        data = os.pread(self._fd, os.fstat(self._fd).st_size - self._offset, self._offset)
        data = data[: data.rfind(b"\n") + 1]
        self._offset += len(data)
        return [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]


class _Requests:
    """The parent's request lines, read from the raw descriptor so that `waiting` can tell
    whether one has arrived (a buffered reader may hold it where select cannot see it)."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def waiting(self) -> bool:
        return b"\n" in self.buffer or bool(select.select([self.fd], [], [], 0)[0])

    def __iter__(self) -> Iterator[bytes]:
        while True:
            while b"\n" not in self.buffer:
                data = os.read(self.fd, 1 << 16)
                if not data:
                    return
                self.buffer += data
            line, _, self.buffer = self.buffer.partition(b"\n")
            yield line


Answer = tuple[dict, "np.ndarray | None"]


@dataclass
class _Video:
    """A video's answers, from its opening to its end or failure: sent as they come, or
    kept when decoded ahead."""

    path: str
    spec: dict
    complaints: _Complaints
    reader: VideoReader | None = None
    plan: SamplingPlan | None = None

    def open(self) -> Answer:
        self.complaints.reset()
        spec = DecodeSpec(**self.spec)
        self.reader = VideoReader(self.path, self.complaints, spec.decoder, threads=spec.threads)
        self.plan = plan = self.reader.plan(spec)
        info = {k: v for k, v in asdict(self.reader.info).items() if k != "path"}
        return {"info": info, "frame_ids": plan.frame_ids.tolist(), "timestamps_ms": plan.timestamps_ms.tolist(),
                "key_frames_only": plan.key_frames_only, "partial": self.reader.partial}, None

    def decode(self, batch_size: int) -> Iterator[Answer]:
        done = 0
        try:
            for batch in self.reader.batches(self.plan, batch_size):
                yield {"start": done, "count": len(batch), "shape": list(batch.frames.shape)}, batch.frames
                done += len(batch)
            yield {"end": True, "partial": self.reader.partial}, None
        finally:
            self.close()  # the file is let go of as soon as its frames are out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _failure(path: str, err: Exception) -> Answer:
    if isinstance(err, VideoError):
        return {"error": str(err)}, None
    return {"error": f"{path}: decoder failed ({type(err).__name__}: {one_line(err)})"}, None  # this code's fault


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class _Ahead:
    """A video decoded ahead: its answers, and what it was decoded from."""

    spec: dict
    batch_size: int
    identity: tuple | None
    answers: list[Answer]


def _prefetch(request: dict, complaints: _Complaints, stop: Callable[[], bool]) -> dict[str, _Ahead]:
    """The videos of a prefetch request decoded into memory, in order, until `stop` says a
    request is waiting (the video in progress is then dropped); a video whose frames would
    pass the budget is left for the run (a long one is not decoded to be dropped)."""
    kept: dict[str, _Ahead] = {}
    held, budget = 0, request["budget"]
    for path in request["paths"]:
        if stop():
            break
        video = _Video(path, request["spec"], complaints)
        answers: list[Answer] = []
        identity = _identity(path)
        try:
            answers.append(video.open())
            info = video.reader.info
            need = len(video.plan) * info.width * info.height * 3
            if held + need > budget:
                continue
            for item in video.decode(request["batch_size"]):
                answers.append(item)
                if stop():
                    return kept  # this video only in part: dropped
            held += need
        except Exception as err:
            answers.append(_failure(path, err))
        finally:
            video.close()
        kept[path] = _Ahead(request["spec"], request["batch_size"], identity, answers)
    return kept


def _serve(requests: _Requests, answers: BinaryIO, complaints: _Complaints) -> None:
    video: _Video | None = None
    ahead: dict[str, _Ahead] = {}
    replay: _Ahead | None = None  # the video opened from `ahead`

    def answer(item: Answer) -> None:
        obj, payload = item
        answers.write(json.dumps(obj).encode() + b"\n")
        if payload is not None:
            answers.write(memoryview(np.ascontiguousarray(payload)).cast("B"))
        answers.flush()

    for line in requests:
        request = json.loads(line)
        if request["op"] == "prefetch":
            ahead = _prefetch(request, complaints, requests.waiting)
            answer(({"held": list(ahead)}, None))
            continue
        path = request.get("path", video.path if video is not None else "video")
        try:
            if request["op"] == "open":
                if video is not None:  # opened, never decoded (the parent refused it)
                    video.close()
                video = _Video(path, request["spec"], complaints)
                replay = ahead.pop(path, None)
                if replay is not None and (replay.spec != video.spec or replay.identity != _identity(path)):
                    replay = None  # another spec, or the file changed since
                if replay is not None:
                    opened, _ = replay.answers[0]
                    answer(({**opened, "ahead": True}, None))
                else:
                    answer(video.open())
            elif request["op"] == "decode":
                if replay is not None and replay.batch_size == request["batch_size"]:
                    for item in replay.answers[1:]:
                        answer(item)
                else:
                    if replay is not None:  # opened from memory, decoded in other batches: read again
                        video.open()
                    for item in video.decode(request["batch_size"]):
                        answer(item)
                video = replay = None
        except Exception as err:
            answer(_failure(path, err))


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the run decides when its
    # decoders stop (and they die with it), so a Ctrl-C never reads as a decoder crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    fix_mmap_threshold()
    answers = os.fdopen(os.dup(1), "wb")  # the protocol's own channel:
    complaints = _Complaints()
    os.dup2(2, 1)  # anything a library prints to stdout goes with its logs instead
    _serve(_Requests(sys.stdin.fileno()), answers, complaints)


if __name__ == "__main__":
    main()
