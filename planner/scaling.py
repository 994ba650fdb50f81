"""The fleet autoscaler's shell in the planner step: `LoadObserved` events in, `ScaleDecided` events and scale
plans (to the origin's applier, which writes /scale) out, inside the step's transaction.

Guarantees:
- Only deployments whose origin spec has `autoscaling` (and is neither suspended nor being deleted) are scaled;
  the count written is `planner.autoscale.decide`'s, from the latest observation of every cluster.
- Every change is a `ScaleDecided` event with its inputs, in the deployment's stream, plus a `ScalePlan` with the
  next plan sequence of the deployment (a `PlanIssued`, so `history` shows it and the applier orders it).
- The ScalingActive condition is written when it changes (status, reason, or what its message says is missing),
  and once after a planner starts:
  True/ValidMetricsFound, or False/MetricsUnavailable when a target's metric is missing (scale-down is then held).
- `AutoscalerMemory` keeps, per deployment, the latest observation per cluster and the HPA-style history
  (recommendations, recent scale events). It lives in the planner process, like a HorizontalPodAutoscaler's; a
  rolled-back step can leave one recommendation in it, which only makes it more cautious. A new leader starts
  empty and so waits a full scale-down window before giving replicas back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from api.conditions import Condition
from api.events import Event, LoadObserved, PlanIssued, ScaleDecided, deterministic_id
from api.keys import DeploymentKey
from api.models import LLMDeploymentSpec
from api.plans import DeploymentRef, KubeEvent, ScalePlan, plan_id
from bus.subjects import Subjects
from planner import autoscale, metrics
from store import queries
from store.engine import Connection
from store.rows import DeploymentRow

logger = logging.getLogger(__name__)

CONDITION = "ScalingActive"


@dataclass
class AutoscalerMemory:
    loads: dict[DeploymentKey, dict[str, LoadObserved]] = field(default_factory=dict)
    history: dict[DeploymentKey, autoscale.History] = field(default_factory=dict)
    condition: dict[DeploymentKey, Condition] = field(default_factory=dict)

    def note(self, event: LoadObserved) -> DeploymentKey:
        key = DeploymentKey(event.origin_cluster, event.namespace, event.name)
        known = self.loads.setdefault(key, {})
        previous = known.get(event.cluster)
        if previous is None or previous.observed_at <= event.observed_at:
            known[event.cluster] = event
        return key

    def drop(self, key: DeploymentKey) -> None:
        self.loads.pop(key, None)
        self.history.pop(key, None)
        self.condition.pop(key, None)
        metrics.forget_autoscaler(key)

    def prune(self, now: datetime, older_than: timedelta = timedelta(hours=1)) -> None:
        """Forget deployments nobody reported for `older_than` (deleted, or scaled to zero): memory stays
        bounded by the deployments that report."""
        for key, known in list(self.loads.items()):
            if all(now - o.observed_at > older_than for o in known.values()):
                self.drop(key)


@dataclass(frozen=True)
class Scaled:
    events: list[Event]
    outbox: list[tuple[str, str, bytes]]


async def scale(
    conn: Connection,
    loads: Sequence[LoadObserved],
    *,
    epoch: int,
    now: datetime,
    subjects: Subjects,
    memory: AutoscalerMemory,
) -> Scaled:
    """Decide for every deployment `loads` are about; the caller appends the events and writes the outbox."""
    keys = sorted({memory.note(o) for o in loads})
    memory.prune(now)
    if not keys:
        return Scaled([], [])
    rows = await queries.deployments(conn, keys)
    placements = await queries.placements_for_many(conn, keys)
    events: list[Event] = []
    outbox: list[tuple[str, str, bytes]] = []
    for key in keys:
        row = rows.get(key)
        spec = _spec(row)
        if row is None or spec is None or spec.autoscaling is None or spec.suspend or row.deleting:
            memory.drop(key)
            continue
        # Hostile by default: a cluster speaks only for replicas the planner placed there.
        placed = {p.cluster for p in placements.get(key, []) if p.replicas > 0}
        memory.loads[key] = {c: o for c, o in memory.loads.get(key, {}).items() if c in placed}
        loads_now = list(memory.loads[key].values())
        retiring = sorted(p.cluster for p in placements.get(key, []) if p.role == "retiring")
        decision = autoscale.decide(
            spec.autoscaling,
            spec.replicas,
            loads_now,
            memory.history.get(key),
            now,
            hold_scale_down=f"failing over from {', '.join(retiring)}" if retiring else None,
        )
        memory.history[key] = decision.history
        metrics.observe_autoscaler(key, decision)
        if decision.waiting:
            continue
        condition = _condition(decision, row.generation, memory.condition.get(key), now)
        previous = memory.condition.get(key)
        # The message too: it names what is missing (which replica, which scrape), and that may change while
        # the status does not. Its text carries no counts, so an unchanged situation writes nothing.
        condition_changed = previous is None or (previous.status, previous.reason, previous.message) != (
            condition.status,
            condition.reason,
            condition.message,
        )
        if not decision.changed and not condition_changed:
            continue
        ref = DeploymentRef(origin_cluster=key[0], namespace=key[1], name=key[2], uid=row.uid)
        sequence = row.plan_sequence + 1
        kube_events: list[KubeEvent] = []
        if decision.changed:
            decided = ScaleDecided(
                event_id=deterministic_id("scaled", *key, str(epoch), now.isoformat()),
                cluster="hub",
                origin_cluster=key[0],
                namespace=key[1],
                name=key[2],
                generation=row.generation,
                from_replicas=decision.current,
                to_replicas=decision.desired,
                reason=decision.reason,
                metrics=decision.metrics,
                clusters={o.cluster: _summary(o) for o in loads_now},
                limits=decision.limits,
                epoch=epoch,
                decided_at=now,
            )
            events.append(decided)
            kube_events.append(KubeEvent(type="Normal", reason="SuccessfulRescale", message=decision.reason[:1000]))
            logger.info("%s/%s: %s", key[1], key[2], decision.reason, extra={"cluster": key[0], "epoch": epoch})
        plan = ScalePlan(
            plan_id=plan_id(ref, key[0], "Scale", epoch, sequence),
            epoch=epoch,
            sequence=sequence,
            cluster=key[0],
            deployment=ref,
            generation=row.generation,
            issued_at=now,
            replicas=decision.desired if decision.changed else None,
            condition=condition if condition_changed else None,
            events=kube_events,
        )
        memory.condition[key] = condition
        events.append(PlanIssued(event_id=deterministic_id("issued", plan.plan_id), cluster="hub", plan=plan, at=now))
        outbox.append((plan.plan_id, subjects.plans(plan.cluster), plan.model_dump_json().encode()))
    return Scaled(events, outbox)


def _spec(row: DeploymentRow | None) -> LLMDeploymentSpec | None:
    if row is None:
        return None
    try:
        return LLMDeploymentSpec.model_validate(row.spec)
    except ValidationError:
        return None  # the placement decision reports InvalidSpec; nothing to scale


def _condition(decision: autoscale.Decision, generation: int, previous: Condition | None, now: datetime) -> Condition:
    if decision.metrics_available:
        status, reason = "True", "ValidMetricsFound"
        message = f"the fleet autoscaler computes replicas from {', '.join(decision.metrics) or 'its targets'}"
    else:
        status, reason = "False", "MetricsUnavailable"
        message = "scale-down is held: " + ("; ".join(decision.missing) or "no load observed")
    transition = previous.last_transition_time if previous is not None and previous.status == status else now
    return Condition(
        type=CONDITION,
        status=status,
        reason=reason,
        message=message[:2000],
        observed_generation=generation,
        last_transition_time=transition,
    )


def _summary(o: LoadObserved) -> dict[str, Any]:
    return {
        "replicas": o.replicas,
        "reporting": o.reporting,
        "waiting": o.waiting,
        "running": o.running,
        "requests_per_second": o.requests_per_second,
        "kv_cache_usage": o.kv_cache_usage,
        "ttft_p90_seconds": o.ttft_p90_seconds,
        "window_seconds": o.window_seconds,
        "observed_at": o.observed_at.isoformat(),
        "problems": o.problems,
    }
