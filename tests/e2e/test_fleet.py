"""End-to-end tests of the local fleet: real apiservers, the real scheduler and controller-manager, kwok nodes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from llm_operator.fleet import NodeSpec

if TYPE_CHECKING:
    # Only for typing: tests/conftest.py loads the plugin; importing it here first would defeat its assertion
    # rewriting (a warning, hence an error). Helpers are reached through the fixture instead.
    from tests.fixtures.fleet import Fleet

pytestmark = pytest.mark.fleet

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
TIMEOUT_S = 60.0


@pytest.fixture
def namespace(fleet: Fleet) -> Iterator[str]:
    """A fresh namespace in every cluster, deleted afterwards (without waiting: kwok deletes pods at once)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    for role in fleet.clusters:
        fleet.kubectl(role, "create", "namespace", name)
    yield name
    for role in fleet.clusters:
        fleet.kubectl(role, "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


def _apply(fleet: Fleet, role: str, obj: dict[str, Any]) -> None:
    fleet.kubectl(role, "apply", "-f", "-", input=json.dumps(obj))


def _get(fleet: Fleet, role: str, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(fleet.kubectl(role, "get", *args, "-o", "json").stdout)
    return out


def _gpu_pod(name: str, namespace: str, gpus: int, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tolerations": [GPU_TOLERATION],
        "containers": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:latest",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _running_pod(fleet: Fleet, role: str, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = _get(fleet, role, "pod", name, "-n", namespace)
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    return fleet.poll_until(check, timeout=TIMEOUT_S, what=f"pod {namespace}/{name} in {role} to be Running")


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c.get("type") == kind), {})


def test_every_cluster_serves_the_built_kubernetes_version(fleet: Fleet) -> None:
    assert set(fleet.clusters) == {"a100", "mixed", "cpu"}
    for role, cluster in fleet.clusters.items():
        assert cluster.name.endswith(role)
        assert cluster.context == f"kwok-{cluster.name}"
        assert cluster.kubeconfig == fleet.kubeconfig
        version = json.loads(fleet.kubectl(role, "get", "--raw", "/version").stdout)
        assert version["gitVersion"] == "v1.36.3", role


def test_nodes_carry_gpu_capacity_labels_and_taints(fleet: Fleet) -> None:
    for role, spec in fleet.specs.items():
        nodes = {n["metadata"]["name"]: n for n in _get(fleet, role, "nodes")["items"]}
        assert set(nodes) == {n.name for n in spec.nodes}, role
        for node_spec in spec.nodes:
            node = nodes[node_spec.name]
            labels = node["metadata"]["labels"]
            assert _condition(node, "Ready").get("status") == "True", node_spec.name
            for key in ("capacity", "allocatable"):
                resources = node["status"][key]
                assert resources["cpu"] == node_spec.cpu
                assert resources["memory"] == node_spec.memory
                assert resources.get("nvidia.com/gpu") == (str(node_spec.gpus) if node_spec.gpus else None)
            taints = {(t["key"], t["effect"]) for t in node["spec"].get("taints", [])}
            if node_spec.gpus:
                assert labels["nvidia.com/gpu.product"] == node_spec.gpu_product
                assert labels["nvidia.com/gpu.memory"] == str(node_spec.gpu_memory_mib)
                assert labels["nvidia.com/gpu.count"] == str(node_spec.gpus)
                assert labels["nvidia.com/gpu.present"] == "true"
                assert taints == {("nvidia.com/gpu", "NoSchedule")}
            else:
                assert "nvidia.com/gpu.present" not in labels
                assert taints == set()


def test_gpu_pod_is_bound_by_the_scheduler_and_runs(fleet: Fleet, namespace: str) -> None:
    _apply(fleet, "a100", _gpu_pod("llm", namespace, gpus=4))

    pod = _running_pod(fleet, "a100", namespace, "llm")

    gpu_nodes = {n.name for n in fleet.specs["a100"].nodes if n.gpus}
    assert pod["spec"]["nodeName"] in gpu_nodes
    assert _condition(pod, "PodScheduled").get("status") == "True"
    assert _condition(pod, "Ready").get("status") == "True"  # kwok's pod-ready stage
    node = _get(fleet, "a100", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"


def test_gpu_product_is_selectable_by_gfd_label(fleet: Fleet, namespace: str) -> None:
    selector = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    _apply(fleet, "mixed", _gpu_pod("h100", namespace, gpus=8, node_selector=selector))

    pod = _running_pod(fleet, "mixed", namespace, "h100")

    assert pod["spec"]["nodeName"] in {"mixed-h100-0", "mixed-h100-1"}


def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending(fleet: Fleet, namespace: str) -> None:
    _apply(fleet, "a100", _gpu_pod("too-big", namespace, gpus=9))

    def failed_scheduling() -> str | None:
        events = _get(
            fleet,
            "a100",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=too-big,reason=FailedScheduling",
        )["items"]
        return events[0]["message"] if events else None

    message = fleet.poll_until(failed_scheduling, timeout=TIMEOUT_S, what="a FailedScheduling event for too-big")
    assert "nvidia.com/gpu" in message
    pod = _get(fleet, "a100", "pod", "too-big", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
    scheduled = _condition(pod, "PodScheduled")
    assert scheduled.get("status") == "False"
    assert scheduled.get("reason") == "Unschedulable"


def test_deployment_gets_two_running_pods(fleet: Fleet, namespace: str) -> None:
    labels = {"app": "web"}
    _apply(
        fleet,
        "cpu",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
                },
            },
        },
    )

    def two_running() -> list[dict[str, Any]] | None:
        pods = _get(fleet, "cpu", "pods", "-n", namespace, "-l", "app=web")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) == 2 else None

    pods = fleet.poll_until(two_running, timeout=TIMEOUT_S, what="2 Running pods of deployment web")
    assert {p["spec"]["nodeName"] for p in pods} <= {"cpu-0", "cpu-1"}

    def available() -> int | None:
        status = _get(fleet, "cpu", "deployment", "web", "-n", namespace).get("status", {})
        return status.get("availableReplicas") if status.get("availableReplicas") == 2 else None

    assert fleet.poll_until(available, timeout=TIMEOUT_S, what="deployment web to report 2 available") == 2


