"""The LLMDeployment status the user sees, computed from the planner's view. Pure.

Guarantees:
- Conditions Ready (summary), Placed, Progressing, Available and Degraded are always all present, with CamelCase
  reasons and the observed generation; `lastTransitionTime` moves only when a condition's status flips (the
  previous status is passed in).
- Replica counts come only from what watchers observed in the target clusters, never from what was planned.
- ``endpoints`` lists the origin's Service URL first (``http://<name>.<namespace>:<port>``), then each other
  cluster's that runs replicas.
- The same inputs give the same status, so the planner can compare it with the last one it sent and stay quiet
  when nothing changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from api.conditions import Condition, ConditionStatus, set_condition
from api.events import PlacementRole
from api.labels import LABEL_DEPLOYMENT, LABEL_ORIGIN
from api.models import ClusterPlacementStatus, Endpoint, LLMDeploymentStatus


@dataclass(frozen=True)
class ClusterProgress:
    """One cluster's share and what its watcher last saw of the workload there."""

    cluster: str
    replicas: int
    role: PlacementRole
    gpu_type: str | None
    healthy: bool
    ready_replicas: int
    available_replicas: int
    updated_replicas: int
    workload_current: bool
    """The workload there reflects the latest plan (same plan id, and the Deployment controller caught up)."""
    apply_failed: str | None = None


@dataclass(frozen=True)
class StatusInputs:
    origin: str
    namespace: str
    name: str
    generation: int
    desired_replicas: int
    port: int
    outcome: str
    """The placement outcome, or ModelNotFound/InvalidSpec/Suspended/Deleting."""
    message: str
    clusters: Sequence[ClusterProgress]
    previous: Sequence[Condition]
    now: datetime
    traffic: str | None = None
    """Where requests to the origin's Service go (planner.traffic), for the TRAFFIC column."""


_READY_REASONS = {
    "ModelNotFound": "ModelNotFound",
    "InvalidSpec": "InvalidSpec",
    "Suspended": "Suspended",
    "Deleting": "Deleting",
    "InsufficientGPU": "InsufficientGPU",
    "NoEligibleCluster": "NoEligibleCluster",
    "PartiallyPlaced": "InsufficientGPU",
    "PolicyDenied": "PolicyDenied",
}


def selector(origin: str, name: str) -> str:
    return f"{LABEL_DEPLOYMENT}={name},{LABEL_ORIGIN}={origin}"


