"""Level-based reconciliation of one LLMDeployment: from the store's view to a decision, plans and a status.

Guarantees:
- Computed from the whole current state (projections), never from the event that triggered it; running it twice
  on the same state yields no new plans the second time (plans are issued only when the intent for a cluster
  differs from the last plan sent there).
- Failover never deletes the last running copy: shares on an unhealthy cluster, or on a cluster the policy no
  longer selects, become "retiring" and keep running until the replacement replicas are Available and the
  cluster is reachable again; only then are they removed.
- Deletion: every cluster gets a removal plan; the cleanup finalizer is released only when no cluster holds a
  share any more.
Pure: no I/O, no clock (`now` and `epoch` are inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from api.conditions import Condition
from api.events import (
    ApplyOutcome,
    ApplyReported,
    ClusterShare,
    ClusterVerdict,
    PlacementDecided,
    PlacementRole,
    PlanIssued,
    ReleasedShare,
    deterministic_id,
)
from api.models import LLMDeploymentSpec, LLMModelSpec, gpu_count, gpu_min_memory_bytes
from api.plans import DeploymentRef, KubeEvent, StatusPlan, WorkloadPlan, plan_id
from api.policy import TenantPolicy
from api.quantity import bytes_of, millicores
from planner.fleet import FleetCapacity
from planner.placement import ClusterInfo, Clusters, Decision, Demand, Policy, Requirement, Share, place
from planner.status import ClusterProgress, StatusInputs, compute_status
from planner.tenancy import permitted_clusters

DEFAULT_POLICY = TenantPolicy()


@dataclass(frozen=True)
class DeploymentState:
    origin: str
    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    deleting: bool
    has_finalizer: bool
    plan_sequence: int
    last_status: Mapping[str, Any] | None
    last_outcome: str | None


@dataclass(frozen=True)
class PlacementState:
    cluster: str
    replicas: int
    role: PlacementRole
    gpu_type: str | None
    nodes: Mapping[str, int]
    plan_id: str | None
    apply_outcome: ApplyOutcome | None
    apply_message: str | None
    applied_plan_id: str | None


@dataclass(frozen=True)
class WorkloadState:
    cluster: str
    plan_id: str | None
    replicas: int
    ready_replicas: int
    available_replicas: int
    updated_replicas: int
    observed_generation: int
    generation: int


@dataclass(frozen=True)
class Inputs:
    ref: DeploymentRef
    deployment: DeploymentState | None
    """None when the LLMDeployment is gone from its origin cluster (then only cleanup remains)."""
    model_spec: Mapping[str, Any] | None
    placements: Sequence[PlacementState]
    workloads: Sequence[WorkloadState]
    last_plans: Mapping[str, WorkloadPlan]
    """The latest workload plan sent to each cluster."""
    clusters: Clusters | Sequence[ClusterInfo]
    capacity: FleetCapacity
    epoch: int
    now: datetime
    reports: Sequence[ApplyReported] = ()
    """Apply results that arrived in this batch (they become Kubernetes Events)."""
    plan_sequence: int = 0
    """The last plan sequence issued for this deployment (kept even after the LLMDeployment is gone)."""
    scheduling: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Per cluster: (this deployment's pods bound to a node, its pods left Pending unscheduled for too long)."""
    observed_plans: Mapping[str, WorkloadPlan] = field(default_factory=dict)
    """Workload plans the watchers saw on the workloads, by plan id, where that is not the latest plan."""
    tenant_policy: TenantPolicy = DEFAULT_POLICY
    """Which clusters the deployment may place into (planner.tenancy)."""
    traffic: str | None = None
    """Where requests to the origin's Service go (planner.traffic), for the status."""


@dataclass(frozen=True)
class Outcome:
    decided: PlacementDecided | None
    plans: tuple[WorkloadPlan | StatusPlan, ...]
    capacity: FleetCapacity
    issued: tuple[PlanIssued, ...] = field(default_factory=tuple)


def demand_of(key: str, origin: str, replicas: int, model: LLMModelSpec) -> Demand:
    gpu = model.resources.gpu
    return Demand(
        deployment_key=key,
        origin=origin,
        replicas=replicas,
        gpus=gpu_count(model),
        gpu_types=tuple(gpu.types) if gpu else (),
        gpu_min_memory_bytes=gpu_min_memory_bytes(model),
        cpu_m=millicores(model.resources.cpu),
        memory_bytes=bytes_of(model.resources.memory),
    )


