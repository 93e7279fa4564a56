"""VL3-SigLIP-NaViT at full size (random weights, the hub's architecture: 27 layers, 1152-d):
frames/s and rows per frame for merge_size 1 and 2, on a few frames. Not a test.

    python bench/bench_navit.py [--size 1280x720] [--frames 2] [--max-tokens 1024] [--device cpu]

Writes the random checkpoint (about 0.8 GB, bf16) in a temporary folder, loads it through
the same code a run uses (fp32 on CPU, bf16 on CUDA), embeds one batch of frames once to
warm up, then times it again.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from feature_pipeline_dagster.core.models.navit import MAX_TOKENS_PER_FRAME
from feature_pipeline_dagster.core.settings import ModelSettings
from feature_pipeline_dagster.core.batches import FrameBatch
from feature_pipeline_dagster.core.models.navit import model as navit
from feature_pipeline_dagster.core.models.navit.weights import make_random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720", help="frame WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--frames", type=int, default=2, help="frames per timed batch (default 2)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS_PER_FRAME)
    parser.add_argument("--merge-sizes", default="1,2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, height, width, 3), dtype=np.uint8)
    batch = FrameBatch(frames, np.arange(args.frames), np.arange(args.frames) * 1000)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "VL3-SigLIP-NaViT-random"
        started = time.perf_counter()
        make_random(ModelSettings(name="VL3-SigLIP-NaViT", path=str(folder), source="folder"), folder)
        print(f"random full-size checkpoint written in {time.perf_counter() - started:.1f}s")
        for merge_size in (int(m) for m in args.merge_sizes.split(",")):
            model = ModelSettings(name="VL3-SigLIP-NaViT", path=str(folder), source="folder",
                                  max_tokens_per_frame=args.max_tokens, merge_size=merge_size)
            extractor = navit.load(model, args.device)
            rows, cols = extractor.grid(height, width)
            patches = rows * cols * merge_size**2
            extractor.embed(batch.__class__(frames[:1], batch.frame_ids[:1], batch.timestamps_ms[:1]))  # warm-up
            started = time.perf_counter()
            out = extractor.embed(batch)
            seconds = time.perf_counter() - started
            assert len(out) == args.frames * rows * cols
            print(f"{width}x{height}, merge_size {merge_size}, max_tokens_per_frame {args.max_tokens}, "
                  f"{extractor.model.dtype} on {extractor.device}: {rows}x{cols} = {rows * cols} rows/frame "
                  f"({patches} encoder patches/frame); {args.frames / seconds:.3f} frames/s "
                  f"({seconds / args.frames:.2f} s/frame, {len(out) / seconds:.0f} rows/s)")
            del extractor


if __name__ == "__main__":
    main()
