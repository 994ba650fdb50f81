"""The capacity rule, per node: what is free on each node of each cluster, after pods and reservations.

Guarantees:
- Capacity is per node, never summed per cluster: a replica needing k GPUs needs k free on one node.
- free = allocatable − requests of pods bound to the node and not terminated − reservations, clamped at zero.
- A reservation is a planned replica not yet observed as a bound pod; it is charged to the node the planner
  expected, so two decisions in a row never hand out the same GPUs, even before any pod exists.
- One rule for what counts (`usable`), shared by the planner, `status`, `history --as-of` and the
  report_gpu_capacity view (`gpu_capacity` sums it per cluster and GPU product): a node is usable when it is
  Ready, not cordoned, and the replicas placement puts there (GPU replicas on nodes with GPUs, CPU-only replicas
  on the others) tolerate every NoSchedule/NoExecute taint on it (api/scheduling.py; render emits the same
  tolerations).
- The result is a `planner.fleet.FleetCapacity`, the index placement asks (kept apart: this module is the rule).
Pure: plain data in, plain data out; no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import TypeVar

from api.scheduling import CPU_POD_TOLERATIONS, GPU_POD_TOLERATIONS, tolerates_all
from planner.fleet import FleetCapacity, NodeFree

TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})
"""Pods in these phases hold nothing on their node any more."""
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


def usable(node: NodeFacts) -> bool:
    """Does the node count? Ready, not cordoned, and its NoSchedule/NoExecute taints tolerated by the replicas
    placement puts there: GPU replicas on nodes with GPUs, CPU-only replicas on the others."""
    if not node.ready or not node.schedulable:
        return False
    if not node.taints:
        return True
    return tolerates_all(GPU_POD_TOLERATIONS if node.gpu_allocatable > 0 else CPU_POD_TOLERATIONS, node.taints)


_Charges = dict[tuple[str, str], list[int]]
"""(cluster, node) → [GPUs, CPU millicores, memory bytes]."""


def _usage(pods: Iterable[PodUsage], reservations: Iterable[Reservation]) -> tuple[_Charges, _Charges]:
    """(what bound pods request, what outstanding reservations hold) per node."""
    requested: _Charges = {}
    reserved: _Charges = {}
    bound_per_node: dict[tuple[str, str, str], int] = defaultdict(int)
    bound_per_cluster: dict[tuple[str, str], int] = defaultdict(int)
    for pod in pods:
        _charge(requested, (pod.cluster, pod.node), pod.gpus, pod.cpu_m, pod.memory_bytes, 1)
        if pod.deployment_key:
            bound_per_node[(pod.deployment_key, pod.cluster, pod.node)] += 1
            bound_per_cluster[(pod.deployment_key, pod.cluster)] += 1

    for reservation in reservations:
        replicas, cluster, expected = reservation.replicas, reservation.cluster, reservation.expected_nodes
        if replicas <= 0:
            continue
        if bound_per_cluster and (reservation.deployment_key, cluster) in bound_per_cluster:
            charges = _unbound(reservation, bound_per_node, bound_per_cluster)
        elif len(expected) == 1:  # nothing bound yet, one node: the common case for a fresh plan
            ((node_name, count),) = expected.items()
            charges = [(node_name, min(replicas, count))] if count > 0 else []
        else:  # nothing bound yet: every expected replica is outstanding
            charges = _expected(reservation)
        gpus, cpu_m, memory = reservation.gpus, reservation.cpu_m, reservation.memory_bytes
        for node_name, count in charges:
            slot = reserved.get((cluster, node_name))
            if slot is None:
                reserved[(cluster, node_name)] = [gpus * count, cpu_m * count, memory * count]
            else:
                slot[0] += gpus * count
                slot[1] += cpu_m * count
                slot[2] += memory * count
    return requested, reserved


_NOTHING = (0, 0, 0)


def free_capacity(
    nodes: Iterable[NodeFacts],
    pods: Iterable[PodUsage],
    reservations: Iterable[Reservation] = (),
) -> FleetCapacity:
    """The fleet's free capacity after bound pods and outstanding reservations, on usable nodes."""
    requested, reserved = _usage(pods, reservations)
    grouped: dict[str, list[NodeFree]] = {}
    for node in sorted(nodes, key=_cluster_and_name):
        if not usable(node):
            continue
        key = (node.cluster, node.name)
        gpus, cpu, mem = requested.get(key, _NOTHING)
        if reserved:
            held = reserved.get(key, _NOTHING)
            gpus, cpu, mem = gpus + held[0], cpu + held[1], mem + held[2]
        free = NodeFree(
            node.cluster,
            node.name,
            node.gpu_product,
            node.gpu_memory_bytes,
            max(0, node.gpu_allocatable - gpus),
            max(0, node.cpu_allocatable_m - cpu),
            max(0, node.memory_allocatable_bytes - mem),
            node.gpu_allocatable,
        )
        if node.cluster in grouped:
            grouped[node.cluster].append(free)
        else:
            grouped[node.cluster] = [free]
    return FleetCapacity({cluster: tuple(ns) for cluster, ns in grouped.items()})


