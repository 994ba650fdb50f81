"""Unit tests of the fleet's pure data: node manifests and the default fleet."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from api.labels import GPU_RESOURCE
from api.scheduling import CPU_POD_TOLERATIONS, GPU_POD_TOLERATIONS, tolerates_all
from llm_operator.fleet import DEFAULT_FLEET, ClusterSpec, NodeSpec, node_manifest
from llm_operator.fleet.spec import KWOK_NODE_ANNOTATION, cpu_node, gpu_node

H100 = NodeSpec(
    name="h100-0",
    cpu="96",
    memory="1Ti",
    gpus=8,
    gpu_product="NVIDIA-H100-80GB-HBM3",
    gpu_memory_mib=81559,
    instance_type="gpu-8x-h100-80gb",
    region="us-west-2",
    zone="us-west-2a",
)
CPU = NodeSpec(name="cpu-0", cpu="32", memory="128Gi")


def test_gpu_node_manifest_has_capacity_allocatable_and_gfd_labels() -> None:
    m = node_manifest(H100)

    assert m["apiVersion"] == "v1"
    assert m["kind"] == "Node"
    assert m["metadata"]["name"] == "h100-0"
    for key in ("capacity", "allocatable"):
        assert m["status"][key] == {
            "cpu": "96",
            "memory": "1Ti",
            "pods": "110",
            "ephemeral-storage": "1Ti",
            GPU_RESOURCE: "8",
        }
    labels = m["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["kubernetes.io/hostname"] == "h100-0"
    assert labels["node.kubernetes.io/instance-type"] == "gpu-8x-h100-80gb"
    assert labels["topology.kubernetes.io/region"] == "us-west-2"
    assert labels["topology.kubernetes.io/zone"] == "us-west-2a"


def test_gpu_node_is_tainted_like_the_gpu_operator_does_and_marked_for_kwok() -> None:
    m = node_manifest(H100)

    assert m["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert m["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"


def test_the_fleets_nodes_need_no_toleration_beyond_what_model_pods_carry() -> None:
    """The kwok marker is an annotation, never a taint: the planner's capacity rule has no test-fleet exception, so
    a taint our pods do not tolerate would make the node not count (and the scheduler refuse our pods)."""
    for cluster in DEFAULT_FLEET:
        for node in cluster.nodes:
            taints = [(t["key"], t["effect"]) for t in node_manifest(node)["spec"]["taints"]]
            tolerations = GPU_POD_TOLERATIONS if node.gpus else CPU_POD_TOLERATIONS
            assert tolerates_all(tolerations, taints), f"{cluster.name}/{node.name}: {taints}"
            assert KWOK_NODE_ANNOTATION not in {key for key, _ in taints}


def test_cpu_node_has_no_gpu_resource_labels_or_taint() -> None:
    m = node_manifest(CPU)

    assert GPU_RESOURCE not in m["status"]["capacity"]
    assert GPU_RESOURCE not in m["status"]["allocatable"]
    assert not [k for k in m["metadata"]["labels"] if k.startswith("nvidia.com/")]
    assert m["spec"]["taints"] == []
    assert m["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"
    # Optional topology is omitted rather than rendered empty.
    assert "topology.kubernetes.io/zone" not in m["metadata"]["labels"]


def test_extra_labels_are_added_and_may_override_defaults() -> None:
    node = NodeSpec(name="n", cpu="4", memory="8Gi", labels={"pool": "spot", "kubernetes.io/arch": "arm64"})

    labels = node_manifest(node)["metadata"]["labels"]

    assert labels["pool"] == "spot"
    assert labels["kubernetes.io/arch"] == "arm64"


def test_node_manifest_is_pure() -> None:
    first = node_manifest(H100)
    first["metadata"]["labels"]["mutated"] = "yes"
    first["status"]["capacity"]["cpu"] = "1"

    second = node_manifest(H100)

    assert "mutated" not in second["metadata"]["labels"]
    assert second["status"]["capacity"]["cpu"] == "96"
    assert second["status"]["capacity"] is not second["status"]["allocatable"]
    assert json.loads(json.dumps(second)) == second


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "g", "cpu": "8", "memory": "8Gi", "gpus": 8},  # no product
        {"name": "g", "cpu": "8", "memory": "8Gi", "gpus": 8, "gpu_product": "X"},  # no memory
        {"name": "g", "cpu": "8", "memory": "8Gi", "gpu_product": "X"},  # product without GPUs
        {"name": "g", "cpu": "8", "memory": "8Gi", "gpus": -1},
        {"name": "Not_A_Name", "cpu": "8", "memory": "8Gi"},
        {"name": "g", "cpu": "eight", "memory": "8Gi"},
        {"name": "g", "cpu": "8", "memory": "8 GB"},
    ],
)
def test_invalid_node_specs_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        NodeSpec(**kwargs)  # type: ignore[arg-type]


def test_specs_are_frozen_and_hashable() -> None:
    node = NodeSpec(name="n", cpu="4", memory="8Gi", labels={"a": "b"})
    cluster = ClusterSpec(name="c", labels={"region": "x"}, nodes=(node,))

    with pytest.raises(AttributeError):
        node.cpu = "8"  # type: ignore[misc]
    with pytest.raises(TypeError):
        node.labels["a"] = "c"  # type: ignore[index]
    with pytest.raises(TypeError):
        cluster.labels["region"] = "y"  # type: ignore[index]
    assert hash(node) == hash(NodeSpec(name="n", cpu="4", memory="8Gi", labels={"a": "b"}))
    assert cluster == ClusterSpec(name="c", labels={"region": "x"}, nodes=(node,))


def test_cluster_spec_rejects_duplicate_nodes_and_bad_names() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        ClusterSpec(name="c", labels={}, nodes=(CPU, CPU))
    with pytest.raises(ValueError, match="DNS label"):
        ClusterSpec(name="Bad_Name", labels={}, nodes=())


def test_cluster_context_is_kwokctls() -> None:
    assert ClusterSpec(name="a100", labels={}, nodes=()).context == "kwok-a100"


def _gpus_by_product(cluster: ClusterSpec) -> Counter[str]:
    counts: Counter[str] = Counter()
    for node in cluster.nodes:
        if node.gpus:
            assert node.gpu_product is not None
            counts[node.gpu_product] += node.gpus
    return counts


def test_default_fleet_shape() -> None:
    by_name = {c.name: c for c in DEFAULT_FLEET}
    assert list(by_name) == ["a100", "mixed", "cpu"]

    a100, mixed, cpu = by_name["a100"], by_name["mixed"], by_name["cpu"]
    assert _gpus_by_product(a100) == {"NVIDIA-A100-SXM4-80GB": 16}
    assert [n.gpus for n in a100.nodes].count(8) == 2
    assert [n.gpus for n in a100.nodes].count(0) == 1
    assert _gpus_by_product(mixed) == {"NVIDIA-A100-SXM4-40GB": 8, "NVIDIA-H100-80GB-HBM3": 16}
    assert len(mixed.nodes) == 3
    assert _gpus_by_product(cpu) == {}
    assert len(cpu.nodes) == 2
    assert (a100.gpus, mixed.gpus, cpu.gpus) == (16, 24, 0)


def test_default_fleet_gpu_memory_matches_the_product() -> None:
    memory = {
        "NVIDIA-A100-SXM4-80GB": 81920,
        "NVIDIA-A100-SXM4-40GB": 40960,
        "NVIDIA-H100-80GB-HBM3": 81559,
    }
    for cluster in DEFAULT_FLEET:
        for node in cluster.nodes:
            if node.gpus:
                assert node.gpu_product is not None
                assert node.gpu_memory_mib == memory[node.gpu_product], node.name
                labels = node_manifest(node)["metadata"]["labels"]
                assert labels["nvidia.com/gpu.memory"] == str(memory[node.gpu_product])


def test_default_fleet_is_realistic_and_labelled() -> None:
    for cluster in DEFAULT_FLEET:
        assert {"region", "gpu"} <= set(cluster.labels), cluster.name
        regions = {n.region for n in cluster.nodes}
        assert regions == {cluster.labels["region"]}, cluster.name
        for node in cluster.nodes:
            assert node.zone is not None
            assert node.zone.startswith(cluster.labels["region"])
            assert node.instance_type
            if node.gpus:
                assert (node.cpu, node.memory) == ("96", "1Ti")
            else:
                assert (node.cpu, node.memory) == ("32", "128Gi")
    names = [n.name for c in DEFAULT_FLEET for n in c.nodes]
    assert len(names) == len(set(names)), "node names are unique across the fleet (easier to debug)"


def test_helpers_build_consistent_nodes() -> None:
    g = gpu_node("g-0", "NVIDIA-A100-SXM4-40GB", region="r", zone="r-a")
    c = cpu_node("c-0", region="r", zone="r-a")

    assert (g.gpus, g.gpu_memory_mib, g.instance_type) == (8, 40960, "gpu-8x-a100-40gb")
    assert (c.gpus, c.gpu_product) == (0, None)
