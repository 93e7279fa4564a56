"""Names the Dagster layer shares (asset, check and tag names users see in the UI,
and the run queue's device tag, which dagster.yaml's tag limits name too)."""

DEVICE_TAG = "feature_pipeline/device"
VIDEO_FILE = "video_file"
SUMMARY_ASSET = "video_summary_embedding"
SEGMENTS_ASSET = "video_segments"
CHECK_NAMES = ("rows_match_run", "vectors_valid", "videos_complete")

# Dagster's documented system tags: a run names its partition, a ranged run its first and last,
# and an observation's data version rides in a tag.
PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
DATA_VERSION_TAG = "dagster/data_version"

# `placement: kubernetes`: every run carries this one device tag value (the queue limits it
# to `kubernetes.gpus`), and dagster-k8s reads a run's pod spec from its config tag.
KUBERNETES_DEVICE = "kubernetes/gpu"
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"

# Dagster's switch: one "materialization planned" event per asset and run, its partitions as a
# subset, instead of one per partition (`feature-pipeline run` sets it; the template's event
# log, orchestration/event_log.py, acts on it unless it is exported as 0).
PLANNED_EVENTS_ENV = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"

# The pid of a run's process, for the instance's run launcher (orchestration/run_launcher.py).
PID_TAG = "feature_pipeline/pid"
