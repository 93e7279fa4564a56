"""Bad input in the folder: each bad file fails alone with one clear line, the rest of
the folder is embedded, and what is not a video of the folder is not touched."""

import os

import numpy as np

from feature_pipeline_dagster.config import load_settings
from feature_pipeline_dagster.samples import write_video
from feature_pipeline_dagster.store.milvus import MilvusStore
from feature_pipeline_dagster_tests.test_end_to_end import cli


def write_audio_only(path):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_folder_of_bad_files(project, tmp_path_factory):
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

    result = cli(project, "run", check=False)
    assert result.returncode == 1
    failed = {line.split(": ", 2)[1]: line for line in result.stderr.splitlines() if line.startswith("  failed: ")}
    assert set(failed) == {"empty.mp4", "noise.mp4", "truncated.mp4", "audio.mp4"}, result.stderr[-2000:]
    assert "empty file (0 bytes)" in failed["empty.mp4"]
    assert "cannot open video" in failed["noise.mp4"] and "cannot open video" in failed["truncated.mp4"]
    assert "no video stream" in failed["audio.mp4"]
    assert "embedded 2 of 6 video(s), 4 rows" in result.stderr  # link.mp4 and dir.mp4 are not videos of the folder
    settings = load_settings(project.config)
    store = MilvusStore.from_settings(settings.db)
    try:
        spec = settings.db.collections[0]
        assert [store.count_rows(spec, n) for n in ("good.mp4", "one frame.mp4", "link.mp4")] == [3, 1, 0]
    finally:
        store.close()
