"""The fleet's free capacity as an index the placement engine asks: what is free on each node of each cluster.

Guarantees:
- `FleetCapacity` is immutable: taking capacity (`with_cluster`) returns a new value. What it derives to answer
  questions fast (k-GPU blocks per GPU kind and cluster, which clusters have any, memoised per-cluster results) is
  kept in step with every change and always equals what counting from scratch gives; it never takes part in
  equality.
- It knows nothing of pods, reservations or which nodes count: `planner.capacity` (the rule) builds it.
Pure: plain data in, plain data out; no I/O, no clock.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

T = TypeVar("T")


class NodeFree(NamedTuple):
    """Free resources on one usable node.

    A NamedTuple rather than a frozen dataclass: every placement makes new ones (`take`), and a tuple is built
    several times faster than a frozen dataclass sets its fields.
    """

    cluster: str
    name: str
    gpu_product: str | None
    gpu_memory_bytes: int
    gpus: int
    cpu_m: int
    memory_bytes: int
    gpu_allocatable: int = 0

    def take(self, *, gpus: int, cpu_m: int, memory_bytes: int, count: int = 1) -> NodeFree:
        return NodeFree(
            self.cluster,
            self.name,
            self.gpu_product,
            self.gpu_memory_bytes,
            self.gpus - gpus * count,
            self.cpu_m - cpu_m * count,
            self.memory_bytes - memory_bytes * count,
            self.gpu_allocatable,
        )


GpuKind = tuple[str, int]
"""(GPU product, GPU memory in bytes): what a GPU type pattern and a minimum GPU memory select."""
SlotKey = tuple[int, GpuKind]
"""(k, kind): blocks of k free GPUs of one kind on one node."""
PositionKey = GpuKind | None | tuple[GpuKind, ...]
"""What node positions are filed under: one GPU kind, None (nodes without GPUs), or several kinds together."""


class _Known:
    """What has been worked out about one tuple of nodes (one version of one cluster)."""

    __slots__ = ("memo", "nodes", "positions", "slots")

    def __init__(
        self,
        nodes: tuple[NodeFree, ...],
        slots: dict[SlotKey, int] | None = None,
        positions: dict[PositionKey, tuple[int, ...]] | None = None,
    ) -> None:
        self.nodes = nodes  # held, so the id() this is filed under cannot be reused while it is filed
        self.memo: dict[Hashable, Any] = {}
        self.slots = slots
        self.positions = positions


class _Index:
    """Derived data of a FleetCapacity; see FleetCapacity. Never part of equality."""

    __slots__ = ("fleet_slots", "holders", "kinds", "kinds_where", "known")

    def __init__(self, known: dict[str, list[_Known]] | None = None) -> None:
        # Per cluster: what is known about its latest node tuples, most recently used first (at most _KEPT). Shared
        # by a FleetCapacity and every capacity derived from it: a tuple that did not change is the same object in
        # all of them, so what is known about it holds in all of them.
        self.known: dict[str, list[_Known]] = {} if known is None else known
        # (k, kind) → Σ over the fleet's nodes of ⌊free GPUs / k⌋ (this version only, worked out when asked).
        self.fleet_slots: dict[SlotKey, int] | None = None
        # (k, kind) → the clusters with at least one such block, in name order (kept up to date once asked for).
        self.holders: dict[SlotKey, list[str]] | None = None
        # The fleet's GPU kinds, and subsets of them by the key they were asked for with (shared while unchanged).
        self.kinds: tuple[GpuKind, ...] | None = None
        self.kinds_where: dict[Hashable, tuple[GpuKind, ...]] = {}


@dataclass(frozen=True)
class FleetCapacity:
    """Free resources per usable node, grouped by cluster (clusters and nodes in name order).

    Immutable: taking capacity gives a new FleetCapacity (`with_cluster`) that shares every unchanged cluster
    with the old one. Derived data makes repeated questions cheap; it never changes an answer and takes no part
    in equality:
    - GPU slots: how many blocks of k free GPUs each GPU kind offers on single nodes, per cluster and fleet-wide,
      and which clusters have any. GPUs only, so an upper bound on the replicas that fit (CPU and memory may bind
      first). Kept up to date incrementally: changing one node costs O(its free GPUs).
    - `memo`: results of pure functions of one cluster's nodes (e.g. "where do replicas of this exact shape fit
      here"), kept for as long as that cluster's nodes are unchanged.
    """

    clusters: Mapping[str, tuple[NodeFree, ...]] = field(default_factory=dict)
    _index: _Index = field(default_factory=_Index, init=False, repr=False, compare=False)

    def nodes(self, cluster: str) -> tuple[NodeFree, ...]:
        return self.clusters.get(cluster, ())

    def with_cluster(
        self, cluster: str, nodes: tuple[NodeFree, ...], changed: Iterable[int] | None = None
    ) -> FleetCapacity:
        """The same fleet with `cluster`'s nodes replaced; derived data of the other clusters carries over.

        `changed`, if given, lists the positions of the only nodes that differ (same names, same order), which
        spares comparing the two tuples.
        """
        old = self.clusters.get(cluster, ())
        index = self._index
        new = _Index(index.known)
        # Not through __init__: it would make an empty _Index only to be replaced (this runs once per decision).
        derived = object.__new__(FleetCapacity)
        object.__setattr__(derived, "clusters", {**self.clusters, cluster: nodes})
        object.__setattr__(derived, "_index", new)
        changes = _changed_nodes(old, nodes) if changed is None else [(old[i], nodes[i]) for i in changed]
        if changes is None:  # not the same nodes any more: the fleet-wide data is worked out again when asked
            return derived
        delta: dict[SlotKey, int] = {}
        same_kinds = True
        for before, after in changes:
            if (  # same GPU kind and count (taking never changes them); this runs for every node a decision takes
                before.gpu_allocatable == after.gpu_allocatable
                and before.gpu_product == after.gpu_product
                and before.gpu_memory_bytes == after.gpu_memory_bytes
            ):
                _move_slots(delta, before, after)
            else:
                same_kinds = False
                _add_slots(delta, before, -1)
                _add_slots(delta, after, +1)
        if same_kinds:
            new.kinds, new.kinds_where = index.kinds, index.kinds_where
        old_known = self._known(cluster)
        positions = old_known.positions if same_kinds else None
        if index.holders is None:
            if positions is not None:
                _remember(index.known, cluster, _Known(nodes, positions=positions))
            return derived
        old_slots = old_known.slots if old_known.slots is not None else self._slots(cluster)
        new_slots = _plus(old_slots, delta)
        _remember(index.known, cluster, _Known(nodes, new_slots, positions))
        new.holders = _moved_holders(index.holders, cluster, old_slots, new_slots, delta)
        return derived

    def with_clusters_from(self, fresh: FleetCapacity, clusters: Iterable[str]) -> FleetCapacity:
        """The same fleet with each of `clusters` as `fresh` has it (a cluster `fresh` lacks has no usable node
        any more and is dropped); the others, and what is derived about them, carry over."""
        clusters = set(clusters)
        if any(c not in self.clusters for c in clusters & fresh.clusters.keys()) or any(
            c in self.clusters for c in clusters - fresh.clusters.keys()
        ):
            # A cluster appears or disappears: start over from a dict in name order (rare: clusters join or lose
            # every usable node).
            merged = {c: ns for c, ns in self.clusters.items() if c not in clusters}
            merged.update((c, ns) for c, ns in fresh.clusters.items() if c in clusters)
            return FleetCapacity(dict(sorted(merged.items())))
        result = self
        for cluster in sorted(clusters & fresh.clusters.keys()):
            result = result.with_cluster(cluster, fresh.clusters[cluster])
        return result

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

    def gpu_kinds_where(self, key: Hashable, accept: Callable[[GpuKind], bool]) -> tuple[GpuKind, ...]:
        """The GPU kinds `accept` takes, remembered under `key` (which must fully determine `accept`)."""
        where = self._index.kinds_where
        if key not in where:
            where[key] = tuple(kind for kind in self.gpu_kinds() if accept(kind))
        return where[key]

    def node_positions(self, cluster: str) -> Mapping[PositionKey, tuple[int, ...]]:
        """Positions of `cluster`'s nodes by GPU kind; None: the nodes without GPUs (for CPU-only pods)."""
        return self._positions(cluster)

    def positions_of(self, cluster: str, kinds: tuple[GpuKind, ...]) -> tuple[int, ...]:
        """Positions of `cluster`'s nodes of any of `kinds`, in node order (remembered per set of kinds for as
        long as the cluster's node shapes are unchanged, which taking capacity never changes)."""
        positions = self._positions(cluster)
        if len(kinds) == 1:
            return positions.get(kinds[0], ())
        found = positions.get(kinds)
        if found is None:
            found = positions[kinds] = tuple(sorted(i for kind in kinds for i in positions.get(kind, ())))
        return found

    def _positions(self, cluster: str) -> dict[PositionKey, tuple[int, ...]]:
        entry = self._known(cluster)
        if entry.positions is None:
            by_kind: dict[PositionKey, list[int]] = {}
            for i, node in enumerate(entry.nodes):
                if node.gpu_product is not None:
                    by_kind.setdefault((node.gpu_product, node.gpu_memory_bytes), []).append(i)
                if node.gpu_allocatable == 0:
                    by_kind.setdefault(None, []).append(i)
            entry.positions = {kind: tuple(p) for kind, p in by_kind.items()}
        return entry.positions

    def gpu_slots(self, gpus: int, kinds: Iterable[GpuKind], cluster: str | None = None) -> int:
        """How many blocks of `gpus` free GPUs on one node (Σ ⌊free / gpus⌋) `kinds` offer, in `cluster` or the fleet.

        GPUs only: CPU and memory may let fewer replicas fit, never more.
        """
        slots = self._slots(cluster)
        return sum(slots.get((gpus, kind), 0) for kind in kinds)

    def has_gpu_slots(self, gpus: int, kinds: Iterable[GpuKind]) -> bool:
        """Does any node in the fleet have `gpus` free GPUs of one of `kinds`?"""
        holders = self._holders()
        return any(holders.get((gpus, kind)) for kind in kinds)

    def clusters_with_gpu_slots(self, gpus: int, kinds: Iterable[GpuKind]) -> Iterator[str]:
        """The clusters, in name order, where one of `kinds` has a node with at least `gpus` free GPUs.

        Costs O(clusters returned), not O(fleet): a full fleet answers in a few steps.
        """
        holders = self._holders()
        lists = [holders[key] for key in ((gpus, kind) for kind in kinds) if holders.get(key)]
        if len(lists) == 1:
            return iter(lists[0])
        return _unique(heapq.merge(*lists))

    def largest_gpu_block(self, clusters: Sequence[str], kinds: Iterable[GpuKind] | None = None) -> NodeFree | None:
        """The node with the most free GPUs of one of `kinds` (None: any) among `clusters`; ties go to the first
        cluster in the given order, then to the first node by name. None when no such node has a free GPU."""
        wanted = set(self.gpu_kinds() if kinds is None else kinds)
        holders = self._holders()
        among = set(clusters)
        # From the largest block size the fleet has down: the first of `clusters` that has one holds the answer.
        largest = max((n for n, _ in holders), default=0)
        for size in range(largest, 0, -1):
            found = {name for kind in wanted for name in holders.get((size, kind), ()) if name in among}
            if found:
                cluster = next(name for name in clusters if name in found)
                return next(n for n in self.nodes(cluster) if n.gpus >= size and _kind(n) in wanted)
        return None

    def memo(self, cluster: str, key: Hashable, compute: Callable[[tuple[NodeFree, ...]], T]) -> T:
        """`compute(self.nodes(cluster))`, computed once per version of the cluster's nodes and key.

        `compute` must be a pure function of the nodes, fully determined by `key`.
        """
        results = self._known(cluster).memo
        if key in results:
            return cast(T, results[key])
        value = results[key] = compute(self.nodes(cluster))
        return value

    def _known(self, cluster: str) -> _Known:
        nodes = self.clusters.get(cluster, ())
        entries = self._index.known.get(cluster)
        if entries:
            if entries[0].nodes is nodes:
                return entries[0]
            for entry in entries:
                if entry.nodes is nodes:
                    entries.remove(entry)
                    entries.insert(0, entry)
                    return entry
        return _remember(self._index.known, cluster, _Known(nodes))

    def _slots(self, cluster: str | None) -> dict[SlotKey, int]:
        index = self._index
        if cluster is None:
            if index.fleet_slots is None:  # worked out per version when asked: placement needs only `holders`
                index.fleet_slots = _count_slots(n for ns in self.clusters.values() for n in ns)
            return index.fleet_slots
        entry = self._known(cluster)
        if entry.slots is None:
            entry.slots = _count_slots(entry.nodes)
        return entry.slots

    def _holders(self) -> dict[SlotKey, list[str]]:
        index = self._index
        if index.holders is None:
            holders: dict[SlotKey, list[str]] = {}
            for cluster in sorted(self.clusters):
                for key, n in self._slots(cluster).items():
                    if n > 0:
                        holders.setdefault(key, []).append(cluster)
            index.holders = holders
        return index.holders