def policy_of(spec: LLMDeploymentSpec) -> Policy:
    p = spec.placement
    selector = p.cluster_selector
    return Policy(
        match_labels=tuple(sorted(selector.match_labels.items())) if selector else (),
        match_expressions=tuple(
            Requirement(r.key, r.operator, tuple(r.values)) for r in (selector.match_expressions if selector else [])
        ),
        preferred_clusters=tuple(p.clusters),
        prefer_origin=p.prefer_origin,
        strategy=p.strategy,
        allow_split=p.allow_split,
        max_clusters=p.max_clusters,
    )


def reconcile(inputs: Inputs) -> Outcome:
    dep = inputs.deployment
    healthy = {c.name: c.healthy for c in inputs.clusters}
    if dep is None or dep.deleting:
        return _teardown(inputs)
    try:
        spec = LLMDeploymentSpec.model_validate(dict(dep.spec))
    except ValidationError as exc:
        return _hold(inputs, "InvalidSpec", f"spec is invalid: {_first_error(exc)}")
    if inputs.model_spec is None:
        return _hold(
            inputs, "ModelNotFound", f"LLMModel {dep.namespace}/{spec.model_ref} not found in cluster {dep.origin}"
        )
    try:
        model = LLMModelSpec.model_validate(dict(inputs.model_spec))
    except ValidationError as exc:
        return _hold(inputs, "InvalidSpec", f"LLMModel {spec.model_ref} is invalid: {_first_error(exc)}")
    allowed, refusal = permitted_clusters(
        inputs.tenant_policy, origin=dep.origin, namespace=dep.namespace, model=model, clusters=inputs.clusters
    )
    if not allowed and refusal:
        # Only a refusal is a denial: with no cluster known yet (a planner that has just started) nothing was
        # refused, and placement says there is no eligible cluster until one joins.
        return _hold(inputs, "PolicyDenied", f"refused by the tenant policy: {refusal}")
    clusters = inputs.clusters
    if len(allowed) < len(clusters):
        clusters = [c for c in clusters if c.name in allowed]

    desired = 0 if spec.suspend else spec.replicas
    previous = {p.cluster: p for p in inputs.placements}
    # Shares that keep running no matter what: the lost and the moved, until their replacements are ready.
    retiring = {c: p for c, p in previous.items() if p.role == "retiring" and p.replicas > 0}
    active_now = [p for p in previous.values() if p.role == "active" and p.replicas > 0]
    failed_over: list[str] = []
    for p in active_now:
        if not healthy.get(p.cluster, False):
            retiring[p.cluster] = p
            failed_over.append(p.cluster)
    current = [
        Share(p.cluster, p.replicas, p.gpu_type, tuple(sorted(p.nodes.items())))
        for p in active_now
        if p.cluster not in retiring
    ]
    # Replicas a cluster's scheduler left Pending too long (a node vanished, was cordoned or tainted): the share
    # keeps what runs, and the rest is placed elsewhere — never in the same cluster in this decision. Pods beyond
    # what the share still expects are already being removed and do not count.
    unschedulable: dict[str, int] = {}
    for share in current:
        bound, stuck = inputs.scheduling.get(share.cluster, (0, 0))
        surplus = min(stuck, max(0, share.replicas - bound))
        if surplus and healthy.get(share.cluster, False):
            unschedulable[share.cluster] = surplus
    current = [
        replace(s, replicas=s.replicas - unschedulable.get(s.cluster, 0)) if s.cluster in unschedulable else s
        for s in current
    ]
    capacity = inputs.capacity
    for cluster in unschedulable:
        capacity = capacity.with_cluster(cluster, ())

    demand = demand_of(str(inputs.ref.key), dep.origin, desired, model)
    policy = policy_of(spec)
    decision = place(demand, clusters=clusters, capacity=capacity, policy=policy, current=current)
    if unschedulable:
        restored = decision.capacity
        for cluster in unschedulable:
            restored = restored.with_cluster(cluster, inputs.capacity.nodes(cluster))
        decision = replace(
            decision,
            capacity=restored,
            reasons=(
                *(f"{n} replica(s) unschedulable in cluster {c}: placed elsewhere" for c, n in unschedulable.items()),
                *decision.reasons,
            ),
        )
    new_active = {s.cluster: s for s in decision.shares}
    # Active shares place() let go of because the policy no longer selects their cluster (or maxClusters
    # released them) keep running until the replacement is ready; plain scale-downs apply at once.
    released = {r.cluster for r in decision.released}
    for share in current:
        if share.cluster not in new_active and share.cluster in released and desired > 0:
            retiring[share.cluster] = previous[share.cluster]

    ready_elsewhere = sum(
        w.ready_replicas for w in inputs.workloads if w.cluster in new_active and healthy.get(w.cluster, False)
    )
    shares: list[ClusterShare] = []
    for cluster, s in new_active.items():
        shares.append(
            ClusterShare(cluster=cluster, replicas=s.replicas, role="active", gpu_type=s.gpu_type, nodes=s.node_map())
        )
    for cluster, p in sorted(retiring.items()):
        if cluster in new_active:
            continue
        can_remove = healthy.get(cluster, False) and ready_elsewhere >= desired
        role = "removing" if can_remove else "retiring"
        shares.append(
            ClusterShare(
                cluster=cluster,
                replicas=0 if can_remove else p.replicas,
                role=role,
                gpu_type=p.gpu_type,
                nodes={} if can_remove else dict(p.nodes),
            )
        )
    for cluster, p in sorted(previous.items()):
        if cluster in new_active or cluster in retiring:
            continue
        # Scaled away, or already being removed: a removal plan (once) and the row until the applier confirms.
        shares.append(ClusterShare(cluster=cluster, replicas=0, role="removing", gpu_type=p.gpu_type, nodes={}))

    outcome_name = "Suspended" if spec.suspend else decision.outcome
    message = "suspended" if spec.suspend else decision.message
    events = _kube_events(inputs, outcome_name, message, failed_over)
    events += [
        KubeEvent(
            type="Warning",
            reason="Unschedulable",
            message=f"{n} replica(s) left Pending by cluster {c}'s scheduler: placing them elsewhere",
        )
        for c, n in unschedulable.items()
    ]
    return _emit(inputs, dep, spec, model, shares, outcome_name, message, decision, events, desired, unschedulable)


