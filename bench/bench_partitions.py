"""A run's per-partition metadata on a growing library: Dagster checks each call's key by
reading every dynamic partition back, so per video it cost a read of the whole library;
under `partitions_read_once` (orchestration/event_log.py) a run reads it once.

    python bench/bench_partitions.py [--library 1000 10000 50000] [--run 500]

Per library size: the instance template's event log (config/dagster-instance.yaml) holding
that many partitions, then one ranged run of `--run` of them through an IO manager that
adds each partition's metadata as the pipeline's does, with and without the one read;
prints the milliseconds a video of each, side by side, and their ratio. No timing here is
asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_seconds(instance, keys: list[str], read_once: bool) -> float:
    from dagster import DynamicPartitionsDefinition, IOManager, asset, io_manager, materialize

    from feature_pipeline_dagster.orchestration.event_log import partitions_read_once
    from feature_pipeline_dagster.orchestration.local_runs import QUIET
    from feature_pipeline_dagster.orchestration.names import RANGE_END_TAG, RANGE_START_TAG

    class PerPartition(IOManager):
        def handle_output(self, context, obj):
            step = context.step_context
            with partitions_read_once(step.instance) if read_once else nullcontext():
                for key in context.asset_partition_keys:
                    step.add_asset_metadata({"rows": len(key)}, context.asset_key, partition_key=key)

        def load_input(self, context):
            raise NotImplementedError

    @asset(partitions_def=DynamicPartitionsDefinition(name="videos"), io_manager_key="per_partition")
    def video_embedding():
        return None

    started = time.perf_counter()
    result = materialize([video_embedding], instance=instance, run_config=QUIET,
                         resources={"per_partition": io_manager(lambda _: PerPartition())},
                         tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})
    seconds = time.perf_counter() - started
    assert result.success
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--library", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--run", type=int, default=500)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-partitions-"))
    shutil.copy(REPO / "config" / "dagster-instance.yaml", home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    try:
        with DagsterInstance.get() as instance:
            had = 0
            for size in sorted(args.library):
                instance.add_dynamic_partitions("videos", [f"v{i:07d}.mp4" for i in range(had, size)])
                had = size
                keys = [f"v{i:07d}.mp4" for i in range(size - args.run, size)]
                each = {way: run_seconds(instance, keys, way) / len(keys) * 1000 for way in (False, True)}
                print(f"library {size:>6} partitions, a run of {len(keys)}: {each[False]:6.1f} ms a video as Dagster "
                      f"reads them, {each[True]:5.1f} ms with one read ({each[False] / each[True]:.1f}x)")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
