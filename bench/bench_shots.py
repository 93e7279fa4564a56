"""Shots: what finding them costs against decoding, and how well they match known edits.

    .venv/bin/python bench/bench_shots.py [--videos 3] [--size 1280x720] [--seconds 20]

Videos: `core/samples.write_edited_video` (generated scenes: panning texture, a moving
disc, grain; x264 ultrafast, 30 fps), five shots each (2.5-7 s), every boundary a hard cut
or a 1-s dissolve at a random time. One run of the real engine (`embed_videos`: decode
lanes in child processes, the tests' tiny CLIP on CPU, Milvus Lite, sample_fps 1).

Figures, from each video's metadata: `seconds_shots` (signatures taken in the model
stage, per-frame vectors kept, the split at the video's close) against `seconds_decode`
(the lanes' wait for their decoder child), summed over the videos; and F1 of the shot
starts against the true boundaries, within 1 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from feature_pipeline_dagster.core.engine.run import RunReport, embed_videos
    from feature_pipeline_dagster.core.models import load_extractor
    from feature_pipeline_dagster.core.models.clip.weights import make_random
    from feature_pipeline_dagster.core.samples import write_edited_video
    from feature_pipeline_dagster.core.settings import ModelSettings, load_settings
    from feature_pipeline_dagster.core.shots import segments_collection
    from feature_pipeline_dagster.core.store import RowFilter, store_for
    from feature_pipeline_dagster.core.store.lite_server import LiteServer
    from feature_pipeline_dagster_tests.conftest import TINY_CLIP, clip_config
    from feature_pipeline_dagster_tests.core.test_shots import f1

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "clip"
        model = make_random(ModelSettings(name="CLIP", path=str(folder), source="folder"), folder, TINY_CLIP)
        truth = {}
        for seed in range(args.videos):
            rng = np.random.default_rng(seed)
            shots = list(rng.uniform(2.5, 7.0, 5) * args.seconds / 24.0)
            dissolves = [float(rng.choice([0.0, 1.0])) for _ in shots[:-1]]
            truth[f"v{seed}.mp4"] = write_edited_video(root / "videos" / f"v{seed}.mp4", shots, dissolves,
                                                       size=(width, height), seed=seed)
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(clip_config(root, model, root / "videos")))
        settings = load_settings(config)
        store = store_for(settings.db)
        try:
            report = embed_videos(settings, settings.db.collections[0], store, load_extractor(settings.model, "cpu"),
                                  sorted(truth), RunReport(), lanes=1)
            rows = store.query_rows(segments_collection(settings), RowFilter(videos=tuple(truth)),
                                    ("video_path", "start_ms"))
        finally:
            store.close()
            LiteServer(settings.db.uri).stop()
    decode = sum(m["seconds_decode"] for m in report.written.values())
    shots = sum(m["seconds_shots"] for m in report.written.values())
    frames = sum(m["frames"] for m in report.written.values())
    matched = found = true = 0
    for video, boundaries in truth.items():
        starts = sorted(r["start_ms"] / 1000 for r in rows if r["video_path"] == video)[1:]
        m, f, t = f1(starts, boundaries)
        matched, found, true = matched + m, found + f, true + t
    precision, recall = matched / max(found, 1), matched / max(true, 1)
    print(f"{len(truth)} videos {width}x{height}, {frames} sampled frames: decode {decode:.2f} s, shots {shots:.3f} s "
          f"({100 * shots / decode:.2f} % of decode, {1000 * shots / frames:.2f} ms a frame)")
    print(f"boundaries: {true} true, {found} found, {matched} within 1 s: precision {precision:.3f}, recall "
          f"{recall:.3f}, F1 {2 * precision * recall / max(precision + recall, 1e-9):.3f}")


if __name__ == "__main__":
    main()
