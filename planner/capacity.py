"""Per-node capacity arithmetic: what is free on each node of each cluster, after pods and reservations.

Guarantees:
- Capacity is per node, never summed per cluster: a replica needing k GPUs needs k free on one node.
- free = allocatable − requests of pods bound to the node and not terminated − reservations, clamped at zero.
- A reservation is a planned replica not yet observed as a bound pod; it is charged to the node the planner
  expected, so two decisions in a row never hand out the same GPUs, even before any pod exists.
- Nodes that are not Ready, are cordoned, or carry a NoSchedule/NoExecute taint that our pods do not tolerate
  are not usable.
Pure: plain data in, plain data out; no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

# Taints our model pods tolerate (render.py adds the matching tolerations): the GPU operator's taint, and the
# marker kwok-managed nodes may carry.
TOLERATED_TAINT_KEYS = frozenset({"nvidia.com/gpu", "kwok.x-k8s.io/node"})
_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
T = TypeVar("T")


@dataclass(frozen=True)
class NodeFacts:
    """What the store knows about one node (from its latest snapshot)."""

    cluster: str
    name: str
    gpu_product: str | None
    gpu_memory_bytes: int
    gpu_allocatable: int
    cpu_allocatable_m: int
    memory_allocatable_bytes: int
    ready: bool = True
    schedulable: bool = True
    taints: tuple[tuple[str, str], ...] = ()  # (key, effect)


@dataclass(frozen=True)
class PodUsage:
    """Requests of one pod bound to a node (terminated pods are not passed in)."""

    cluster: str
    node: str
    gpus: int
    cpu_m: int
    memory_bytes: int
    deployment_key: str | None = None


@dataclass(frozen=True)
class Reservation:
    """Replicas of one deployment planned in a cluster, with the nodes the planner expected them on."""

    deployment_key: str
    cluster: str
    replicas: int
    expected_nodes: Mapping[str, int]
    gpus: int
    cpu_m: int
    memory_bytes: int


@dataclass(frozen=True)
class NodeFree:
    """Free resources on one usable node."""

    cluster: str
    name: str
    gpu_product: str | None
    gpu_memory_bytes: int
    gpus: int
    cpu_m: int
    memory_bytes: int
    gpu_allocatable: int = 0

    def take(self, *, gpus: int, cpu_m: int, memory_bytes: int, count: int = 1) -> NodeFree:
        return replace(
            self,
            gpus=self.gpus - gpus * count,
            cpu_m=self.cpu_m - cpu_m * count,
            memory_bytes=self.memory_bytes - memory_bytes * count,
        )


GpuKind = tuple[str, int]
"""(GPU product, GPU memory in bytes): what a GPU type pattern and a minimum GPU memory select."""


@dataclass
class _Index:
    """Derived data a FleetCapacity keeps about itself; see FleetCapacity. Never part of equality."""

    memo: dict[str, dict[Hashable, Any]] = field(default_factory=dict)
    """Per cluster: results of pure functions of that cluster's nodes."""
    cluster_slots: dict[str, dict[tuple[int, GpuKind], int]] = field(default_factory=dict)
    """Per cluster: (k, kind) → Σ over its nodes of ⌊free GPUs / k⌋."""
    fleet_slots: dict[tuple[int, GpuKind], int] | None = None
    """The same summed over the fleet."""
    kinds: tuple[GpuKind, ...] | None = None


