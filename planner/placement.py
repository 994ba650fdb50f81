"""`place(demand, capacity, policy, ...)`: where a deployment's replicas go. A pure, deterministic function.

Rules (each has named table tests in tests/unit/test_placement.py; the invariants are also properties in
tests/unit/test_placement_properties.py):
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
  One exception, so that one-product-per-share never costs replicas: if replicas are still missing after every
  type was tried, a share made in this decision moves, whole, to another acceptable product of its cluster when
  that product holds more of them there (least preferred clusters first).
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
- What fits is placed: with splitting allowed, no running replicas and no maxClusters, a decision places
  min(replicas, Σ over eligible clusters of what their roomiest acceptable product holds). When replicas are
  missing the message says how many, what one replica needs, and the best that is left (the largest free block
  of an acceptable type, and of any type), so a user can act.
- Verdicts: a decision says, for every cluster of the fleet, whether the policy admits it, what it holds, and
  when it holds nothing, why, as a typed reason code with a detail (`Decision.verdicts`, `PassOverReason` in
  api/events.py: unhealthy, selector mismatch, no acceptable GPU type, GPU memory below the minMemory floor, no
  node with room, maxClusters, allowSplit, not needed); the shares it let go of because of the policy are data
  too (`Decision.released`), never prose to parse back.
No I/O, no clock, no randomness: the same input gives the same decision, whatever the order of `clusters`. Speed:
which clusters have room for a block of k GPUs, and where a shape fits in a cluster, are remembered by the
FleetCapacity (see planner/capacity.py) and kept up to date as decisions take capacity, so a decision reads the
nodes only of the clusters it may place on, not the whole fleet.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Literal, NamedTuple

from api.events import ClusterVerdict, PassOverReason, ReleasedShare
from api.quantity import format_bytes, format_millicores
from planner.fleet import FleetCapacity, GpuKind, NodeFree

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
        if self.match_labels and any(labels.get(k) != v for k, v in self.match_labels):
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
    released: tuple[ReleasedShare, ...] = ()
    """Shares of `current` the decision let go of because of the policy: those on clusters no longer eligible (in
    the order of `current`), then those maxClusters released (least preferred last). A scale-down releases none."""
    _seen: _Seen | None = field(default=None, repr=False, compare=False)

    def verdicts(self) -> tuple[ClusterVerdict, ...]:
        """What the decision made of every cluster of the fleet, in name order: eligible or not, the replicas it
        holds, and for each cluster given none, why (see `PassOverReason`), judged against the capacity the
        decision started from. Worked out when asked, not by `place`: reading every cluster's nodes would cost
        each decision O(fleet), and only recorded decisions need it."""
        return () if self._seen is None else _verdicts(self, self._seen)


def gpu_type_matches(pattern: str, product: str | None) -> bool:
    if product is None:
        return False
    if pattern.endswith("*"):
        return product.startswith(pattern[:-1])
    return product == pattern


_Exclusion = tuple[str, Literal["unhealthy", "selector_mismatch"]]
_name = attrgetter("name")


class _Admission(NamedTuple):
    eligible: tuple[str, ...]
    """Healthy clusters the selector admits, in name order."""
    eligible_set: frozenset[str]
    excluded: tuple[_Exclusion, ...]
    """The others with why, in name order."""
    reasons: tuple[str, ...]
    """`excluded` in words, for a decision's reasons."""


