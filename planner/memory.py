"""The fleet's free capacity, carried from one planner step to the next instead of rebuilt from every node, pod
and placement of the fleet each step.

Guarantees:
- `current` returns exactly what `free_capacity` of all nodes, bound pods and placements gives when read in the
  same transaction (tests/integration/test_store.py checks this against a full rebuild step after step).
- Capacity is per cluster: a cluster's free capacity depends only on that cluster's nodes, pods and placements.
  So after the first full build only the clusters marked stale are read again: those with node, pod or resync
  observations since, and those whose placements a decision changed (decisions carry capacity forward in memory,
  but do not hand back what a scale-down frees until its pods are gone; re-reading settles it exactly).
- The owner forgets everything when a step does not commit (`forget`): the memory then describes a
  transaction that never happened. A new leadership term starts with an empty memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import cast

from api.events import Event, PlacementDecided, ResourceDeleted, ResourceObserved, ResyncCompleted
from api.keys import DeploymentKey
from planner.capacity import NodeFacts, PodUsage, Reservation, free_capacity
from planner.fleet import FleetCapacity
from store import queries
from store.engine import Connection
from store.rows import BoundPodRow, NodeRow, PlacementRow

_CAPACITY_KINDS = frozenset({"Node", "Pod"})


@dataclass
class CapacityMemory:
    capacity: FleetCapacity | None = None
    stale: set[str] = field(default_factory=set)
    """Clusters whose nodes, pods or placements changed since `capacity` was read or carried forward."""

    def forget(self) -> None:
        self.capacity = None
        self.stale.clear()

    def note(self, events: Iterable[Event]) -> None:
        """Mark the clusters whose capacity these recorded events change."""
        for event in events:
            # Exact classes, not `match`: class patterns are isinstance checks through pydantic's ABCMeta, and
            # this runs for every event a step records.
            kind = type(event)
            if kind is ResourceObserved or kind is ResourceDeleted:
                if cast(ResourceObserved | ResourceDeleted, event).kind in _CAPACITY_KINDS:
                    self.stale.add(event.cluster)
            elif kind is ResyncCompleted:
                self.stale.add(event.cluster)
            elif kind is PlacementDecided:
                self.stale.update(share.cluster for share in cast(PlacementDecided, event).shares)

    async def current(self, conn: Connection) -> FleetCapacity:
        """The fleet's free capacity as the projections say now."""
        if self.capacity is None:
            self.capacity = await read_capacity(conn)
        elif self.stale:
            fresh = await read_capacity(conn, self.stale)
            self.capacity = self.capacity.with_clusters_from(fresh, self.stale)
        self.stale.clear()
        return self.capacity

    def carry(self, capacity: FleetCapacity, decided: Iterable[PlacementDecided], released: Iterable[str]) -> None:
        """Keep the capacity the step's decisions left; the clusters they placed in or `released` are read again
        next time (see the module docstring)."""
        self.capacity = capacity
        self.note(decided)
        self.stale.update(released)


async def read_capacity(conn: Connection, clusters: Collection[str] | None = None) -> FleetCapacity:
    """Free capacity from the projections: of the whole fleet, or of `clusters` only."""
    return free_capacity(
        *facts_of(
            await queries.nodes(conn, clusters),
            await queries.bound_pods(conn, clusters),
            await queries.all_placements(conn, clusters),
        )
    )


def facts_of(
    nodes: Iterable[NodeRow], pods: Iterable[BoundPodRow], placements: Iterable[PlacementRow]
) -> tuple[list[NodeFacts], list[PodUsage], list[Reservation]]:
    """What the capacity rule takes, from rows of the nodes, pods and placements projections (read from the
    database or folded in memory by `history --as-of`): pods bound and not terminated (callers pass only those),
    placements with replicas."""
    node_facts = [
        NodeFacts(
            cluster=n.cluster,
            name=n.name,
            gpu_product=n.gpu_product,
            gpu_memory_bytes=n.gpu_memory_bytes,
            gpu_allocatable=n.gpu_allocatable,
            cpu_allocatable_m=n.cpu_allocatable_m,
            memory_allocatable_bytes=n.memory_allocatable_bytes,
            ready=n.ready,
            schedulable=n.schedulable,
            taints=tuple((t.get("key", ""), t.get("effect", "")) for t in n.taints),
        )
        for n in nodes
    ]
    pod_usage = [
        PodUsage(
            cluster=p.cluster,
            node=p.node_name,
            gpus=p.gpu_request,
            cpu_m=p.cpu_request_m,
            memory_bytes=p.memory_request_bytes,
            deployment_key=p.deployment_key,
        )
        for p in pods
    ]
    reservations = [
        Reservation(
            deployment_key=str(DeploymentKey(p.origin_cluster, p.namespace, p.name)),
            cluster=p.cluster,
            replicas=p.replicas,
            expected_nodes=p.nodes,
            gpus=p.replica_gpus,
            cpu_m=p.replica_cpu_m,
            memory_bytes=p.replica_memory_bytes,
        )
        for p in placements
        if p.replicas > 0
    ]
    return node_facts, pod_usage, reservations
