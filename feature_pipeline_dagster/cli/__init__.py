"""`feature-pipeline`, the command line: `commands` (argparse), `instance` (the Dagster
instance and partitions it works in), `workers` (one process per device for `run`)."""

from feature_pipeline_dagster.cli.commands import main

__all__ = ["main"]
