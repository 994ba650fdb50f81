"""One planner step, in ONE database transaction: record, fold, check cluster health, decide, write the outbox.

Guarantees:
- Everything a step does commits together or not at all: new events, projection rows, dead letters, decision
  and plan events, outbox rows, and the consumer position (the last JetStream sequence handled). A redelivered
  message at or below that position changes nothing; a repeated event id is not appended again.
- Fencing: the step aborts with `LostLeadership` if a newer planner epoch exists, so a deposed leader can never
  commit a plan after its successor started.
- Decisions are level-based: every affected deployment is reconciled from the projections (after this step's
  events are folded), in a deterministic order, with capacity carried from one decision to the next so two
  deployments never receive the same GPUs.
- The pure part of a step (decoding, origin checks, folding) can be done ahead by `prepare`, outside the
  transaction, so the planner works on the next batch while Postgres works on the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import anyio.lowlevel

from api.events import (
    ApplyReported,
    ClusterHealthChanged,
    ClusterHeartbeat,
    ClusterJoined,
    ClusterLabelsChanged,
    Event,
    LoadObserved,
    MalformedEvent,
    PlacementDecided,
    PlanIssued,
    ResourceDeleted,
    ResourceObserved,
    ResyncCompleted,
    ScaleDecided,
    decode_event,
    deterministic_id,
    encode_event,
)
from api.keys import DeploymentKey
from api.labels import LABEL_DEPLOYMENT, LABEL_NAMESPACE, LABEL_ORIGIN
from api.plans import DeploymentRef, WorkloadPlan
from api.policy import TenantPolicy
from bus.subjects import Subjects
from planner import metrics, scaling
from planner.capacity import FleetCapacity
from planner.memory import CapacityMemory
from planner.placement import ClusterInfo, Clusters
from planner.reconcile import DEFAULT_POLICY, DeploymentState, Inputs, PlacementState, WorkloadState, reconcile
from store import queries, recorder
from store.engine import Connection
from store.projections import Op, fold

logger = logging.getLogger(__name__)

_PLANNER_ONLY: frozenset[type[Event]] = frozenset(
    {ClusterJoined, ClusterLabelsChanged, ClusterHealthChanged, PlacementDecided, PlanIssued, ScaleDecided}
)
# Per-event checks compare exact classes (events are never subclassed): isinstance on a pydantic model goes
# through ABCMeta in Python and cost ~3 % of ingest.


class LostLeadership(Exception):
    """A newer planner epoch exists: this planner must stop planning."""


@dataclass(frozen=True)
class Delivery:
    subject: str
    stream_sequence: int
    data: bytes
    stored_at: datetime | None = None
    """When JetStream stored the message: the time a heartbeat counts from."""


@dataclass(frozen=True)
class Decoded:
    """One delivery decoded, checked and folded: the pure part of a step, which `prepare` does ahead of it."""

    event: Event | None
    """None: the message is malformed (`malformed` says why)."""
    malformed: str | None = None
    ops: Sequence[Op] = ()
    """What folding the event does to the projections (applied only if the event is new)."""


def decode_delivery(delivery: Delivery, subjects: Subjects) -> Decoded:
    try:
        event = decode_event(delivery.data)
        _check_origin(event, delivery.subject, subjects)
    except MalformedEvent as exc:
        return Decoded(None, exc.reason)
    return Decoded(event, None, () if type(event) is ClusterHeartbeat else fold(event))


async def prepare(deliveries: Sequence[Delivery], subjects: Subjects, *, chunk: int = 64) -> list[Decoded]:
    """`decode_delivery` for each, yielding to the event loop every `chunk` deliveries: the planner prepares the
    next batch while the current step waits on Postgres, and the step's replies must not wait behind a whole
    batch of decoding."""
    out: list[Decoded] = []
    for index, delivery in enumerate(deliveries):
        if index and index % chunk == 0:
            await anyio.lowlevel.checkpoint()
        out.append(decode_delivery(delivery, subjects))
    return out


def _ops(event: Event, folded: Mapping[str, Sequence[Op]]) -> Sequence[Op]:
    ops = folded.get(event.event_id)
    return fold(event) if ops is None else ops


@dataclass(frozen=True)
class StepConfig:
    consumer: str
    subjects: Subjects
    heartbeat_timeout: timedelta
    recovery_hold: timedelta
    """A cluster that went unhealthy is trusted again only after this long (hysteresis against flapping)."""
    unschedulable: timedelta = timedelta(seconds=60)
    """Replicas left Pending by a cluster's scheduler for this long are placed elsewhere."""
    tenant_policy: TenantPolicy = DEFAULT_POLICY
    """Which clusters each deployment may place into (planner.tenancy)."""