def _emit(
    inputs: Inputs,
    dep: DeploymentState,
    spec: LLMDeploymentSpec,
    model: LLMModelSpec,
    shares: list[ClusterShare],
    outcome_name: str,
    message: str,
    decision: Decision,
    events: list[KubeEvent],
    desired: int,
    unschedulable: Mapping[str, int],
) -> Outcome:
    previous = {p.cluster: p for p in inputs.placements}
    changed = _shares_changed(previous, shares) or dep.last_outcome != outcome_name
    sequence = dep.plan_sequence
    plans: list[WorkloadPlan | StatusPlan] = []
    for share in shares:
        intent = _intent(share, dep, spec, model, inputs.ref)
        last = inputs.last_plans.get(share.cluster)
        if last is not None and _same_intent(last, intent):
            continue
        sequence += 1
        plans.append(_workload_plan(inputs, dep.generation, share.cluster, sequence, intent))
    decided = None
    if changed:
        decided = _decision_event(
            inputs,
            generation=dep.generation,
            desired=desired,
            outcome=outcome_name,
            shares=shares,
            reasons=decision.reasons,
            message=message,
            sequence=sequence,
            demand=demand_of(str(inputs.ref.key), dep.origin, desired, model),
            inputs_summary=_inputs_summary(inputs, decision),
            verdicts=_verdicts(decision, unschedulable),
            released=decision.released,
        )
    status = _status(inputs, dep, spec, shares, outcome_name, message)
    status_plan = _status_plan(inputs, dep, status, events, sequence + 1, finalizer="ensure")
    if status_plan is not None:
        plans.append(status_plan)
    return Outcome(
        decided=decided, plans=tuple(plans), capacity=decision.capacity, issued=tuple(_issued(inputs, p) for p in plans)
    )