class Clusters:
    """The fleet's clusters as placement sees them, in name order, with what each clusterSelector admits worked out
    once and remembered: build one per planner step and pass it to every decision of the step (a decision would
    otherwise test every cluster of the fleet against its selector). Treat it as immutable."""

    __slots__ = ("_admitted", "_ranked", "infos")

    def __init__(self, infos: Iterable[ClusterInfo]) -> None:
        self.infos: tuple[ClusterInfo, ...] = tuple(sorted(infos, key=_name))
        self._admitted: dict[Hashable, _Admission] = {}
        self._ranked: dict[Hashable, tuple[tuple[str, ...], int, tuple[_Exclusion, ...]]] = {}

    def __len__(self) -> int:
        return len(self.infos)

    def __iter__(self) -> Iterator[ClusterInfo]:
        return iter(self.infos)

    def admitted(self, policy: Policy) -> _Admission:
        key = (policy.match_labels, policy.match_expressions)
        known = self._admitted.get(key)
        if known is None:
            eligible: list[str] = []
            excluded: list[_Exclusion] = []
            for cluster in self.infos:
                if not cluster.healthy:
                    excluded.append((cluster.name, "unhealthy"))
                elif not policy.selects(cluster.labels):
                    excluded.append((cluster.name, "selector_mismatch"))
                else:
                    eligible.append(cluster.name)
            known = _Admission(
                tuple(eligible), frozenset(eligible), tuple(excluded), tuple(_exclusion_reasons(excluded))
            )
            self._admitted[key] = known
        return known

    def info(self, name: str) -> ClusterInfo | None:
        position = bisect.bisect_left(self.infos, name, key=_name)
        return self.infos[position] if position < len(self.infos) and self.infos[position].name == name else None

    def ranked(self, policy: Policy, origin: str) -> tuple[tuple[str, ...], int, tuple[_Exclusion, ...]]:
        """(eligible clusters in preference order, how many lead it by preference, exclusions in name order)."""
        key = (
            policy.match_labels,
            policy.match_expressions,
            policy.preferred_clusters,
            origin if policy.prefer_origin else None,
        )
        known = self._ranked.get(key)
        if known is None:
            known = self._ranked[key] = self._rank(policy, origin)
        return known

    def _rank(self, policy: Policy, origin: str) -> tuple[tuple[str, ...], int, tuple[_Exclusion, ...]]:
        admitted, names, excluded, _ = self.admitted(policy)
        # Preferred clusters first (in the listed order), then the origin, then the rest by name.
        front = [name for name in dict.fromkeys(policy.preferred_clusters) if name in names]
        if policy.prefer_origin and origin not in front and origin in names:
            front.append(origin)
        chosen = set(front)
        return tuple(front) + tuple(name for name in admitted if name not in chosen), len(front), excluded


def _clusters(clusters: Clusters | Sequence[ClusterInfo]) -> Clusters:
    return clusters if isinstance(clusters, Clusters) else Clusters(clusters)


def rank_clusters(
    clusters: Clusters | Sequence[ClusterInfo], policy: Policy, origin: str
) -> tuple[list[str], list[str]]:
    """(eligible cluster names in preference order, reasons for each excluded cluster)."""
    fleet = _clusters(clusters)
    order, _, _ = fleet.ranked(policy, origin)
    return list(order), list(fleet.admitted(policy).reasons)


def _exclusion_reasons(excluded: Sequence[_Exclusion]) -> list[str]:
    return [
        f"cluster {name} is unhealthy" if why == "unhealthy" else f"cluster {name} does not match the clusterSelector"
        for name, why in excluded
    ]


# --- Fitting replicas onto nodes -------------------------------------------------------------------------------

_UNBOUNDED = 1 << 40
"""Replicas a node holds of a shape that requests nothing the node counts (no GPUs, CPU or memory)."""


class _ProductFit(NamedTuple):
    """Where replicas of one shape fit in a cluster on the nodes of one GPU product (None: CPU-only)."""

    product: str | None
    replicas: int
    first: tuple[int, int, str]
    """Best-fit key (free GPUs, free CPU, name) of the node the first replica would take."""
    nodes: tuple[tuple[int, int], ...]
    """(index in the cluster's nodes, replicas it holds), best fit first."""


_ClusterFit = tuple[_ProductFit, ...]
"""Per product with room, by product name."""


def _count_fit(nodes: tuple[NodeFree, ...], positions: Sequence[int], demand: Demand) -> _ClusterFit:
    """Per product: where replicas of `demand` fit among the nodes at `positions` (nodes of acceptable GPU kinds,
    or without GPUs for CPU-only replicas), best fit first: least GPUs left, then least CPU, then name."""
    gpus, cpu_m, memory = demand.gpus, demand.cpu_m, demand.memory_bytes
    # (free GPUs, free CPU, name, position, replicas it holds): sorting these is best fit, as the demand takes the
    # same from every node. Flat tuples and one unpacking per node: this loop is the heart of every decision.
    by_product: dict[str | None, list[tuple[int, int, str, int, int]]] = {}
    for i in positions:
        _, name, product, _, free, cpu, mem, _ = nodes[i]
        if gpus:
            if free < gpus:
                continue
            fit = free // gpus
        else:
            fit, product = _UNBOUNDED, None
        if cpu_m and cpu // cpu_m < fit:
            fit = cpu // cpu_m
        if memory and mem // memory < fit:
            fit = mem // memory
        if fit > 0:
            group = by_product.get(product)
            if group is None:
                by_product[product] = [(free, cpu, name, i, fit)]
            else:
                group.append((free, cpu, name, i, fit))
    out = []
    for product in sorted(by_product, key=lambda p: p or "") if len(by_product) > 1 else by_product:
        entries = by_product[product]
        entries.sort()
        first = entries[0]
        out.append(
            _ProductFit(
                product,
                sum(e[4] for e in entries),
                (first[0], first[1], first[2]),
                tuple((e[3], e[4]) for e in entries),
            )
        )
    return tuple(out)


