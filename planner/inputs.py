"""Row mapping: the store's typed rows of one deployment, turned into the pure reconciler's `Inputs`. Pure.

Guarantees: nothing is read here; a deployment that has no row, no placement and no workload has nothing to
reconcile (None); workloads that no placement accounts for any more (their placements were lost) get explicit
removal placements, so the reconciler plans their removal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from api.events import ApplyOutcome, ApplyReported, PlacementRole
from api.keys import DeploymentKey
from api.plans import DeploymentRef, WorkloadPlan
from planner.fleet import FleetCapacity
from planner.placement import Clusters
from planner.reconcile import DeploymentState, Inputs, PlacementState, WorkloadState
from store.rows import DeploymentRow, ModelRow, PlacementRow, PlanRow, WorkloadRow


@dataclass(frozen=True)
class Rows:
    """What the store holds about one deployment."""

    deployment: DeploymentRow | None
    placements: Sequence[PlacementRow]
    workloads: Sequence[WorkloadRow]
    plans: Sequence[PlanRow]
    """The newest workload plan per cluster."""
    model: ModelRow | None
    scheduling: Mapping[str, tuple[int, int]]
    plan_sequence: int
    """The last plan sequence issued (from the planner's bookkeeping when the deployment row is gone)."""


def inputs(
    key: DeploymentKey,
    rows: Rows,
    *,
    clusters: Clusters,
    capacity: FleetCapacity,
    epoch: int,
    now: datetime,
    reports: Sequence[ApplyReported],
    observed_plans: Mapping[str, WorkloadPlan],
) -> Inputs | None:
    row = rows.deployment
    last_plans = {p.cluster: WorkloadPlan.model_validate(p.payload) for p in rows.plans}
    if row is None and not rows.placements and not rows.workloads:
        return None
    if row is not None:
        uid = row.uid
    elif last_plans:
        uid = next(iter(last_plans.values())).deployment.uid
    else:
        uid = "unknown"
    ref = DeploymentRef(origin_cluster=key[0], namespace=key[1], name=key[2], uid=uid)
    placements = [
        PlacementState(
            cluster=p.cluster,
            replicas=p.replicas,
            role=cast(PlacementRole, p.role),
            gpu_type=p.gpu_type,
            nodes=p.nodes,
            plan_id=p.plan_id,
            apply_outcome=cast(ApplyOutcome | None, p.apply_outcome),
            apply_message=p.apply_message,
            applied_plan_id=p.applied_plan_id,
        )
        for p in rows.placements
    ]
    if row is None and rows.workloads and not placements:
        # Workloads nobody planned any more (their placements were lost): plan their removal explicitly.
        placements = [
            PlacementState(
                cluster=w.cluster,
                replicas=0,
                role="removing",
                gpu_type=None,
                nodes={},
                plan_id=None,
                apply_outcome=None,
                apply_message=None,
                applied_plan_id=None,
            )
            for w in rows.workloads
        ]
    deployment = None
    model_spec = None
    if row is not None:
        deployment = DeploymentState(
            origin=key[0],
            namespace=key[1],
            name=key[2],
            uid=row.uid,
            generation=row.generation,
            spec=row.spec,
            deleting=row.deleting,
            has_finalizer=row.has_finalizer,
            plan_sequence=row.plan_sequence,
            last_status=row.last_status,
            last_outcome=row.last_outcome,
        )
        model_spec = rows.model.spec if rows.model else None
    return Inputs(
        ref=ref,
        deployment=deployment,
        model_spec=model_spec,
        placements=placements,
        workloads=[
            WorkloadState(
                cluster=w.cluster,
                plan_id=w.plan_id,
                replicas=w.replicas,
                ready_replicas=w.ready_replicas,
                available_replicas=w.available_replicas,
                updated_replicas=w.updated_replicas,
                observed_generation=w.observed_generation,
                generation=w.generation,
            )
            for w in rows.workloads
        ],
        last_plans=last_plans,
        clusters=clusters,
        capacity=capacity,
        epoch=epoch,
        now=now,
        reports=reports,
        plan_sequence=row.plan_sequence if row is not None else rows.plan_sequence,
        scheduling=rows.scheduling,
        observed_plans=observed_plans,
    )