@dataclass
class StepResult:
    recorded: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    plans: int = 0
    decisions: int = 0
    position: int = 0
    subjects: list[str] = field(default_factory=list)


async def step(
    conn: Connection,
    *,
    deliveries: Sequence[Delivery],
    epoch: int,
    now: datetime,
    config: StepConfig,
    health_grace_until: datetime,
    mode: Literal["normal", "catch-up", "full"] = "normal",
    memory: CapacityMemory | None = None,
    decoded: Sequence[Decoded] | None = None,
    autoscaler: scaling.AutoscalerMemory | None = None,
) -> StepResult:
    """Run one step inside the caller's transaction (the caller commits, then relays the outbox).

    `mode`: "catch-up" records and folds without deciding (a new leader first reads the whole backlog);
    "full" reconciles every deployment (once, when the backlog is read).
    `memory`: the fleet's capacity carried from the previous step (planner/memory.py); the caller must `forget`
    it if this step does not commit. None: read the whole fleet's capacity.
    `decoded`: the deliveries already through `prepare` (one per delivery, in order); None: decoded here.
    `autoscaler`: the fleet autoscaler's memory carried from step to step (planner/scaling.py); None: a fresh one
    (which never scales down).
    """
    if decoded is None:
        decoded = [decode_delivery(d, config.subjects) for d in deliveries]
    memory = CapacityMemory() if memory is None else memory
    result = StepResult()
    await recorder.lock_writers(conn)
    latest, position = await recorder.epoch_and_position(conn, config.consumer)
    if latest != epoch:
        raise LostLeadership(f"planner epoch {epoch} was superseded by {latest}")
    result.position = position

    incoming: list[tuple[Event, dict[str, Any]]] = []
    incoming_raw: list[bytes | None] = []
    heartbeats: dict[str, ClusterHeartbeat] = {}
    heard_at: dict[str, datetime] = {}
    folded: dict[str, Sequence[Op]] = {}
    for delivery, outcome in zip(deliveries, decoded, strict=True):
        if delivery.stream_sequence <= position:
            result.duplicates += 1
            continue
        result.position = max(result.position, delivery.stream_sequence)
        event = outcome.event
        if event is None:
            reason = outcome.malformed or "malformed"
            await recorder.dead_letter(
                conn,
                consumer=config.consumer,
                subject=delivery.subject,
                stream_sequence=delivery.stream_sequence,
                reason=reason,
                raw=delivery.data,
            )
            result.dead_letters += 1
            logger.warning("dead-lettered message %s on %s: %s", delivery.stream_sequence, delivery.subject, reason)
            continue
        folded[event.event_id] = outcome.ops
        if type(event) is ClusterHeartbeat:
            heartbeats[event.cluster] = event
            heard_at[event.cluster] = min(now, delivery.stored_at or now)
            continue
        incoming.append(
            (event, {"subject": delivery.subject, "stream_sequence": delivery.stream_sequence, "epoch": epoch})
        )
        incoming_raw.append(delivery.data)

    clusters = {c["name"]: c for c in await queries.clusters(conn)}
    generated = _cluster_events(heartbeats.values(), clusters, now, config)
    recorded = await recorder.append(
        conn, incoming + [(e, {"epoch": epoch}) for e in generated], raw=incoming_raw + [None] * len(generated)
    )
    result.recorded = len(recorded)
    result.duplicates += len(incoming) + len(generated) - len(recorded)
    await recorder.apply_ops(conn, [op for r in recorded for op in _ops(r.event, folded)])
    for cluster, at in heard_at.items():
        await recorder.touch_heartbeat(conn, cluster, at)

    # Silence: clusters whose heartbeats stopped become unhealthy. Judged on the stream's clock, as of the
    # newest message read: a planner that fell behind has not yet read the heartbeats sent since, and must not
    # take its own lag for the whole fleet's silence. Only the planner's own cluster events and heartbeats change
    # the clusters table, so it is read again only after those.
    if generated or heard_at:
        clusters = {c["name"]: c for c in await queries.clusters(conn)}
    stored = [d.stored_at for d in deliveries if d.stored_at is not None]
    read_up_to = min(now, max(stored)) if stored else now
    silent = (
        []
        if mode == "catch-up"
        else _silent_clusters(
            clusters.values(), now=now, read_up_to=read_up_to, config=config, grace_until=health_grace_until
        )
    )
    if silent:
        lost = await recorder.append(conn, [(e, {"epoch": epoch}) for e in silent])
        await recorder.apply_ops(conn, [op for r in lost for op in fold(r.event)])
        recorded += lost
        clusters = {c["name"]: c for c in await queries.clusters(conn)}

    memory.note(r.event for r in recorded)
    loads = [r.event for r in recorded if type(r.event) is LoadObserved]
    if mode == "catch-up":
        if autoscaler is not None:
            for load in loads:
                autoscaler.note(load)  # the latest load per cluster, for the first decisions after catching up
        await recorder.record_position(conn, config.consumer, result.position)
        return result
    affected = await _affected(conn, [r.event for r in recorded])
    affected = sorted(
        set(affected) | set(await queries.stuck_deployment_keys(conn, stuck_before=now - config.unschedulable))
    )
    if mode == "full":
        affected = sorted(set(affected) | set(await queries.all_deployment_keys(conn)))
    if affected:
        result.decisions, result.plans = await _decide(
            conn, affected, recorded, epoch, now, config, memory, list(clusters.values())
        )
    if loads:
        # After placement: the scale plans take the deployments' plan sequences after this step's plans.
        scaled = await scaling.scale(
            conn,
            loads,
            epoch=epoch,
            now=now,
            subjects=config.subjects,
            memory=autoscaler if autoscaler is not None else scaling.AutoscalerMemory(),
        )
        appended = await recorder.append(conn, [(e, {"epoch": epoch}) for e in scaled.events])
        await recorder.apply_ops(conn, [op for r in appended for op in fold(r.event)])
        await recorder.outbox_put_many(conn, scaled.outbox)
        result.plans += len(scaled.outbox)
    await recorder.record_position(conn, config.consumer, result.position)
    return result


