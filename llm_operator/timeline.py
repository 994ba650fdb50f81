"""Turning stored events into a readable timeline, and folded state into summaries. Pure.

Guarantees: every event type has a one-line summary; spec changes say which fields changed, the generation, and
who made the change (the field manager and operation Kubernetes recorded); the same events give the same lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.events import (
    ApplyReported,
    ClusterHealthChanged,
    ClusterJoined,
    ClusterLabelsChanged,
    ClusterNetworkChanged,
    ObservationRefused,
    PlacementDecided,
    PlanIssued,
    ResourceDeleted,
    ResourceObserved,
    ScaleDecided,
)
from api.plans import EndpointsPlan, ModelStatusPlan, ScalePlan, StatusPlan, WorkloadPlan
from store.reader import StoredEvent


@dataclass(frozen=True)
class Line:
    time: datetime
    position: int
    cluster: str
    kind: str
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "position": self.position,
            "cluster": self.cluster,
            "kind": self.kind,
            "summary": self.summary,
        }


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def spec_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    old, new = flatten(before), flatten(after)
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key not in old:
                changes.append(f"{key}={new[key]!r}")
            elif key not in new:
                changes.append(f"-{key}")
            else:
                changes.append(f"{key}: {old[key]!r}→{new[key]!r}")
    return changes


def last_writer(managers: Iterable[Mapping[str, Any]]) -> str:
    """The manager that last changed the spec (status updates are made through the status subresource)."""
    candidates = [m for m in managers if m.get("subresource") != "status" and m.get("time")]
    if not candidates:
        return "unknown"
    latest = max(candidates, key=lambda m: str(m["time"]))
    return f"{latest.get('manager', '?')} ({latest.get('operation', '?')})"


def timeline(events: Iterable[StoredEvent]) -> list[Line]:
    lines: list[Line] = []
    last_spec: dict[str, Any] | None = None
    last_generation: int | None = None
    last_ready: dict[str, int] = {}
    for stored in events:
        event = stored.event
        summary: str | None = None
        kind: str = event.type
        match event:
            case ResourceObserved() if event.kind == "LLMDeployment":
                spec = event.object.get("spec", {})
                if event.generation != last_generation:
                    who = last_writer(event.object.get("managers", []))
                    if last_spec is None:
                        summary = f"created (generation {event.generation}) by {who}: " + ", ".join(
                            f"{k}={v!r}" for k, v in sorted(flatten(spec).items())
                        )
                    else:
                        summary = f"spec changed to generation {event.generation} by {who}: " + (
                            ", ".join(spec_changes(last_spec, spec)) or "no field changed"
                        )
                    kind = "SpecChanged"
                    last_spec, last_generation = spec, event.generation
                elif event.object.get("deletionTimestamp"):
                    summary, kind = "deletion requested (waiting for cleanup)", "DeletionRequested"
            case ResourceDeleted() if event.kind == "LLMDeployment":
                summary, kind = "deleted", "Deleted"
            case ResourceObserved() if event.kind == "Deployment":
                status = event.object.get("status", {})
                ready = int(status.get("readyReplicas", 0))
                if last_ready.get(event.cluster) != ready:
                    summary = f"workload {ready}/{event.object.get('replicas', 0)} ready"
                    kind = "WorkloadProgress"
                    last_ready[event.cluster] = ready
            case ResourceDeleted() if event.kind == "Deployment":
                summary, kind = "workload removed", "WorkloadRemoved"
                last_ready.pop(event.cluster, None)
            case PlacementDecided():
                shares = (
                    ", ".join(
                        f"{s.cluster}={s.replicas}"
                        + (f" {s.gpu_type}" if s.gpu_type else "")
                        + (f" ({s.role})" if s.role != "active" else "")
                        for s in event.shares
                    )
                    or "nothing"
                )
                summary = f"{event.outcome}: {shares} — {event.message}"
                if event.reasons:
                    summary += f" [reasons: {'; '.join(event.reasons)}]"
                kind = "Decision"
            case PlanIssued():
                plan = event.plan
                if isinstance(plan, WorkloadPlan):
                    what = f"{plan.replicas} replica(s)" if not plan.removes_everything else "remove workload"
                    summary = f"plan #{plan.sequence} to {plan.cluster}: {what} (epoch {plan.epoch})"
                    kind = "Plan"
                elif isinstance(plan, StatusPlan):
                    condition = next((c for c in plan.status.conditions if c.type == "Ready"), None)
                    summary = (
                        f"status: Ready={condition.status if condition else '?'} "
                        f"{condition.reason if condition else ''} {plan.status.ready_replicas}/{plan.status.replicas}"
                        f" ready"
                        + (f"; events: {', '.join(e.reason for e in plan.events)}" if plan.events else "")
                        + ("; finalizer released" if plan.finalizer == "remove" else "")
                    )
                    kind = "Status"
                elif isinstance(plan, ScalePlan):
                    parts = [f"spec.replicas={plan.replicas} through /scale"] if plan.replicas is not None else []
                    if plan.condition is not None:
                        parts.append(f"{plan.condition.type}={plan.condition.status} {plan.condition.reason}")
                    summary = f"plan #{plan.sequence} to {plan.cluster}: {'; '.join(parts)} (epoch {plan.epoch})"
                    kind = "ScalePlan"
                elif isinstance(plan, ModelStatusPlan):
                    conditions = ", ".join(f"{c.type}={c.status} {c.reason}" for c in plan.status.conditions)
                    summary = f"LLMModel {plan.model} status: {conditions} (plan #{plan.sequence}, epoch {plan.epoch})"
                    kind = "Status"
                elif isinstance(plan, EndpointsPlan):
                    if plan.remove:
                        what = f"remove the {plan.role} endpoints"
                    elif plan.role == "origin":
                        where = ", ".join(f"{s.cluster} ({s.mode}: {len(s.addresses)})" for s in plan.serving)
                        what = f"origin Service :{plan.port} → {where or 'no endpoints yet'}" + (
                            " and local replicas" if plan.local_replicas else ""
                        )
                    else:
                        what = f"serving ({plan.mode}), admitting {', '.join(plan.admit_cidrs) or 'no declared range'}"
                    summary = f"plan #{plan.sequence} to {plan.cluster}: {what} (epoch {plan.epoch})"
                    kind = "EndpointsPlan"
            case ScaleDecided():
                summary = event.reason
                kind = "Scaled"
            case ApplyReported():
                summary = f"{event.outcome} in {event.cluster}: {event.message}"
                kind = "Apply"
            case ObservationRefused():
                summary = f"not reported by the watcher ({event.reason}): {event.message}"
                kind = "Refused"
            case ClusterHealthChanged():
                summary = ("healthy" if event.healthy else "UNHEALTHY") + f" ({event.reason})"
            case ClusterJoined():
                summary = f"joined with labels {event.labels}"
            case ClusterLabelsChanged():
                summary = f"labels now {event.labels}"
            case ClusterNetworkChanged():
                network = event.network
                summary = f"network now {network.mode} {network.pod_cidrs}" if network else "network undeclared"
        if summary:
            lines.append(Line(stored.recorded_at, stored.position, event.cluster, kind, summary))
    return lines
