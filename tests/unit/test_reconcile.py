"""The planner's pure reconcile step: decisions, failover roles, plans and status, from plain inputs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from api.events import decode_event, encode_event
from api.models import NetworkPolicySpec
from api.plans import DeploymentRef, StatusPlan, WorkloadPlan
from planner.capacity import NodeFacts, free_capacity
from planner.placement import ClusterInfo
from planner.reconcile import DeploymentState, Inputs, Outcome, PlacementState, WorkloadState, reconcile

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
REF = DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="u1")
GPU_MODEL = {
    "modelName": "llama",
    "image": "r/llama:1",
    "resources": {
        "cpu": "4",
        "memory": "32Gi",
        "gpu": {"count": 4, "types": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"]},
    },
}
CLUSTERS = [ClusterInfo("a100"), ClusterInfo("cpu"), ClusterInfo("mixed")]
NODES = [
    NodeFacts("a100", "a-1", "NVIDIA-A100-SXM4-80GB", 80 * 2**30, 8, 96_000, 2**40),
    NodeFacts("mixed", "h-1", "NVIDIA-H100-80GB-HBM3", 80 * 2**30, 8, 96_000, 2**40),
    NodeFacts("cpu", "c-1", None, 0, 0, 32_000, 128 * 2**30),
]


def deployment(replicas: int = 1, **spec: Any) -> DeploymentState:
    return DeploymentState(
        origin="cpu",
        namespace="team",
        name="chat",
        uid="u1",
        generation=1,
        spec={"modelRef": "llama", "replicas": replicas, **spec},
        deleting=False,
        has_finalizer=True,
        plan_sequence=0,
        last_status=None,
        last_outcome=None,
    )


def inputs(**overrides: Any) -> Inputs:
    base = Inputs(
        ref=REF,
        deployment=deployment(),
        model_spec=GPU_MODEL,
        placements=[],
        workloads=[],
        last_plans={},
        clusters=CLUSTERS,
        capacity=free_capacity(NODES, []),
        epoch=3,
        now=NOW,
    )
    return replace(base, **overrides)


def workload_plans(outcome: Outcome) -> dict[str, WorkloadPlan]:
    return {p.cluster: p for p in outcome.plans if isinstance(p, WorkloadPlan)}


def status_plan(outcome: Outcome) -> StatusPlan:
    return next(p for p in outcome.plans if isinstance(p, StatusPlan))


def placed(cluster: str, replicas: int, plan: WorkloadPlan | None, role: str = "active") -> PlacementState:
    return PlacementState(
        cluster=cluster,
        replicas=replicas,
        role=role,
        gpu_type=plan.gpu_type if plan else None,
        nodes={"a-1": replicas} if cluster == "a100" else {"h-1": replicas},
        plan_id=plan.plan_id if plan else None,
        apply_outcome="Applied",
        apply_message="",
        applied_plan_id=plan.plan_id if plan else None,
    )


def test_a_new_deployment_gets_a_decision_a_workload_plan_and_a_status_with_the_finalizer() -> None:
    outcome = reconcile(inputs())
    assert outcome.decided is not None
    assert outcome.decided.outcome == "Placed"
    assert [(s.cluster, s.replicas, s.gpu_type) for s in outcome.decided.shares] == [
        ("a100", 1, "NVIDIA-A100-SXM4-80GB")
    ]
    plan = workload_plans(outcome)["a100"]
    assert (plan.replicas, plan.sequence, plan.epoch, plan.is_origin) == (1, 1, 3, False)
    status = status_plan(outcome)
    assert status.finalizer == "ensure"
    assert status.sequence == 2
    assert [e.reason for e in status.events] == ["Placed"]


def test_the_same_state_reconciled_again_issues_no_new_workload_plan() -> None:
    first = reconcile(inputs())
    plan = workload_plans(first)["a100"]
    again = reconcile(
        inputs(
            deployment=replace(
                deployment(), plan_sequence=2, last_outcome="Placed", last_status=status_plan(first).status.wire()
            ),
            placements=[placed("a100", 1, plan)],
            last_plans={"a100": plan},
        )
    )
    assert workload_plans(again) == {}
    assert again.decided is None


def test_a_missing_model_holds_running_workloads_and_says_model_not_found() -> None:
    plan = workload_plans(reconcile(inputs()))["a100"]
    outcome = reconcile(inputs(model_spec=None, placements=[placed("a100", 1, plan)], last_plans={"a100": plan}))
    assert workload_plans(outcome) == {}  # nothing removed
    ready = next(c for c in status_plan(outcome).status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "ModelNotFound")


def test_an_unhealthy_cluster_fails_over_and_keeps_the_old_copy_until_it_is_back_and_the_new_one_ready() -> None:
    plan = workload_plans(reconcile(inputs()))["a100"]
    lost = [ClusterInfo("a100", healthy=False), ClusterInfo("cpu"), ClusterInfo("mixed")]
    outcome = reconcile(
        inputs(
            clusters=lost,
            placements=[placed("a100", 1, plan)],
            last_plans={"a100": plan},
            deployment=replace(deployment(), plan_sequence=2, last_outcome="Placed"),
        )
    )
    assert outcome.decided is not None
    roles = {s.cluster: (s.role, s.replicas) for s in outcome.decided.shares}
    assert roles == {"a100": ("retiring", 1), "mixed": ("active", 1)}
    assert set(workload_plans(outcome)) == {"mixed"}  # no removal sent to the lost cluster
    assert "FailedOver" in [e.reason for e in status_plan(outcome).events]

    replacement = workload_plans(outcome)["mixed"]
    back = [ClusterInfo("a100"), ClusterInfo("cpu"), ClusterInfo("mixed")]
    still_starting = inputs(
        clusters=back,
        last_plans={"a100": plan, "mixed": replacement},
        placements=[placed("a100", 1, plan, role="retiring"), placed("mixed", 1, replacement)],
        workloads=[WorkloadState("mixed", replacement.plan_id, 1, 0, 0, 1, 1, 1)],
        deployment=replace(deployment(), plan_sequence=4, last_outcome="Placed"),
    )
    assert workload_plans(reconcile(still_starting)) == {}  # the replacement is not ready: keep the old copy
    ready = replace(still_starting, workloads=[WorkloadState("mixed", replacement.plan_id, 1, 1, 1, 1, 1, 1)])
    removal = workload_plans(reconcile(ready))
    assert set(removal) == {"a100"}
    assert removal["a100"].removes_everything


def test_deleting_removes_every_share_and_releases_the_finalizer_only_when_none_is_left() -> None:
    plan = workload_plans(reconcile(inputs()))["a100"]
    deleting = replace(deployment(), deleting=True, plan_sequence=2, last_outcome="Placed")
    outcome = reconcile(inputs(deployment=deleting, placements=[placed("a100", 1, plan)], last_plans={"a100": plan}))
    removal = workload_plans(outcome)["a100"]
    assert removal.removes_everything
    assert not any(isinstance(p, StatusPlan) and p.finalizer == "remove" for p in outcome.plans)
    cleaned = reconcile(
        inputs(deployment=replace(deleting, plan_sequence=3), placements=[], last_plans={"a100": removal})
    )
    assert [p.finalizer for p in cleaned.plans if isinstance(p, StatusPlan)] == ["remove"]


def test_autoscaling_needs_no_plan_in_an_origin_that_runs_no_replicas() -> None:
    # The fleet autoscaler lives in the planner and writes /scale through a scale plan; the origin no longer
    # hosts a HorizontalPodAutoscaler, so it gets no workload plan of its own.
    spec = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4, "target": {"queueDepth": 8}}}
    outcome = reconcile(inputs(deployment=deployment(**spec)))
    plans = workload_plans(outcome)
    assert plans["a100"].replicas == 1
    assert "cpu" not in plans


def test_no_capacity_anywhere_reports_insufficient_gpu_with_what_was_needed() -> None:
    outcome = reconcile(inputs(deployment=deployment(replicas=5)))
    assert outcome.decided is not None
    assert outcome.decided.outcome == "PartiallyPlaced"
    placed_condition = next(c for c in status_plan(outcome).status.conditions if c.type == "Placed")
    assert placed_condition.reason == "InsufficientGPU"
    assert "1 of 5 replica(s) could not be placed" in placed_condition.message  # 2 on a100, 2 on mixed


def test_an_unchanged_status_is_not_sent_again_and_transition_times_move_only_on_flips() -> None:
    first = reconcile(inputs())
    plan = workload_plans(first)["a100"]
    earlier = status_plan(first).status
    known = replace(deployment(), plan_sequence=2, last_status=earlier.wire(), last_outcome="Placed")
    quiet = reconcile(
        inputs(
            now=NOW + timedelta(minutes=5),
            deployment=known,
            placements=[placed("a100", 1, plan)],
            last_plans={"a100": plan},
        )
    )
    assert quiet.plans == ()  # same status: nothing to write

    ready = reconcile(
        inputs(
            now=NOW + timedelta(minutes=5),
            deployment=known,
            placements=[placed("a100", 1, plan)],
            last_plans={"a100": plan},
            workloads=[WorkloadState("a100", plan.plan_id, 1, 1, 1, 1, 1, 1)],
        )
    )
    times = {c.type: (c.status, c.last_transition_time) for c in status_plan(ready).status.conditions}
    assert times["Placed"] == ("True", NOW)  # unchanged since the first decision
    assert times["Ready"] == ("True", NOW + timedelta(minutes=5))  # flipped now


def test_replicas_a_scheduler_leaves_pending_too_long_are_placed_elsewhere_and_running_ones_stay() -> None:
    first = reconcile(inputs(deployment=deployment(replicas=2)))
    plan = workload_plans(first)["a100"]
    known = replace(
        deployment(replicas=2), plan_sequence=2, last_outcome="Placed", last_status=status_plan(first).status.wire()
    )
    share = replace(placed("a100", 2, plan), nodes={"a-1": 2})
    # One replica runs; the other has waited for a node too long (its node was cordoned, say).
    stuck = reconcile(
        inputs(deployment=known, placements=[share], last_plans={"a100": plan}, scheduling={"a100": (1, 1)})
    )
    assert stuck.decided is not None
    assert {s.cluster: (s.role, s.replicas) for s in stuck.decided.shares} == {
        "a100": ("active", 1),
        "mixed": ("active", 1),
    }
    assert stuck.decided.reasons[0] == "1 replica(s) unschedulable in cluster a100: placed elsewhere"
    plans = workload_plans(stuck)
    assert (plans["a100"].replicas, plans["mixed"].replicas) == (1, 1)
    assert "Unschedulable" in [e.reason for e in status_plan(stuck).events]
    # The next capacity is the real one again: a100 still has its 8 GPUs minus nothing new taken there.
    assert sum(n.gpus for n in stuck.capacity.nodes("a100")) == 8


def test_pending_pods_beyond_what_a_share_expects_are_ignored() -> None:
    first = reconcile(inputs(deployment=deployment(replicas=2)))
    plan = workload_plans(first)["a100"]
    known = replace(
        deployment(replicas=2), plan_sequence=2, last_outcome="Placed", last_status=status_plan(first).status.wire()
    )
    share = replace(placed("a100", 2, plan), nodes={"a-1": 2})
    # Both replicas run; a third pod lingers Pending while Kubernetes removes it: nothing to move.
    calm = reconcile(
        inputs(deployment=known, placements=[share], last_plans={"a100": plan}, scheduling={"a100": (2, 1)})
    )
    assert workload_plans(calm) == {}
    assert calm.decided is None


def _ready_with(plan: WorkloadPlan, **spec: Any) -> DeploymentState:
    """The deployment as it was when `plan`'s workload became ready (its status says Ready)."""
    running = WorkloadState("a100", plan.plan_id, 1, 1, 1, 1, 1, 1)
    settled = reconcile(
        inputs(
            deployment=replace(deployment(**spec), plan_sequence=2),
            placements=[placed("a100", 1, plan)],
            last_plans={"a100": plan},
            workloads=[running],
        )
    )
    status = status_plan(settled).status
    assert status.ready == "Ready"
    return replace(deployment(**spec), plan_sequence=4, last_status=status.wire(), last_outcome="Placed")


