"""`feature-pipeline`, the command line: `commands` (argparse), `instance` (the Dagster
instance and partitions it works in); `run`'s scheduler is orchestration/local_runs.py."""

from feature_pipeline_dagster.cli.commands import console, main

__all__ = ["console", "main"]
