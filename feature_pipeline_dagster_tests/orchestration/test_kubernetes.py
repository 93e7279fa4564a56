"""`placement: kubernetes`: the Job that dagster-k8s's own K8sRunLauncher submits for a
ranged run the sensor made (no cluster: the launcher's Kubernetes batch API is a recorder
of the body it is handed), the queue limit from the GPU count, and who holds a device
in each placement."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, build_sensor_context

from feature_pipeline_dagster.cli.instance import instance_yaml
from feature_pipeline_dagster.core.errors import ConfigError
from feature_pipeline_dagster.core.leases import acquire, scheduler_owns_device
from feature_pipeline_dagster.core.engine.run import take_device
from feature_pipeline_dagster.core.samples import write_video
from feature_pipeline_dagster.core.settings import load_settings
from feature_pipeline_dagster.orchestration.names import (
    DEVICE_TAG,
    KUBERNETES_DEVICE,
    RANGE_END_TAG,
    RANGE_START_TAG,
)
from feature_pipeline_dagster.orchestration.placement import (
    FINISHING_RUNS_PER_DEVICE,
    WAITING_RUNS_PER_DEVICE,
    device_queue_limit,
    k8s_run_config,
    queue_limits,
)
from feature_pipeline_dagster_tests.conftest import REPO

IMAGE = "registry.example.com/feature-pipeline:0.1.0"
KUBERNETES = {
    "gpus": 4,
    "image": IMAGE,
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "token_secret": "milvus-token",
}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def kubernetes_project(project, monkeypatch, **kubernetes):
    config = yaml.safe_load(project.config.read_text())
    config.update(placement="kubernetes", kubernetes={**KUBERNETES, **kubernetes})
    config["db"]["token_env"] = "MILVUS_TOKEN"
    config["video_input"]["settle_seconds"] = 0
    project.config.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MILVUS_TOKEN", "root:Milvus")  # the store reads it (core/store.store_token)
    return load_settings(project.config)


class RecordingBatchApi:
    """Where the launcher's `create_namespaced_job` lands instead of a cluster."""

    def __init__(self):
        self.jobs = []

    def create_namespaced_job(self, body, namespace, **kwargs):
        self.jobs.append((namespace, body))