def _hold(inputs: Inputs, outcome_name: str, message: str) -> Outcome:
    """Spec or model problem: leave running workloads alone (a fixed spec resumes them) and say why."""
    dep = inputs.deployment
    assert dep is not None
    shares = [
        ClusterShare(
            cluster=p.cluster,
            replicas=p.replicas,
            role=p.role,
            gpu_type=p.gpu_type,
            nodes=dict(p.nodes),
        )
        for p in inputs.placements
    ]
    decided = None
    if dep.last_outcome != outcome_name:
        decided = _decision_event(
            inputs,
            generation=dep.generation,
            desired=0,
            outcome=outcome_name,
            shares=shares,
            reasons=[message],
            message=message,
            sequence=dep.plan_sequence,
        )
    try:
        port = int(dep.spec.get("port", 8080))
    except (TypeError, ValueError):
        port = 8080
    status = compute_status(
        StatusInputs(
            origin=dep.origin,
            namespace=dep.namespace,
            name=dep.name,
            generation=dep.generation,
            desired_replicas=int(dep.spec.get("replicas", 0) or 0) if isinstance(dep.spec.get("replicas"), int) else 0,
            port=port,
            outcome=outcome_name,
            message=message,
            clusters=_progress(inputs, shares),
            previous=_previous_conditions(dep),
            now=inputs.now,
            traffic=inputs.traffic,
        )
    )
    events = []
    if dep.last_outcome != outcome_name:
        events.append(KubeEvent(type="Warning", reason=outcome_name, message=message))
    plan = _status_plan(inputs, dep, status, events, dep.plan_sequence + 1, finalizer="ensure")
    plans: tuple[WorkloadPlan | StatusPlan, ...] = (plan,) if plan else ()
    return Outcome(
        decided=decided, plans=plans, capacity=inputs.capacity, issued=tuple(_issued(inputs, p) for p in plans)
    )


def _teardown(inputs: Inputs) -> Outcome:
    dep = inputs.deployment
    sequence = max(dep.plan_sequence if dep else 0, inputs.plan_sequence)
    shares = [
        ClusterShare(cluster=p.cluster, replicas=0, role="removing", gpu_type=p.gpu_type, nodes={})
        for p in inputs.placements
    ]
    plans: list[WorkloadPlan | StatusPlan] = []
    for share in shares:
        last = inputs.last_plans.get(share.cluster)
        if last is not None and last.removes_everything:
            continue
        sequence += 1
        plans.append(
            _workload_plan(
                inputs,
                dep.generation if dep else 0,
                share.cluster,
                sequence,
                _Intent(replicas=0, model_name="", model=None, spec=None, is_origin=False, gpu_type=None),
            )
        )
    changed = _shares_changed({p.cluster: p for p in inputs.placements}, shares) or (
        dep is not None and dep.last_outcome != "Deleting"
    )
    decided = None
    if changed and (dep is not None or shares):
        decided = _decision_event(
            inputs,
            generation=dep.generation if dep else 0,
            desired=0,
            outcome="Deleting",
            shares=shares,
            reasons=["the LLMDeployment is being deleted" if dep else "the LLMDeployment is gone"],
            message="removing workloads from every cluster",
            sequence=sequence,
        )
    if dep is not None and dep.deleting and dep.has_finalizer and not inputs.placements:
        # Every cluster confirmed its workload is gone: let Kubernetes finish the deletion.
        status_plan = StatusPlan(
            plan_id=plan_id(inputs.ref, dep.origin, "Status", inputs.epoch, sequence + 1),
            epoch=inputs.epoch,
            sequence=sequence + 1,
            cluster=dep.origin,
            deployment=inputs.ref,
            generation=dep.generation,
            issued_at=inputs.now,
            status=_status(inputs, dep, None, [], "Deleting", "workloads removed"),
            finalizer="remove",
            events=[KubeEvent(type="Normal", reason="Cleaned", message="workloads removed from every cluster")],
        )
        plans.append(status_plan)
    return Outcome(
        decided=decided, plans=tuple(plans), capacity=inputs.capacity, issued=tuple(_issued(inputs, p) for p in plans)
    )


# ----------------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Intent:
    replicas: int
    model_name: str
    model: LLMModelSpec | None
    spec: LLMDeploymentSpec | None
    is_origin: bool
    gpu_type: str | None


def _intent(
    share: ClusterShare, dep: DeploymentState, spec: LLMDeploymentSpec, model: LLMModelSpec, ref: DeploymentRef
) -> _Intent:
    if share.replicas == 0 and share.role == "removing":
        return _Intent(0, "", None, None, False, None)
    return _Intent(share.replicas, spec.model_ref, model, spec, share.cluster == ref.origin_cluster, share.gpu_type)


def _same_intent(plan: WorkloadPlan, intent: _Intent) -> bool:
    if intent.spec is None:
        return plan.removes_everything
    return (
        plan.replicas == intent.replicas
        and plan.model == intent.model
        and plan.spec == intent.spec
        and plan.is_origin == intent.is_origin
        and plan.gpu_type == intent.gpu_type
        and plan.model_name == intent.model_name
    )


