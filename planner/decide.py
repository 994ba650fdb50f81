"""Deciding a step's affected deployments: read everything they need at once, reconcile each, write the results.

Guarantees: one query per table for all affected deployments (a step may reconcile thousands); deployments are
reconciled first come, first served (oldest first), with the fleet's capacity carried from one decision to the
next so two deployments never receive the same GPUs; each deployment's endpoints plans (planner.traffic: the
origin's Service pointing at the replicas wherever they run) follow its decision's plans, in sequence; the
decisions' events, projections and outbox rows are written in the caller's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from api.events import ApplyReported, Event, PlacementDecided, PlanIssued, deterministic_id
from api.keys import DeploymentKey
from api.network import ClusterNetwork
from api.plans import DeploymentRef, EndpointsPlan, WorkloadPlan
from api.policy import TenantPolicy
from bus.subjects import Subjects
from planner import metrics
from planner.inputs import Rows, inputs
from planner.memory import CapacityMemory
from planner.placement import ClusterInfo, Clusters
from planner.reconcile import DEFAULT_POLICY, Inputs, reconcile
from planner.traffic import ClusterView, Exposed, Replica, TrafficInputs, traffic
from store import queries, recorder
from store.engine import Connection
from store.projections import fold
from store.rows import ClusterRow, DeploymentRow, PlanRow, ReplicaRow, ServiceRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decided:
    decisions: int
    plans: int


async def decide(
    conn: Connection,
    keys: Sequence[DeploymentKey],
    recorded: Sequence[recorder.Recorded],
    *,
    epoch: int,
    now: datetime,
    stuck_before: datetime,
    subjects: Subjects,
    memory: CapacityMemory,
    cluster_rows: Sequence[ClusterRow],
    tenant_policy: TenantPolicy = DEFAULT_POLICY,
) -> Decided:
    capacity = await memory.current(conn)
    metrics.export_free_gpus(capacity.clusters)
    # One Clusters for the whole step: what each clusterSelector admits is worked out once, not per decision.
    cluster_infos = Clusters(ClusterInfo(c.name, dict(c.labels), bool(c.healthy)) for c in cluster_rows)
    rows = await queries.deployments(conn, keys)
    scheduling = await queries.scheduling(conn, keys, stuck_before=stuck_before)
    placements = await queries.placements_for_many(conn, keys)
    workloads = await queries.workloads_for_many(conn, keys)
    last_plans = await queries.last_workload_plans_many(conn, keys)
    models = await queries.models_many(
        conn, [(k[0], k[1], r.spec["modelRef"]) for k, r in rows.items() if isinstance(r.spec.get("modelRef"), str)]
    )
    sequences = await queries.plan_sequences(conn, [k for k in keys if k not in rows])
    endpoints_plans = await queries.last_endpoints_plans_many(conn, keys)
    replicas = await queries.replicas_many(conn, keys)
    services = await queries.services_many(conn, keys)
    views = {c.name: ClusterView(bool(c.healthy), _declared(c.network)) for c in cluster_rows}
    # The plans workloads were last seen running, where that is not the latest plan (status compares their pods).
    latest_ids = {p.plan_id for plans_ in last_plans.values() for p in plans_}
    seen_ids = sorted({w.plan_id for ws in workloads.values() for w in ws if w.plan_id and w.plan_id not in latest_ids})
    observed_plans = {
        plan_id: WorkloadPlan.model_validate(payload)
        for plan_id, payload in (await queries.plan_payloads(conn, seen_ids)).items()
    }
    reports: dict[DeploymentKey, list[ApplyReported]] = {}
    for r in recorded:
        if isinstance(r.event, ApplyReported):
            reports.setdefault(DeploymentKey(r.event.origin_cluster, r.event.namespace, r.event.name), []).append(
                r.event
            )
    # First come, first served: older deployments get capacity first, whatever order events arrived in.
    ordered = sorted(keys, key=lambda k: (rows[k].created_at if k in rows else now, k))
    new_events: list[Event] = []
    outbox: list[tuple[str, str, bytes]] = []
    decisions = 0
    for key in ordered:
        row = rows.get(key)
        model = None
        if row is not None and isinstance(row.spec.get("modelRef"), str):
            model = models.get((key[0], key[1], row.spec["modelRef"]))
        found = Rows(
            deployment=row,
            placements=placements.get(key, []),
            workloads=workloads.get(key, []),
            plans=last_plans.get(key, []),
            model=model,
            scheduling=scheduling.get(key, {}),
            plan_sequence=sequences.get(key, 0),
        )
        state = inputs(
            key,
            found,
            clusters=cluster_infos,
            capacity=capacity,
            epoch=epoch,
            now=now,
            reports=reports.get(key, []),
            observed_plans=observed_plans,
        )
        if state is None:
            metrics.note_outcome(key, None)
            continue
        if tenant_policy != DEFAULT_POLICY:
            state = replace(state, tenant_policy=tenant_policy)
        routed_inputs = _traffic_inputs(
            state, row, views, replicas.get(key, []), endpoints_plans.get(key, []), services.get(key, [])
        )
        # Where traffic goes depends on observations only; the status says so.
        state = replace(state, traffic=traffic(routed_inputs).summary)
        outcome = reconcile(state)
        capacity = outcome.capacity
        # A deployment that is gone (deleted, its workloads still being removed) no longer counts.
        metrics.note_outcome(
            key,
            None if row is None else outcome.decided.outcome if outcome.decided is not None else row.last_outcome,
        )
        if outcome.decided is not None:
            # Which clusters hold replicas is what this decision made it (the origin's own Service selects
            # replicas the origin is about to run: no Service of ours there).
            placed = {s.cluster for s in outcome.decided.shares if s.role != "removing" and s.replicas > 0}
            routed_inputs = replace(routed_inputs, placed=placed)
        routes = traffic(routed_inputs)
        if outcome.decided is not None:
            new_events.append(outcome.decided)
            decisions += 1
            logger.info(
                "%s/%s: %s — %s",
                key[1],
                key[2],
                outcome.decided.outcome,
                outcome.decided.message,
                extra={
                    "cluster": key[0],
                    "object": f"{key[1]}/{key[2]}",
                    "event_id": outcome.decided.event_id,
                    "epoch": epoch,
                },
            )
        # The endpoints plans take the sequences after the decision's own plans.
        after = max([state.plan_sequence, *(p.sequence for p in outcome.plans)])
        if state.deployment is not None:
            after = max(after, state.deployment.plan_sequence)
        routed = routes.plans(
            state.ref,
            generation=state.deployment.generation if state.deployment else 0,
            epoch=epoch,
            sequence=after,
            now=now,
        )
        new_events.extend(outcome.issued)
        new_events.extend(
            PlanIssued(event_id=deterministic_id("issued", p.plan_id), cluster="hub", plan=p, at=now) for p in routed
        )
        outbox.extend(
            (plan.plan_id, subjects.plans(plan.cluster), plan.model_dump_json().encode())
            for plan in (*outcome.plans, *routed)
        )
    memory.carry(
        capacity,
        (e for e in new_events if isinstance(e, PlacementDecided)),
        (p.cluster for key in ordered for p in placements.get(key, [])),
    )
    # Decisions of different deployments touch different rows (capacity is carried in memory), so their events,
    # projections and outbox rows are written together.
    stored = await recorder.append(conn, [(e, {"epoch": epoch}) for e in new_events])
    await recorder.apply_ops(conn, [op for s in stored for op in fold(s.event)])
    await recorder.outbox_put_many(conn, outbox)
    return Decided(decisions, len(outbox))


def _declared(network: object) -> ClusterNetwork | None:
    """A cluster's recorded network; one that no longer validates (an older shape) counts as undeclared."""
    if network is None:
        return None
    try:
        return ClusterNetwork.model_validate(network)
    except ValueError:
        return None


def _traffic_inputs(
    state: Inputs,
    row: DeploymentRow | None,
    views: dict[str, ClusterView],
    pods: list[ReplicaRow],
    last: list[PlanRow],
    services: list[ServiceRow],
) -> TrafficInputs:
    port: int | None = None
    if row is not None and not row.deleting:
        raw = row.spec.get("port", 8080)
        port = raw if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 65535 else 8080
    ref: DeploymentRef = state.ref
    return TrafficInputs(
        ref=ref,
        generation=row.generation if row is not None else 0,
        port=port,
        clusters=views,
        replicas=[Replica(cluster=p.cluster, ip=p.pod_ip, ready=bool(p.ready)) for p in pods],
        placed={p.cluster for p in state.placements if p.role != "removing" and p.replicas > 0},
        last={p.cluster: EndpointsPlan.model_validate(p.payload) for p in last},
        # The deployment's own Service in each cluster (named after it; the origin's copy is ours too, but the
        # origin is never one of its serving clusters).
        exposed={s.cluster: Exposed(addresses=tuple(s.ingress), port=s.port) for s in services if s.name == ref.name},
    )