@dataclass(frozen=True)
class FleetCapacity:
    """Free resources per usable node, grouped by cluster (clusters and nodes in name order).

    Immutable: taking capacity gives a new FleetCapacity (`with_cluster`) that shares every unchanged cluster
    with the old one. Two kinds of derived data make repeated questions cheap, and neither ever changes an answer
    or takes part in equality:
    - `gpu_slots`: how many k-GPU blocks each GPU kind offers, per cluster and fleet-wide, counting GPUs only (an
      upper bound on the replicas that fit, since CPU and memory may bind first). Kept up to date incrementally:
      a change to one node costs O(its GPUs).
    - `memo`: results of pure functions of one cluster's nodes (e.g. "how many replicas of this exact shape fit
      here"), kept for as long as that cluster's nodes are unchanged.
    """

    clusters: Mapping[str, tuple[NodeFree, ...]] = field(default_factory=dict)
    _index: _Index = field(default_factory=_Index, init=False, repr=False, compare=False)

    def nodes(self, cluster: str) -> tuple[NodeFree, ...]:
        return self.clusters.get(cluster, ())

    def with_cluster(self, cluster: str, nodes: tuple[NodeFree, ...]) -> FleetCapacity:
        """The same fleet with `cluster`'s nodes replaced; derived data of the other clusters carries over."""
        old = self.clusters.get(cluster, ())
        derived = FleetCapacity({**self.clusters, cluster: nodes})
        index, new = self._index, derived._index
        new.memo.update(index.memo)
        new.memo.pop(cluster, None)
        new.cluster_slots.update(index.cluster_slots)
        changes = _changed_nodes(old, nodes)
        if changes is None:  # not the same nodes any more: recount this cluster and the fleet when asked
            new.cluster_slots.pop(cluster, None)
            return derived
        delta: dict[tuple[int, GpuKind], int] = {}
        same_kinds = True
        for before, after in changes:
            _add_slots(delta, before, -1)
            _add_slots(delta, after, +1)
            same_kinds = same_kinds and (before.gpu_product, before.gpu_memory_bytes) == (
                after.gpu_product,
                after.gpu_memory_bytes,
            )
        if cluster in index.cluster_slots:
            new.cluster_slots[cluster] = _plus(index.cluster_slots[cluster], delta)
        if index.fleet_slots is not None:
            new.fleet_slots = _plus(index.fleet_slots, delta)
        if same_kinds:
            new.kinds = index.kinds
        return derived

    def with_node(self, node: NodeFree) -> FleetCapacity:
        updated = tuple(node if n.name == node.name else n for n in self.clusters[node.cluster])
        return self.with_cluster(node.cluster, updated)

    def gpu_kinds(self) -> tuple[GpuKind, ...]:
        """Every (product, GPU memory) among the fleet's usable nodes, sorted."""
        index = self._index
        if index.kinds is None:
            index.kinds = tuple(
                sorted(
                    {(n.gpu_product, n.gpu_memory_bytes) for ns in self.clusters.values() for n in ns if n.gpu_product}
                )
            )
        return index.kinds

    def gpu_slots(self, kind: GpuKind, gpus: int, cluster: str | None = None) -> int:
        """How many blocks of `gpus` free GPUs of `kind` one node each (Σ ⌊free / gpus⌋), in `cluster` or the fleet.

        GPUs only: CPU and memory may let fewer replicas fit, never more.
        """
        index = self._index
        if cluster is None:
            if index.fleet_slots is None:
                index.fleet_slots = _count_slots(n for ns in self.clusters.values() for n in ns)
            return index.fleet_slots.get((gpus, kind), 0)
        slots = index.cluster_slots.get(cluster)
        if slots is None:
            slots = index.cluster_slots[cluster] = _count_slots(self.nodes(cluster))
        return slots.get((gpus, kind), 0)

    def memo(self, cluster: str, key: Hashable, compute: Callable[[tuple[NodeFree, ...]], T]) -> T:
        """`compute(self.nodes(cluster))`, computed once per version of the cluster's nodes and key.

        `compute` must be a pure function of the nodes, fully determined by `key`.
        """
        results = self._index.memo.get(cluster)
        if results is None:
            results = self._index.memo[cluster] = {}
        if key in results:
            return cast(T, results[key])
        value = results[key] = compute(self.nodes(cluster))
        return value


def _changed_nodes(old: tuple[NodeFree, ...], new: tuple[NodeFree, ...]) -> list[tuple[NodeFree, NodeFree]] | None:
    """(before, after) for each node that changed, or None if the two are not the same nodes in the same order."""
    if len(old) != len(new):
        return None
    changes = []
    for before, after in zip(old, new, strict=True):
        if before is after:
            continue
        if before.name != after.name:
            return None
        changes.append((before, after))
    return changes


