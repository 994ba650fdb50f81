"""Table tests of `place()`: one named case per rule of planner/placement.py, with the exact placement expected.

Every case names the clusters and nodes the replicas must land on, so a wrong node, a wrong cluster or a wrong
GPU product fails the test; "something was placed" never passes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import pytest

from api.events import ClusterVerdict, PassOverReason
from planner.fleet import FleetCapacity
from planner.placement import ClusterInfo, Decision, Demand, Policy, Requirement, Share, place, rank_clusters
from tests.unit.factories import (
    A100,
    A100_40,
    H100,
    L4,
    clusters,
    clusters_of,
    cpu,
    demand,
    fleet,
    free_gpus,
    gpu,
    placed,
    share,
)

Placement = dict[str, tuple[str | None, dict[str, int]]]
DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Case:
    id: str
    capacity: FleetCapacity
    demand: Demand
    expected: Placement
    outcome: str = "Placed"
    policy: Policy = DEFAULT_POLICY
    current: tuple[Share, ...] = ()
    infos: list[ClusterInfo] | None = None
    """Cluster facts; None: every cluster of `capacity`, healthy, without labels."""
    reasons: tuple[str, ...] = field(default=())
    """Reasons the decision must give (among others)."""


def three_free_clusters(free: int = 8) -> FleetCapacity:
    return fleet(gpu("a", "n1", free=free), gpu("b", "n1", free=free), gpu("c", "n1", free=free))


REGIONS = {"a": {"region": "eu", "tier": "dev"}, "b": {"region": "us", "tier": "prod"}, "c": {"region": "us"}}

CASES = [
    # --- Node-level bin packing ---------------------------------------------------------------------------------
    Case(
        "fragmented origin cannot hold a 4-GPU replica: 2+2 free is not 4 on one node",
        fleet(gpu("a", "n1", free=2), gpu("a", "n2", free=2), gpu("b", "n1", free=4)),
        demand(gpus=4),
        {"b": (A100, {"n1": 1})},
    ),
    Case(
        "best fit takes the tightest node and keeps the 8-GPU block whole",
        fleet(gpu("a", "n1", free=8), gpu("a", "n2", free=2)),
        demand(gpus=2),
        {"a": (A100, {"n2": 1})},
    ),
    Case(
        "best fit fills a node before moving to the next",
        fleet(gpu("a", "n1", free=4), gpu("a", "n2", free=8)),
        demand(replicas=3, gpus=2),
        {"a": (A100, {"n1": 2, "n2": 1})},
    ),
    Case(
        "equal fits go to the first node by name",
        fleet(gpu("a", "n2", free=4), gpu("a", "n1", free=4)),
        demand(gpus=4),
        {"a": (A100, {"n1": 1})},
    ),
    Case(
        "CPU can bind before GPUs: one replica per node when CPU allows only one",
        fleet(gpu("a", "n1", cpu_m=8_000), gpu("a", "n2", cpu_m=8_000)),
        demand(replicas=2, gpus=1, cpu_m=6_000),
        {"a": (A100, {"n1": 1, "n2": 1})},
    ),
    Case(
        "GPU memory below the minimum does not count",
        fleet(gpu("a", "n1", A100_40), gpu("a", "n2", H100)),
        demand(gpus=1, min_gpu_memory_gib=80),
        {"a": (H100, {"n2": 1})},
    ),
    Case(
        "CPU-only replicas go to nodes without GPUs",
        fleet(gpu("a", "n1"), cpu("a", "n2")),
        demand(replicas=2, gpus=0, cpu_m=2_000, memory_gib=4),
        {"a": (None, {"n2": 2})},
    ),
    Case(
        "never more than is free: 3 free GPUs hold one 2-GPU replica, not two",
        fleet(gpu("a", "n1", free=3)),
        demand(replicas=2, gpus=2),
        {"a": (A100, {"n1": 1})},
        outcome="PartiallyPlaced",
    ),
    Case(
        "GPU node without a product label is not used",
        fleet(gpu("a", "n1", product=None, free=8)),  # type: ignore[arg-type]
        demand(gpus=1),
        {},
        outcome="InsufficientGPU",
    ),
    # --- GPU types and one product per cluster share ------------------------------------------------------------
    Case(
        "preferred type when it fits",
        fleet(gpu("a", "n1", A100), gpu("a", "n2", H100)),
        demand(replicas=2, types=(H100, A100)),
        {"a": (H100, {"n2": 2})},
        reasons=("2 replica(s) on NVIDIA-H100-80GB-HBM3 (preferred type)",),
    ),
    Case(
        "fallback type when the preferred has no node with enough free GPUs",
        fleet(gpu("a", "n1", A100), gpu("a", "n2", H100, free=1)),
        demand(gpus=2, types=(H100, A100)),
        {"a": (A100, {"n1": 1})},
        reasons=("no room on NVIDIA-H100-80GB-HBM3", "1 replica(s) on NVIDIA-A100-SXM4-80GB (fallback type #2)"),
    ),
    Case(
        "the preferred type elsewhere beats the fallback type in the origin",
        fleet(gpu("a", "n1", A100), gpu("b", "n1", H100)),
        demand(types=(H100, A100)),
        {"b": (H100, {"n1": 1})},
    ),
    Case(
        "the fallback type takes only what the preferred could not hold",
        fleet(gpu("a", "n1", H100, free=2), gpu("b", "n1", A100)),
        demand(replicas=4, types=(H100, A100)),
        {"a": (H100, {"n1": 2}), "b": (A100, {"n1": 2})},
    ),
    Case(
        "a wildcard matches every product with the prefix, and nothing else",
        fleet(gpu("a", "n1", H100), gpu("a", "n2", A100_40, free=1)),
        demand(types=("NVIDIA-A100*",)),
        {"a": (A100_40, {"n2": 1})},
    ),
    Case(
        "one product per cluster share: the product that holds all, not a best-fit mix",
        fleet(gpu("a", "n1", A100, free=2), gpu("a", "n2", A100_40)),
        demand(replicas=4, types=("NVIDIA-A100*",)),
        {"a": (A100_40, {"n2": 4})},
    ),
    Case(
        "a share grows only on its own product, even when another product has room",
        fleet(gpu("a", "n1", A100, free=0), gpu("a", "n2", H100), gpu("b", "n1", A100)),
        demand(replicas=2),
        {"a": (A100, {"n1": 1}), "b": (A100, {"n1": 1})},
        current=(share("a", A100, n1=1),),
    ),
    Case(
        "a preferred-type share that would strand replicas moves whole to the fallback product",
        fleet(gpu("a", "n1", H100, free=1), gpu("a", "n2", A100)),
        demand(replicas=3, types=(H100, A100)),
        {"a": (A100, {"n2": 3})},
        reasons=(
            "cluster a: 3 replica(s) on NVIDIA-A100-SXM4-80GB instead of 1 on NVIDIA-H100-80GB-HBM3 "
            "(one GPU product per cluster, and this one holds more)",
        ),
    ),
    Case(
        "a type nobody has: nothing placed, nothing taken",
        fleet(gpu("a", "n1", A100)),
        demand(types=(L4,)),
        {},
        outcome="InsufficientGPU",
    ),
    # --- Cluster order: origin, preferences, selectors, health --------------------------------------------------
    Case("the origin first when it fits", three_free_clusters(), demand(origin="b"), {"b": (A100, {"n1": 1})}),
    Case(
        "a full origin: the next cluster by name",
        fleet(gpu("a", "n1", free=0), gpu("b", "n1"), gpu("c", "n1")),
        demand(origin="a"),
        {"b": (A100, {"n1": 1})},
    ),
    Case(
        "preferOrigin false: clusters by name",
        three_free_clusters(),
        demand(origin="c"),
        {"a": (A100, {"n1": 1})},
        policy=Policy(prefer_origin=False),
    ),
    Case(
        "preferred clusters come before the origin, in the listed order",
        three_free_clusters(),
        demand(origin="a"),
        {"c": (A100, {"n1": 1})},
        policy=Policy(preferred_clusters=("c", "b")),
    ),
    Case(
        "a full preferred cluster gives way to the next preferred one",
        fleet(gpu("a", "n1"), gpu("b", "n1"), gpu("c", "n1", free=0)),
        demand(origin="a"),
        {"b": (A100, {"n1": 1})},
        policy=Policy(preferred_clusters=("c", "b")),
    ),
    Case(
        "matchLabels excludes the origin that does not match",
        three_free_clusters(),
        demand(origin="a"),
        {"b": (A100, {"n1": 1})},
        policy=Policy(match_labels=(("tier", "prod"),)),
        infos=clusters("a", "b", "c", labels=REGIONS),
        reasons=("cluster a does not match the clusterSelector", "cluster c does not match the clusterSelector"),
    ),
    Case(
        "matchExpressions NotIn and Exists",
        three_free_clusters(),
        demand(origin="a"),
        {"b": (A100, {"n1": 1})},
        policy=Policy(
            match_expressions=(Requirement("region", "NotIn", ("eu",)), Requirement("tier", "Exists")),
        ),
        infos=clusters("a", "b", "c", labels=REGIONS),
    ),
    Case(
        "an unhealthy cluster is never used, even as the origin",
        three_free_clusters(),
        demand(origin="a"),
        {"b": (A100, {"n1": 1})},
        infos=clusters("a", "b", "c", down=("a",)),
        reasons=("cluster a is unhealthy",),
    ),
    Case(
        "no cluster matches the selector",
        three_free_clusters(),
        demand(),
        {},
        outcome="NoEligibleCluster",
        policy=Policy(match_labels=(("region", "mars"),)),
        infos=clusters("a", "b", "c", labels=REGIONS),
    ),
    # --- Pack, Spread, split, maxClusters -----------------------------------------------------------------------
    Case("pack: every replica in one cluster", three_free_clusters(), demand(replicas=3), {"a": (A100, {"n1": 3})}),
    Case(
        "pack prefers one cluster that holds all over splitting from the origin",
        fleet(gpu("a", "n1", free=2), gpu("b", "n1", free=8)),
        demand(replicas=4),
        {"b": (A100, {"n1": 4})},
    ),
    Case(
        "split when no cluster holds all: fill clusters in order",
        fleet(gpu("a", "n1", free=2), gpu("b", "n1", free=1), gpu("c", "n1", free=2)),
        demand(replicas=4),
        {"a": (A100, {"n1": 2}), "b": (A100, {"n1": 1}), "c": (A100, {"n1": 1})},
    ),
    Case(
        "maxClusters caps the split",
        three_free_clusters(free=2),
        demand(replicas=6),
        {"a": (A100, {"n1": 2}), "b": (A100, {"n1": 2})},
        outcome="PartiallyPlaced",
        policy=Policy(max_clusters=2),
    ),
    Case(
        "allowSplit false: the first cluster that holds all",
        fleet(gpu("a", "n1", free=2), gpu("b", "n1", free=3), gpu("c", "n1", free=8)),
        demand(replicas=4),
        {"c": (A100, {"n1": 4})},
        policy=Policy(allow_split=False),
    ),
    Case(
        "allowSplit false and no cluster holds all: what fits, in the roomiest cluster",
        fleet(gpu("a", "n1", free=2), gpu("b", "n1", free=3), gpu("c", "n1", free=1)),
        demand(replicas=4),
        {"b": (A100, {"n1": 3})},
        outcome="PartiallyPlaced",
        policy=Policy(allow_split=False),
        reasons=("allowSplit is false and no cluster holds all 4: 3 in b, the roomiest",),
    ),
    Case(
        "allowSplit false under spread is still one cluster: the first that holds all",
        fleet(gpu("a", "n1", free=2), gpu("b", "n1", free=8)),
        demand(replicas=4),
        {"b": (A100, {"n1": 4})},
        policy=Policy(strategy="Spread", allow_split=False),
    ),
    Case(
        "allowSplit false prefers the preferred type in any cluster over the fallback in the origin",
        fleet(gpu("a", "n1", A100), gpu("b", "n1", H100)),
        demand(replicas=2, types=(H100, A100)),
        {"b": (H100, {"n1": 2})},
        policy=Policy(allow_split=False),
    ),
    Case(
        "allowSplit false: growth stays in the cluster that runs the replicas",
        fleet(gpu("a", "n1", free=1), gpu("b", "n1")),
        demand(replicas=3),
        {"a": (A100, {"n1": 2})},
        outcome="PartiallyPlaced",
        policy=Policy(allow_split=False),
        current=(share("a", A100, n1=1),),
    ),
    Case(
        "spread: one replica per cluster",
        three_free_clusters(),
        demand(replicas=3),
        {"a": (A100, {"n1": 1}), "b": (A100, {"n1": 1}), "c": (A100, {"n1": 1})},
        policy=Policy(strategy="Spread"),
    ),
    Case(
        "spread: round robin, the more preferred clusters first",
        three_free_clusters(),
        demand(replicas=5, origin="c"),
        {"c": (A100, {"n1": 2}), "a": (A100, {"n1": 2}), "b": (A100, {"n1": 1})},
        policy=Policy(strategy="Spread"),
    ),
    Case(
        "spread skips a full cluster",
        fleet(gpu("a", "n1", free=0), gpu("b", "n1"), gpu("c", "n1")),
        demand(replicas=2),
        {"b": (A100, {"n1": 1}), "c": (A100, {"n1": 1})},
        policy=Policy(strategy="Spread"),
    ),
    Case(
        "spread within maxClusters",
        three_free_clusters(),
        demand(replicas=4),
        {"a": (A100, {"n1": 2}), "b": (A100, {"n1": 2})},
        policy=Policy(strategy="Spread", max_clusters=2),
    ),
    # --- Stability and scaling ------------------------------------------------------------------------------------
    Case(
        "replicas unchanged: the placement stays, even on a cluster that is now full",
        fleet(gpu("a", "n1", free=0), gpu("b", "n1")),
        demand(replicas=2),
        {"a": (A100, {"n1": 2})},
        current=(share("a", A100, n1=2),),
        reasons=("replicas unchanged; existing placement kept",),
    ),
    Case(
        "a preferred cluster with room does not pull running replicas over",
        fleet(gpu("a", "n1", free=0), gpu("b", "n1")),
        demand(replicas=1),
        {"a": (A100, {"n1": 1})},
        policy=Policy(preferred_clusters=("b",)),
        current=(share("a", A100, n1=1),),
    ),
    Case(
        "scale up grows the cluster that runs replicas, not the origin",
        fleet(gpu("a", "n1"), gpu("b", "n1", free=7)),
        demand(replicas=2, origin="a"),
        {"b": (A100, {"n1": 2})},
        current=(share("b", A100, n1=1),),
    ),
    Case(
        "scale up places only the new replicas; the running ones keep their nodes",
        fleet(gpu("a", "n1", free=0), gpu("a", "n2", free=4)),
        demand(replicas=3, gpus=2),
        {"a": (A100, {"n1": 1, "n2": 2})},
        current=(share("a", A100, n1=1),),
    ),
    Case(
        "scale down under pack: the least preferred cluster gives up replicas",
        three_free_clusters(),
        demand(replicas=3),
        {"a": (A100, {"n1": 2}), "b": (A100, {"n1": 1})},
        current=(share("a", A100, n1=2), share("b", A100, n1=2)),
        reasons=("scaled down by 1 replica(s), keeping the most preferred clusters",),
    ),
    Case(
        "scale down under spread: the largest share gives up replicas, last nodes by name first",
        three_free_clusters(),
        demand(replicas=5),
        {"a": (A100, {"n1": 1}), "b": (A100, {"n1": 2}), "c": (A100, {"n1": 2})},
        policy=Policy(strategy="Spread"),
        current=(share("a", A100, n1=1), share("b", A100, n1=2, n2=1), share("c", A100, n1=2)),
    ),
    Case(
        "scale to zero releases every replica",
        three_free_clusters(),
        demand(replicas=0),
        {},
        current=(share("a", A100, n1=2),),
    ),
    Case(
        "maxClusters lowered: the least preferred cluster is released and its replica re-placed",
        three_free_clusters(),
        demand(replicas=3),
        {"a": (A100, {"n1": 2}), "b": (A100, {"n1": 1})},
        policy=Policy(max_clusters=2),
        current=(share("a", A100, n1=1), share("b", A100, n1=1), share("c", A100, n1=1)),
        reasons=("cluster c released: maxClusters is 2",),
    ),
    Case(
        "a share on an unhealthy cluster is left to the caller; its replicas are placed elsewhere",
        three_free_clusters(),
        demand(replicas=2),
        {"b": (A100, {"n1": 2})},
        current=(share("a", A100, n1=2),),
        infos=clusters("a", "b", "c", down=("a",)),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_place(case: Case) -> None:
    infos = case.infos if case.infos is not None else clusters_of(case.capacity)

    decision = place(case.demand, clusters=infos, capacity=case.capacity, policy=case.policy, current=case.current)

    assert placed(decision) == case.expected
    assert decision.outcome == case.outcome, decision.message
    assert decision.placed == sum(sum(nodes.values()) for _, nodes in case.expected.values())
    for reason in case.reasons:
        assert reason in decision.reasons


def test_cases_have_unique_names() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


# --- What the decision takes from the fleet --------------------------------------------------------------------


def test_capacity_left_is_exactly_what_was_not_taken() -> None:
    capacity = fleet(gpu("a", "n1", free=4), gpu("a", "n2", free=8), gpu("b", "n1", free=8))

    decision = place(demand(replicas=3, gpus=2), clusters=clusters_of(capacity), capacity=capacity, policy=Policy())

    assert free_gpus(decision.capacity) == {"a": {"n1": 0, "n2": 6}, "b": {"n1": 8}}
    assert free_gpus(capacity) == {"a": {"n1": 4, "n2": 8}, "b": {"n1": 8}}  # the input is not changed


def test_two_decisions_in_a_row_never_share_gpus() -> None:
    capacity = fleet(gpu("a", "n1", free=4), gpu("b", "n1", free=4))
    infos = clusters_of(capacity)

    first = place(demand(gpus=4, key="a/ns/one"), clusters=infos, capacity=capacity, policy=Policy())
    second = place(demand(gpus=4, key="a/ns/two"), clusters=infos, capacity=first.capacity, policy=Policy())
    third = place(demand(gpus=4, key="a/ns/three"), clusters=infos, capacity=second.capacity, policy=Policy())

    assert placed(first) == {"a": (A100, {"n1": 1})}
    assert placed(second) == {"b": (A100, {"n1": 1})}
    assert placed(third) == {}
    assert third.outcome == "InsufficientGPU"


def test_scale_down_hands_out_no_capacity_in_the_same_decision() -> None:
    # The pods of the removed replicas still run until the applier deletes them.
    capacity = fleet(gpu("a", "n1", free=0))

    decision = place(
        demand(replicas=1),
        clusters=clusters_of(capacity),
        capacity=capacity,
        policy=Policy(),
        current=(share("a", A100, n1=4),),
    )

    assert placed(decision) == {"a": (A100, {"n1": 1})}
    assert free_gpus(decision.capacity) == {"a": {"n1": 0}}


# --- Messages a user can act on --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "the_demand", "policy", "infos", "message"),
    [
        pytest.param(
            fleet(gpu("a", "n1", A100), gpu("a", "n2", H100, free=2)),
            demand(gpus=4, types=(H100,), cpu_m=8_000, memory_gib=64),
            Policy(),
            None,
            "1 of 1 replica(s) could not be placed: each needs 4 × NVIDIA-H100-80GB-HBM3, 8 CPU, 64Gi memory; "
            "best available: 2 × NVIDIA-H100-80GB-HBM3 on a/n2 (of any type: 8 × NVIDIA-A100-SXM4-80GB on a/n1)",
            id="wrong type: the largest block of the type, and of any type",
        ),
        pytest.param(
            fleet(gpu("a", "n1", A100, free=3), gpu("b", "n1", A100, free=3)),
            demand(replicas=2, gpus=4),
            Policy(),
            None,
            "2 of 2 replica(s) could not be placed: each needs 4 × any GPU; "
            "best available: 3 × NVIDIA-A100-SXM4-80GB on a/n1",
            id="fragmented: the largest free block, first cluster in preference order",
        ),
        pytest.param(
            fleet(gpu("a", "n1", A100, free=3), gpu("b", "n1", A100, free=8)),
            demand(replicas=3, gpus=4, min_gpu_memory_gib=40),
            Policy(),
            None,
            "1 of 3 replica(s) could not be placed: each needs 4 × any GPU with ≥40Gi each; "
            "best available: 3 × NVIDIA-A100-SXM4-80GB on a/n1; placed b=2 (NVIDIA-A100-SXM4-80GB)",
            id="partial: what is missing and what was placed",
        ),
        pytest.param(
            fleet(gpu("a", "n1"), cpu("a", "n2", cpu_m=2_000, memory_gib=8)),
            demand(gpus=0, cpu_m=4_000, memory_gib=8),
            Policy(),
            None,
            "1 of 1 replica(s) could not be placed: each needs 4 CPU, 8Gi memory; "
            "best available: 2 CPU, 8Gi memory on a/n2",
            id="CPU-only: the roomiest node without GPUs",
        ),
        pytest.param(
            fleet(*(gpu(c, "n1") for c in "abcdefgh")),
            demand(),
            Policy(match_labels=(("region", "mars"),)),
            clusters(*"abcdefgh", down="b"),
            "no healthy cluster matches the placement policy; "
            "excluded: 1 unhealthy (b), 7 not matching the clusterSelector (a, c, d, e, f, …)",
            id="no eligible cluster: why each was excluded, in short",
        ),
    ],
)
def test_message(
    capacity: FleetCapacity, the_demand: Demand, policy: Policy, infos: list[ClusterInfo] | None, message: str
) -> None:
    decision = place(the_demand, clusters=infos or clusters_of(capacity), capacity=capacity, policy=policy)

    assert decision.message == message


def test_placed_message_lists_clusters_in_rank_order_with_products() -> None:
    capacity = fleet(gpu("a", "n1", H100, free=1), gpu("b", "n1", A100))

    decision = place(
        demand(replicas=3, origin="b", types=(H100, A100)),
        clusters=clusters_of(capacity),
        capacity=capacity,
        policy=Policy(),
    )

    assert decision.message == "placed b=2 (NVIDIA-A100-SXM4-80GB), a=1 (NVIDIA-H100-80GB-HBM3)"


# --- Cluster ranking on its own --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "origin", "order"),
    [
        pytest.param(Policy(), "c", ["c", "a", "b", "d"], id="origin first, then by name"),
        pytest.param(Policy(prefer_origin=False), "c", ["a", "b", "c", "d"], id="by name without origin preference"),
        pytest.param(Policy(preferred_clusters=("d", "b")), "c", ["d", "b", "c", "a"], id="preferences, origin, rest"),
        pytest.param(Policy(preferred_clusters=("x", "d")), "a", ["d", "a", "b", "c"], id="unknown preference ignored"),
        pytest.param(Policy(preferred_clusters=("c",)), "c", ["c", "a", "b", "d"], id="origin also preferred: once"),
    ],
)
def test_rank_clusters(policy: Policy, origin: str, order: list[str]) -> None:
    infos = clusters("d", "b", "c", "a")  # input order does not matter

    assert rank_clusters(infos, policy, origin) == (order, [])


# --- Verdicts: every cluster, and why it holds what it holds ---------------------------------------------------


@dataclass(frozen=True)
class VerdictCase:
    id: str
    capacity: FleetCapacity
    demand: Demand
    expected: dict[str, tuple[bool, int, str | None]]
    """{cluster: (eligible, replicas, reason code)} for every cluster of the fleet."""
    detail: tuple[str, str] = ("", "")
    """(cluster, text its verdict's detail must contain)."""
    policy: Policy = DEFAULT_POLICY
    current: tuple[Share, ...] = ()
    infos: list[ClusterInfo] | None = None


VERDICT_CASES = [
    VerdictCase(
        "unhealthy",
        three_free_clusters(),
        demand(),
        {"a": (False, 0, "unhealthy"), "b": (True, 1, None), "c": (True, 0, "not_needed")},
        ("a", "unhealthy"),
        infos=clusters("a", "b", "c", down=("a",)),
    ),
    VerdictCase(
        "selector mismatch",
        three_free_clusters(),
        demand(),
        {"a": (False, 0, "selector_mismatch"), "b": (True, 1, None), "c": (False, 0, "selector_mismatch")},
        ("a", "its labels (region=eu, tier=dev) do not match the clusterSelector"),
        policy=Policy(match_labels=(("tier", "prod"),)),
        infos=clusters("a", "b", "c", labels=REGIONS),
    ),
    VerdictCase(
        "no acceptable GPU type",
        fleet(gpu("a", "n1", A100), gpu("b", "n1", H100), cpu("c", "n1")),
        demand(types=(H100,)),
        {"a": (True, 0, "no_acceptable_gpu_type"), "b": (True, 1, None), "c": (True, 0, "no_acceptable_gpu_type")},
        ("a", f"no usable node has {H100} (it has {A100})"),
    ),
    VerdictCase(
        "CPU-only replicas and a cluster without a node without GPUs",
        fleet(gpu("a", "n1"), cpu("b", "n1")),
        demand(gpus=0, cpu_m=1_000),
        {"a": (True, 0, "no_acceptable_gpu_type"), "b": (True, 1, None)},
        ("a", "no usable node without GPUs"),
    ),
    VerdictCase(
        "GPU memory below the minMemory floor, even when the decision places elsewhere",
        fleet(gpu("a", "n1", A100_40), gpu("b", "n1", H100)),
        demand(min_gpu_memory_gib=80),
        {"a": (True, 0, "gpu_memory_below_floor"), "b": (True, 1, None)},
        ("a", f"its {A100_40} GPUs have 40Gi, below the minMemory of 80Gi"),
    ),
    VerdictCase(
        "no node with k free GPUs: 2 + 2 free is not 4 on one node",
        fleet(gpu("a", "n1", free=2), gpu("a", "n2", free=2), gpu("b", "n1", free=4)),
        demand(gpus=4),
        {"a": (True, 0, "no_node_with_room"), "b": (True, 1, None)},
        ("a", "the roomiest, n1, has 2 × NVIDIA-A100-SXM4-80GB GPU(s)"),
    ),
    VerdictCase(
        "maxClusters reached",
        three_free_clusters(free=4),
        demand(replicas=3, gpus=4),
        {"a": (True, 1, None), "b": (True, 1, None), "c": (True, 0, "max_clusters_reached")},
        ("c", "maxClusters is 2, taken by a, b"),
        policy=Policy(max_clusters=2),
    ),
    VerdictCase(
        "maxClusters lowered: the released share says so",
        three_free_clusters(),
        demand(replicas=3),
        {"a": (True, 2, None), "b": (True, 1, None), "c": (True, 0, "max_clusters_reached")},
        ("c", "its 1 replica(s) released: maxClusters is 2"),
        policy=Policy(max_clusters=2),
        current=(share("a", A100, n1=1), share("b", A100, n1=1), share("c", A100, n1=1)),
    ),
    VerdictCase(
        "allowSplit false: the deployment lives in one cluster",
        fleet(gpu("a", "n1", free=4), gpu("b", "n1", free=8)),
        demand(replicas=3, gpus=4),
        {"a": (True, 0, "split_not_allowed"), "b": (True, 2, None)},
        ("a", "allowSplit is false and the deployment lives in b"),
        policy=Policy(allow_split=False),
    ),
    VerdictCase(
        "not needed: the preferred cluster holds every replica",
        three_free_clusters(),
        demand(replicas=2),
        {"a": (True, 2, None), "b": (True, 0, "not_needed"), "c": (True, 0, "not_needed")},
        ("b", "clusters before it in the preference order hold every replica"),
    ),
    VerdictCase(
        "not needed: replicas unchanged, the placement kept",
        three_free_clusters(),
        demand(replicas=1),
        {"a": (True, 0, "not_needed"), "b": (True, 1, None), "c": (True, 0, "not_needed")},
        ("a", "the replicas already placed elsewhere are enough"),
        current=(share("b", A100, n1=1),),
    ),
]


def verdicts_of(case: VerdictCase) -> tuple[Decision, dict[str, ClusterVerdict]]:
    infos = case.infos if case.infos is not None else clusters_of(case.capacity)
    decision = place(case.demand, clusters=infos, capacity=case.capacity, policy=case.policy, current=case.current)
    verdicts = decision.verdicts()
    assert [v.cluster for v in verdicts] == sorted(i.name for i in infos)  # every cluster, once, in name order
    return decision, {v.cluster: v for v in verdicts}


@pytest.mark.parametrize("case", VERDICT_CASES, ids=[c.id for c in VERDICT_CASES])
def test_verdicts(case: VerdictCase) -> None:
    decision, verdicts = verdicts_of(case)

    assert {c: (v.eligible, v.replicas, v.reason) for c, v in verdicts.items()} == case.expected
    assert {c: v.replicas for c, v in verdicts.items() if v.replicas} == {
        s.cluster: s.replicas for s in decision.shares
    }
    cluster, text = case.detail
    assert text in verdicts[cluster].detail, verdicts[cluster].detail


def test_every_reason_code_has_a_verdict_case() -> None:
    covered = {reason for case in VERDICT_CASES for _, _, reason in case.expected.values()}
    # unschedulable is reconcile's to give (tests/unit/test_reconcile.py)
    assert covered | {"unschedulable", None} == set(get_args(PassOverReason)) | {None}


def test_released_shares_are_data_with_a_reason() -> None:
    capacity = three_free_clusters()
    infos = clusters("a", "b", "c", labels=REGIONS)

    decision = place(
        demand(replicas=2),
        clusters=infos,
        capacity=capacity,
        policy=Policy(match_expressions=(Requirement("region", "In", ("us",)),), max_clusters=1),
        current=(share("a", A100, n1=1), share("b", A100, n1=1), share("c", A100, n1=1)),
    )

    assert [(r.cluster, r.replicas, r.reason, r.detail) for r in decision.released] == [
        ("a", 1, "selector_mismatch", "its labels (region=eu, tier=dev) do not match the clusterSelector"),
        ("c", 1, "max_clusters_reached", "maxClusters is 1"),
    ]
    assert placed(decision) == {"b": (A100, {"n1": 2})}


def test_a_listed_type_too_small_for_the_floor_is_not_called_no_room() -> None:
    capacity = fleet(gpu("a", "n1", A100_40), gpu("b", "n1", H100))

    decision = place(
        demand(types=(A100_40, H100), min_gpu_memory_gib=80),
        clusters=clusters_of(capacity),
        capacity=capacity,
        policy=Policy(),
    )

    assert placed(decision) == {"b": (H100, {"n1": 1})}
    assert f"no {A100_40} has the minMemory of 80Gi per GPU (they have 40Gi)" in decision.reasons
    assert f"no room on {A100_40}" not in decision.reasons