_KEPT = 4
"""Node tuples remembered per cluster: the one a chain of decisions is at, and a few a caller keeps deciding
against (e.g. many what-ifs against one filled fleet). Older ones are forgotten, so a long chain of decisions does not
keep every version of every cluster alive."""


def _remember(known: dict[str, list[_Known]], cluster: str, entry: _Known) -> _Known:
    entries = known.setdefault(cluster, [])
    entries.insert(0, entry)
    del entries[_KEPT:]
    return entry


def _kind(node: NodeFree) -> tuple[str | None, int]:
    return (node.gpu_product, node.gpu_memory_bytes)


def _unique(names: Iterable[str]) -> Iterator[str]:
    last = None
    for name in names:
        if name != last:
            yield name
            last = name


def _moved_holders(
    holders: dict[SlotKey, list[str]],
    cluster: str,
    old_slots: dict[SlotKey, int],
    new_slots: dict[SlotKey, int],
    delta: dict[SlotKey, int],
) -> dict[SlotKey, list[str]]:
    """`holders` after `cluster`'s slots went from `old_slots` to `new_slots`; copies only the lists that change."""
    result: dict[SlotKey, list[str]] | None = None
    for key in delta:
        had, has = old_slots.get(key, 0) > 0, new_slots.get(key, 0) > 0
        if had == has:
            continue
        if result is None:
            result = dict(holders)
        names = list(result.get(key, ()))
        position = bisect.bisect_left(names, cluster)
        if has:
            names.insert(position, cluster)
        elif position < len(names) and names[position] == cluster:
            del names[position]
        result[key] = names
    return holders if result is None else result


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