def _acceptable_kinds(capacity: FleetCapacity, demand: Demand, gpu_type: str | None) -> tuple[GpuKind, ...]:
    """The fleet's GPU kinds that `gpu_type` (None: any) and the demand's minimum GPU memory accept."""
    min_memory = demand.gpu_min_memory_bytes

    def accept(kind: GpuKind) -> bool:
        return (gpu_type is None or gpu_type_matches(gpu_type, kind[0])) and kind[1] >= min_memory

    return capacity.gpu_kinds_where(("acceptable", gpu_type, min_memory), accept)


def _fit(
    capacity: FleetCapacity, cluster: str, demand: Demand, gpu_type: str | None, kinds: tuple[GpuKind, ...]
) -> _ClusterFit:
    """Where replicas of `demand` fit in `cluster` on `gpu_type`, whose acceptable GPU kinds are `kinds`."""

    def count(nodes: tuple[NodeFree, ...]) -> _ClusterFit:
        # Positions are derived from the same nodes.
        if not demand.gpus:
            return _count_fit(nodes, capacity.node_positions(cluster).get(None, ()), demand)
        return _count_fit(nodes, capacity.positions_of(cluster, kinds), demand)

    key = ("fit", demand.gpus, demand.cpu_m, demand.memory_bytes, demand.gpu_min_memory_bytes, gpu_type)
    return capacity.memo(cluster, key, count)


def _on(fit: _ClusterFit, product: str | None) -> _ProductFit | None:
    return next((p for p in fit if p.product == product), None)


def _fill_cluster(
    capacity: FleetCapacity,
    cluster: str,
    demand: Demand,
    gpu_type: str | None,
    kinds: tuple[GpuKind, ...],
    count: int,
    product: str | None = None,
) -> tuple[int, dict[str, int], FleetCapacity, str | None]:
    """Place up to `count` replicas in one cluster on one GPU product (`product`, or the one that holds the most,
    ties to the better first fit) by best fit; returns (placed, per node, capacity, product)."""
    fit = _fit(capacity, cluster, demand, gpu_type, kinds)
    if not demand.gpus:
        chosen = _on(fit, None)
    elif product is None:
        chosen = fit[0] if len(fit) == 1 else min(fit, key=lambda p: (-min(p.replicas, count), p.first), default=None)
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
    changed = [i for i, _ in chosen.nodes[: len(per_node)]]
    return placed, per_node, capacity.with_cluster(cluster, tuple(updated), changed), chosen.product


def _merge(share: Share | None, cluster: str, count: int, per_node: dict[str, int], product: str | None) -> Share:
    if share is None:
        return Share(cluster, count, product, tuple(sorted(per_node.items())))
    nodes = share.node_map()
    for name, n in per_node.items():
        nodes[name] = nodes.get(name, 0) + n
    return Share(cluster, share.replicas + count, share.gpu_type or product, tuple(sorted(nodes.items())))


