"""The Dagster-free core that turns a video file into embedding rows."""
