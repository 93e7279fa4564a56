from feature_pipeline_dagster.cli import console

console()