def _catching_up(known: DeploymentState, running: WorkloadPlan, latest: WorkloadPlan) -> Inputs:
    """A minute later: `latest` is planned, the watcher still sees the workload running `running`."""
    return inputs(
        now=NOW + timedelta(minutes=1),
        deployment=known,
        placements=[placed("a100", 1, latest)],
        last_plans={"a100": latest},
        workloads=[WorkloadState("a100", running.plan_id, 1, 1, 1, 1, 1, 1)],
        observed_plans={running.plan_id: running},
    )


def test_a_plan_that_replaces_no_pod_keeps_ready_while_the_workload_catches_up() -> None:
    """A NetworkPolicy change: the workload still shows the previous plan (the watcher has not yet seen the new
    annotation), but its pods are what the new plan asks for, so Ready stays True and no status plan is sent."""
    first = workload_plans(reconcile(inputs()))["a100"]
    assert first.spec is not None
    newer = first.model_copy(
        update={
            "plan_id": "p-policy",
            "sequence": first.sequence + 2,
            "spec": first.spec.model_copy(update={"network_policy": NetworkPolicySpec(enabled=False)}),
        }
    )
    known = _ready_with(first, networkPolicy={"enabled": False})
    assert reconcile(_catching_up(known, first, newer)).plans == ()


