"""`place(demand, capacity, policy, ...)`: where a deployment's replicas go. A pure, deterministic function.

Rules (each has named table tests in tests/unit/test_placement.py):
- Node-level bin packing: a replica needing k GPUs goes on one node with k free GPUs of an acceptable product
  and enough GPU memory, CPU and memory; a node is never overcommitted. Best fit: the node left with the fewest
  free GPUs (then the least CPU, then by name), so large blocks stay whole for large replicas. CPU-only replicas go
  to nodes without GPUs. GPU nodes without a product label are not used (their pods could not be pinned).
- One GPU product per cluster share: the applier pins a share's pods to `Share.gpu_type` (node affinity on the
  product label), so all of a deployment's replicas in one cluster run on one product. A share that exists grows
  only on its product; a new share takes the acceptable product that holds the most of the replicas asked of
  that cluster (ties: the product whose best-fit node comes first).
- GPU types are tried in the user's order; the next type is used only for what the previous could not hold.
  Type preference comes before cluster preference: the model owner's list is about what the model needs.
- Clusters must be healthy and match the cluster selector. Among them the order is: the explicit cluster
  preference list, then the origin cluster (when preferOrigin), then the others by name.
- Pack (allowSplit): grow the clusters that already run replicas, then put what is left in the first cluster that
  holds it all, else fill clusters in order. Spread (allowSplit): each new replica goes to the eligible cluster with
  the fewest, in order. maxClusters caps the number of clusters used.
- allowSplit false: the deployment lives in one cluster, whatever the strategy. Its first placement goes to the
  first cluster that holds every replica (types in order, then clusters in order); if none does, to the cluster
  (and type) that holds the most, ties in the same order. Later growth stays in that cluster.
- Stability: replicas already placed on healthy eligible clusters stay where they are; a change elsewhere never
  moves a placed replica. Scaling up places only the new replicas (Pack grows existing clusters first; Spread
  gives them to the smallest shares); scaling down takes replicas from the least-preferred cluster (Pack) or the
  largest share (Spread), nodes in reverse name order. Capacity a scale-down frees is not handed out in the same
  decision: the pods still run until the applier removes them.
- When not everything fits, what fits is placed and the message says how many replicas are missing, what one
  replica needs, and the best that is left (the largest free block of an acceptable type, and of any type), so a
  user can act.
No I/O, no clock, no randomness: the same input gives the same decision. How many replicas of a shape fit in a
cluster is memoised on the FleetCapacity (see `FleetCapacity.memo`), so a decision reads the nodes only of
clusters that changed since the fit was last counted.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from planner.capacity import FleetCapacity, GpuKind, NodeFree, describe_largest_free
from store.quantity import format_bytes, format_millicores

Outcome = Literal["Placed", "PartiallyPlaced", "InsufficientGPU", "NoEligibleCluster"]


@dataclass(frozen=True)
class Demand:
    """What one deployment needs: replicas, and the resources of one replica."""

    deployment_key: str
    origin: str
    replicas: int
    gpus: int = 0
    gpu_types: tuple[str, ...] = ()
    gpu_min_memory_bytes: int = 0
    cpu_m: int = 0
    memory_bytes: int = 0

    def describe(self) -> str:
        return f"{self.replicas} replica(s) of [{self.describe_one()}] per replica"

    def describe_one(self) -> str:
        """What one replica needs, e.g. '4 × NVIDIA-H100* with ≥80Gi each, 8 CPU, 64Gi memory'."""
        parts = []
        if self.gpus:
            kinds = " or ".join(self.gpu_types) if self.gpu_types else "any GPU"
            memory = f" with ≥{format_bytes(self.gpu_min_memory_bytes)} each" if self.gpu_min_memory_bytes else ""
            parts.append(f"{self.gpus} × {kinds}{memory}")
        if self.cpu_m:
            parts.append(f"{format_millicores(self.cpu_m)} CPU")
        if self.memory_bytes:
            parts.append(f"{format_bytes(self.memory_bytes)} memory")
        return ", ".join(parts) or "no resources"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()
    preferred_clusters: tuple[str, ...] = ()
    prefer_origin: bool = True
    strategy: Literal["Pack", "Spread"] = "Pack"
    allow_split: bool = True
    max_clusters: int | None = None

    def selects(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            match req.operator:
                case "In" if not present or labels[req.key] not in req.values:
                    return False
                case "NotIn" if present and labels[req.key] in req.values:
                    return False
                case "Exists" if not present:
                    return False
                case "DoesNotExist" if present:
                    return False
        return True


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    healthy: bool = True


@dataclass(frozen=True)
class Share:
    """Replicas in one cluster, their GPU product, and the nodes they are expected on."""

    cluster: str
    replicas: int
    gpu_type: str | None = None
    nodes: tuple[tuple[str, int], ...] = ()

    def node_map(self) -> dict[str, int]:
        return dict(self.nodes)


@dataclass(frozen=True)
class Decision:
    shares: tuple[Share, ...]
    """Final shares on healthy eligible clusters (replicas > 0), in cluster rank order."""
    placed: int
    outcome: Outcome
    reasons: tuple[str, ...]
    message: str
    capacity: FleetCapacity
    """Capacity left after this decision: pass it to the next deployment's decision."""