def _workload_plan(inputs: Inputs, generation: int, cluster: str, sequence: int, intent: _Intent) -> WorkloadPlan:
    return WorkloadPlan(
        plan_id=plan_id(inputs.ref, cluster, "Workload", inputs.epoch, sequence),
        epoch=inputs.epoch,
        sequence=sequence,
        cluster=cluster,
        deployment=inputs.ref,
        generation=generation,
        issued_at=inputs.now,
        replicas=intent.replicas,
        model_name=intent.model_name,
        model=intent.model,
        spec=intent.spec,
        is_origin=intent.is_origin,
        gpu_type=intent.gpu_type,
    )


def _shares_changed(previous: Mapping[str, PlacementState], shares: Sequence[ClusterShare]) -> bool:
    if set(previous) != {s.cluster for s in shares}:
        return True
    for s in shares:
        p = previous[s.cluster]
        if (p.replicas, p.role, p.gpu_type, dict(p.nodes)) != (s.replicas, s.role, s.gpu_type, s.nodes):
            return True
    return False


def _decision_event(
    inputs: Inputs,
    *,
    generation: int,
    desired: int,
    outcome: str,
    shares: Sequence[ClusterShare],
    reasons: Sequence[str],
    message: str,
    sequence: int,
    demand: Demand | None = None,
    inputs_summary: Mapping[str, Any] | None = None,
    verdicts: Sequence[ClusterVerdict] = (),
    released: Sequence[ReleasedShare] = (),
) -> PlacementDecided:
    """The one way a decision becomes an event. Its id is derived from everything that tells two decisions of a
    deployment apart (what was decided, by which epoch, after which plan, at which step), so a step that is run
    again gives the same id, and no two different decisions share one (the store keeps the first of an id)."""
    fingerprint = "|".join(f"{s.cluster}:{s.replicas}:{s.role}" for s in shares)
    return PlacementDecided(
        event_id=deterministic_id(
            "decided",
            str(inputs.ref.key),
            inputs.ref.uid,
            str(generation),
            outcome,
            fingerprint,
            str(inputs.epoch),
            str(sequence),
            inputs.now.isoformat(),
        ),
        cluster=inputs.ref.origin_cluster,
        origin_cluster=inputs.ref.origin_cluster,
        namespace=inputs.ref.namespace,
        name=inputs.ref.name,
        generation=generation,
        desired_replicas=desired,
        outcome=outcome,
        shares=list(shares),
        # What each planned, not yet running replica reserves (nothing, for a decision that places nothing).
        replica_gpus=demand.gpus if demand else 0,
        replica_cpu_m=demand.cpu_m if demand else 0,
        replica_memory_bytes=demand.memory_bytes if demand else 0,
        reasons=list(reasons),
        message=message,
        inputs=dict(inputs_summary or {}),
        epoch=inputs.epoch,
        decided_at=inputs.now,
        verdicts=tuple(verdicts),
        released=tuple(released),
    )


def _verdicts(decision: Decision, unschedulable: Mapping[str, int]) -> tuple[ClusterVerdict, ...]:
    """The decision's verdicts; a cluster whose scheduler left replicas Pending was hidden from place() (its
    capacity emptied), so when it got nothing, that is why."""
    verdicts = decision.verdicts()
    if not unschedulable:
        return verdicts
    return tuple(
        v.model_copy(
            update={
                "reason": "unschedulable",
                "detail": f"{unschedulable[v.cluster]} replica(s) left Pending by its scheduler: placed elsewhere",
            }
        )
        if v.cluster in unschedulable and v.eligible and not v.replicas
        else v
        for v in verdicts
    )


def _inputs_summary(inputs: Inputs, decision: Decision) -> dict[str, Any]:
    """What `explain` shows: cluster health/labels and free GPUs per product per cluster, before the decision."""
    clusters: dict[str, Any] = {}
    for c in inputs.clusters:
        free: dict[str, list[int]] = {}
        for node in inputs.capacity.nodes(c.name):
            if node.gpu_product:
                free.setdefault(node.gpu_product, []).append(node.gpus)
        clusters[c.name] = {
            "healthy": c.healthy,
            "labels": dict(c.labels),
            "free_gpus_per_node": {k: sorted(v, reverse=True) for k, v in sorted(free.items())},
        }
    return {"clusters": clusters, "placed": decision.placed}