def _add_slots(slots: dict[SlotKey, int], node: NodeFree, sign: int) -> None:
    if node.gpu_product is None or node.gpus <= 0:
        return
    kind = (node.gpu_product, node.gpu_memory_bytes)
    free = node.gpus
    for k in range(1, free + 1):
        key = (k, kind)
        slots[key] = slots.get(key, 0) + sign * (free // k)


def _move_slots(slots: dict[SlotKey, int], before: NodeFree, after: NodeFree) -> None:
    """Record in `slots` how one node's blocks changed when its free GPUs went from `before` to `after`."""
    if before.gpu_product is None:
        return
    kind = (before.gpu_product, before.gpu_memory_bytes)
    was, now = max(before.gpus, 0), max(after.gpus, 0)
    for k in range(1, max(was, now) + 1):
        change = now // k - was // k
        if change:
            key = (k, kind)
            slots[key] = slots.get(key, 0) + change


def _count_slots(nodes: Iterable[NodeFree]) -> dict[SlotKey, int]:
    # Nodes of one kind with the same free count contribute alike: count them first, then divide once per count.
    free_counts: dict[tuple[GpuKind, int], int] = {}
    for node in nodes:
        if node.gpu_product is not None and node.gpus > 0:
            key = ((node.gpu_product, node.gpu_memory_bytes), node.gpus)
            free_counts[key] = free_counts.get(key, 0) + 1
    slots: dict[SlotKey, int] = {}
    for (kind, free), count in free_counts.items():
        for k in range(1, free + 1):
            slot = (k, kind)
            slots[slot] = slots.get(slot, 0) + count * (free // k)
    return slots


def _plus(slots: dict[SlotKey, int], delta: dict[SlotKey, int]) -> dict[SlotKey, int]:
    result = dict(slots)
    for key, change in delta.items():
        if change:
            result[key] = result.get(key, 0) + change
    return result