def _check_origin(event: Event, subject: str, subjects: Subjects) -> None:
    if type(event) in _PLANNER_ONLY:
        raise MalformedEvent(f"{event.type} events are recorded by the planner only, not published by clusters")
    claimed = subjects.cluster_of(subject)
    if claimed != event.cluster:
        raise MalformedEvent(f"event says cluster {event.cluster!r} but arrived on {subject!r}")


def _cluster_events(
    heartbeats: Sequence[ClusterHeartbeat] | Any,
    clusters: dict[str, dict[str, Any]],
    now: datetime,
    config: StepConfig,
) -> list[Event]:
    out: list[Event] = []
    for hb in heartbeats:
        row = clusters.get(hb.cluster)
        if row is None:
            out.append(
                ClusterJoined(
                    event_id=deterministic_id("joined", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    labels=hb.labels,
                    at=now,
                )
            )
            continue
        if dict(row["labels"]) != hb.labels:
            out.append(
                ClusterLabelsChanged(
                    event_id=deterministic_id("labels", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    labels=hb.labels,
                    at=now,
                )
            )
        if not row["healthy"] and now - row["health_changed_at"] >= config.recovery_hold:
            out.append(
                ClusterHealthChanged(
                    event_id=deterministic_id("healthy", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    healthy=True,
                    reason="HeartbeatsResumed",
                    last_heartbeat_at=now,
                    at=now,
                )
            )
    return out


def _silent_clusters(
    clusters: Any, *, now: datetime, read_up_to: datetime, config: StepConfig, grace_until: datetime
) -> list[Event]:
    out: list[Event] = []
    for row in clusters:
        if not row["healthy"]:
            continue
        # A planner that just took over has not heard anyone yet: give every cluster one timeout from then.
        last = max(row["last_heartbeat_at"] or row["joined_at"], grace_until - config.heartbeat_timeout)
        if read_up_to - last > config.heartbeat_timeout:
            out.append(
                ClusterHealthChanged(
                    event_id=deterministic_id("unhealthy", row["name"], last.isoformat()),
                    cluster=row["name"],
                    healthy=False,
                    reason="HeartbeatsStopped",
                    last_heartbeat_at=row["last_heartbeat_at"],
                    at=now,
                )
            )
    return out


async def _affected(conn: Connection, events: Sequence[Event]) -> list[DeploymentKey]:
    keys: set[DeploymentKey] = set()
    models: set[tuple[str, str, str]] = set()
    capacity_changed = False
    health_changed: list[str] = []
    removals = False
    for event in events:
        match event:
            case ResourceObserved() | ResourceDeleted() if event.kind == "LLMDeployment":
                keys.add(DeploymentKey(event.cluster, event.namespace or "", event.name))
                removals = removals or isinstance(event, ResourceDeleted)
            case ResourceObserved() | ResourceDeleted() if event.kind == "LLMModel":
                models.add((event.cluster, event.namespace or "", event.name))
            case ResourceObserved() | ResourceDeleted() if event.kind == "Deployment":
                labels = event.object.get("labels", {})
                origin = labels.get(LABEL_ORIGIN)
                if origin:
                    keys.add(
                        DeploymentKey(
                            origin,
                            labels.get(LABEL_NAMESPACE, ""),
                            labels.get(LABEL_DEPLOYMENT, ""),
                        )
                    )
                removals = removals or isinstance(event, ResourceDeleted)
            case ResourceObserved() | ResourceDeleted():
                capacity_changed = True
            case ResyncCompleted():
                removals = True
                capacity_changed = True
            case ApplyReported():
                keys.add(DeploymentKey(event.origin_cluster, event.namespace, event.name))
            case ClusterHealthChanged():
                health_changed.append(event.cluster)
                capacity_changed = True
            case ClusterJoined() | ClusterLabelsChanged():
                capacity_changed = True
    keys.update(await queries.deployment_keys_using_models(conn, models))
    if capacity_changed:
        keys.update(await queries.pending_deployment_keys(conn))
    if health_changed:
        keys.update(await queries.deployment_keys_on_clusters(conn, health_changed))
    if removals:
        keys.update(await queries.orphan_keys(conn))
    return sorted(k for k in keys if all(k))


async def _decide(
    conn: Connection,
    keys: Sequence[DeploymentKey],
    recorded: Sequence[recorder.Recorded],
    epoch: int,
    now: datetime,
    config: StepConfig,
    memory: CapacityMemory,
    cluster_rows: Sequence[dict[str, Any]],
) -> tuple[int, int]:
    capacity = await memory.current(conn)
    metrics.export_free_gpus(capacity.clusters)
    # One Clusters for the whole step: what each clusterSelector admits is worked out once, not per decision.
    cluster_infos = Clusters(ClusterInfo(c["name"], dict(c["labels"]), bool(c["healthy"])) for c in cluster_rows)
    rows = await queries.deployments(conn, keys)
    # Everything the decisions read, for all affected deployments at once: one query per table, not per
    # deployment (a step may reconcile thousands).
    scheduling = await queries.scheduling(conn, keys, stuck_before=now - config.unschedulable)
    placements = await queries.placements_for_many(conn, keys)
    workloads = await queries.workloads_for_many(conn, keys)
    last_plans = await queries.last_workload_plans_many(conn, keys)
    models = await queries.models_many(
        conn,
        [(k[0], k[1], r["spec"]["modelRef"]) for k, r in rows.items() if isinstance(r["spec"].get("modelRef"), str)],
    )
    sequences = await queries.plan_sequences(conn, [k for k in keys if k not in rows])
    # The plans workloads were last seen running, where that is not the latest plan (status compares their pods).
    latest_ids = {p["plan_id"] for plans_ in last_plans.values() for p in plans_}
    seen_ids = sorted(
        {w["plan_id"] for ws in workloads.values() for w in ws if w["plan_id"] and w["plan_id"] not in latest_ids}
    )
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
    ordered = sorted(keys, key=lambda k: (rows[k]["created_at"] if k in rows else now, k))
    new_events: list[Event] = []
    outbox: list[tuple[str, str, bytes]] = []
    decisions = 0
    for key in ordered:
        row = rows.get(key)
        model = None
        if row is not None and isinstance(row["spec"].get("modelRef"), str):
            model = models.get((key[0], key[1], row["spec"]["modelRef"]))
        inputs = _inputs(
            key,
            row,
            placements.get(key, []),
            workloads.get(key, []),
            last_plans.get(key, []),
            model,
            cluster_infos,
            capacity,
            epoch,
            now,
            reports.get(key, []),
            scheduling.get(key, {}),
            sequences.get(key, 0),
            observed_plans,
        )
        if inputs is None:
            continue
        if config.tenant_policy != DEFAULT_POLICY:
            inputs = replace(inputs, tenant_policy=config.tenant_policy)
        outcome = reconcile(inputs)
        capacity = outcome.capacity
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
        new_events.extend(outcome.issued)
        outbox.extend(
            (plan.plan_id, config.subjects.plans(plan.cluster), plan.model_dump_json().encode())
            for plan in outcome.plans
        )
    memory.carry(
        capacity,
        (e for e in new_events if isinstance(e, PlacementDecided)),
        (p["cluster"] for key in ordered for p in placements.get(key, [])),
    )
    # Decisions of different deployments touch different rows (capacity is carried in memory), so their events,
    # projections and outbox rows are written together.
    stored = await recorder.append(conn, [(e, {"epoch": epoch}) for e in new_events])
    await recorder.apply_ops(conn, [op for s in stored for op in fold(s.event)])
    await recorder.outbox_put_many(conn, outbox)
    return decisions, len(outbox)


def _inputs(
    key: DeploymentKey,
    row: dict[str, Any] | None,
    placements: list[dict[str, Any]],
    workloads: list[dict[str, Any]],
    plan_rows: list[dict[str, Any]],
    model: dict[str, Any] | None,
    clusters: Clusters,
    capacity: FleetCapacity,
    epoch: int,
    now: datetime,
    reports: list[ApplyReported],
    scheduling: dict[str, tuple[int, int]],
    plan_sequence: int,
    observed_plans: Mapping[str, WorkloadPlan],
) -> Inputs | None:
    last_plans = {p["cluster"]: WorkloadPlan.model_validate(p["payload"]) for p in plan_rows}
    if row is None and not placements and not workloads:
        return None
    if row is not None:
        uid = row["uid"]
    elif last_plans:
        uid = next(iter(last_plans.values())).deployment.uid
    else:
        uid = "unknown"
    ref = DeploymentRef(origin_cluster=key[0], namespace=key[1], name=key[2], uid=uid)
    if row is None and workloads and not placements:
        # Workloads nobody planned any more (their placements were lost): plan their removal explicitly.
        placements = [
            {
                "cluster": w["cluster"],
                "replicas": 0,
                "role": "removing",
                "gpu_type": None,
                "nodes": {},
                "plan_id": None,
                "apply_outcome": None,
                "apply_message": None,
                "applied_plan_id": None,
            }
            for w in workloads
        ]
    deployment = None
    model_spec = None
    if row is not None:
        deployment = DeploymentState(
            origin=key[0],
            namespace=key[1],
            name=key[2],
            uid=row["uid"],
            generation=row["generation"],
            spec=row["spec"],
            deleting=row["deleting"],
            has_finalizer=row["has_finalizer"],
            plan_sequence=row["plan_sequence"],
            last_status=row["last_status"],
            last_outcome=row["last_outcome"],
        )
        model_spec = model["spec"] if model else None
    return Inputs(
        ref=ref,
        deployment=deployment,
        model_spec=model_spec,
        placements=[
            PlacementState(
                cluster=p["cluster"],
                replicas=p["replicas"],
                role=p["role"],
                gpu_type=p["gpu_type"],
                nodes=p["nodes"],
                plan_id=p["plan_id"],
                apply_outcome=p["apply_outcome"],
                apply_message=p["apply_message"],
                applied_plan_id=p["applied_plan_id"],
            )
            for p in placements
        ],
        workloads=[
            WorkloadState(
                cluster=w["cluster"],
                plan_id=w["plan_id"],
                replicas=w["replicas"],
                ready_replicas=w["ready_replicas"],
                available_replicas=w["available_replicas"],
                updated_replicas=w["updated_replicas"],
                observed_generation=w["observed_generation"],
                generation=w["generation"],
            )
            for w in workloads
        ],
        last_plans=last_plans,
        clusters=clusters,
        capacity=capacity,
        epoch=epoch,
        now=now,
        reports=reports,
        plan_sequence=row["plan_sequence"] if row is not None else plan_sequence,
        scheduling=scheduling,
        observed_plans=observed_plans,
    )


__all__ = ["Delivery", "LostLeadership", "StepConfig", "StepResult", "encode_event", "step"]
