"""Dagster assets: the video files, one embedding asset per feature, and the per-video
assets derived from the first feature's rows (the summary, the shots)."""