def compute_status(inputs: StatusInputs) -> LLMDeploymentStatus:
    serving = [c for c in inputs.clusters if c.replicas > 0 and c.role != "removing"]
    active = [c for c in serving if c.role == "active"]
    ready = sum(c.ready_replicas for c in serving if c.healthy)
    placed = sum(c.replicas for c in active)
    desired = inputs.desired_replicas
    conditions: tuple[Condition, ...] = tuple(inputs.previous)

    def put(type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            type=type_,
            status=status,
            reason=reason,
            message=message,
            observed_generation=inputs.generation,
            now=inputs.now,
        )

    # Placed
    if inputs.outcome == "Placed":
        put("Placed", "True", "Placed", inputs.message)
    elif inputs.outcome == "Suspended":
        put("Placed", "True", "Suspended", "suspended: no replicas are placed")
    elif inputs.outcome == "Deleting":
        put("Placed", "False", "Deleting", "removing workloads from every cluster before deletion")
    else:
        put("Placed", "False", _READY_REASONS.get(inputs.outcome, inputs.outcome), inputs.message)

    # Progressing: something planned is not yet true in the clusters.
    pending = [
        c for c in active if not c.workload_current or c.updated_replicas < c.replicas or c.ready_replicas < c.replicas
    ]
    retiring = [c for c in serving if c.role == "retiring"]
    removing = [c for c in inputs.clusters if c.role == "removing"]
    if pending or retiring or removing:
        parts = [f"{c.cluster}: {c.ready_replicas}/{c.replicas} ready" for c in pending]
        parts += [f"{c.cluster}: retiring after failover/move" for c in retiring]
        parts += [f"{c.cluster}: removing" for c in removing]
        put("Progressing", "True", "Rollout", "; ".join(parts))
    else:
        put("Progressing", "False", "RolloutComplete", f"{ready} of {desired} replica(s) ready")

    # Available: at least one replica serves (or nothing was asked for).
    if desired == 0:
        put("Available", "False", "ScaledToZero", "no replicas requested")
    elif ready > 0:
        put("Available", "True", "MinimumReplicasAvailable", f"{ready} of {desired} replica(s) ready")
    else:
        put("Available", "False", "NoReplicasReady", f"0 of {desired} replica(s) ready")

    # Degraded: something is wrong that the user or the fleet has to fix.
    failed = [c for c in inputs.clusters if c.apply_failed]
    unhealthy = [c for c in serving if not c.healthy]
    if failed:
        put("Degraded", "True", "ApplyFailed", "; ".join(f"{c.cluster}: {c.apply_failed}" for c in failed))
    elif unhealthy:
        put("Degraded", "True", "ClusterUnhealthy", "; ".join(f"cluster {c.cluster} is unhealthy" for c in unhealthy))
    elif inputs.outcome in ("PartiallyPlaced", "InsufficientGPU", "NoEligibleCluster"):
        put("Degraded", "True", _READY_REASONS[inputs.outcome], inputs.message)
    else:
        put("Degraded", "False", "AsExpected", "")

    # Ready: the one-word answer.
    if inputs.outcome in _READY_REASONS and inputs.outcome != "PartiallyPlaced":
        put("Ready", "False", _READY_REASONS[inputs.outcome], inputs.message)
    elif failed:
        put("Ready", "False", "ApplyFailed", "; ".join(f"{c.cluster}: {c.apply_failed}" for c in failed))
    elif ready >= desired and placed >= desired and not pending:
        put("Ready", "True", "Ready", f"{ready} of {desired} replica(s) ready")
    elif inputs.outcome == "PartiallyPlaced":
        put("Ready", "False", "InsufficientGPU", inputs.message)
    else:
        put("Ready", "False", "WaitingForReplicas", f"{ready} of {desired} replica(s) ready")

    ready_condition = next(c for c in conditions if c.type == "Ready")
    ordered = _ordered(conditions)
    placements = [
        ClusterPlacementStatus(
            cluster=c.cluster,
            replicas=c.replicas,
            ready_replicas=c.ready_replicas if c.healthy else 0,
            gpu_type=c.gpu_type,
        )
        for c in serving
    ]
    # The origin's Service first: the one address clients need wherever the replicas run (planner.traffic keeps
    # it pointing at them); then the Service in each other cluster that runs replicas.
    endpoints = [Endpoint(cluster=inputs.origin, url=f"http://{inputs.name}.{inputs.namespace}:{inputs.port}")]
    endpoints += [
        Endpoint(cluster=c.cluster, url=f"http://{inputs.name}.{inputs.namespace}.svc.cluster.local:{inputs.port}")
        for c in active
        if c.cluster != inputs.origin
    ]
    return LLMDeploymentStatus(
        observed_generation=inputs.generation,
        conditions=list(ordered),
        replicas=placed,
        ready_replicas=ready,
        selector=selector(inputs.origin, inputs.name),
        placements=placements,
        clusters=",".join(c.cluster for c in active) or None,
        endpoints=endpoints,
        traffic=inputs.traffic,
        ready=ready_condition.reason,
    )


_ORDER = ("Ready", "Placed", "Progressing", "Available", "Degraded")


def _ordered(conditions: Sequence[Condition]) -> tuple[Condition, ...]:
    rank: Mapping[str, int] = {t: i for i, t in enumerate(_ORDER)}
    return tuple(sorted(conditions, key=lambda c: (rank.get(c.type, len(_ORDER)), c.type)))