def _progress(inputs: Inputs, shares: Sequence[ClusterShare]) -> list[ClusterProgress]:
    healthy = {c.name: c.healthy for c in inputs.clusters}
    workloads = {w.cluster: w for w in inputs.workloads}
    previous = {p.cluster: p for p in inputs.placements}
    out = []
    for share in shares:
        w = workloads.get(share.cluster)
        p = previous.get(share.cluster)
        last = inputs.last_plans.get(share.cluster)
        # Current: the workload runs the latest plan's pods. A plan that changed only other objects (a
        # NetworkPolicy, the Service, the autoscaler, the replica count) replaces no pod, so the workload's
        # pods are already what it asks for: Ready does not flip while its annotation catches up.
        seen = inputs.observed_plans.get(w.plan_id) if w is not None and w.plan_id else None
        same_pods = seen is not None and last is not None and seen.pods_key() == last.pods_key()
        current = bool(
            w is not None
            and last is not None
            and (w.plan_id == last.plan_id or same_pods)
            and w.observed_generation >= w.generation
        )
        failed = p.apply_message if p and p.apply_outcome == "Failed" and p.applied_plan_id == p.plan_id else None
        out.append(
            ClusterProgress(
                cluster=share.cluster,
                replicas=share.replicas,
                role=share.role,
                gpu_type=share.gpu_type,
                healthy=healthy.get(share.cluster, False),
                ready_replicas=w.ready_replicas if w else 0,
                available_replicas=w.available_replicas if w else 0,
                updated_replicas=w.updated_replicas if w else 0,
                workload_current=current,
                apply_failed=failed,
            )
        )
    return out


def _previous_conditions(dep: DeploymentState) -> list[Condition]:
    raw = (dep.last_status or {}).get("conditions", [])
    out = []
    for c in raw:
        try:
            out.append(Condition.model_validate(c))
        except ValidationError:
            continue
    return out


def _status(
    inputs: Inputs,
    dep: DeploymentState,
    spec: LLMDeploymentSpec | None,
    shares: Sequence[ClusterShare],
    outcome: str,
    message: str,
) -> Any:
    return compute_status(
        StatusInputs(
            origin=dep.origin,
            namespace=dep.namespace,
            name=dep.name,
            generation=dep.generation,
            desired_replicas=(0 if spec.suspend else spec.replicas) if spec else 0,
            port=spec.port if spec else 8080,
            outcome=outcome,
            message=message,
            clusters=_progress(inputs, shares),
            previous=_previous_conditions(dep),
            now=inputs.now,
            traffic=inputs.traffic,
        )
    )


def _status_plan(
    inputs: Inputs, dep: DeploymentState, status: Any, events: list[KubeEvent], sequence: int, *, finalizer: str
) -> StatusPlan | None:
    wire = status.wire()
    if wire == dict(dep.last_status or {}) and not events and dep.has_finalizer:
        return None
    return StatusPlan(
        plan_id=plan_id(inputs.ref, dep.origin, "Status", inputs.epoch, sequence),
        epoch=inputs.epoch,
        sequence=sequence,
        cluster=dep.origin,
        deployment=inputs.ref,
        generation=dep.generation,
        issued_at=inputs.now,
        status=status,
        finalizer=finalizer,
        events=events,
    )


def _kube_events(inputs: Inputs, outcome: str, message: str, failed_over: Sequence[str]) -> list[KubeEvent]:
    dep = inputs.deployment
    events: list[KubeEvent] = []
    if dep is not None and dep.last_outcome != outcome:
        if outcome == "Placed":
            events.append(KubeEvent(type="Normal", reason="Placed", message=message))
        elif outcome in ("InsufficientGPU", "PartiallyPlaced", "NoEligibleCluster"):
            events.append(KubeEvent(type="Warning", reason="InsufficientGPU", message=message))
        elif outcome == "Suspended":
            events.append(KubeEvent(type="Normal", reason="Suspended", message=message))
    for cluster in failed_over:
        events.append(
            KubeEvent(
                type="Warning",
                reason="FailedOver",
                message=f"cluster {cluster} is unhealthy; replacing its replicas elsewhere",
            )
        )
    last_ids = {p.plan_id for p in inputs.last_plans.values()}
    for report in inputs.reports:
        if report.plan_id not in last_ids:
            continue
        if report.outcome == "Applied":
            events.append(
                KubeEvent(
                    type="Normal",
                    reason="Applied",
                    message=f"applied in cluster {report.cluster}: {', '.join(report.objects)}",
                )
            )
        elif report.outcome == "Failed":
            events.append(
                KubeEvent(type="Warning", reason="ApplyFailed", message=f"cluster {report.cluster}: {report.message}")
            )
    return events


def _issued(inputs: Inputs, plan: WorkloadPlan | StatusPlan) -> PlanIssued:
    return PlanIssued(event_id=deterministic_id("issued", plan.plan_id), cluster="hub", plan=plan, at=inputs.now)


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
