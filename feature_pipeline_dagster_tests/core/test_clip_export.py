"""`core/clips.py` and `feature-pipeline clip`: a moment as an MP4 of its own, on generated
videos (key frames every second, audio beside them), read back with PyAV."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from feature_pipeline_dagster.core.clips import export_clip
from feature_pipeline_dagster.core.errors import ClipError
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster_tests.conftest import clip_config, write_config

FPS, GOP = 30, 30  # a key frame every second


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips") / "videos"
    write_video(folder / "talk.mp4", seconds=4.0, fps=FPS, gop=GOP, detail=True, audio="aac")
    write_video(folder / "pcm sound.mkv", seconds=3.0, fps=FPS, gop=GOP, audio="pcm_s16le")
    return folder


def video_packets(path: Path, first_s: float = 0.0, end_s: float | None = None) -> list[bytes]:
    """The video packets' bytes in decode order, from the one shown at `first_s` to the last decoded before `end_s`."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        found = []
        for packet in container.demux(stream):
            if packet.pts is None or float(packet.pts * stream.time_base) < first_s - 1e-6:
                continue
            if end_s is not None and float((packet.dts if packet.dts is not None else packet.pts)
                                           * stream.time_base) >= end_s:
                break
            found.append(bytes(packet))
        return found


def streams(path: Path) -> dict:
    """codec name -> seconds of each stream of the file."""
    import av

    with av.open(str(path)) as container:
        return {s.codec_context.name: float(s.duration * s.time_base) for s in container.streams}


def frame_at(path: Path, seconds: float) -> np.ndarray:
    """The frame shown at `seconds` (the last one at or before it), RGB."""
    import av

    with av.open(str(path)) as container:
        shown = None
        for frame in container.decode(video=0):
            if frame.time > seconds + 1e-6:
                break
            shown = frame
        return shown.to_ndarray(format="rgb24")


def test_a_key_frame_start_is_a_stream_copy_of_the_very_packets(videos, tmp_path):
    clip = export_clip(videos / "talk.mp4", 1.0, 3.0, tmp_path / "moment.mp4")
    assert clip.copied and clip.how.startswith("stream copy") and clip.note is None
    seconds = streams(clip.path)
    assert abs(seconds["h264"] - 2.0) <= GOP / FPS and seconds["aac"] == pytest.approx(2.0, abs=0.05)
    copied = video_packets(clip.path)
    assert copied == video_packets(videos / "talk.mp4", first_s=1.0, end_s=3.0)
    # Within a frame of a key frame counts as on it: the copy starts at the key frame.
    near = export_clip(videos / "talk.mp4", 2.0 - 0.5 / FPS, 3.0, tmp_path / "near.mp4")
    assert near.copied and near.start_s == 2.0


def test_a_start_between_key_frames_is_re_encoded_from_the_frame_shown_there(videos, tmp_path):
    clip = export_clip(videos / "talk.mp4", 1.3, 2.5, tmp_path / "moment.mp4")
    assert not clip.copied and clip.how == "re-encoded (H.264)"
    seconds = streams(clip.path)
    assert seconds["h264"] == pytest.approx(1.2, abs=1 / FPS) and seconds["aac"] == pytest.approx(1.2, abs=0.05)
    first = frame_at(clip.path, 0.0).astype(int)
    assert np.abs(first - frame_at(videos / "talk.mp4", 1.3)).mean() < 4
    assert np.abs(first - frame_at(videos / "talk.mp4", 1.3 - 1 / FPS)).mean() > 8  # the neighbour differs


