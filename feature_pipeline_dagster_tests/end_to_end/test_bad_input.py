"""Bad input in the folder: each bad file fails alone with one clear line, the rest of
the folder is embedded, and what is not a video of the folder is not touched."""

import os
import signal
import threading
import time
from pathlib import Path

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import readers_of
from feature_pipeline_dagster_tests.core.test_decode import FOLDER_FAILED, FOLDER_FRAMES, FOLDER_PARTIAL, write_bad_folder
from feature_pipeline_dagster_tests.end_to_end.test_end_to_end import cli
from feature_pipeline_dagster_tests.store_rows import stored_rows


def test_a_folder_of_bad_files(project, tmp_path_factory):
    """The default backend through the CLI; core/test_decode.py runs the same files through
    every installed backend (`video_input.decoder`) and finds the same outcomes."""
    folder = project.videos
    write_bad_folder(folder, tmp_path_factory.mktemp("src"))
    (folder / "dir.mp4").mkdir()
    outside = write_video(tmp_path_factory.mktemp("outside") / "secret.mp4", seconds=1)
    (folder / "link.mp4").symlink_to(outside)
    unreadable = write_video(folder / "unreadable.mp4", seconds=1)
    unreadable.chmod(0)

    with GrowingFile(folder / "still copying.mp4"):
        result = cli(project, "run", check=False, prefix=NO_ROOT_PRIVILEGE)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    failed = {line.split(": ", 2)[1]: line for line in lines if line.startswith("  failed: ")}
    partial = {line.split(": ", 2)[1]: line for line in lines if line.startswith("  partial: ")}
    expected_failed = {**FOLDER_FAILED, "unreadable.mp4": "no permission to read it",
                       "still copying.mp4": "still being written"}
    assert set(failed) == set(expected_failed), result.stderr[-3000:]
    assert all(phrase in failed[n] for n, phrase in expected_failed.items())
    assert set(partial) == set(FOLDER_PARTIAL), result.stderr[-3000:]
    assert all(phrase in partial[n] for n, phrase in FOLDER_PARTIAL.items())
    assert "embedded 11 of 17 video(s)" in result.stderr  # link.mp4 and dir.mp4 are not videos of the folder
    assert all("\n" not in line for line in failed.values())
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        spec = settings.db.collections[0]
        expected = {**FOLDER_FRAMES, **dict.fromkeys(FOLDER_PARTIAL, 4), "link.mp4": 0}
        assert {n: store.count_rows(spec, n) for n in expected} == expected
        assert sorted(r["timestamp_ms"] for r in stored_rows(store, spec, "vfr.mp4", ("timestamp_ms",))) == [0, 1000, 2000, 3000]
    finally:
        store.close()


class GrowingFile:
    """A video being copied into the folder, slowly, for as long as the block runs."""

    def __init__(self, path: Path):
        self.path, self.stop = path, threading.Event()
        self.data = write_video(path.parent.parent / "source.mp4", seconds=20).read_bytes()
        path.write_bytes(self.data[:4096])

    def __enter__(self):
        def grow():
            at = 4096
            while not self.stop.wait(0.1) and at < len(self.data):
                with open(self.path, "ab") as handle:
                    handle.write(self.data[at : at + 1024])
                at += 1024

        self.thread = threading.Thread(target=grow, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


# As root, file permissions bind only without CAP_DAC_OVERRIDE: drop it (and its
# read-only sibling) for the command, as for any user.
NO_ROOT_PRIVILEGE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def test_a_decoder_crash_fails_only_its_video(project):
    """A native crash in the decoder (here a real SIGSEGV, sent whenever one reads the file,
    as a file that crashes FFmpeg does) fails that video; the run's other videos are embedded.
    The first crash is the decoder's that decodes the file ahead, as the run starts: no video
    is asked for yet, and a fresh decoder tries it again when the run asks."""
    for name in ("a.mp4", "c.mp4"):
        write_video(project.videos / name, seconds=2)
    crash = write_video(project.videos / "b crash.mp4", seconds=15, size=(640, 480))
    killed, done = [], threading.Event()

    def kill_the_decoders_reading(path: Path) -> None:
        while not done.is_set():
            for pid in readers_of([path]):
                os.kill(pid, signal.SIGSEGV)
                killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_decoders_reading, args=(crash,), daemon=True)
    watcher.start()
    try:
        result = cli(project, "run", check=False)
    finally:
        done.set()
        watcher.join()
    assert len(set(killed)) == 2 and result.returncode == 1  # the one decoding ahead, then the run's
    failed = [line for line in result.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and "b crash.mp4: the decoder crashed on this file (killed by SIGSEGV)" in failed[0]
    assert "embedded 2 of 3 video(s), 4 rows" in result.stderr
