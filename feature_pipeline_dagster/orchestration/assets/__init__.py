"""Dagster assets: the video files, one embedding asset per feature, the per-video summary."""