def _add_slots(slots: dict[tuple[int, GpuKind], int], node: NodeFree, sign: int) -> None:
    if node.gpu_product is None or node.gpus <= 0:
        return
    kind = (node.gpu_product, node.gpu_memory_bytes)
    free = node.gpus
    for k in range(1, free + 1):
        key = (k, kind)
        slots[key] = slots.get(key, 0) + sign * (free // k)


def _count_slots(nodes: Iterable[NodeFree]) -> dict[tuple[int, GpuKind], int]:
    slots: dict[tuple[int, GpuKind], int] = {}
    for node in nodes:
        _add_slots(slots, node, +1)
    return slots


def _plus(
    slots: dict[tuple[int, GpuKind], int], delta: dict[tuple[int, GpuKind], int]
) -> dict[tuple[int, GpuKind], int]:
    result = dict(slots)
    for key, change in delta.items():
        if change:
            result[key] = result.get(key, 0) + change
    return result


def usable(node: NodeFacts) -> bool:
    if not node.ready or not node.schedulable:
        return False
    return not any(effect in _BLOCKING_EFFECTS and key not in TOLERATED_TAINT_KEYS for key, effect in node.taints)


def free_capacity(
    nodes: Iterable[NodeFacts],
    pods: Iterable[PodUsage],
    reservations: Iterable[Reservation] = (),
) -> FleetCapacity:
    """The fleet's free capacity after bound pods and outstanding reservations."""
    used: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    bound_per_node: dict[tuple[str, str, str], int] = defaultdict(int)
    bound_per_cluster: dict[tuple[str, str], int] = defaultdict(int)
    for pod in pods:
        slot = used[(pod.cluster, pod.node)]
        slot[0] += pod.gpus
        slot[1] += pod.cpu_m
        slot[2] += pod.memory_bytes
        if pod.deployment_key:
            bound_per_node[(pod.deployment_key, pod.cluster, pod.node)] += 1
            bound_per_cluster[(pod.deployment_key, pod.cluster)] += 1

    for reservation in reservations:
        for node_name, count in _unbound(reservation, bound_per_node, bound_per_cluster):
            slot = used[(reservation.cluster, node_name)]
            slot[0] += reservation.gpus * count
            slot[1] += reservation.cpu_m * count
            slot[2] += reservation.memory_bytes * count

    grouped: dict[str, list[NodeFree]] = defaultdict(list)
    for node in sorted(nodes, key=lambda n: (n.cluster, n.name)):
        if not usable(node):
            continue
        gpus, cpu, mem = used.get((node.cluster, node.name), (0, 0, 0))
        grouped[node.cluster].append(
            NodeFree(
                cluster=node.cluster,
                name=node.name,
                gpu_product=node.gpu_product,
                gpu_memory_bytes=node.gpu_memory_bytes,
                gpus=max(0, node.gpu_allocatable - gpus),
                cpu_m=max(0, node.cpu_allocatable_m - cpu),
                memory_bytes=max(0, node.memory_allocatable_bytes - mem),
                gpu_allocatable=node.gpu_allocatable,
            )
        )
    return FleetCapacity({cluster: tuple(ns) for cluster, ns in sorted(grouped.items())})


def _unbound(
    reservation: Reservation,
    bound: Mapping[tuple[str, str, str], int],
    bound_totals: Mapping[tuple[str, str], int],
) -> list[tuple[str, int]]:
    """Replicas of the reservation not yet seen as bound pods, charged to the nodes the planner expected.

    Pods the scheduler put on other nodes than expected already count as usage there; they still reduce the
    number of outstanding replicas, taken from expected nodes in name order.
    """
    total_bound = bound_totals.get((reservation.deployment_key, reservation.cluster), 0)
    outstanding = max(0, reservation.replicas - total_bound)
    result: list[tuple[str, int]] = []
    for node_name in sorted(reservation.expected_nodes):
        if outstanding == 0:
            break
        expected = reservation.expected_nodes[node_name]
        already = bound.get((reservation.deployment_key, reservation.cluster, node_name), 0)
        charge = min(outstanding, max(0, expected - already))
        if charge:
            result.append((node_name, charge))
            outstanding -= charge
    return result


def describe_largest_free(
    capacity: FleetCapacity, clusters: Sequence[str], accept: Callable[[NodeFree], bool] | None = None
) -> str:
    """'4 × NVIDIA-A100-SXM4-80GB on a100/gpu-1' for the roomiest GPU node among `clusters`, for messages.

    `accept` narrows the nodes considered (e.g. to acceptable GPU types). Ties go to the first node in the given
    cluster order, then by node name.
    """
    best: NodeFree | None = None
    for cluster in clusters:
        for node in capacity.nodes(cluster):
            if node.gpu_product and (best is None or node.gpus > best.gpus) and (accept is None or accept(node)):
                best = node
    if best is None or best.gpus == 0:
        return "no free GPUs"
    return f"{best.gpus} × {best.gpu_product} on {best.cluster}/{best.name}"