def _shrink(shares: dict[str, Share], order: Sequence[str], surplus: int, strategy: str) -> None:
    while surplus > 0:
        live = [c for c in _ranked(shares, order) if shares[c].replicas > 0]
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
    order: tuple[str, ...]
    shares: dict[str, Share]
    capacity: FleetCapacity
    reasons: list[str]
    front: int
    """How many clusters at the head of `order` are there by preference (the rest are in name order)."""
    eligible: frozenset[str]
    """The names in `order`."""
    _kinds: dict[str | None, tuple[GpuKind, ...]] = field(default_factory=dict)
    released: tuple[ReleasedShare, ...] = ()
    seen: _Seen | None = None

    def allowed(self, cluster: str) -> bool:
        """May this decision put replicas in `cluster` (maxClusters)?"""
        return cluster in self.shares or self.may_add_cluster()

    def may_add_cluster(self) -> bool:
        limit = self.policy.max_clusters
        return limit is None or sum(1 for s in self.shares.values() if s.replicas > 0) < limit

    def pinned(self, cluster: str) -> str | None:
        """The GPU product the share in `cluster` is pinned to, if there is one."""
        share = self.shares.get(cluster)
        return share.gpu_type if share is not None and self.demand.gpus else None

    def kinds(self, gpu_type: str | None) -> tuple[GpuKind, ...]:
        """The fleet's GPU kinds that `gpu_type` (None: any) and the minimum GPU memory accept."""
        if gpu_type not in self._kinds:
            self._kinds[gpu_type] = _acceptable_kinds(self.capacity, self.demand, gpu_type)
        return self._kinds[gpu_type]

    def gpu_bound(self, cluster: str, gpu_type: str | None) -> int:
        """Replicas the GPUs alone would allow one share in `cluster`: an upper bound on its room."""
        if not self.demand.gpus:
            return _UNBOUNDED
        kinds = self.kinds(gpu_type)
        product = self.pinned(cluster)
        if product is not None:
            kinds = tuple(kind for kind in kinds if kind[0] == product)
        return self.capacity.gpu_slots(self.demand.gpus, kinds, cluster)

    def fleet_has_room(self, gpu_type: str | None) -> bool:
        """Could any node in the fleet take a replica on `gpu_type`, counting GPUs only? (False: skip the type.)"""
        return not self.demand.gpus or self.capacity.has_gpu_slots(self.demand.gpus, self.kinds(gpu_type))

    def new_clusters(self, gpu_type: str | None, at_least: int = 1) -> Iterator[str]:
        """Clusters without a share yet, in rank order, whose GPUs alone would allow `at_least` replicas (a cheap
        filter that skips full clusters without looking at them; `room` has the exact answer)."""
        if not self.demand.gpus:
            yield from (c for c in self.order if c not in self.shares)
            return
        kinds = self.kinds(gpu_type)
        gpus = self.demand.gpus
        for cluster in self.order[: self.front]:
            if cluster not in self.shares and self.capacity.gpu_slots(gpus, kinds, cluster) >= at_least:
                yield cluster
        # The rest of the order is by name, which is the order the capacity index keeps clusters with room in.
        eligible, head = self.eligible, self.order[: self.front]
        capacity = self.capacity  # clusters not yet yielded are unchanged by the fills in between
        for cluster in capacity.clusters_with_gpu_slots(gpus, kinds):
            if (
                cluster in eligible
                and cluster not in head
                and cluster not in self.shares
                and (at_least == 1 or capacity.gpu_slots(gpus, kinds, cluster) >= at_least)
            ):
                yield cluster

    def room(self, cluster: str, gpu_type: str | None, at_least: int = 1, *, bounded: bool = False) -> int:
        """Replicas one share in `cluster` can still get on `gpu_type` (exact when ≥ `at_least`). `bounded`: the
        caller knows the GPUs alone allow `at_least` (it came from `new_clusters`)."""
        product = self.pinned(cluster)
        if product is not None and gpu_type is not None and not gpu_type_matches(gpu_type, product):
            return 0
        if not bounded:
            bound = self.gpu_bound(cluster, gpu_type)
            if bound < at_least:
                return bound  # the exact count is no larger; not worth reading the nodes
        fit = _fit(self.capacity, cluster, self.demand, gpu_type, self.kinds(gpu_type))
        if product is None:
            return fit[0].replicas if len(fit) == 1 else max((p.replicas for p in fit), default=0)
        on = _on(fit, product)
        return on.replicas if on is not None else 0

    def fill(self, cluster: str, gpu_type: str | None, count: int) -> int:
        product = self.pinned(cluster)
        if product is not None and gpu_type is not None and not gpu_type_matches(gpu_type, product):
            return 0
        placed, per_node, self.capacity, product = _fill_cluster(
            self.capacity, cluster, self.demand, gpu_type, self.kinds(gpu_type), count, product
        )
        if placed:
            self.shares[cluster] = _merge(self.shares.get(cluster), cluster, placed, per_node, product)
        return placed


