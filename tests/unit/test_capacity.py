"""Table tests of planner/capacity.py: per-node free capacity after pods and reservations, usable nodes, and the
derived data FleetCapacity keeps (which must always agree with counting from scratch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from api.scheduling import CPU_POD_TOLERATIONS, GPU_POD_TOLERATIONS
from planner.capacity import NodeFacts, PodUsage, Reservation, free_capacity, gpu_capacity, usable
from planner.fleet import FleetCapacity, NodeFree
from tests.unit.factories import A100, A100_40, H100, GiB, facts, fleet, free_gpus, gpu, pod


def reservation(
    cluster: str, nodes: Mapping[str, int], *, replicas: int | None = None, gpus: int = 1, key: str = "a/ns/llm"
) -> Reservation:
    return Reservation(
        deployment_key=key,
        cluster=cluster,
        replicas=sum(nodes.values()) if replicas is None else replicas,
        expected_nodes=dict(nodes),
        gpus=gpus,
        cpu_m=1_000,
        memory_bytes=4 * GiB,
    )


TWO_NODES = (facts("a", "n1"), facts("a", "n2"))


@pytest.mark.parametrize(
    ("nodes", "pods", "reservations", "expected"),
    [
        pytest.param(TWO_NODES, (), (), {"a": {"n1": 8, "n2": 8}}, id="nothing running: allocatable is free"),
        pytest.param(
            TWO_NODES,
            (pod("a", "n1", gpus=3), pod("a", "n1", gpus=2)),
            (),
            {"a": {"n1": 3, "n2": 8}},
            id="bound pods take their requests from their node",
        ),
        pytest.param(
            TWO_NODES,
            (pod("a", "gone", gpus=3), pod("b", "n1", gpus=3)),
            (),
            {"a": {"n1": 8, "n2": 8}},
            id="pods on unknown nodes change nothing",
        ),
        pytest.param(
            TWO_NODES,
            (),
            (reservation("a", {"n1": 2, "n2": 1}, gpus=2),),
            {"a": {"n1": 4, "n2": 6}},
            id="a reservation is charged to the nodes it expects",
        ),
        pytest.param(
            TWO_NODES,
            (pod("a", "n1", gpus=2, deployment="a/ns/llm"),),
            (reservation("a", {"n1": 2, "n2": 1}, gpus=2),),
            {"a": {"n1": 4, "n2": 6}},
            id="a bound replica is counted once: as a pod, no longer as a reservation",
        ),
        pytest.param(
            (*TWO_NODES, facts("a", "n3")),
            (pod("a", "n3", gpus=2, deployment="a/ns/llm"),),
            (reservation("a", {"n1": 2, "n2": 1}, gpus=2),),
            {"a": {"n1": 4, "n2": 8, "n3": 6}},
            id="a replica bound elsewhere settles the expected nodes in name order",
        ),
        pytest.param(
            TWO_NODES,
            (pod("a", "n1", gpus=2, deployment="a/ns/llm"), pod("a", "n2", gpus=2, deployment="a/ns/llm")),
            (reservation("a", {"n1": 1}, gpus=2),),
            {"a": {"n1": 6, "n2": 6}},
            id="scaling down: more bound than planned reserves nothing more",
        ),
        pytest.param(
            TWO_NODES,
            (pod("a", "n1", gpus=2, deployment="b/ns/other"),),
            (reservation("a", {"n1": 1}, gpus=2),),
            {"a": {"n1": 4, "n2": 8}},
            id="another deployment's pods do not settle this reservation",
        ),
        pytest.param(
            TWO_NODES,
            (pod("a", "n1", gpus=6),),
            (reservation("a", {"n1": 2}, gpus=2),),
            {"a": {"n1": 0, "n2": 8}},
            id="overcommitted by reality: clamped at zero",
        ),
        pytest.param(
            (facts("a", "n1"), facts("a", "cordoned", schedulable=False), facts("a", "down", ready=False)),
            (),
            (),
            {"a": {"n1": 8}},
            id="nodes that are not Ready or are cordoned are left out",
        ),
        pytest.param(
            (facts("b", "z"), facts("a", "y"), facts("b", "x")),
            (),
            (),
            {"a": {"y": 8}, "b": {"x": 8, "z": 8}},
            id="clusters and nodes in name order",
        ),
    ],
)
def test_free_capacity(
    nodes: Sequence[NodeFacts],
    pods: Sequence[PodUsage],
    reservations: Sequence[Reservation],
    expected: dict[str, dict[str, int]],
) -> None:
    capacity = free_capacity(nodes, pods, reservations)

    assert free_gpus(capacity) == expected
    assert list(capacity.clusters) == sorted(capacity.clusters)
    for cluster, node_list in capacity.clusters.items():
        assert [n.name for n in node_list] == sorted(n.name for n in node_list), cluster


def test_free_capacity_counts_cpu_and_memory_too() -> None:
    capacity = free_capacity(
        [facts("a", "n1", cpu_m=10_000, memory_gib=64)],
        [pod("a", "n1", gpus=1, cpu_m=3_000, memory_gib=16)],
        [reservation("a", {"n1": 2})],
    )

    (node,) = capacity.nodes("a")
    assert (node.gpus, node.cpu_m, node.memory_bytes) == (5, 5_000, 40 * GiB)
    assert node.gpu_allocatable == 8


@pytest.mark.parametrize(
    ("product", "taints", "expected"),
    [
        pytest.param(A100, (), True, id="no taints"),
        pytest.param(A100, (("nvidia.com/gpu", "NoSchedule"),), True, id="GPU pods tolerate the GPU operator taint"),
        pytest.param(A100, (("nvidia.com/gpu", "NoExecute"),), True, id="with every effect"),
        pytest.param(None, (("nvidia.com/gpu", "NoSchedule"),), False, id="CPU-only pods do not tolerate it"),
        pytest.param(A100, (("kwok.x-k8s.io/node", "NoSchedule"),), False, id="the test fleet's kwok taint blocks"),
        pytest.param(A100, (("dedicated", "PreferNoSchedule"),), True, id="PreferNoSchedule does not block"),
        pytest.param(A100, (("dedicated", "NoSchedule"),), False, id="another NoSchedule taint blocks"),
        pytest.param(A100, (("node.kubernetes.io/unreachable", "NoExecute"),), False, id="NoExecute blocks"),
        pytest.param(
            A100,
            (("nvidia.com/gpu", "NoSchedule"), ("dedicated", "NoSchedule")),
            False,
            id="every blocking taint must be tolerated",
        ),
    ],
)
def test_usable_taints(product: str | None, taints: tuple[tuple[str, str], ...], expected: bool) -> None:
    assert usable(facts("a", "n1", product, taints=taints)) is expected


def test_render_emits_the_tolerations_the_capacity_rule_assumes() -> None:
    # The report_gpu_capacity view (migration 0005) spells this rule in SQL: a change here needs a new migration.
    assert [t.manifest() for t in GPU_POD_TOLERATIONS] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert CPU_POD_TOLERATIONS == ()


def test_gpu_capacity_sums_the_planners_per_node_arithmetic() -> None:
    nodes = [
        facts("a", "n1"),
        facts("a", "n2", taints=(("nvidia.com/gpu", "NoSchedule"),)),
        facts("a", "cordoned", schedulable=False),
        facts("a", "down", ready=False),
        facts("a", "tainted", taints=(("dedicated", "NoExecute"),)),
        facts("a", "h1", H100, gpus=4),
        facts("a", "cpu", None),
        facts("b", "n1", A100_40),
    ]
    pods = [
        pod("a", "n2", gpus=4, deployment="o/ns/x"),
        pod("a", "n1", gpus=2),
        pod("a", "cordoned", gpus=8),  # runs on, but the node does not count
        pod("a", "h1", gpus=1),
    ]
    reservations = [
        reservation("a", {"n1": 2, "n2": 1}, replicas=3, gpus=4, key="o/ns/x"),  # 1 bound on n2: 2 outstanding on n1
        reservation("a", {"cordoned": 1}, replicas=1, gpus=4, key="o/ns/y"),  # held on a node that does not count
    ]

    rows = gpu_capacity(nodes, pods, reservations)
    capacity = free_capacity(nodes, pods, reservations)

    assert [
        (r.cluster, r.gpu_product, r.nodes, r.total, r.allocated, r.reserved, r.free, r.unusable_nodes, r.unusable_gpus)
        for r in rows
    ] == [
        # Per node, clamped per node: n1 8 − 2 − 8 → 0, n2 8 − 4 → 4 (not 16 − 6 − 8 = 2 for the cluster).
        ("a", A100, 2, 16, 6, 8, 4, 3, 24),
        ("a", H100, 1, 4, 1, 0, 3, 0, 0),
        ("b", A100_40, 1, 8, 0, 0, 8, 0, 0),
    ]
    for r in rows:  # the free GPUs the planner sees, node by node, add up to the same
        kind = [n for n in capacity.nodes(r.cluster) if n.gpu_product == r.gpu_product]
        assert (len(kind), sum(n.gpu_allocatable for n in kind), sum(n.gpus for n in kind)) == (
            r.nodes,
            r.total,
            r.free,
        )


@pytest.mark.parametrize(
    ("capacity", "order", "kinds", "expected"),
    [
        pytest.param(
            fleet(gpu("a", "n1", free=3), gpu("b", "n1", free=5), gpu("b", "n2", free=5)),
            ["a", "b"],
            None,
            ("b", "n1", 5),
            id="the roomiest node; ties to the first node by name",
        ),
        pytest.param(
            fleet(gpu("a", "n1", free=5), gpu("b", "n1", free=5)),
            ["b", "a"],
            None,
            ("b", "n1", 5),
            id="ties to the first cluster in the given order",
        ),
        pytest.param(
            fleet(gpu("a", "n1", free=8), gpu("b", "n1", free=2)),
            ["b"],
            None,
            ("b", "n1", 2),
            id="only the given clusters",
        ),
        pytest.param(
            fleet(gpu("a", "n1", A100, free=8), gpu("a", "n2", H100, free=2)),
            ["a"],
            [(H100, 80 * GiB)],
            ("a", "n2", 2),
            id="only the given GPU kinds",
        ),
        pytest.param(
            fleet(gpu("a", "n1", free=0)),
            ["a"],
            None,
            None,
            id="nothing free",
        ),
    ],
)
def test_largest_gpu_block(
    capacity: FleetCapacity,
    order: list[str],
    kinds: list[tuple[str, int]] | None,
    expected: tuple[str, str, int] | None,
) -> None:
    best = capacity.largest_gpu_block(order, kinds)
    assert (None if best is None else (best.cluster, best.name, best.gpus)) == expected


# --- Derived data: always what counting from scratch gives ----------------------------------------------------

KINDS = [(A100, 80 * GiB), (A100_40, 40 * GiB), (H100, 80 * GiB)]


def recount(capacity: FleetCapacity) -> FleetCapacity:
    """The same nodes in a fresh FleetCapacity: nothing derived carried over."""
    return FleetCapacity(dict(capacity.clusters))


def test_gpu_slots_count_blocks_on_single_nodes() -> None:
    capacity = fleet(gpu("a", "n1", free=5), gpu("a", "n2", free=3), gpu("a", "n3", A100_40, free=8))

    a100 = [(A100, 80 * GiB)]
    assert [capacity.gpu_slots(k, a100, "a") for k in (1, 2, 3, 4, 5, 6)] == [8, 3, 2, 1, 1, 0]
    assert capacity.gpu_slots(4, KINDS, "a") == 3
    assert capacity.gpu_slots(4, KINDS) == 3  # fleet-wide
    assert capacity.gpu_kinds() == ((A100_40, 40 * GiB), (A100, 80 * GiB))


def test_derived_data_follows_every_change() -> None:
    capacity = fleet(gpu("a", "n1", free=4), gpu("b", "n1", free=8), gpu("c", "n1", H100, free=2))
    assert list(capacity.clusters_with_gpu_slots(4, KINDS)) == ["a", "b"]  # builds the index

    (node,) = capacity.nodes("a")
    taken = capacity.with_cluster("a", (node.take(gpus=2, cpu_m=0, memory_bytes=0),))
    (node,) = capacity.nodes("b")
    taken = taken.with_cluster("b", (node.take(gpus=1, cpu_m=0, memory_bytes=0, count=8),), changed=[0])

    assert list(taken.clusters_with_gpu_slots(4, KINDS)) == []
    assert list(taken.clusters_with_gpu_slots(2, KINDS)) == ["a", "c"]
    assert taken.gpu_slots(1, KINDS, "a") == 2
    assert taken.has_gpu_slots(2, [(H100, 80 * GiB)])
    assert not taken.has_gpu_slots(3, KINDS)
    fresh = recount(taken)
    for k in range(1, 9):
        assert list(taken.clusters_with_gpu_slots(k, KINDS)) == list(fresh.clusters_with_gpu_slots(k, KINDS)), k
        for cluster in "abc":
            assert taken.gpu_slots(k, KINDS, cluster) == fresh.gpu_slots(k, KINDS, cluster), (k, cluster)
    # The capacity it was derived from is unchanged, and still answers for itself.
    assert free_gpus(capacity) == {"a": {"n1": 4}, "b": {"n1": 8}, "c": {"n1": 2}}
    assert list(capacity.clusters_with_gpu_slots(4, KINDS)) == ["a", "b"]


def test_memo_is_per_version_of_a_cluster_and_not_part_of_equality() -> None:
    capacity = fleet(gpu("a", "n1", free=4), gpu("b", "n1", free=8))
    calls: list[int] = []

    def total(nodes: tuple[NodeFree, ...]) -> int:
        calls.append(1)
        return sum(n.gpus for n in nodes)

    assert capacity.memo("a", "total", total) == 4
    assert capacity.memo("a", "total", total) == 4
    (node,) = capacity.nodes("b")
    derived = capacity.with_cluster("b", (node.take(gpus=1, cpu_m=0, memory_bytes=0),))
    assert derived.memo("a", "total", total) == 4  # "a" did not change: remembered
    assert derived.memo("b", "total", total) == 7
    assert len(calls) == 2  # "a" once for both versions, "b" once for the derived one

    assert recount(derived) == derived
    assert derived != capacity
