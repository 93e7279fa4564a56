"""One dynamic partition per video, keyed by `core.videos.partition_key` (the video's
relative path, made safe)."""

from dagster import DynamicPartitionsDefinition

videos_partitions = DynamicPartitionsDefinition(name="videos")