def place(
    demand: Demand,
    *,
    clusters: Clusters | Sequence[ClusterInfo],
    capacity: FleetCapacity,
    policy: Policy,
    current: Sequence[Share] = (),
) -> Decision:
    fleet = _clusters(clusters)
    order, front, excluded = fleet.ranked(policy, demand.origin)
    admission = fleet.admitted(policy)
    reasons = list(admission.reasons)
    # Stability: keep what is placed on healthy eligible clusters; shares elsewhere are the caller's business
    # (failover keeps them until replacements are available).
    shares: dict[str, Share] = {}
    released: list[ReleasedShare] = []
    if current:
        eligible = admission.eligible_set
        shares = {s.cluster: s for s in current if s.cluster in eligible and s.replicas > 0}
        if len(shares) < len(current):
            released.extend(_ineligible(fleet, [s for s in current if s.cluster not in eligible]))
    if policy.max_clusters is not None and len(shares) > policy.max_clusters:
        for cluster in _ranked(shares, order)[policy.max_clusters :]:
            detail = f"maxClusters is {policy.max_clusters}"
            reasons.append(f"cluster {cluster} released: {detail}")
            released.append(
                ReleasedShare(
                    cluster=cluster, replicas=shares[cluster].replicas, reason="max_clusters_reached", detail=detail
                )
            )
            del shares[cluster]
    plan = _Plan(demand, policy, order, shares, capacity, reasons, front, admission.eligible_set)
    plan.released = tuple(released)
    plan.seen = _Seen(fleet, demand, policy, capacity, kept=sum(s.replicas for s in shares.values()))
    kept = sum(s.replicas for s in shares.values())
    if kept > demand.replicas:
        _shrink(shares, order, kept - demand.replicas, policy.strategy)
        reasons.append(f"scaled down by {kept - demand.replicas} replica(s), keeping the most preferred clusters")
    elif kept < demand.replicas:
        if not order:
            message = "no healthy cluster matches the placement policy"
            if excluded:
                message += f"; {_excluded_summary(excluded)}"
            return _decision(plan, "NoEligibleCluster", message)
        _grow(plan, demand.replicas - kept)
    else:
        reasons.append("replicas unchanged; existing placement kept")
    placed = sum(s.replicas for s in shares.values())
    if placed >= demand.replicas:
        return _decision(plan, "Placed", None)
    missing = demand.replicas - placed
    message = (
        f"{missing} of {demand.replicas} replica(s) could not be placed: each needs {demand.describe_one()}; "
        f"best available: {_best_available(plan)}"
    )
    if placed:
        message += f"; {_summary(shares, order)}"
    if excluded:
        message += f"; {_excluded_summary(excluded)}"
    outcome: Outcome = "PartiallyPlaced" if placed else "InsufficientGPU"
    return _decision(plan, outcome, message)


def _grow(plan: _Plan, need: int) -> None:
    demand = plan.demand
    types: tuple[str | None, ...] = demand.gpu_types if demand.gpus and demand.gpu_types else (None,)
    if not plan.policy.allow_split and not plan.shares:
        _place_whole(plan, need, types)
        return
    existing = frozenset(plan.shares)  # shares from before this decision: never rehomed
    for type_index, gpu_type in enumerate(types):
        if need == 0:
            break
        before = need
        if not plan.fleet_has_room(gpu_type):
            pass  # no node in the fleet has room for one replica of this type: nothing to look at
        elif plan.policy.strategy == "Spread" and plan.policy.allow_split:
            need = _spread(plan, need, gpu_type)
        else:
            need = _pack(plan, need, gpu_type)
        if gpu_type is not None:
            plan.reasons.append(_type_note(plan, gpu_type, type_index, before - need))
    if need and demand.gpus:
        _rehome(plan, need, types, existing)


def _rehome(plan: _Plan, need: int, types: tuple[str | None, ...], existing: frozenset[str]) -> int:
    """Undo a type choice that stranded replicas.

    One product per cluster share means a share that took the last few GPUs of a preferred type in a cluster
    keeps the cluster's other acceptable products from the rest. When replicas are still missing, a share made in
    this decision moves, whole, to the acceptable product that holds the most there, if that holds more (least
    preferred clusters first; ties to the earlier type). Shares that existed before never move.
    """
    demand = plan.demand
    for cluster in reversed(_ranked({c: s for c, s in plan.shares.items() if c not in existing}, plan.order)):
        if need == 0:
            break
        share = plan.shares[cluster]
        best: tuple[int, str | None, str | None] | None = None  # (replicas, gpu type, product)
        for gpu_type in types:
            for fit in _fit(plan.capacity, cluster, demand, gpu_type, plan.kinds(gpu_type)):
                count = min(fit.replicas, share.replicas + need)
                if fit.product != share.gpu_type and count > share.replicas and (best is None or count > best[0]):
                    best = (count, gpu_type, fit.product)
        if best is None:
            continue
        count, gpu_type, product = best
        plan.capacity = _release(plan.capacity, cluster, demand, share)
        placed, per_node, plan.capacity, _ = _fill_cluster(
            plan.capacity, cluster, demand, gpu_type, plan.kinds(gpu_type), count, product
        )
        plan.shares[cluster] = Share(cluster, placed, product, tuple(sorted(per_node.items())))
        plan.reasons.append(
            f"cluster {cluster}: {placed} replica(s) on {product} instead of {share.replicas} on {share.gpu_type} "
            "(one GPU product per cluster, and this one holds more)"
        )
        need -= placed - share.replicas
    return need


