"""Capacity-aware placement on the real fleet: where the GPUs are, InsufficientGPU until capacity frees, and
failover when a cluster goes silent — with the real kube-scheduler binding the pods."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from llm_operator.fleet import NodeSpec
from tests.fixtures.operator import Kubectl, RunningOperator, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services]


def model(name: str, *, gpus: int, types: list[str], cpu: str = "4", memory: str = "32Gi") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "llm.example.com/v1alpha1",
            "kind": "LLMModel",
            "metadata": {"name": name},
            "spec": {
                "modelName": name,
                "image": f"registry.example/{name}:v1",
                "resources": {"cpu": cpu, "memory": memory, "gpu": {"count": gpus, "types": types}},
            },
        }
    )


def deployment(name: str, model_ref: str, replicas: int, **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "llm.example.com/v1alpha1",
            "kind": "LLMDeployment",
            "metadata": {"name": name},
            "spec": {"modelRef": model_ref, "replicas": replicas, **spec},
        }
    )


async def conditions(kubectl: Kubectl, role: str, ns: str, name: str) -> dict[str, dict[str, Any]]:
    llmd = await kubectl.get(role, "llmdeployment", name, "-n", ns)
    return {c["type"]: c for c in ((llmd or {}).get("status", {}).get("conditions", []))}


async def running_pods(kubectl: Kubectl, role: str, ns: str, name: str) -> list[dict[str, Any]]:
    pods = await kubectl.json(role, "get", "pods", "-n", ns, "-l", f"llm.example.com/deployment={name}")
    return [p for p in pods["items"] if p["status"].get("phase") == "Running" and p["spec"].get("nodeName")]


async def test_a_4xa100_model_applied_in_the_cpu_cluster_runs_on_a100_nodes_elsewhere(
    operator: RunningOperator, kubectl: Kubectl
) -> None:
    ns = operator.namespace
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("llama", gpus=4, types=["NVIDIA-A100-SXM4-80GB"]))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment("llama-chat", "llama", 2))

    async def placed_in_a100() -> list[dict[str, Any]] | None:
        pods = await running_pods(kubectl, "a100", ns, "llama-chat")
        return pods if len(pods) == 2 else None

    pods = await eventually(placed_in_a100, timeout=60, what="2 Running pods of llama-chat in the a100 cluster")
    nodes = {n["metadata"]["name"]: n for n in (await kubectl.json("a100", "get", "nodes"))["items"]}
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "4"
    assert await kubectl.get("cpu", "deployment", "llama-chat", "-n", ns) is None  # nothing in the origin

    async def ready() -> dict[str, Any] | None:
        conds = await conditions(kubectl, "cpu", ns, "llama-chat")
        return conds if conds.get("Ready", {}).get("status") == "True" else None

    conds = await eventually(ready, timeout=60, what="Ready=True on the origin LLMDeployment")
    assert conds["Placed"]["reason"] == "Placed"
    llmd = await kubectl.get("cpu", "llmdeployment", "llama-chat", "-n", ns)
    assert llmd["status"]["placements"][0]["cluster"] == operator.cluster("a100")
    assert llmd["status"]["placements"][0]["gpuType"] == "NVIDIA-A100-SXM4-80GB"
    assert [e["cluster"] for e in llmd["status"]["endpoints"]] == [operator.cluster("cpu"), operator.cluster("a100")]


@pytest.fixture
async def private_gpus(operator: RunningOperator) -> AsyncIterator[str]:
    """One 8-GPU node of a GPU product nobody else uses, in the mixed cluster: capacity this test owns."""
    token = uuid.uuid4().hex[:6]
    product = f"TEST-GPU-{token}"
    node = NodeSpec(
        name=f"private-{token}", cpu="64", memory="512Gi", gpus=8, gpu_product=product, gpu_memory_mib=81920
    )
    fleet = operator.kubectl.fleet
    fleet.apply_nodes("mixed", [node])
    yield product
    fleet.delete_nodes("mixed", [node.name])


async def test_insufficient_gpu_is_reported_and_placed_as_soon_as_capacity_frees(
    operator: RunningOperator, kubectl: Kubectl, private_gpus: str
) -> None:
    ns = operator.namespace
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("big", gpus=4, types=[private_gpus]))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment("first", "big", 2))

    async def first_runs() -> bool:
        return len(await running_pods(kubectl, "mixed", ns, "first")) == 2

    await eventually(first_runs, timeout=60, what="the first deployment to fill the private node")

    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment("second", "big", 1))

    async def insufficient() -> dict[str, Any] | None:
        conds = await conditions(kubectl, "cpu", ns, "second")
        placed = conds.get("Placed", {})
        return placed if placed.get("reason") == "InsufficientGPU" else None

    placed = await eventually(insufficient, timeout=30, what="Placed=False reason=InsufficientGPU")
    assert placed["status"] == "False"
    assert f"4 × {private_gpus}" in placed["message"]  # what was needed
    assert "best available" in placed["message"]
    events = await kubectl.json("cpu", "get", "events", "-n", ns, "--field-selector", "involvedObject.name=second")
    assert "InsufficientGPU" in {e["reason"] for e in events["items"]}
    assert await kubectl.get("mixed", "deployment", "second", "-n", ns) is None  # no Pending pods parked anywhere

    await kubectl("cpu", "delete", "llmdeployment", "first", "-n", ns)

    async def second_runs() -> bool:
        return len(await running_pods(kubectl, "mixed", ns, "second")) == 1

    await eventually(second_runs, timeout=60, what="the waiting deployment to be placed once capacity freed")
    conds = await conditions(kubectl, "cpu", ns, "second")
    assert conds["Placed"]["status"] == "True"


async def test_a_silent_cluster_fails_over_and_the_old_copy_goes_only_after_it_is_back(
    operator: RunningOperator, kubectl: Kubectl
) -> None:
    ns = operator.namespace
    types = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"]
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("ha", gpus=2, types=types))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment("ha-chat", "ha", 1))

    async def running_in(role: str) -> bool:
        return len(await running_pods(kubectl, role, ns, "ha-chat")) == 1

    await eventually(lambda: running_in("a100"), timeout=60, what="ha-chat running in the a100 cluster")

    await operator.stop("a100")  # its watcher and applier go silent: no heartbeats

    await eventually(lambda: running_in("mixed"), timeout=60, what="a replacement in the mixed cluster (H100)")
    # The old copy was not deleted while its cluster was unreachable.
    assert await kubectl.get("a100", "deployment", "ha-chat", "-n", ns) is not None
    conds = await conditions(kubectl, "cpu", ns, "ha-chat")
    assert conds["Degraded"]["reason"] == "ClusterUnhealthy"
    events = await kubectl.json("cpu", "get", "events", "-n", ns, "--field-selector", "involvedObject.name=ha-chat")
    assert "FailedOver" in {e["reason"] for e in events["items"]}

    await operator.start_agent("a100")

    async def old_copy_gone() -> bool:
        return await kubectl.get("a100", "deployment", "ha-chat", "-n", ns) is None

    await eventually(old_copy_gone, timeout=60, what="the old copy removed once the cluster is back")
    assert await running_in("mixed")

    async def settled() -> dict[str, Any] | None:
        conds = await conditions(kubectl, "cpu", ns, "ha-chat")
        return (
            conds
            if conds.get("Ready", {}).get("status") == "True" and conds.get("Degraded", {}).get("status") == "False"
            else None
        )

    await eventually(settled, timeout=30, what="Ready and not Degraded after failover")


async def test_replicas_the_scheduler_cannot_place_move_instead_of_waiting_pending(
    operator: RunningOperator, kubectl: Kubectl
) -> None:
    """A node is cordoned and its pod evicted: the replacement pod cannot be scheduled in that cluster, so after
    the unschedulable timeout the replica is placed in another cluster — no pod is left Pending."""
    ns, fleet = operator.namespace, operator.kubectl.fleet
    token = uuid.uuid4().hex[:6]
    product = f"TEST-GPU-{token}"
    here = NodeSpec(name=f"here-{token}", cpu="64", memory="512Gi", gpus=8, gpu_product=product, gpu_memory_mib=81920)
    there = NodeSpec(name=f"there-{token}", cpu="64", memory="512Gi", gpus=8, gpu_product=product, gpu_memory_mib=81920)
    fleet.apply_nodes("mixed", [here])
    fleet.apply_nodes("a100", [there])
    try:
        await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("moving", gpus=4, types=[product]))
        await kubectl(
            "cpu",
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input=deployment("mover", "moving", 1, placement={"clusters": [operator.cluster("mixed")]}),
        )

        async def running_in(role: str) -> bool:
            return len(await running_pods(kubectl, role, ns, "mover")) == 1

        await eventually(lambda: running_in("mixed"), timeout=60, what="the replica on the preferred cluster")
        await kubectl("mixed", "cordon", here.name)
        await kubectl("mixed", "delete", "pods", "-n", ns, "-l", "llm.example.com/deployment=mover", "--wait=false")

        await eventually(lambda: running_in("a100"), timeout=60, what="the replica placed in another cluster")

        async def mixed_workload_gone() -> bool:
            return await kubectl.get("mixed", "deployment", "mover", "-n", ns) is None

        await eventually(mixed_workload_gone, timeout=30, what="no workload (and no Pending pod) left behind")
        events = await kubectl.json("cpu", "get", "events", "-n", ns, "--field-selector", "involvedObject.name=mover")
        assert "Unschedulable" in {e["reason"] for e in events["items"]}
    finally:
        fleet.delete_nodes("mixed", [here.name])
        fleet.delete_nodes("a100", [there.name])