def test_audio_mp4_players_lack_is_encoded_to_aac_and_the_end_moves_to_the_videos_end(videos, tmp_path):
    clip = export_clip(videos / "pcm sound.mkv", 1.0, 99, tmp_path / "moment.mp4")
    assert clip.copied and clip.end_s == pytest.approx(3.0, abs=0.01)
    assert clip.note == "the end (99 s) is past the video's end: the clip ends there (3.000 s)"
    seconds = streams(clip.path)
    assert set(seconds) == {"h264", "aac"} and seconds["aac"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("start, copied", [(1.0, True), (1.3, False)])
def test_a_phone_videos_rotation_stays(tmp_path, start, copied):
    from feature_pipeline_dagster.core.decode.backends.base import display_rotation

    source = write_video(tmp_path / "phone.mp4", seconds=2.0, fps=FPS, gop=GOP, rotation=90)
    clip = export_clip(source, start, 2.0, tmp_path / "moment.mp4")
    assert clip.copied == copied and display_rotation(clip.path) == 90


@pytest.mark.parametrize("start, end, target, message", [
    (2.0, 2.0, "a.mp4", "the end (2 s) must come after the start (2 s)"),
    (float("nan"), 2.0, "a.mp4", "the start (nan) and end (2) are seconds into the video"),
    (-1.0, 2.0, "a.mp4", "the start (-1 s) is before the video's first frame (0.000 s)"),
    (4.0, 5.0, "a.mp4", "the start (4 s) is at or past the video's end (4.000 s)"),
    (1.0, 2.0, "a.mov", "a.mov: the clip is an MP4 file: give a name ending in .mp4"),
    (1.0, 2.0, "taken.mp4", "taken.mp4 exists: --force to overwrite it"),
    (1.0, 2.0, "/proc/a.mp4", "/proc/a.mp4: cannot write it (No such file or directory)"),
])
def test_bad_times_and_targets_are_refused_in_one_line(videos, tmp_path, monkeypatch, start, end, target, message):
    monkeypatch.chdir(tmp_path)
    Path("taken.mp4").write_bytes(b"mine")
    with pytest.raises(ClipError) as err:
        export_clip(videos / "talk.mp4", start, end, Path(target))
    assert str(err.value) == message
    assert sorted(os.listdir()) == ["taken.mp4"] and Path("taken.mp4").read_bytes() == b"mine"


# The command ---------------------------------------------------------------------------


@pytest.fixture
def project(videos, tmp_path, monkeypatch):
    """A config whose video folder holds `videos`, a symlink out of it and a text file."""
    outside = write_video(tmp_path / "outside" / "secret.mp4", seconds=1.0)
    (videos / "link.mp4").unlink(missing_ok=True)
    (videos / "link.mp4").symlink_to(outside)
    (videos / "notes.txt").write_text("not a video")
    config = clip_config(tmp_path, tmp_path / "no-model", videos)
    config["db"]["collections"][0]["fields"][-1]["dim"] = 512  # ViT-B-32's; no model is loaded
    monkeypatch.setenv("FEATURE_PIPELINE_CONFIG", str(write_config(tmp_path, config)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_clip_command_as_a_user_runs_it(project, videos):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["feature-pipeline", "clip", "talk.mp4", "--start", "1", "--end", "2.5", "-o",
                             "moment.mp4"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"moment\.mp4: stream copy \(the start is a key frame\), 1\.\d\d s "
                        r"\(0:01\.0-0:02\.5 of talk\.mp4\)\n", result.stdout), result.stdout
    assert streams(project / "moment.mp4")["h264"] == pytest.approx(1.5, abs=GOP / FPS)


@pytest.mark.parametrize("video, message", [
    ("../outside/secret.mp4", "../outside/secret.mp4: no such video under {videos} (give the path search prints, "
                              "relative to it)"),
    ("outside/secret.mp4", "outside/secret.mp4: outside the video folder {videos}: only its videos are read"),
    ("link.mp4", "link.mp4: outside the video folder {videos}: only its videos are read"),
    ("missing.mp4", "missing.mp4: no such video under {videos} (give the path search prints, relative to it)"),
    ("notes.txt", "notes.txt: not a video (a file ending in .mp4, .mov, .mkv, .avi, .webm, .m4v, .mpg, .mpeg, .ts)"),
])
def test_only_videos_of_the_folder_are_clipped(project, videos, capsys, video, message):
    from feature_pipeline_dagster.cli import main

    assert main(["clip", video, "--start", "0", "--end", "1", "-o", "out.mp4"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message.format(videos=videos.resolve())}\n" and not captured.out
    assert not (project / "out.mp4").exists()


def test_a_path_inside_the_folder_works_from_anywhere_and_force_overwrites(project, videos, capsys):
    from feature_pipeline_dagster.cli import main

    (project / "out.mp4").write_bytes(b"old")
    assert main(["clip", str(videos / "talk.mp4"), "--start", "1.5", "--end", "9", "-o", "out.mp4"]) == 2
    assert capsys.readouterr().err == "error: out.mp4 exists: --force to overwrite it\n"
    assert main(["clip", str(videos / "talk.mp4"), "--start", "1.5", "--end", "9", "-o", "out.mp4", "--force"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "note: the end (9 s) is past the video's end: the clip ends there (4.000 s)\n"
    assert captured.out.startswith("out.mp4: re-encoded (H.264), 2.5")
    assert streams(project / "out.mp4")["h264"] == pytest.approx(2.5, abs=1 / FPS)


def test_ctrl_c_leaves_no_half_file_and_the_old_one_whole(project, videos):
    """A long re-encode interrupted once its temporary file exists: exit 130, the file it
    would replace untouched, nothing else left beside it."""
    write_video(videos / "long.mp4", seconds=60.0, fps=FPS, detail=True)
    (project / "out.mp4").write_bytes(b"old")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(["feature-pipeline", "clip", "long.mp4", "--start", "0.5", "--end", "60", "-o",
                                "out.mp4", "--force"], cwd=project, env=env, stderr=subprocess.PIPE, text=True)
    try:
        while not any(name.endswith(".part") for name in os.listdir(project)):
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    assert process.stderr.read().strip().splitlines()[-1] == "interrupted"
    assert (project / "out.mp4").read_bytes() == b"old"
    assert not [name for name in os.listdir(project) if name.endswith(".part")]
