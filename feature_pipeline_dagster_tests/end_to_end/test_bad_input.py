"""Bad input in the folder: each bad file fails alone with one clear line, the rest of
the folder is embedded, and what is not a video of the folder is not touched."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.store import store_for
from feature_pipeline_dagster_tests.conftest import readers_of
from feature_pipeline_dagster_tests.core.test_decode import BACKENDS, damage_packets, write_audio_only, write_vfr
from feature_pipeline_dagster_tests.end_to_end.test_end_to_end import cli


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_folder_of_bad_files(project, tmp_path_factory, backend):
    """Every installed backend (`video_input.decoder`) gives the same lines and rows."""
    config = yaml.safe_load(project.config.read_text())
    config["video_input"]["decoder"] = backend
    project.config.write_text(yaml.safe_dump(config, allow_unicode=True))
    folder = project.videos
    write_video(folder / "good.mp4", seconds=2.5)
    write_video(folder / "one frame.mp4", seconds=1 / 30)
    (folder / "empty.mp4").touch()
    (folder / "noise.mp4").write_bytes(os.urandom(30000))
    whole = write_video(tmp_path_factory.mktemp("src") / "whole.mp4", seconds=3)
    (folder / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    write_audio_only(folder / "audio.mp4")
    (folder / "dir.mp4").mkdir()
    outside = write_video(tmp_path_factory.mktemp("outside") / "secret.mp4", seconds=1)
    (folder / "link.mp4").symlink_to(outside)

    faststart = write_video(tmp_path_factory.mktemp("src") / "fast.mp4", seconds=6, faststart=True)
    (folder / "cut faststart.mp4").write_bytes(faststart.read_bytes()[: faststart.stat().st_size * 6 // 10])
    damage_packets(write_video(tmp_path_factory.mktemp("src") / "d.mp4", seconds=6), folder / "damaged.mp4", first=95)
    write_vfr(folder / "vfr.mp4")
    write_video(folder / "portrait.mp4", seconds=2, rotation=90)
    write_video(folder / "8k.mp4", seconds=1 / 30, size=(7680, 4320))
    odd_names = ["ünï cödé ✓.mp4", "it's \"quoted\", with, commas.mp4", "new\nline.mp4", "n" * 250 + ".mp4"]
    for i, name in enumerate(odd_names):
        write_video(folder / name, seconds=2, seed=i)
    unreadable = write_video(folder / "unreadable.mp4", seconds=1)
    unreadable.chmod(0)

    with GrowingFile(folder / "still copying.mp4"):
        result = cli(project, "run", check=False, prefix=NO_ROOT_PRIVILEGE)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    failed = {line.split(": ", 2)[1]: line for line in lines if line.startswith("  failed: ")}
    partial = {line.split(": ", 2)[1]: line for line in lines if line.startswith("  partial: ")}
    assert set(failed) == {"empty.mp4", "noise.mp4", "truncated.mp4", "audio.mp4", "unreadable.mp4",
                           "still copying.mp4"}, result.stderr[-3000:]
    assert "empty file (0 bytes)" in failed["empty.mp4"]
    assert "cannot open video" in failed["noise.mp4"] and "cannot open video" in failed["truncated.mp4"]
    assert "no video stream" in failed["audio.mp4"]
    assert "no permission to read it" in failed["unreadable.mp4"]
    assert "still being written" in failed["still copying.mp4"]
    assert set(partial) == {"cut faststart.mp4", "damaged.mp4"}, result.stderr[-3000:]
    assert "file is cut short" in partial["cut faststart.mp4"]
    assert "damaged video stream near 4.0 s" in partial["damaged.mp4"]
    assert "embedded 11 of 17 video(s)" in result.stderr  # link.mp4 and dir.mp4 are not videos of the folder
    assert all("\n" not in line for line in failed.values())
    settings = load_settings(project.config)
    store = store_for(settings.db)
    try:
        spec = settings.db.collections[0]
        counts = {n: store.count_rows(spec, n) for n in ["good.mp4", "one frame.mp4", "link.mp4", "cut faststart.mp4",
                                                          "damaged.mp4", "vfr.mp4", "portrait.mp4", "8k.mp4"]}
        assert counts == {"good.mp4": 3, "one frame.mp4": 1, "link.mp4": 0, "cut faststart.mp4": 4,
                          "damaged.mp4": 4, "vfr.mp4": 4, "portrait.mp4": 2, "8k.mp4": 1}
        assert {n: store.count_rows(spec, n) for n in odd_names} == dict.fromkeys(odd_names, 2)
        assert sorted(r["timestamp_ms"] for r in store.fetch_video(spec, "vfr.mp4", ("timestamp_ms",))) == [0, 1000, 2000, 3000]
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
    """A native crash in the decoder (here a real SIGSEGV, sent while it reads the file)
    fails that video; the run's other videos are embedded."""
    for name in ("a.mp4", "c.mp4"):
        write_video(project.videos / name, seconds=2)
    crash = write_video(project.videos / "b crash.mp4", seconds=15, size=(640, 480))
    killed = []

    def kill_the_decoder_reading(path: Path) -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            for pid in readers_of([path]):
                os.kill(pid, signal.SIGSEGV)
                killed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_decoder_reading, args=(crash,), daemon=True)
    watcher.start()
    result = cli(project, "run", check=False)
    watcher.join()
    assert killed and result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 1 and "b crash.mp4: the decoder crashed on this file (killed by SIGSEGV)" in failed[0]
    assert "embedded 2 of 3 video(s), 4 rows" in result.stderr
