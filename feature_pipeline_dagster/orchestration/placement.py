"""Where a run goes, per `placement` (core/settings.py), and what keeps two runs off one
device however they were launched:

- `local` (one host): the sensor tags each run with a device (`feature_pipeline/device:
  cuda:1`), the run queue limits each tag value to `runs_per_device` plus one run waiting
  at the door (`WAITING_RUNS_PER_DEVICE`) plus one finishing its summary
  (`FINISHING_RUNS_PER_DEVICE`), and the run takes a file lease on its device
  (core/leases.py), which keeps `runs_per_device` on it and also covers the runs that
  bypass the queue (`dagster asset materialize`, the UI's materialize, `feature-pipeline run`).
- `kubernetes`: Dagster's K8sRunLauncher starts each run as a Job whose pod requests one
  GPU (`nvidia.com/gpu: 1`, from this module's `dagster-k8s/config` tag); the NVIDIA
  device plugin gives a GPU to one container at a time, so the scheduler is the lease. The
  queue holds runs to `kubernetes.gpus` so they wait in Dagster's queue, not as Pending
  pods. Inside the pod the GPU is `cuda:0` and no file lease is taken (a file lock on
  one node cannot speak for another); a run executed outside a pod (the caller's
  process of `dagster asset materialize`) takes file leases on the host's devices as
  under `local`.
"""

from __future__ import annotations

import json

from feature_pipeline_dagster.core.devices import run_devices
from feature_pipeline_dagster.core.settings import Settings
from feature_pipeline_dagster.orchestration.names import DEVICE_TAG, GPU_RESOURCE, K8S_CONFIG_TAG, KUBERNETES_DEVICE


def device_tags(settings: Settings) -> list[str]:
    """The device tag values the sensor spreads runs over (least loaded first)."""
    if settings.placement == "kubernetes":
        return [KUBERNETES_DEVICE]
    return run_devices(settings.gpus)


def run_tags(settings: Settings, device: str) -> dict[str, str]:
    """The tags of a run the sensor places on `device` (a value of `device_tags`)."""
    tags = {DEVICE_TAG: device}
    if settings.placement == "kubernetes":
        tags[K8S_CONFIG_TAG] = json.dumps(k8s_run_config(settings), sort_keys=True)
    return tags


def k8s_run_config(settings: Settings) -> dict:
    """The run pod's part of a Kubernetes Job (dagster-k8s's `dagster-k8s/config` schema):
    one GPU, the config's image, node selector and tolerations, and the Milvus token
    from a Secret as the variable `db.token_env` names (never in a tag or a file)."""
    k8s = settings.kubernetes
    container: dict = {"image": k8s.image,
                       "resources": {"limits": {GPU_RESOURCE: "1"}, "requests": {GPU_RESOURCE: "1"}}}
    if k8s.token_secret:
        container["env"] = [{"name": settings.db.token_env,
                             "valueFrom": {"secretKeyRef": {"name": k8s.token_secret, "key": k8s.token_secret_key}}}]
    pod: dict = {}
    if k8s.node_selector:
        pod["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        pod["tolerations"] = [dict(t) for t in k8s.tolerations]
    return {"container_config": container, **({"pod_spec_config": pod} if pod else {})}


WAITING_RUNS_PER_DEVICE = 1
"""Runs the local queue starts per device beyond its leases: such a run starts its process
and loads its model while another has the device, then waits for the lease, so the device
does not sit idle through each run's start-up and Dagster bookkeeping. The sensor over
1000 stand-in clips (bench_gpu_standin.py): 1.53 x `run`'s time before, 1.05-1.21 after."""


FINISHING_RUNS_PER_DEVICE = 1
"""Runs the local queue admits per device beyond those that need it: a run past its
embedding (its checks, summary and shots, no lease) still counts in Dagster's tag limit,
so the run the sensor handed out in its place waited until it ended, and the device idled
meanwhile (bench_gpu_standin.py's sensor: a third run queued at 44.6 s started at 65.9 s,
the device idle from 54.6 s). The sensor hands out `device_slots` only; the leases keep
`runs_per_device` on the device."""


def device_slots(settings: Settings) -> int:
    """The runs that may need one device tag value at once; the sensor hands out no more.
    `local`: the leases' `runs_per_device` and one waiting at the door; `kubernetes`: the
    GPUs (a pod holds its GPU to its end, summary included)."""
    if settings.placement == "kubernetes":
        return settings.kubernetes.gpus
    return settings.runs_per_device + WAITING_RUNS_PER_DEVICE


def device_queue_limit(settings: Settings) -> int:
    """The run queue's limit per device tag value (the instance's `tag_concurrency_limits`)."""
    return device_slots(settings) + (FINISHING_RUNS_PER_DEVICE if settings.placement == "local" else 0)


def queue_limits(settings: Settings) -> list[dict]:
    """The run queue's tag limits for this placement (the instance's
    `tag_concurrency_limits`; deploy/helm-values.yaml carries the kubernetes one)."""
    value = KUBERNETES_DEVICE if settings.placement == "kubernetes" else {"applyLimitPerUniqueValue": True}
    return [{"key": DEVICE_TAG, "value": value, "limit": device_queue_limit(settings)}]
