"""Small builders for placement and capacity tests: fleets, nodes, demands, and readable views of decisions.

Names are short on purpose: a test table reads like the fleet it describes, e.g.
`fleet(gpu("a", "n1", H100, free=2), gpu("b", "n1", A100))`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from planner.capacity import NodeFacts, PodUsage
from planner.fleet import FleetCapacity, NodeFree
from planner.placement import ClusterInfo, Decision, Demand, Share

GiB = 2**30
MiB = 2**20

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
A100_40 = "NVIDIA-A100-PCIE-40GB"
L4 = "NVIDIA-L4"
MEMORY_OF = {H100: 80 * GiB, A100: 80 * GiB, A100_40: 40 * GiB, L4: 24 * GiB}


def gpu(
    cluster: str,
    name: str,
    product: str = A100,
    *,
    free: int = 8,
    total: int = 8,
    cpu_m: int = 96_000,
    memory_gib: int = 1024,
    gpu_memory_gib: int | None = None,
) -> NodeFree:
    """A usable GPU node with `free` of its `total` GPUs free."""
    memory = MEMORY_OF.get(product, 80 * GiB) if gpu_memory_gib is None else gpu_memory_gib * GiB
    return NodeFree(cluster, name, product, memory, free, cpu_m, memory_gib * GiB, gpu_allocatable=total)


def cpu(cluster: str, name: str, *, cpu_m: int = 32_000, memory_gib: int = 128) -> NodeFree:
    """A usable node without GPUs."""
    return NodeFree(cluster, name, None, 0, 0, cpu_m, memory_gib * GiB)


def fleet(*nodes: NodeFree) -> FleetCapacity:
    """Capacity from nodes, grouped by cluster, clusters and nodes in name order (as free_capacity builds it)."""
    grouped: dict[str, list[NodeFree]] = {}
    for node in sorted(nodes, key=lambda n: (n.cluster, n.name)):
        grouped.setdefault(node.cluster, []).append(node)
    return FleetCapacity({cluster: tuple(ns) for cluster, ns in grouped.items()})


def clusters(
    *names: str, labels: Mapping[str, Mapping[str, str]] | None = None, down: Iterable[str] = ()
) -> list[ClusterInfo]:
    """ClusterInfo for each name; `labels` per cluster, `down` the unhealthy ones."""
    unhealthy = set(down)
    return [ClusterInfo(n, dict((labels or {}).get(n, {})), n not in unhealthy) for n in names]


def clusters_of(capacity: FleetCapacity, **kwargs: object) -> list[ClusterInfo]:
    """ClusterInfo for every cluster in `capacity` (see `clusters` for the options)."""
    return clusters(*capacity.clusters, **kwargs)  # type: ignore[arg-type]


def demand(
    replicas: int = 1,
    gpus: int = 1,
    types: Sequence[str] = (),
    *,
    origin: str = "a",
    min_gpu_memory_gib: int = 0,
    cpu_m: int = 0,
    memory_gib: int = 0,
    key: str = "a/ns/llm",
) -> Demand:
    return Demand(
        deployment_key=key,
        origin=origin,
        replicas=replicas,
        gpus=gpus,
        gpu_types=tuple(types),
        gpu_min_memory_bytes=min_gpu_memory_gib * GiB,
        cpu_m=cpu_m,
        memory_bytes=memory_gib * GiB,
    )


def share(cluster: str, product: str | None, **nodes: int) -> Share:
    """A share with replicas on the named nodes, e.g. share("a", A100, n1=2, n2=1)."""
    return Share(cluster, sum(nodes.values()), product, tuple(sorted(nodes.items())))


def placed(decision: Decision) -> dict[str, tuple[str | None, dict[str, int]]]:
    """{cluster: (GPU product, {node: replicas})}: the whole placement, for exact assertions."""
    return {s.cluster: (s.gpu_type, s.node_map()) for s in decision.shares}


def free_gpus(capacity: FleetCapacity) -> dict[str, dict[str, int]]:
    """{cluster: {node: free GPUs}} for GPU nodes."""
    return {c: {n.name: n.gpus for n in ns if n.gpu_product} for c, ns in capacity.clusters.items()}


def facts(
    cluster: str,
    name: str,
    product: str | None = A100,
    *,
    gpus: int = 8,
    cpu_m: int = 96_000,
    memory_gib: int = 1024,
    ready: bool = True,
    schedulable: bool = True,
    taints: tuple[tuple[str, str], ...] = (),
) -> NodeFacts:
    """What the store knows about a node (a CPU node when `product` is None)."""
    return NodeFacts(
        cluster=cluster,
        name=name,
        gpu_product=product,
        gpu_memory_bytes=MEMORY_OF.get(product, 0) if product else 0,
        gpu_allocatable=gpus if product else 0,
        cpu_allocatable_m=cpu_m,
        memory_allocatable_bytes=memory_gib * GiB,
        ready=ready,
        schedulable=schedulable,
        taints=taints,
    )


def pod(
    cluster: str,
    node: str,
    *,
    gpus: int = 1,
    cpu_m: int = 1_000,
    memory_gib: int = 4,
    deployment: str | None = None,
) -> PodUsage:
    return PodUsage(cluster, node, gpus, cpu_m, memory_gib * GiB, deployment)
