"""Decoding in a child process, so a native crash in FFmpeg or a decoder library (decord
and FFmpeg have open reports of aborts and segfaults on odd files) fails that one video,
not the run. Every CPU backend decodes here; nvdec decodes in the run's process
(`decode/local.py`), since its frames stay on the GPU.

The child is started once per process and reused for every video; frames cross a pipe
as raw bytes (one copy; measured by bench/bench_decoder_process.py). The child takes
over its own file descriptor 2, so it can tell which batch FFmpeg complained about.

Protocol: the parent writes one JSON request per line on the child's stdin; the child
answers with a JSON line on its stdout, followed, for a batch, by the frames' bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from feature_pipeline_dagster.core.errors import VideoError, one_line
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.decode.reader import SamplingPlan, StreamInfo, VideoReader
from feature_pipeline_dagster.core.decode.heap import fix_mmap_threshold
from feature_pipeline_dagster.core.decode.spec import DecodeSpec


class OpenVideo:
    """A video opened in the decoder process: its info and plan, then its batches."""

    def __init__(self, decoder: DecoderProcess, path: Path, answer: dict):
        self.decoder, self.path = decoder, path
        self.info = StreamInfo(path, **{k: v for k, v in answer["info"].items() if k != "path"})
        self.plan = SamplingPlan(np.asarray(answer["frame_ids"], np.int64),
                                 np.asarray(answer["timestamps_ms"], np.int64), bool(answer.get("key_frames_only")))
        self.partial: str | None = answer["partial"]

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
    a crash. One video at a time."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def open(self, path: Path, spec: DecodeSpec) -> OpenVideo:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._send({"op": "open", "path": str(path), "spec": asdict(spec)})
            answer = self._receive(path)
        if "error" in answer:
            raise VideoError(answer["error"])
        return OpenVideo(self, path, answer)

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "feature_pipeline_dagster.core.decode.process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

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


def _serve(requests: BinaryIO, answers: BinaryIO, complaints: _Complaints) -> None:
    reader = plan = None
    current = "video"

    def answer(obj: dict, payload: np.ndarray | None = None) -> None:
        answers.write(json.dumps(obj).encode() + b"\n")
        if payload is not None:
            answers.write(memoryview(np.ascontiguousarray(payload)).cast("B"))
        answers.flush()

    for line in requests:
        request = json.loads(line)
        current = request.get("path", current)
        try:
            if request["op"] == "open":
                if reader is not None:  # opened, never decoded (the parent refused it)
                    reader.close()
                complaints.reset()
                spec = DecodeSpec(**request["spec"])
                reader = VideoReader(request["path"], complaints, spec.decoder, threads=spec.threads)
                plan = reader.plan(spec)
                info = {k: v for k, v in asdict(reader.info).items() if k != "path"}
                answer({"info": info, "frame_ids": plan.frame_ids.tolist(),
                        "timestamps_ms": plan.timestamps_ms.tolist(), "key_frames_only": plan.key_frames_only, "partial": reader.partial})
            elif request["op"] == "decode":
                done = 0
                for batch in reader.batches(plan, request["batch_size"]):
                    answer({"start": done, "count": len(batch), "shape": list(batch.frames.shape)}, batch.frames)
                    done += len(batch)
                answer({"end": True, "partial": reader.partial})
                reader.close()  # the file is let go of as soon as its frames are out
                reader = None
        except VideoError as err:
            answer({"error": str(err)})
        except Exception as err:  # a fault of this code, not of the file: say it, keep serving
            answer({"error": f"{current}: decoder failed ({type(err).__name__}: {one_line(err)})"})


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the run decides when its
    # decoders stop (and they die with it), so a Ctrl-C never reads as a decoder crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    fix_mmap_threshold()
    answers = os.fdopen(os.dup(1), "wb")  # the protocol's own channel:
    complaints = _Complaints()
    os.dup2(2, 1)  # anything a library prints to stdout goes with its logs instead
    _serve(sys.stdin.buffer, answers, complaints)


if __name__ == "__main__":
    main()
