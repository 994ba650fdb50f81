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
- Every message read past the position is either used (recorded, or a duplicate of a recorded event) or
  dead-lettered with its reason (planner/decode.py says which), in the step's transaction.
- The pure part of a step (decoding, origin checks, folding) can be done ahead by `prepare`, outside the
  transaction, so the planner works on the next batch while Postgres works on the current one.

The rooms it orchestrates: planner/decode.py (wire bytes to an event or a dead letter), planner/health.py (cluster
health rules), planner/affected.py (which deployments to reconcile), planner/decide.py with planner/inputs.py
(reading, reconciling and writing the decisions), planner/rejected.py (telling a deployment its object was
refused).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from api.events import ClusterHeartbeat, Event, LoadObserved, encode_event
from api.policy import TenantPolicy
from bus.subjects import Subjects
from planner import health, metrics, scaling
from planner.affected import affected as affected_keys
from planner.decide import decide
from planner.decode import Decoded, Delivery, decode_delivery, prepare
from planner.memory import CapacityMemory
from planner.reconcile import DEFAULT_POLICY
from planner.rejected import report_models, report_refused
from store import queries, recorder
from store.engine import Connection
from store.projections import Op, fold

logger = logging.getLogger(__name__)


class LostLeadership(Exception):
    """A newer planner epoch exists: this planner must stop planning."""


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


async def begin(conn: Connection, *, epoch: int, consumer: str) -> int:
    """Take the writers' lock, check this planner still leads (`LostLeadership` if not); the committed position."""
    await recorder.lock_writers(conn)
    latest, position = await recorder.epoch_and_position(conn, consumer)
    if latest != epoch:
        raise LostLeadership(f"planner epoch {epoch} was superseded by {latest}")
    return position


async def dead_letter(
    conn: Connection,
    *,
    delivery: Delivery,
    reason: str,
    consumer: str,
    epoch: int,
    now: datetime,
    subjects: Subjects,
    report: bool = True,
) -> None:
    """Store a refused message as it came, with why; tell its object's owner where there is one to tell."""
    await recorder.dead_letter(
        conn,
        consumer=consumer,
        subject=delivery.subject,
        stream_sequence=delivery.stream_sequence,
        reason=reason,
        raw=delivery.data,
    )
    logger.warning("dead-lettered message %s on %s: %s", delivery.stream_sequence, delivery.subject, reason)
    if report:
        await report_refused(conn, delivery.data, delivery.subject, reason, epoch=epoch, now=now, subjects=subjects)


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
    position = await begin(conn, epoch=epoch, consumer=config.consumer)
    result.position = position

    incoming: list[tuple[Event, dict[str, Any]]] = []
    incoming_raw: list[bytes | None] = []
    heartbeats: dict[str, ClusterHeartbeat] = {}
    heard_at: dict[str, datetime] = {}
    folded: dict[str, Sequence[Op]] = {}
    refused: list[tuple[Delivery, str]] = []
    for delivery, outcome in zip(deliveries, decoded, strict=True):
        if delivery.stream_sequence <= position:
            result.duplicates += 1
            continue
        result.position = max(result.position, delivery.stream_sequence)
        event = outcome.event
        if event is None:
            refused.append((delivery, outcome.refused or "refused"))
            continue
        folded[event.event_id] = outcome.ops
        if type(event) is ClusterHeartbeat:
            heartbeats[event.cluster] = event
            heard_at[event.cluster] = min(now, delivery.stored_at or now)
            continue
        incoming.append(
            (event, {"subject": delivery.subject, "stream_sequence": delivery.stream_sequence, "epoch": epoch})
        )
        incoming_raw.append(delivery.data if outcome.raw_ok else None)

    clusters = {c.name: c for c in await queries.clusters(conn)}
    generated = health.cluster_events(heartbeats.values(), clusters, now=now, recovery_hold=config.recovery_hold)
    recorded = await recorder.append(
        conn, incoming + [(e, {"epoch": epoch}) for e in generated], raw=incoming_raw + [None] * len(generated)
    )
    result.recorded = len(recorded)
    result.duplicates += len(incoming) + len(generated) - len(recorded)
    await recorder.apply_ops(conn, [op for r in recorded for op in _ops(r.event, folded)])
    for cluster, at in heard_at.items():
        await recorder.touch_heartbeat(conn, cluster, at)
    # After the batch's events are folded: a refusal is reported on the deployments as they now stand.
    for delivery, reason in refused:
        await dead_letter(
            conn,
            delivery=delivery,
            reason=reason,
            consumer=config.consumer,
            epoch=epoch,
            now=now,
            subjects=config.subjects,
        )
    result.dead_letters = len(refused)

    # Silence: clusters whose heartbeats stopped become unhealthy. Judged on the stream's clock, as of the
    # newest message read: a planner that fell behind has not yet read the heartbeats sent since, and must not
    # take its own lag for the whole fleet's silence. Only the planner's own cluster events and heartbeats change
    # the clusters table, so it is read again only after those.
    if generated or heard_at:
        clusters = {c.name: c for c in await queries.clusters(conn)}
    stored = [d.stored_at for d in deliveries if d.stored_at is not None]
    read_up_to = min(now, max(stored)) if stored else now
    silent = (
        []
        if mode == "catch-up"
        else health.silent_clusters(
            clusters.values(),
            now=now,
            read_up_to=read_up_to,
            heartbeat_timeout=config.heartbeat_timeout,
            grace_until=health_grace_until,
        )
    )
    if silent:
        lost = await recorder.append(conn, [(e, {"epoch": epoch}) for e in silent])
        await recorder.apply_ops(conn, [op for r in lost for op in fold(r.event)])
        recorded += lost
        clusters = {c.name: c for c in await queries.clusters(conn)}

    metrics.export_cluster_health(clusters.values())
    memory.note(r.event for r in recorded)
    loads = [r.event for r in recorded if type(r.event) is LoadObserved]
    # Models' own verdicts, also while catching up: each needs only its event and the model lane's last status
    # (a model fixed while no planner ran is told so by the next leader).
    result.plans += await report_models(
        conn, [r.event for r in recorded], epoch=epoch, now=now, subjects=config.subjects
    )
    if mode == "catch-up":
        if autoscaler is not None:
            for load in loads:
                autoscaler.note(load)  # the latest load per cluster, for the first decisions after catching up
        await recorder.record_position(conn, config.consumer, result.position)
        return result
    keys = await affected_keys(conn, [r.event for r in recorded])
    keys = sorted(set(keys) | set(await queries.stuck_deployment_keys(conn, stuck_before=now - config.unschedulable)))
    if mode == "full":
        keys = sorted(set(keys) | set(await queries.all_deployment_keys(conn)))
    if keys:
        decided = await decide(
            conn,
            keys,
            recorded,
            epoch=epoch,
            now=now,
            stuck_before=now - config.unschedulable,
            subjects=config.subjects,
            memory=memory,
            cluster_rows=list(clusters.values()),
            tenant_policy=config.tenant_policy,
        )
        result.decisions, result.plans = decided.decisions, decided.plans
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


__all__ = [
    "Decoded",
    "Delivery",
    "LostLeadership",
    "StepConfig",
    "StepResult",
    "decode_delivery",
    "encode_event",
    "prepare",
    "step",
]