def _release(capacity: FleetCapacity, cluster: str, demand: Demand, share: Share) -> FleetCapacity:
    """Give back what `share` took in `cluster` (it was placed in this decision, on the nodes it names)."""
    nodes = list(capacity.nodes(cluster))
    taken = share.node_map()
    changed = []
    for i, node in enumerate(nodes):
        if node.name in taken:
            nodes[i] = node.take(
                gpus=demand.gpus, cpu_m=demand.cpu_m, memory_bytes=demand.memory_bytes, count=-taken[node.name]
            )
            changed.append(i)
    return capacity.with_cluster(cluster, tuple(nodes), changed)


def _type_note(plan: _Plan, gpu_type: str, type_index: int, placed: int) -> str:
    if not placed:
        floor = plan.demand.gpu_min_memory_bytes
        if floor and not plan.kinds(gpu_type):
            small = _memories(kind for kind in plan.capacity.gpu_kinds() if gpu_type_matches(gpu_type, kind[0]))
            if small:
                return f"no {gpu_type} has the minMemory of {format_bytes(floor)} per GPU (they have {small})"
        return f"no room on {gpu_type}"
    note = "preferred type" if type_index == 0 else f"fallback type #{type_index + 1}"
    return f"{placed} replica(s) on {gpu_type} ({note})"


def _pack(plan: _Plan, need: int, gpu_type: str | None) -> int:
    # 1. Grow clusters that already run replicas (no new cluster while an existing one has room).
    for cluster in _ranked(plan.shares, plan.order):
        if need == 0:
            break
        if plan.room(cluster, gpu_type) > 0:
            need -= plan.fill(cluster, gpu_type, need)
    if need == 0 or not plan.policy.allow_split:
        return need
    # 2. The first cluster, in preference order, that holds everything that is left.
    for cluster in plan.new_clusters(gpu_type, need):
        if plan.allowed(cluster) and plan.room(cluster, gpu_type, need, bounded=True) >= need:
            return need - plan.fill(cluster, gpu_type, need)
    # 3. Split: fill clusters in preference order.
    for cluster in plan.new_clusters(gpu_type):
        if need == 0:
            break
        if plan.allowed(cluster) and plan.room(cluster, gpu_type, bounded=True) > 0:
            need -= plan.fill(cluster, gpu_type, need)
    return need


def _spread(plan: _Plan, need: int, gpu_type: str | None) -> int:
    """Each replica to the cluster with the fewest, ties in rank order.

    Clusters without a share (0 replicas) always come before shares (≥ 1), so they are taken lazily in rank order;
    the shares wait in a heap by (replicas, rank). A cluster's exact room is looked at only when it comes up.
    """
    rank = plan.order.index
    queue = [(share.replicas, rank(c), c) for c, share in plan.shares.items()]
    heapq.heapify(queue)
    fresh = plan.new_clusters(gpu_type)
    while need > 0:
        cluster = next(fresh, None) if plan.may_add_cluster() else None
        if cluster is not None:
            replicas = 0
        elif queue:
            replicas, _, cluster = heapq.heappop(queue)
        else:
            break
        if plan.room(cluster, gpu_type) == 0:
            continue  # full for this type: it only gets fuller during this decision
        need -= plan.fill(cluster, gpu_type, 1)
        heapq.heappush(queue, (replicas + 1, rank(cluster), cluster))
    return need


def _place_whole(plan: _Plan, need: int, types: tuple[str | None, ...]) -> None:
    """allowSplit false, first placement: one cluster, the first that holds everything, else the one holding most."""
    best: tuple[int, int, str] | None = None  # (replicas, type index, cluster)
    for type_index, gpu_type in enumerate(types):
        if not plan.fleet_has_room(gpu_type):
            continue
        for cluster in plan.new_clusters(gpu_type):
            if not plan.allowed(cluster):
                continue
            room = min(need, plan.room(cluster, gpu_type))
            if room == need:
                placed = plan.fill(cluster, gpu_type, need)
                if gpu_type is not None:
                    plan.reasons.append(_type_note(plan, gpu_type, type_index, placed))
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
        plan.reasons.append(_type_note(plan, gpu_type, type_index, placed))
    plan.reasons.append(f"allowSplit is false and no cluster holds all {need}: {placed} in {cluster}, the roomiest")


