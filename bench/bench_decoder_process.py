"""What decoding in a child process costs, against decoding in the run's own process.

    python bench/bench_decoder_process.py [--repeats 3]

Both sides decode the same videos with the same `VideoReader` at 1 fps, 16 frames a
batch: in-process, and through `DecoderProcess` (the child, frames over a pipe), which
is what the pipeline uses so that a native crash fails one video, not the run.
  long:  a 720p 1-minute video (the frame copy over the pipe is the cost);
  many:  40 short 240p videos (the per-video round trip is the cost).
Prints seconds per side (median of the repeats, order alternating) and child/in-process.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def in_process(paths: list[Path]) -> int:
    from feature_pipeline_dagster.core.decode.reader import VideoReader
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec

    frames = 0
    for path in paths:
        reader = VideoReader(path)
        frames += sum(len(b) for b in reader.batches(reader.plan(DecodeSpec()), BATCH))
        reader.close()
    return frames


def in_child(paths: list[Path], decoder) -> int:
    from feature_pipeline_dagster.core.decode.spec import DecodeSpec

    return sum(sum(len(b) for b in decoder.open(path, DecodeSpec()).batches(BATCH)) for path in paths)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from feature_pipeline_dagster.core.decode.process import DecoderProcess
    from feature_pipeline_dagster.core.samples import write_video

    folder = Path(tempfile.mkdtemp(prefix="bench-decoder-"))
    print("writing videos ...", flush=True)
    cases = {
        "long": [write_video(folder / "720p_1min.mp4", seconds=60, size=(1280, 720))],
        "many": [write_video(folder / f"short_{i:02d}.mp4", seconds=3, seed=i) for i in range(40)],
    }
    decoder = DecoderProcess()
    in_child(cases["many"][:1], decoder)  # started once per run process, as in the pipeline
    results = {}
    for case, paths in cases.items():
        times = {"in_process": [], "child": []}
        for rep in range(args.repeats):
            sides = ["in_process", "child"] if rep % 2 == 0 else ["child", "in_process"]
            for side in sides:
                started = time.perf_counter()
                frames = in_process(paths) if side == "in_process" else in_child(paths, decoder)
                times[side].append(time.perf_counter() - started)
            print(f"  {case} repeat {rep + 1}: in-process {times['in_process'][-1]:.2f}s, "
                  f"child {times['child'][-1]:.2f}s ({frames} frames)", flush=True)
        ratios = [c / p for c, p in zip(times["child"], times["in_process"])]
        results[case] = {"videos": len(paths), "frames": frames,
                         "in_process_s": round(statistics.median(times["in_process"]), 3),
                         "child_s": round(statistics.median(times["child"]), 3),
                         "child_over_in_process": round(statistics.median(ratios), 3),
                         "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)]}
    decoder.stop()
    print(json.dumps(results, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "decoder_process.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