def gpu_type_matches(pattern: str, product: str | None) -> bool:
    if product is None:
        return False
    if pattern.endswith("*"):
        return product.startswith(pattern[:-1])
    return product == pattern


def rank_clusters(clusters: Sequence[ClusterInfo], policy: Policy, origin: str) -> tuple[list[str], list[str]]:
    """(eligible cluster names in preference order, reasons for each excluded cluster)."""
    excluded: list[str] = []
    eligible: list[str] = []
    selective = bool(policy.match_labels or policy.match_expressions)
    for cluster in sorted(clusters, key=_name):
        if not cluster.healthy:
            excluded.append(f"cluster {cluster.name} is unhealthy")
        elif selective and not policy.selects(cluster.labels):
            excluded.append(f"cluster {cluster.name} does not match the clusterSelector")
        else:
            eligible.append(cluster.name)
    # Preferred clusters first (in the listed order), then the origin, then the rest by name. Built by moving names
    # to the front rather than by sorting: this runs once per decision over the whole fleet.
    front = [name for name in dict.fromkeys(policy.preferred_clusters) if name in eligible]
    if policy.prefer_origin and origin in eligible and origin not in front:
        front.append(origin)
    if not front:
        return eligible, excluded
    chosen = set(front)
    return front + [name for name in eligible if name not in chosen], excluded


def _name(cluster: ClusterInfo) -> str:
    return cluster.name


# --- Fitting replicas onto nodes -------------------------------------------------------------------------------

_UNBOUNDED = 1 << 40
"""Replicas a node holds of a shape that requests nothing the node counts (no GPUs, CPU or memory)."""


def _node_fits(node: NodeFree, demand: Demand, gpu_type: str | None) -> bool:
    return _replicas_on(node, demand, gpu_type) > 0