def sensor_run_request(settings, instance):
    from feature_pipeline_dagster.orchestration.definitions import build_definitions

    defs = build_definitions()
    sensor = next(s for s in defs.sensors if s.name == "video_folder_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources) as context:
        return sensor(context).run_requests


def test_the_job_dagster_k8s_submits_for_a_sensor_ranged_run(project, monkeypatch, tmp_path):
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test
    from dagster_k8s import K8sRunLauncher

    settings = kubernetes_project(project, monkeypatch)
    for i in range(8):
        write_video(project.videos / f"v{i}.mp4", seconds=1, seed=i)
    with DagsterInstance.get() as instance:
        requests = sensor_run_request(settings, instance)
        # 8 one-second videos over 4 GPUs: too little work to split (core/run_sizing.py), one
        # ranged run on the one Kubernetes device tag
        assert len(requests) == 1 and {r.tags[DEVICE_TAG] for r in requests} == {KUBERNETES_DEVICE}
        request = requests[0]
        assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("v0.mp4", "v7.mp4")
        assert "root:Milvus" not in json.dumps(request.tags)  # the token never rides in a tag

        # The launcher as deploy/helm-values.yaml configures it; the code location as the
        # chart's user deployment serves it (its env goes into launched runs).
        (kubeconfig := tmp_path / "kubeconfig").write_text(KUBECONFIG)
        batch_api = RecordingBatchApi()
        launcher = K8sRunLauncher(
            service_account_name="dagster", instance_config_map="dagster-instance",
            postgres_password_secret="dagster-postgresql-secret", dagster_home="/opt/dagster/dagster_home",
            load_incluster_config=False, kubeconfig_file=str(kubeconfig), job_namespace="dagster",
            k8s_client_batch_api=batch_api)
        launcher.register_instance(instance)
        origin = JobPythonOrigin("__ASSET_JOB", RepositoryPythonOrigin(
            executable_path="/usr/local/bin/python",
            code_pointer=ModuleCodePointer("feature_pipeline_dagster", "defs", "/opt/dagster/app"),
            container_image="registry.example.com/some-other-image:latest",
            container_context={"k8s": {"env_vars": ["FEATURE_PIPELINE_CONFIG=/opt/dagster/app/config/cluster.yaml"]}},
        ))
        run = create_run_for_test(instance, job_name="__ASSET_JOB", tags={
            **request.tags, "dagster/sensor_name": "video_folder_sensor"}, job_code_origin=origin)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    [(namespace, job)] = batch_api.jobs
    pod = job.spec.template.spec
    [container] = pod.containers
    assert namespace == "dagster" and job.metadata.name == f"dagster-run-{run.run_id}"
    assert container.resources.limits == {"nvidia.com/gpu": "1"} == container.resources.requests
    assert container.image == IMAGE  # the config's image, over the code location's
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert [(t.key, t.operator, t.effect) for t in pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    env = {e.name: e for e in container.env}
    token = env["MILVUS_TOKEN"].value_from.secret_key_ref  # the variable the store reads (db.token_env)
    assert (token.name, token.key, env["MILVUS_TOKEN"].value) == ("milvus-token", "token", None)
    assert env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.name == "dagster-postgresql-secret"
    assert env["FEATURE_PIPELINE_CONFIG"].value == "/opt/dagster/app/config/cluster.yaml"
    assert env["DAGSTER_HOME"].value == "/opt/dagster/dagster_home"
    # the image's interpreter runs `dagster api execute_run` for this run
    assert container.args[:5] == ["/usr/local/bin/python", "-m", "dagster", "api", "execute_run"]
    from dagster._serdes import deserialize_value

    command = deserialize_value(container.args[5])
    assert type(command).__name__ == "ExecuteRunArgs" and command.run_id == run.run_id
    assert command.job_origin.repository_origin.code_pointer.module == "feature_pipeline_dagster"
    assert "root:Milvus" not in json.dumps(job.to_dict(), default=str)


def test_a_run_launched_without_the_sensors_tag_also_gets_one_gpu(tmp_path):
    """The UI's Materialize and `dagster job launch` add no tag: the launcher's own
    runK8sConfig (deploy/helm-values.yaml) asks for the GPU, the same as the sensor's tag."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.test_utils import create_run_for_test
    from dagster_k8s import K8sRunLauncher

    values = yaml.safe_load((REPO / "deploy" / "helm-values.yaml").read_text())
    chart = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    cluster = load_settings(REPO / "deploy" / "cluster-config.yaml", check_paths=False)
    expected = k8s_run_config(cluster)
    expected["container_config"].pop("image")  # the chart's runs take the code location's image
    assert {"container_config": chart["containerConfig"], "pod_spec_config": chart["podSpecConfig"]} == expected
    (kubeconfig := tmp_path / "kubeconfig").write_text(KUBECONFIG)
    batch_api = RecordingBatchApi()
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        launcher = K8sRunLauncher(
            service_account_name="dagster", instance_config_map="dagster-instance", dagster_home="/opt/dagster/home",
            load_incluster_config=False, kubeconfig_file=str(kubeconfig), k8s_client_batch_api=batch_api,
            run_k8s_config={"container_config": chart["containerConfig"], "pod_spec_config": chart["podSpecConfig"]})
        launcher.register_instance(instance)
        origin = JobPythonOrigin("__ASSET_JOB", RepositoryPythonOrigin(
            "/usr/local/bin/python", ModuleCodePointer("feature_pipeline_dagster", "defs", "/opt/dagster/app"),
            container_image=IMAGE))
        run = create_run_for_test(instance, job_name="__ASSET_JOB", tags={}, job_code_origin=origin)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    [(_, job)] = batch_api.jobs
    [container] = job.spec.template.spec.containers
    assert container.resources.limits == {"nvidia.com/gpu": "1"} and container.image == IMAGE
    assert {e.name for e in container.env} >= {"MILVUS_TOKEN"}


def test_queue_limit_is_the_gpu_count_and_the_helm_values_match(project, monkeypatch):
    settings = kubernetes_project(project, monkeypatch, gpus=8)
    assert queue_limits(settings) == [{"key": DEVICE_TAG, "value": KUBERNETES_DEVICE, "limit": 8}]
    values = yaml.safe_load((REPO / "deploy" / "helm-values.yaml").read_text())
    cluster = load_settings(REPO / "deploy" / "cluster-config.yaml", check_paths=False)
    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert coordinator["tagConcurrencyLimits"] == queue_limits(cluster)
    assert coordinator["dequeueIntervalSeconds"] == 1
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagster-user-deployments"]["deployments"][0]["image"]["repository"] == cluster.kubernetes.image.rsplit(":", 1)[0]
    local = load_settings(REPO / "config" / "smoke-config.yaml", check_paths=False)
    assert queue_limits(local)[0]["value"] == {"applyLimitPerUniqueValue": True}
    for template in (REPO / "config" / "dagster-instance.yaml", REPO / "deploy" / "dagster.yaml"):
        for per_device in (1, 3):  # the instance `feature-pipeline` writes: the leases' runs, one waiting, one past
            local = dataclasses.replace(local, runs_per_device=per_device)
            instance = yaml.safe_load(instance_yaml(device_queue_limit(local), template))
            written = instance["concurrency"]["runs"]
            assert written["tag_concurrency_limits"] == queue_limits(local)
            assert instance["run_coordinator"]["config"] == {"dequeue_interval_seconds": 1}  # starts within 1 s
            assert queue_limits(local)[0]["limit"] == per_device + WAITING_RUNS_PER_DEVICE + FINISHING_RUNS_PER_DEVICE


def test_in_a_pod_the_run_uses_cuda0_and_no_host_lease(project, monkeypatch, tmp_path):
    """Kubernetes: the scheduler gave the pod its GPU; outside a pod the same config falls
    back to file leases (a `dagster asset materialize` in the caller's process)."""
    settings = kubernetes_project(project, monkeypatch)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not scheduler_owns_device(settings.placement)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert scheduler_owns_device(settings.placement) and not scheduler_owns_device("local")
    lease = take_device(["cuda:0"], 1, None)
    assert (lease.device, lease.path) == ("cuda:0", None)
    lease.release()
    assert not list(tmp_path.glob("**/*.lock"))


def test_one_host_never_gives_one_device_slot_twice(tmp_path):
    """local: a device's slot is a file lock; a second taker gets the other device, and
    with none free it waits (here: times out) until the first lets go."""
    import threading

    first = acquire(["cpu:0"], 1, tmp_path)
    second = take_device(["cpu:0", "cpu:1"], 1, tmp_path)
    assert (first.device, second.device) == ("cpu:0", "cpu:1")
    got = []
    waiter = threading.Thread(target=lambda: got.append(acquire(["cpu:0", "cpu:1"], 1, tmp_path, poll_s=0.05)),
                              daemon=True)
    waiter.start()
    waiter.join(0.5)
    assert not got  # both devices held: it waits
    first.release()
    waiter.join(5)
    assert got and got[0].device == "cpu:0"
    for lease in (second, got[0]):
        lease.release()


@pytest.mark.parametrize("key, value, message", [
    ("placement", "cloud", "placement: unknown placement 'cloud' (expected local or kubernetes)"),
    ("kubernetes", None, "kubernetes: missing required key"),
    ("kubernetes.gpus", 0, "kubernetes.gpus: must be positive, got 0"),
    ("kubernetes.image", None, "kubernetes.image: missing required key"),
    ("kubernetes.tolerations", ["x"], "kubernetes.tolerations[0]: expected a Kubernetes toleration"),
    ("kubernetes.spot", True, "kubernetes.spot: unknown key"),
])
def test_kubernetes_config_mistakes_are_one_line(tmp_path, tiny_clip, key, value, message):
    from feature_pipeline_dagster_tests.conftest import clip_config, write_config

    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config.update(placement="kubernetes", kubernetes=dict(KUBERNETES))
    config["db"]["token_env"] = "MILVUS_TOKEN"
    node, *rest = key.split(".")
    if rest:
        config[node][rest[0]] = value
    else:
        config[node] = value
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, config))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_placement_local_refuses_a_kubernetes_block(tmp_path, tiny_clip):
    from feature_pipeline_dagster_tests.conftest import clip_config, write_config

    config = clip_config(tmp_path, tiny_clip, tmp_path)
    config["kubernetes"] = dict(KUBERNETES)
    with pytest.raises(ConfigError, match="kubernetes: only placement: kubernetes reads this block"):
        load_settings(write_config(tmp_path, config))


def test_the_dockerfile_installs_the_project_on_a_cuda_runtime():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM nvidia/cuda:" in dockerfile and "-runtime-" in dockerfile
    assert "pip install" in dockerfile and "[deploy]" in dockerfile
    assert Path(REPO / "deploy" / "dagster.yaml").exists()