def _best_available(plan: _Plan) -> str:
    """The largest free block left among the eligible clusters, of an acceptable type and of any type."""
    capacity, order = plan.capacity, plan.order
    if not plan.demand.gpus:
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
    acceptable = sorted({kind for t in plan.demand.gpu_types or (None,) for kind in plan.kinds(t)})
    of_type = capacity.largest_gpu_block(order, acceptable)
    any_type = capacity.largest_gpu_block(order)
    text = _block(of_type) if of_type is not None else "no free GPU of an acceptable type"
    if any_type is not None and (of_type is None or any_type.gpus > of_type.gpus):
        text += f" (of any type: {_block(any_type)})"
    return text


def _block(node: NodeFree) -> str:
    return f"{node.gpus} × {node.gpu_product} on {node.cluster}/{node.name}"


def _excluded_summary(excluded: Sequence[_Exclusion]) -> str:
    """'excluded: 2 unhealthy (a, b), 74 not matching the clusterSelector (c, d, e, f, g, …)': short, for messages."""
    parts = []
    for why, label in (("unhealthy", "unhealthy"), ("selector_mismatch", "not matching the clusterSelector")):
        names = [name for name, reason in excluded if reason == why]
        if names:
            shown = ", ".join(names[:_NAMES_SHOWN]) + (", …" if len(names) > _NAMES_SHOWN else "")
            parts.append(f"{len(names)} {label} ({shown})")
    return "excluded: " + ", ".join(parts)


_NAMES_SHOWN = 5


def _ranked(shares: Mapping[str, Share], order: Sequence[str]) -> list[str]:
    """The clusters of `shares` in rank order. Every share is on a cluster of `order` (`place` keeps only those);
    shares are few, the order is the whole fleet."""
    if len(shares) <= 1:
        return list(shares)
    return sorted(shares, key=order.index)


def _summary(shares: dict[str, Share], order: Sequence[str]) -> str:
    return _summary_of(_final(shares, order))


def _summary_of(final: tuple[Share, ...]) -> str:
    parts = [f"{s.cluster}={s.replicas}" + (f" ({s.gpu_type})" if s.gpu_type else "") for s in final]
    return "placed " + (", ".join(parts) if parts else "nothing (0 replicas requested)")


def _final(shares: dict[str, Share], order: Sequence[str]) -> tuple[Share, ...]:
    """The shares with replicas, in rank order."""
    return tuple(shares[c] for c in _ranked(shares, order) if shares[c].replicas > 0)


def _decision(plan: _Plan, outcome: Outcome, message: str | None) -> Decision:
    """The decision; `message` None: the summary of what was placed."""
    final = _final(plan.shares, plan.order)
    return Decision(
        shares=final,
        placed=sum(s.replicas for s in final),
        outcome=outcome,
        reasons=tuple(plan.reasons),
        message=_summary_of(final) if message is None else message,
        capacity=plan.capacity,
        released=plan.released,
        _seen=plan.seen,
    )


# --- Verdicts: what a decision made of each cluster, and why ---------------------------------------------------


class _Seen(NamedTuple):
    """What a decision started from, kept so that `Decision.verdicts` can judge every cluster when asked."""

    clusters: Clusters
    demand: Demand
    policy: Policy
    capacity: FleetCapacity
    """The capacity the decision was given (immutable: later decisions make new ones)."""
    kept: int
    """Replicas of `current` kept on eligible clusters, before any scale-down."""


def _ineligible(fleet: Clusters, shares: Iterable[Share]) -> list[ReleasedShare]:
    """Shares on clusters the policy no longer admits (or the fleet no longer has), in the order given."""
    out = []
    for share in shares:
        info = fleet.info(share.cluster)
        if info is None:
            reason: Literal["unhealthy", "selector_mismatch"] = "unhealthy"
            detail = "the cluster is no longer in the fleet"
        elif not info.healthy:
            reason, detail = "unhealthy", "the cluster is unhealthy"
        else:
            reason, detail = "selector_mismatch", _selector_detail(info)
        out.append(ReleasedShare(cluster=share.cluster, replicas=share.replicas, reason=reason, detail=detail))
    return out


def _selector_detail(info: ClusterInfo) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items())) or "none"
    return f"its labels ({labels}) do not match the clusterSelector"


