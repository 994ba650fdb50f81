"""The planner's free-GPU gauges follow the capacity it decides with, cluster by cluster."""

from __future__ import annotations

from prometheus_client import REGISTRY

from planner.fleet import NodeFree
from planner.metrics import FREE_GPUS, export_free_gpus

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


def node(cluster: str, name: str, product: str | None, gpus: int) -> NodeFree:
    return NodeFree(cluster, name, product, 80 << 30, gpus, 96_000, 1 << 40)


def free(cluster: str, product: str) -> float | None:
    return REGISTRY.get_sample_value("llmop_fleet_free_gpus", {"cluster": cluster, "gpu_product": product})


def test_gauges_sum_free_gpus_per_kind_and_follow_changed_clusters_only() -> None:
    east = (node("m-east", "n1", A100, 3), node("m-east", "n2", A100, 5), node("m-east", "n3", H100, 8))
    west = (node("m-west", "n1", None, 0), node("m-west", "n2", A100, 2))
    export_free_gpus({"m-east": east, "m-west": west})
    assert (free("m-east", A100), free("m-east", H100), free("m-west", A100)) == (8, 8, 2)

    # m-east's H100 node is gone and an A100 GPU was taken; m-west is the same tuple as before.
    export_free_gpus({"m-east": (node("m-east", "n1", A100, 2), east[1]), "m-west": west})
    assert (free("m-east", A100), free("m-east", H100), free("m-west", A100)) == (7, 0, 2)


def test_an_unchanged_cluster_is_not_recounted() -> None:
    nodes = (node("m-same", "n1", A100, 4),)
    export_free_gpus({"m-same": nodes})
    # Set behind the export's back: an export of the very same nodes must not recount (and so not reset) it.
    FREE_GPUS.labels(cluster="m-same", gpu_product=A100).set(99)
    export_free_gpus({"m-same": nodes})
    assert free("m-same", A100) == 99
    export_free_gpus({"m-same": (node("m-same", "n1", A100, 4),)})  # equal, but read afresh: counted again
    assert free("m-same", A100) == 4
