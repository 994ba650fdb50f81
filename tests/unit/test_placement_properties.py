"""Properties of `place()` over generated fleets, demands, policies and running placements (hypothesis).

- A node is never overcommitted, and what a decision takes is exactly what its new replicas need.
- Nothing is placed on an excluded cluster (unhealthy, or not selected), and maxClusters holds.
- The same input gives the same output, whatever the order of the clusters and whatever the capacity
  remembers from earlier decisions.
- Each cluster share runs on one acceptable GPU product, on nodes that suit it.
- Running replicas never move: same replicas, same placement; scaling changes only the difference.
- What fits is placed: when splitting is free, a decision places as many replicas as the clusters can hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from planner.fleet import FleetCapacity, NodeFree
from planner.placement import (
    ClusterInfo,
    Decision,
    Demand,
    Policy,
    Requirement,
    Share,
    gpu_type_matches,
    place,
    rank_clusters,
)
from tests.unit.factories import A100, A100_40, H100, L4, GiB, cpu, fleet, gpu

NAMES = ("a", "b", "c", "d")
TYPES = (H100, A100, A100_40, "NVIDIA-A100*", L4)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fleets(draw: st.DrawFn, most_clusters: int = len(NAMES)) -> tuple[FleetCapacity, list[ClusterInfo]]:
    names = NAMES[: draw(st.integers(1, most_clusters))]
    nodes: list[NodeFree] = []
    for cluster in names:
        for i in range(draw(st.integers(0, 4))):
            product = draw(st.sampled_from((H100, A100, A100_40, None)))
            if product is None:
                nodes.append(
                    cpu(
                        cluster,
                        f"n{i}",
                        cpu_m=draw(st.sampled_from((0, 4_000, 32_000))),
                        memory_gib=draw(st.sampled_from((0, 16, 128))),
                    )
                )
            else:
                total = draw(st.sampled_from((1, 2, 4, 8)))
                nodes.append(
                    gpu(
                        cluster,
                        f"n{i}",
                        product,
                        free=draw(st.integers(0, total)),
                        total=total,
                        cpu_m=draw(st.sampled_from((2_000, 16_000, 96_000))),
                        memory_gib=draw(st.sampled_from((16, 128, 1024))),
                    )
                )
    infos = [
        ClusterInfo(
            name, {"region": draw(st.sampled_from(("eu", "us")))}, draw(st.sampled_from((True, True, True, False)))
        )
        for name in names
    ]
    return fleet(*nodes), infos


# Type lists: often two or three types that several nodes match, so type fallback and one-product-per-share
# interact; sometimes none (any GPU), sometimes a type nobody has.
TYPE_LISTS = st.one_of(
    st.permutations((H100, A100, "NVIDIA-A100*")).map(lambda ts: tuple(ts[:2])),
    st.permutations((H100, A100, A100_40)).map(tuple),
    st.lists(st.sampled_from(TYPES), max_size=3, unique=True).map(tuple),
)


@st.composite
def demands(draw: st.DrawFn, replicas: st.SearchStrategy[int] | None = None) -> Demand:
    gpus = draw(st.sampled_from((0, 1, 1, 2, 4)))
    return Demand(
        deployment_key="a/ns/llm",
        origin=draw(st.sampled_from(NAMES)),
        replicas=draw(replicas if replicas is not None else st.integers(0, 6)),
        gpus=gpus,
        gpu_types=draw(TYPE_LISTS) if gpus else (),
        gpu_min_memory_bytes=draw(st.sampled_from((0, 0, 40 * GiB, 80 * GiB))) if gpus else 0,
        cpu_m=draw(st.sampled_from((0, 1_000, 8_000))),
        memory_bytes=draw(st.sampled_from((0, 8 * GiB, 64 * GiB))),
    )


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    selector = draw(
        st.sampled_from(((), (Requirement("region", "In", ("us",)),), (Requirement("region", "NotIn", ("us",)),)))
    )
    return Policy(
        match_expressions=selector,
        preferred_clusters=tuple(draw(st.lists(st.sampled_from((*NAMES, "zz")), max_size=3, unique=True))),
        prefer_origin=draw(st.booleans()),
        strategy=draw(st.sampled_from(("Pack", "Spread"))),
        allow_split=draw(st.booleans()),
        max_clusters=draw(st.sampled_from((None, None, 1, 2, 3))),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Demand, FleetCapacity, list[ClusterInfo], Policy, tuple[Share, ...]]:
    """A deployment as the planner sees it: maybe already running (placed earlier, on a fleet that has changed
    since: clusters gone unhealthy, capacity taken by others), now asking for some number of replicas."""
    capacity, infos = draw(fleets())
    the_demand = draw(demands())
    policy = draw(policies())
    current: tuple[Share, ...] = ()
    if draw(st.booleans()):
        earlier = place(
            replace(the_demand, replicas=draw(st.integers(1, 6))),
            clusters=[replace(c, healthy=True) for c in infos],
            capacity=capacity,
            policy=draw(policies()),
        )
        current, capacity = earlier.shares, earlier.capacity
    return the_demand, capacity, infos, policy, current


def decide(
    the_demand: Demand, capacity: FleetCapacity, infos: Sequence[ClusterInfo], policy: Policy, current: Sequence[Share]
) -> Decision:
    return place(the_demand, clusters=infos, capacity=capacity, policy=policy, current=current)


def added_per_node(decision: Decision, current: Sequence[Share]) -> dict[tuple[str, str], int]:
    """Replicas this decision put on each node (beyond what was running there)."""
    before = {(s.cluster, node): n for s in current for node, n in s.nodes}
    after = {(s.cluster, node): n for s in decision.shares for node, n in s.nodes}
    return {key: n - before.get(key, 0) for key, n in after.items() if n > before.get(key, 0)}


def kept_shares(
    the_demand: Demand, infos: Sequence[ClusterInfo], policy: Policy, current: Sequence[Share]
) -> dict[str, Share]:
    """The running shares place() must keep: on healthy eligible clusters, within maxClusters (by rank)."""
    order, _ = rank_clusters(infos, policy, the_demand.origin)
    kept = [c for c in order if any(s.cluster == c and s.replicas for s in current)]
    if policy.max_clusters is not None:
        kept = kept[: policy.max_clusters]
    return {s.cluster: s for s in current if s.cluster in kept}


def acceptable(node: NodeFree, the_demand: Demand) -> bool:
    if not the_demand.gpus:
        return node.gpu_allocatable == 0
    if node.gpu_product is None or node.gpu_memory_bytes < the_demand.gpu_min_memory_bytes:
        return False
    return not the_demand.gpu_types or any(gpu_type_matches(t, node.gpu_product) for t in the_demand.gpu_types)


def fits_on(node: NodeFree, the_demand: Demand) -> int:
    """Replicas of the demand one node holds (brute force, independent of placement.py)."""
    if not acceptable(node, the_demand):
        return 0
    limits = [node.gpus // the_demand.gpus] if the_demand.gpus else []
    if the_demand.cpu_m:
        limits.append(node.cpu_m // the_demand.cpu_m)
    if the_demand.memory_bytes:
        limits.append(node.memory_bytes // the_demand.memory_bytes)
    return max(0, min(limits)) if limits else 1_000


def nodes_by_name(capacity: FleetCapacity) -> dict[tuple[str, str], NodeFree]:
    return {(n.cluster, n.name): n for nodes in capacity.clusters.values() for n in nodes}


@FAST
@given(scenarios())
def test_never_overcommits_a_node_and_takes_exactly_what_new_replicas_need(scenario: tuple) -> None:
    the_demand, capacity, infos, policy, current = scenario

    decision = decide(the_demand, capacity, infos, policy, current)

    before, after = nodes_by_name(capacity), nodes_by_name(decision.capacity)
    added = added_per_node(decision, current)
    assert before.keys() == after.keys()
    for key, node in before.items():
        n = added.get(key, 0)
        left = after[key]
        assert (left.gpus, left.cpu_m, left.memory_bytes) == (
            node.gpus - n * the_demand.gpus,
            node.cpu_m - n * the_demand.cpu_m,
            node.memory_bytes - n * the_demand.memory_bytes,
        ), key
        assert min(left.gpus, left.cpu_m, left.memory_bytes) >= 0, key
    assert set(added) <= set(before)  # new replicas only on nodes that exist


@FAST
@given(scenarios())
def test_never_places_on_an_excluded_cluster_and_respects_max_clusters(scenario: tuple) -> None:
    the_demand, capacity, infos, policy, current = scenario

    decision = decide(the_demand, capacity, infos, policy, current)

    allowed = {c.name for c in infos if c.healthy and policy.selects(c.labels)}
    assert {s.cluster for s in decision.shares} <= allowed
    if policy.max_clusters is not None:
        assert len(decision.shares) <= policy.max_clusters
    if not allowed and the_demand.replicas:
        assert decision.outcome == "NoEligibleCluster"
        assert decision.shares == ()


@FAST
@given(scenarios(), st.randoms(use_true_random=False))
def test_same_input_same_output_whatever_the_cluster_order_or_remembered_data(scenario: tuple, rnd) -> None:  # type: ignore[no-untyped-def]
    the_demand, capacity, infos, policy, current = scenario
    shuffled = list(infos)
    rnd.shuffle(shuffled)

    first = decide(the_demand, capacity, infos, policy, current)
    again = decide(the_demand, capacity, infos, policy, current)
    reordered = decide(the_demand, capacity, shuffled, policy, current)
    fresh = decide(the_demand, FleetCapacity(dict(capacity.clusters)), infos, policy, current)

    assert again == first
    assert reordered == first
    assert fresh == first
    assert again.verdicts() == reordered.verdicts() == fresh.verdicts() == first.verdicts()


@FAST
@given(scenarios())
def test_verdicts_name_every_cluster_once_and_tell_the_truth_about_its_nodes(scenario: tuple) -> None:
    the_demand, capacity, infos, policy, current = scenario

    decision = decide(the_demand, capacity, infos, policy, current)
    verdicts = decision.verdicts()

    assert [v.cluster for v in verdicts] == sorted(c.name for c in infos)
    placed_in = {s.cluster: s.replicas for s in decision.shares}
    for info, verdict in zip(sorted(infos, key=lambda c: c.name), verdicts, strict=True):
        assert verdict.eligible == (info.healthy and policy.selects(info.labels))
        assert verdict.replicas == placed_in.get(info.name, 0)
        assert (verdict.reason is None) == (verdict.replicas > 0)
        if verdict.reason in ("no_acceptable_gpu_type", "gpu_memory_below_floor", "no_node_with_room"):
            # What a cluster's nodes could not offer is judged against the capacity the decision was given.
            assert all(fits_on(node, the_demand) == 0 for node in capacity.nodes(info.name)), verdict
        if verdict.reason == "not_needed":
            assert decision.placed == the_demand.replicas
    released = {r.cluster for r in decision.released}
    assert released <= {s.cluster for s in current}
    assert not released & placed_in.keys()


@FAST
@given(scenarios())
def test_each_share_runs_on_one_acceptable_product_on_nodes_that_hold_it(scenario: tuple) -> None:
    the_demand, capacity, infos, policy, current = scenario

    decision = decide(the_demand, capacity, infos, policy, current)

    before = nodes_by_name(capacity)
    for (cluster, name), n in added_per_node(decision, current).items():
        node = before[(cluster, name)]
        (share,) = [s for s in decision.shares if s.cluster == cluster]
        assert node.gpu_product == share.gpu_type if the_demand.gpus else share.gpu_type is None
        assert acceptable(node, the_demand), (cluster, name)
        assert n <= fits_on(node, the_demand), (cluster, name)


@FAST
@given(scenarios())
def test_running_replicas_never_move_and_scaling_changes_only_the_difference(scenario: tuple) -> None:
    the_demand, capacity, infos, policy, current = scenario
    kept = kept_shares(the_demand, infos, policy, current)
    running = sum(s.replicas for s in kept.values())

    decision = decide(the_demand, capacity, infos, policy, current)

    shares = {s.cluster: s for s in decision.shares}
    if the_demand.replicas == running:
        assert shares == {c: s for c, s in kept.items() if s.replicas}
        assert decision.capacity == capacity
    elif the_demand.replicas > running:  # scale up: every running replica stays on its node
        for cluster, old in kept.items():
            new = shares[cluster].node_map()
            assert all(new.get(node, 0) >= n for node, n in old.nodes), cluster
        assert running <= decision.placed <= the_demand.replicas
    else:  # scale down: only removals, exactly the surplus
        for cluster, new_share in shares.items():
            old = kept[cluster].node_map()
            assert all(old.get(node, 0) >= n for node, n in new_share.nodes), cluster
        assert decision.placed == the_demand.replicas
        assert decision.capacity == capacity


STRANDED = (
    fleet(gpu("a", "n0", H100, free=1), gpu("a", "n1", A100, free=4)),
    [ClusterInfo("a", {}, True)],
)


@FAST
@given(
    fleets(most_clusters=2), demands(replicas=st.integers(1, 12)), st.sampled_from(("Pack", "Spread")), st.booleans()
)
@example(STRANDED, Demand("a/ns/llm", "a", 3, gpus=1, gpu_types=(H100, A100)), "Pack", True)
@example(STRANDED, Demand("a/ns/llm", "a", 3, gpus=1, gpu_types=(H100, A100)), "Spread", True)
@example(STRANDED, Demand("a/ns/llm", "a", 3, gpus=1), "Spread", True)
def test_what_fits_is_placed(
    fleet_and_infos: tuple[FleetCapacity, list[ClusterInfo]], the_demand: Demand, strategy: str, split: bool
) -> None:
    """With no running replicas and no maxClusters, a decision places min(replicas, what the clusters hold): per
    cluster one product, so a cluster holds the most any one acceptable product of it holds."""
    capacity, infos = fleet_and_infos
    policy = Policy(strategy=strategy, allow_split=split)  # type: ignore[arg-type]

    decision = decide(the_demand, capacity, infos, policy, ())

    holds = []
    for info in infos:
        if not info.healthy:
            continue
        per_product: dict[str | None, int] = {}
        for node in capacity.nodes(info.name):
            product = node.gpu_product if the_demand.gpus else None
            per_product[product] = per_product.get(product, 0) + fits_on(node, the_demand)
        holds.append(max(per_product.values(), default=0))
    possible = sum(holds) if split else max(holds, default=0)
    assert decision.placed == min(the_demand.replicas, possible), decision.reasons
    expected = "Placed" if decision.placed == the_demand.replicas else "PartiallyPlaced" if decision.placed else None
    if expected:
        assert decision.outcome == expected
    else:
        assert decision.outcome in ("InsufficientGPU", "NoEligibleCluster")
        assert f"{the_demand.replicas} of {the_demand.replicas} replica(s) could not be placed" in decision.message or (
            decision.outcome == "NoEligibleCluster"
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.lists(st.tuples(demands(replicas=st.integers(1, 4)), policies()), min_size=2, max_size=6))
def test_a_chain_of_decisions_answers_like_fresh_capacity_at_every_step(
    fleet_and_infos: tuple[FleetCapacity, list[ClusterInfo]], steps: list[tuple[Demand, Policy]]
) -> None:
    """What a FleetCapacity remembers between decisions (GPU slots, which clusters have room, fits) never changes
    a decision: each step decides the same against the carried capacity and against a fresh copy of it."""
    capacity, infos = fleet_and_infos
    for i, (step, policy) in enumerate(steps):
        the_demand = replace(step, deployment_key=f"a/ns/d{i}")
        carried = decide(the_demand, capacity, infos, policy, ())
        fresh = decide(the_demand, FleetCapacity(dict(capacity.clusters)), infos, policy, ())
        assert carried == fresh, i
        capacity = carried.capacity
    recount = FleetCapacity(dict(capacity.clusters))
    kinds = recount.gpu_kinds()
    assert capacity.gpu_kinds() == kinds
    for k in range(1, 9):
        assert list(capacity.clusters_with_gpu_slots(k, kinds)) == list(recount.clusters_with_gpu_slots(k, kinds))
        for cluster in NAMES:
            assert capacity.gpu_slots(k, kinds, cluster) == recount.gpu_slots(k, kinds, cluster)
    order = [c.name for c in infos]
    brute = max(
        (n for c in order for n in capacity.nodes(c) if n.gpu_product and n.gpus > 0),
        key=lambda n: (n.gpus, -order.index(n.cluster), [-ord(ch) for ch in n.name]),
        default=None,
    )
    assert capacity.largest_gpu_block(order) == brute