def test_private_nodes_can_be_added_and_removed(fleet: Fleet, namespace: str) -> None:
    node = NodeSpec(
        name=f"private-{namespace}",
        cpu="64",
        memory="512Gi",
        gpus=4,
        gpu_product="NVIDIA-L40S",
        gpu_memory_mib=46068,
    )
    fleet.apply_nodes("cpu", [node])
    try:
        got = _get(fleet, "cpu", "node", node.name)
        assert got["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        selector = {"nvidia.com/gpu.product": "NVIDIA-L40S"}
        _apply(fleet, "cpu", _gpu_pod("l40s", namespace, gpus=4, node_selector=selector))
        assert _running_pod(fleet, "cpu", namespace, "l40s")["spec"]["nodeName"] == node.name
    finally:
        fleet.delete_nodes("cpu", [node.name])
    assert fleet.kubectl("cpu", "get", "node", node.name, check=False).returncode != 0


@pytest.mark.slow  # a fault test: it stops the shared "cpu" cluster for ~10 s
def test_a_stopped_cluster_comes_back_and_schedules_again(fleet: Fleet, namespace: str) -> None:
    """The failover building block: kill one cluster's control plane, then start it again."""
    fleet.stop("cpu")
    try:
        down = fleet.kubectl("cpu", "get", "--raw", "/readyz", "--request-timeout=2s", check=False, timeout=10)
        assert down.returncode != 0
        # The other clusters do not notice.
        assert fleet.kubectl("a100", "get", "--raw", "/readyz").stdout == "ok"
    finally:
        fleet.start("cpu")  # waits for /readyz and for fresh scheduler/controller-manager leases

    _apply(
        fleet,
        "cpu",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "after-restart", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    assert _running_pod(fleet, "cpu", namespace, "after-restart")["spec"]["nodeName"] in {"cpu-0", "cpu-1"}