def _replicas_on(node: NodeFree, demand: Demand, gpu_type: str | None) -> int:
    """How many replicas of `demand` fit on `node` (0 when its product, GPU memory or kind do not suit)."""
    if demand.gpus:
        if node.gpu_product is None or (gpu_type is not None and not gpu_type_matches(gpu_type, node.gpu_product)):
            return 0
        if node.gpu_memory_bytes < demand.gpu_min_memory_bytes:
            return 0
        fit = node.gpus // demand.gpus
    elif node.gpu_allocatable > 0:
        return 0  # keep GPU nodes for GPU work; CPU-only pods do not tolerate the GPU taint either
    else:
        fit = _UNBOUNDED
    if demand.cpu_m:
        fit = min(fit, node.cpu_m // demand.cpu_m)
    if demand.memory_bytes:
        fit = min(fit, node.memory_bytes // demand.memory_bytes)
    return max(fit, 0)


@dataclass(frozen=True)
class _ProductFit:
    """Where replicas of one shape fit in a cluster on the nodes of one GPU product (None: CPU-only)."""

    product: str | None
    replicas: int
    first: tuple[int, int, str]
    """Best-fit key of the node the first replica would take."""
    nodes: tuple[tuple[int, int], ...]
    """(index in the cluster's nodes, replicas it holds), best fit first."""


_ClusterFit = tuple[_ProductFit, ...]
"""Per product with room, by product name."""


def _count_fit(nodes: tuple[NodeFree, ...], demand: Demand, gpu_type: str | None) -> _ClusterFit:
    # Best fit: least GPUs left afterwards, then least CPU left, then name (determinism).
    by_product: dict[str | None, list[tuple[tuple[int, int, str], int, int]]] = {}
    for i, node in enumerate(nodes):
        fit = _replicas_on(node, demand, gpu_type)
        if fit > 0:
            key = (node.gpus - demand.gpus, node.cpu_m - demand.cpu_m, node.name)
            by_product.setdefault(node.gpu_product if demand.gpus else None, []).append((key, i, fit))
    out = []
    for product in sorted(by_product, key=lambda p: p or ""):
        entries = sorted(by_product[product])
        out.append(
            _ProductFit(product, sum(f for _, _, f in entries), entries[0][0], tuple((i, f) for _, i, f in entries))
        )
    return tuple(out)


def _fit(capacity: FleetCapacity, cluster: str, demand: Demand, gpu_type: str | None) -> _ClusterFit:
    key = ("fit", demand.gpus, demand.cpu_m, demand.memory_bytes, demand.gpu_min_memory_bytes, gpu_type)
    return capacity.memo(cluster, key, lambda nodes: _count_fit(nodes, demand, gpu_type))


def _on(fit: _ClusterFit, product: str | None) -> _ProductFit | None:
    return next((p for p in fit if p.product == product), None)


def _fill_cluster(
    capacity: FleetCapacity,
    cluster: str,
    demand: Demand,
    gpu_type: str | None,
    count: int,
    product: str | None = None,
) -> tuple[int, dict[str, int], FleetCapacity, str | None]:
    """Place up to `count` replicas in one cluster on one GPU product (`product`, or the one that holds the most,
    ties to the better first fit) by best fit; returns (placed, per node, capacity, product)."""
    fit = _fit(capacity, cluster, demand, gpu_type)
    if not demand.gpus:
        chosen = _on(fit, None)
    elif product is None:
        chosen = min(fit, key=lambda p: (-min(p.replicas, count), p.first), default=None)
    else:
        chosen = _on(fit, product)
    if chosen is None:
        return 0, {}, capacity, product
    # Filling the best-fit node until it is full, then the next, is the same as choosing the best fit replica by
    # replica: taking a replica only makes a node a tighter fit.
    nodes = capacity.nodes(cluster)
    updated = list(nodes)
    per_node: dict[str, int] = {}
    placed = 0
    for i, holds in chosen.nodes:
        if placed == count:
            break
        node = nodes[i]
        take = min(count - placed, holds)
        updated[i] = node.take(gpus=demand.gpus, cpu_m=demand.cpu_m, memory_bytes=demand.memory_bytes, count=take)
        per_node[node.name] = take
        placed += take
    return placed, per_node, capacity.with_cluster(cluster, tuple(updated)), chosen.product


def _merge(share: Share | None, cluster: str, count: int, per_node: dict[str, int], product: str | None) -> Share:
    if share is None:
        return Share(cluster, count, product, tuple(sorted(per_node.items())))
    nodes = share.node_map()
    for name, n in per_node.items():
        nodes[name] = nodes.get(name, 0) + n
    return Share(cluster, share.replicas + count, share.gpu_type or product, tuple(sorted(nodes.items())))


def _shrink(shares: dict[str, Share], order: list[str], surplus: int, strategy: str) -> None:
    while surplus > 0:
        live = [c for c in order if c in shares and shares[c].replicas > 0]
        victim = max(reversed(live), key=lambda c: shares[c].replicas) if strategy == "Spread" else live[-1]
        share = shares[victim]
        take = 1 if strategy == "Spread" else min(surplus, share.replicas)
        nodes = share.node_map()
        remaining = take
        for name in sorted(nodes, reverse=True):
            cut = min(remaining, nodes[name])
            nodes[name] -= cut
            remaining -= cut
            if remaining == 0:
                break
        new_nodes = tuple(sorted((k, v) for k, v in nodes.items() if v > 0))
        shares[victim] = replace(share, replicas=share.replicas - take, nodes=new_nodes)
        surplus -= take


# --- The decision ----------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The working state of one decision (private, mutable, never escapes `place`)."""

    demand: Demand
    policy: Policy
    order: list[str]
    shares: dict[str, Share]
    capacity: FleetCapacity
    reasons: list[str]
    _kinds: dict[str | None, list[GpuKind]] = field(default_factory=dict)

    def allowed(self, cluster: str) -> bool:
        """May this decision put replicas in `cluster` (maxClusters)?"""
        if cluster in self.shares:
            return True
        limit = self.policy.max_clusters
        return limit is None or sum(1 for s in self.shares.values() if s.replicas > 0) < limit

    def pinned(self, cluster: str) -> str | None:
        """The GPU product the share in `cluster` is pinned to, if there is one."""
        share = self.shares.get(cluster)
        return share.gpu_type if share is not None and self.demand.gpus else None

    def kinds(self, gpu_type: str | None) -> list[GpuKind]:
        """The fleet's GPU kinds that `gpu_type` (None: any) and the minimum GPU memory accept."""
        if gpu_type not in self._kinds:
            self._kinds[gpu_type] = [
                kind
                for kind in self.capacity.gpu_kinds()
                if (gpu_type is None or gpu_type_matches(gpu_type, kind[0]))
                and kind[1] >= self.demand.gpu_min_memory_bytes
            ]
        return self._kinds[gpu_type]

    def gpu_bound(self, cluster: str | None, gpu_type: str | None) -> int:
        """Replicas the GPUs alone would allow (in one cluster's share, or fleet-wide): an upper bound on room."""
        if not self.demand.gpus:
            return _UNBOUNDED
        product = self.pinned(cluster) if cluster is not None else None
        return sum(
            self.capacity.gpu_slots(kind, self.demand.gpus, cluster)
            for kind in self.kinds(gpu_type)
            if product is None or kind[0] == product
        )

    def room(self, cluster: str, gpu_type: str | None, at_least: int = 1) -> int:
        """Replicas one share in `cluster` can still get on `gpu_type` (exact when ≥ `at_least`)."""
        product = self.pinned(cluster)
        if product is not None and gpu_type is not None and not gpu_type_matches(gpu_type, product):
            return 0
        bound = self.gpu_bound(cluster, gpu_type)
        if bound < at_least:
            return bound  # the exact count is no larger; not worth reading the nodes
        fit = _fit(self.capacity, cluster, self.demand, gpu_type)
        if product is None:
            return max((p.replicas for p in fit), default=0)
        on = _on(fit, product)
        return on.replicas if on is not None else 0

    def fill(self, cluster: str, gpu_type: str | None, count: int) -> int:
        product = self.pinned(cluster)
        if product is not None and gpu_type is not None and not gpu_type_matches(gpu_type, product):
            return 0
        placed, per_node, self.capacity, product = _fill_cluster(
            self.capacity, cluster, self.demand, gpu_type, count, product
        )
        if placed:
            self.shares[cluster] = _merge(self.shares.get(cluster), cluster, placed, per_node, product)
        return placed


def place(
    demand: Demand,
    *,
    clusters: Sequence[ClusterInfo],
    capacity: FleetCapacity,
    policy: Policy,
    current: Sequence[Share] = (),
) -> Decision:
    order, excluded = rank_clusters(clusters, policy, demand.origin)
    reasons = list(excluded)
    # Stability: keep what is placed on healthy eligible clusters; shares elsewhere are the caller's business
    # (failover keeps them until replacements are available).
    eligible = set(order)
    shares: dict[str, Share] = {s.cluster: s for s in current if s.cluster in eligible and s.replicas > 0}
    if policy.max_clusters is not None and len(shares) > policy.max_clusters:
        for cluster in [c for c in order if c in shares][policy.max_clusters :]:
            reasons.append(f"cluster {cluster} released: maxClusters is {policy.max_clusters}")
            del shares[cluster]
    plan = _Plan(demand, policy, order, shares, capacity, reasons)
    kept = sum(s.replicas for s in shares.values())
    if kept > demand.replicas:
        _shrink(shares, order, kept - demand.replicas, policy.strategy)
        reasons.append(f"scaled down by {kept - demand.replicas} replica(s), keeping the most preferred clusters")
    elif kept < demand.replicas:
        if not order:
            message = "no healthy cluster matches the placement policy"
            if excluded:
                message += f": {'; '.join(excluded)}"
            return _decision(plan, "NoEligibleCluster", message)
        _grow(plan, demand.replicas - kept)
    else:
        reasons.append("replicas unchanged; existing placement kept")
    placed = sum(s.replicas for s in shares.values())
    if placed >= demand.replicas:
        return _decision(plan, "Placed", _summary(shares, order))
    missing = demand.replicas - placed
    message = (
        f"{missing} of {demand.replicas} replica(s) could not be placed: each needs {demand.describe_one()}; "
        f"best available: {_best_available(demand, plan.capacity, order)}"
    )
    if placed:
        message += f"; {_summary(shares, order)}"
    if excluded:
        message += f"; {'; '.join(excluded)}"
    outcome: Outcome = "PartiallyPlaced" if placed else "InsufficientGPU"
    return _decision(plan, outcome, message)


def _grow(plan: _Plan, need: int) -> None:
    demand = plan.demand
    types: tuple[str | None, ...] = demand.gpu_types if demand.gpus and demand.gpu_types else (None,)
    if not plan.policy.allow_split and not plan.shares:
        _place_whole(plan, need, types)
        return
    for type_index, gpu_type in enumerate(types):
        if need == 0:
            break
        before = need
        if plan.gpu_bound(None, gpu_type) == 0:
            pass  # no node in the fleet has room for one replica of this type: nothing to look at
        elif plan.policy.strategy == "Spread" and plan.policy.allow_split:
            need = _spread(plan, need, gpu_type)
        else:
            need = _pack(plan, need, gpu_type)
        if gpu_type is not None:
            plan.reasons.append(_type_note(gpu_type, type_index, before - need))


def _type_note(gpu_type: str, type_index: int, placed: int) -> str:
    if not placed:
        return f"no room on {gpu_type}"
    note = "preferred type" if type_index == 0 else f"fallback type #{type_index + 1}"
    return f"{placed} replica(s) on {gpu_type} ({note})"


def _pack(plan: _Plan, need: int, gpu_type: str | None) -> int:
    # 1. Grow clusters that already run replicas (no new cluster while an existing one has room).
    for cluster in [c for c in plan.order if c in plan.shares]:
        if need == 0:
            break
        if plan.room(cluster, gpu_type) > 0:
            need -= plan.fill(cluster, gpu_type, need)
    if need == 0 or not plan.policy.allow_split:
        return need
    # 2. The first cluster, in preference order, that holds everything that is left.
    if plan.gpu_bound(None, gpu_type) >= need:
        for cluster in plan.order:
            if cluster not in plan.shares and plan.allowed(cluster) and plan.room(cluster, gpu_type, need) >= need:
                return need - plan.fill(cluster, gpu_type, need)
    # 3. Split: fill clusters in preference order.
    for cluster in plan.order:
        if need == 0:
            break
        if cluster not in plan.shares and plan.allowed(cluster) and plan.room(cluster, gpu_type) > 0:
            need -= plan.fill(cluster, gpu_type, need)
    return need


def _spread(plan: _Plan, need: int, gpu_type: str | None) -> int:
    # Clusters by (replicas they run, rank); a cluster's room is looked at only when it comes up.
    queue = [(plan.shares[c].replicas if c in plan.shares else 0, rank, c) for rank, c in enumerate(plan.order)]
    heapq.heapify(queue)
    while need > 0 and queue:
        replicas, rank, cluster = heapq.heappop(queue)
        if not plan.allowed(cluster) or plan.room(cluster, gpu_type) == 0:
            continue  # maxClusters reached, or full for this type: it only gets fuller during this decision
        need -= plan.fill(cluster, gpu_type, 1)
        heapq.heappush(queue, (replicas + 1, rank, cluster))
    return need


def _place_whole(plan: _Plan, need: int, types: tuple[str | None, ...]) -> None:
    """allowSplit false, first placement: one cluster, the first that holds everything, else the one holding most."""
    best: tuple[int, int, str] | None = None  # (replicas, type index, cluster)
    for type_index, gpu_type in enumerate(types):
        if plan.gpu_bound(None, gpu_type) == 0:
            continue
        for cluster in plan.order:
            if not plan.allowed(cluster):
                continue
            room = min(need, plan.room(cluster, gpu_type))
            if room == need:
                placed = plan.fill(cluster, gpu_type, need)
                if gpu_type is not None:
                    plan.reasons.append(_type_note(gpu_type, type_index, placed))
                return
            if room > 0 and (best is None or room > best[0]):
                best = (room, type_index, cluster)
    if best is None:
        plan.reasons.append("allowSplit is false and no eligible cluster has room for a replica")
        return
    room, type_index, cluster = best
    gpu_type = types[type_index]
    placed = plan.fill(cluster, gpu_type, room)
    if gpu_type is not None:
        plan.reasons.append(_type_note(gpu_type, type_index, placed))
    plan.reasons.append(f"allowSplit is false and no cluster holds all {need}: {placed} in {cluster}, the roomiest")


def _best_available(demand: Demand, capacity: FleetCapacity, order: list[str]) -> str:
    """The largest free block left among the eligible clusters: of an acceptable type, and of any type."""
    if not demand.gpus:
        best: NodeFree | None = None
        for cluster in order:
            for node in capacity.nodes(cluster):
                if node.gpu_allocatable == 0 and (
                    best is None or (node.cpu_m, node.memory_bytes) > (best.cpu_m, best.memory_bytes)
                ):
                    best = node
        if best is None:
            return "no node without GPUs"
        free = f"{format_millicores(best.cpu_m)} CPU, {format_bytes(best.memory_bytes)} memory"
        return f"{free} on {best.cluster}/{best.name}"

    def acceptable(node: NodeFree) -> bool:
        if demand.gpu_types and not any(gpu_type_matches(t, node.gpu_product) for t in demand.gpu_types):
            return False
        return node.gpu_memory_bytes >= demand.gpu_min_memory_bytes

    of_type = describe_largest_free(capacity, order, acceptable)
    any_type = describe_largest_free(capacity, order)
    if of_type == any_type:
        return of_type
    return f"{of_type} of an acceptable type ({any_type} of any type)"


def _summary(shares: dict[str, Share], order: list[str]) -> str:
    parts = [
        f"{c}={shares[c].replicas}" + (f" ({shares[c].gpu_type})" if shares[c].gpu_type else "")
        for c in order
        if c in shares and shares[c].replicas > 0
    ]
    return "placed " + (", ".join(parts) if parts else "nothing (0 replicas requested)")


def _decision(plan: _Plan, outcome: Outcome, message: str) -> Decision:
    final = tuple(plan.shares[c] for c in plan.order if c in plan.shares and plan.shares[c].replicas > 0)
    return Decision(
        shares=final,
        placed=sum(s.replicas for s in final),
        outcome=outcome,
        reasons=tuple(plan.reasons),
        message=message,
        capacity=plan.capacity,
    )