def _verdicts(decision: Decision, seen: _Seen) -> tuple[ClusterVerdict, ...]:
    held = {s.cluster: s for s in decision.shares}
    released = {r.cluster: r for r in decision.released}
    excluded = dict(seen.clusters.admitted(seen.policy).excluded)
    out = []
    for info in seen.clusters:
        name = info.name
        why = excluded.get(name)
        if why is not None:
            detail = "the cluster is unhealthy" if why == "unhealthy" else _selector_detail(info)
            out.append(ClusterVerdict(cluster=name, eligible=False, reason=why, detail=detail))
            continue
        share = held.get(name)
        if share is not None:
            on = f" on {share.gpu_type}" if share.gpu_type else ""
            out.append(
                ClusterVerdict(
                    cluster=name, eligible=True, replicas=share.replicas, detail=f"{share.replicas} replica(s){on}"
                )
            )
            continue
        let_go = released.get(name)
        if let_go is not None:
            reason: PassOverReason = let_go.reason
            detail = f"its {let_go.replicas} replica(s) released: {let_go.detail}"
        else:
            reason, detail = _passed_over(decision, seen, name)
        out.append(ClusterVerdict(cluster=name, eligible=True, reason=reason, detail=detail))
    return tuple(out)


def _passed_over(decision: Decision, seen: _Seen, cluster: str) -> tuple[PassOverReason, str]:
    """Why an eligible cluster got no replicas: first what its nodes could not offer (against the capacity the
    decision started from), then what the policy or the other clusters left it."""
    demand, policy = seen.demand, seen.policy
    if demand.replicas == 0:
        return "not_needed", "no replica is asked for"
    if seen.kept >= demand.replicas:
        return "not_needed", "no new replica was needed: the replicas already placed elsewhere are enough"
    nodes = seen.capacity.nodes(cluster)
    if demand.gpus:
        types = demand.gpu_types
        typed = [
            n
            for n in nodes
            if n.gpu_product is not None and (not types or any(gpu_type_matches(t, n.gpu_product) for t in types))
        ]
        if not typed:
            wanted = " or ".join(types) if types else "any GPU"
            have = ", ".join(sorted({n.gpu_product for n in nodes if n.gpu_product})) or "no GPUs"
            return "no_acceptable_gpu_type", f"no usable node has {wanted} (it has {have})"
        floor = demand.gpu_min_memory_bytes
        candidates = [n for n in typed if n.gpu_memory_bytes >= floor]
        if not candidates:
            products = ", ".join(sorted({n.gpu_product for n in typed if n.gpu_product}))
            return (
                "gpu_memory_below_floor",
                f"its {products} GPUs have {_memories(_kind_of(n) for n in typed)}, "
                f"below the minMemory of {format_bytes(floor)}",
            )
    else:
        candidates = [n for n in nodes if n.gpu_allocatable == 0]
        if not candidates:
            return "no_acceptable_gpu_type", "no usable node without GPUs (CPU-only replicas run only there)"
    if not any(_holds(n, demand) for n in candidates):
        return (
            "no_node_with_room",
            f"no node has room for one replica ({demand.describe_one()}); {_roomiest(candidates)}",
        )
    # It had room: the policy or the other clusters left it nothing.
    if policy.max_clusters is not None and len(decision.shares) >= policy.max_clusters:
        used = ", ".join(s.cluster for s in decision.shares)
        return "max_clusters_reached", f"maxClusters is {policy.max_clusters}, taken by {used}"
    if not policy.allow_split and decision.shares:
        return "split_not_allowed", f"allowSplit is false and the deployment lives in {decision.shares[0].cluster}"
    if decision.placed >= demand.replicas:
        return "not_needed", "it had room, but clusters before it in the preference order hold every replica"
    return "no_node_with_room", "its room was gone when its turn came"


def _kind_of(node: NodeFree) -> GpuKind:
    return (node.gpu_product or "", node.gpu_memory_bytes)


def _memories(kinds: Iterable[GpuKind]) -> str:
    """'40Gi' or '24Gi, 40Gi': the distinct GPU memory sizes of `kinds`, smallest first."""
    return ", ".join(format_bytes(m) for m in sorted({memory for _, memory in kinds}))


def _holds(node: NodeFree, demand: Demand) -> bool:
    """Does the node, as it is, have room for one replica?"""
    return node.gpus >= demand.gpus and node.cpu_m >= demand.cpu_m and node.memory_bytes >= demand.memory_bytes


def _roomiest(nodes: Sequence[NodeFree]) -> str:
    best = max(nodes, key=lambda n: (n.gpus, n.cpu_m, n.memory_bytes))
    gpus = f"{best.gpus} × {best.gpu_product} GPU(s), " if best.gpu_product else ""
    return (
        f"the roomiest, {best.name}, has {gpus}{format_millicores(best.cpu_m)} CPU, "
        f"{format_bytes(best.memory_bytes)} memory free"
    )