@dataclass(frozen=True)
class GpuCapacity:
    """The GPUs of one product in one cluster, by the same rule and the same per-node arithmetic as the planner.

    Over usable nodes: `total` allocatable, `allocated` (requested by bound pods), `reserved` (planned replicas
    not yet bound, charged to the nodes the planner expected), `free` = Σ per node max(0, total − allocated −
    reserved), which is exactly the free GPUs the planner sees. The nodes that do not count are tallied apart
    (`unusable_nodes`, `unusable_gpus`), so a report shows GPUs that exist but will not be used.
    """

    cluster: str
    gpu_product: str
    gpu_memory_bytes: int
    """The largest GPU memory among the product's nodes in the cluster."""
    nodes: int
    total: int
    allocated: int
    reserved: int
    free: int
    unusable_nodes: int
    unusable_gpus: int


def gpu_capacity(
    nodes: Iterable[NodeFacts], pods: Iterable[PodUsage], reservations: Iterable[Reservation] = ()
) -> list[GpuCapacity]:
    """Per cluster and GPU product (nodes with GPUs and a product label), in (cluster, product) order."""
    requested, reserved = _usage(pods, reservations)
    rows: dict[tuple[str, str], list[int]] = {}
    for node in nodes:
        if node.gpu_allocatable <= 0 or node.gpu_product is None:
            continue
        row = rows.setdefault((node.cluster, node.gpu_product), [0] * 8)
        row[0] = max(row[0], node.gpu_memory_bytes)
        if usable(node):
            key = (node.cluster, node.name)
            allocated, held = requested.get(key, _NOTHING)[0], reserved.get(key, _NOTHING)[0]
            row[1] += 1
            row[2] += node.gpu_allocatable
            row[3] += allocated
            row[4] += held
            row[5] += max(0, node.gpu_allocatable - allocated - held)
        else:
            row[6] += 1
            row[7] += node.gpu_allocatable
    return [GpuCapacity(cluster, product, *rows[(cluster, product)]) for cluster, product in sorted(rows)]


_cluster_and_name = attrgetter("cluster", "name")


def _charge(
    used: dict[tuple[str, str], list[int]], key: tuple[str, str], gpus: int, cpu_m: int, memory: int, n: int
) -> None:
    slot = used.get(key)
    if slot is None:
        used[key] = [gpus * n, cpu_m * n, memory * n]
    else:
        slot[0] += gpus * n
        slot[1] += cpu_m * n
        slot[2] += memory * n


def _expected(reservation: Reservation) -> list[tuple[str, int]]:
    """`_unbound` when none of the reservation's replicas is bound yet."""
    outstanding = reservation.replicas
    expected = reservation.expected_nodes
    result: list[tuple[str, int]] = []
    for node_name in sorted(expected) if len(expected) > 1 else expected:
        charge = min(outstanding, expected[node_name])
        if charge > 0:
            result.append((node_name, charge))
            outstanding -= charge
            if outstanding == 0:
                break
    return result


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