def test_a_plan_that_replaces_the_pods_says_waiting_until_the_workload_runs_it() -> None:
    first = workload_plans(reconcile(inputs()))["a100"]
    assert first.spec is not None
    port_changed = first.spec.model_copy(update={"port": 9000})
    newer = first.model_copy(update={"plan_id": "p-port", "sequence": first.sequence + 2, "spec": port_changed})
    rolling = reconcile(_catching_up(_ready_with(first, port=9000), first, newer))
    assert workload_plans(rolling) == {}
    assert status_plan(rolling).status.ready == "WaitingForReplicas"


def test_a_decision_carries_a_typed_verdict_for_every_cluster() -> None:
    decided = reconcile(inputs()).decided

    assert decided is not None
    assert [(v.cluster, v.eligible, v.replicas, v.reason) for v in decided.verdicts] == [
        ("a100", True, 1, None),
        ("cpu", True, 0, "no_acceptable_gpu_type"),
        ("mixed", True, 0, "not_needed"),
    ]
    assert decode_event(encode_event(decided)) == decided  # data on the wire and in the log, not prose


def test_a_share_released_by_max_clusters_keeps_running_until_its_replacement_is_ready() -> None:
    spec = {"placement": {"maxClusters": 1}}
    first = reconcile(inputs(deployment=deployment(replicas=2)))
    plan = workload_plans(first)["a100"]
    known = replace(
        deployment(replicas=2, **spec),
        plan_sequence=2,
        last_outcome="Placed",
        last_status=status_plan(first).status.wire(),
    )
    mixed = replace(placed("mixed", 1, plan), gpu_type="NVIDIA-H100-80GB-HBM3")
    # After the origin, clusters rank by name: a100 stays (and takes both replicas), mixed is released.
    outcome = reconcile(
        inputs(deployment=known, placements=[placed("a100", 1, plan), mixed], last_plans={"a100": plan})
    )

    assert outcome.decided is not None
    assert [(r.cluster, r.replicas, r.reason) for r in outcome.decided.released] == [
        ("mixed", 1, "max_clusters_reached")
    ]
    assert {s.cluster: (s.role, s.replicas) for s in outcome.decided.shares} == {
        "a100": ("active", 2),
        "mixed": ("retiring", 1),
    }
    verdict = next(v for v in outcome.decided.verdicts if v.cluster == "mixed")
    assert (verdict.reason, verdict.detail) == ("max_clusters_reached", "its 1 replica(s) released: maxClusters is 1")


def test_a_cluster_whose_scheduler_left_every_replica_pending_is_passed_over_as_unschedulable() -> None:
    first = reconcile(inputs())
    plan = workload_plans(first)["a100"]
    known = replace(deployment(), plan_sequence=2, last_outcome="Placed", last_status=status_plan(first).status.wire())

    stuck = reconcile(
        inputs(
            deployment=known,
            placements=[placed("a100", 1, plan)],
            last_plans={"a100": plan},
            scheduling={"a100": (0, 1)},
        )
    )

    assert stuck.decided is not None
    verdicts = {v.cluster: (v.replicas, v.reason, v.detail) for v in stuck.decided.verdicts}
    assert verdicts["a100"] == (0, "unschedulable", "1 replica(s) left Pending by its scheduler: placed elsewhere")
    assert verdicts["mixed"][:2] == (1, None)
