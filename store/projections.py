"""Projections as a pure fold: each event becomes a list of row operations on the projection tables.

Guarantees:
- `fold(event)` reads no state, clock or database: the same event always yields the same operations, so folding
  the log in position order rebuilds every projection (`store.replay`), and live folding (`store.recorder`) and
  rebuilds cannot disagree.
- Operations are idempotent under repetition of the same event (upserts and keyed deletes), which is what makes a
  redelivered batch harmless even before the consumer-position check.
- Observations carry full snapshots, so a later observation (or the deletion) of an object supersedes every
  earlier one: the recorder stores their `object_key` (`store.recorder.object_key`), and replay folds only the last
  event per key.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from api.events import (
    ApplyReported,
    ClusterHealthChanged,
    ClusterJoined,
    ClusterLabelsChanged,
    ClusterNetworkChanged,
    Event,
    PlacementDecided,
    PlanIssued,
    ResourceDeleted,
    ResourceObserved,
    ResyncCompleted,
)
from api.keys import DeploymentKey
from api.labels import (
    ANNOTATION_PLAN,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    deployment_identity,
)
from api.network import ClusterNetwork, EndpointIP
from api.plans import ModelStatusPlan, StatusPlan, WorkloadPlan
from api.quantity import bytes_of, gpu_memory_label_bytes, millicores, whole_count
from api.snapshots import MAX_INGRESS


@dataclass(frozen=True)
class Upsert:
    """Insert the row, or update exactly these columns of the existing row with the same key."""

    table: str
    key: dict[str, Any]
    values: dict[str, Any]


@dataclass(frozen=True)
class Update:
    """Update rows matching every equality in `where`; no row is created."""

    table: str
    where: dict[str, Any]
    values: dict[str, Any]


@dataclass(frozen=True)
class Delete:
    """Delete rows matching every equality in `where`."""

    table: str
    where: dict[str, Any]


@dataclass(frozen=True)
class DeleteMissing:
    """Delete rows matching `where` whose `column` is not among `keep`."""

    table: str
    where: dict[str, Any]
    column: str
    keep: tuple[str, ...] = field(default_factory=tuple)


Op = Upsert | Update | Delete | DeleteMissing

UNFOLDED_FIELDS: dict[str, tuple[str, ...]] = {"PlacementDecided": ("verdicts", "inputs")}
"""Payload fields `fold` never reads, per event type: a decision's audit record (every cluster's verdict, the
inputs it saw), most of its bytes (~40 KB of JSON each at 100 clusters). A reader that only folds may leave them
out where it reads the log (store.replay does, in SQL); tests/unit/test_projection_snapshots.py holds `fold` to it."""

KIND_TABLES = {
    "LLMModel": "models",
    "LLMDeployment": "deployments",
    "Node": "nodes",
    "Pod": "pods",
    "Deployment": "workloads",
    "Service": "services",
}


def fold(event: Event, *, tables: Collection[str] | None = None) -> list[Op]:
    """The projection changes one event makes. With `tables`, the changes to other tables may be left out: a fold
    into a few tables (store.memory) then skips rendering a plan's payload for the `plans` table, most of what
    folding a plan costs."""
    # Observations are nearly every event: test for them by exact class first. `match` on a class pattern (an
    # isinstance check through pydantic's ABCMeta, in Python) costs more than folding a snapshot.
    if type(event) is ResourceObserved:
        return _observed(event)
    match event:
        case ResourceDeleted():
            table = KIND_TABLES[event.kind]
            where: dict[str, Any] = {"uid": event.uid}
            if event.kind == "LLMDeployment":
                where["origin_cluster"] = event.cluster
            else:
                where["cluster"] = event.cluster
            return [Delete(table, where)]
        case ResyncCompleted():
            cluster_col = "origin_cluster" if event.kind == "LLMDeployment" else "cluster"
            scope: dict[str, Any] = {cluster_col: event.cluster}
            if event.namespace is not None and event.kind != "Node":
                scope["namespace"] = event.namespace
            return [DeleteMissing(KIND_TABLES[event.kind], scope, "uid", tuple(event.uids))]
        case ClusterJoined():
            return [
                Upsert(
                    "clusters",
                    {"name": event.cluster},
                    {
                        "labels": event.labels,
                        "healthy": True,
                        "health_reason": "Joined",
                        "joined_at": event.at,
                        "health_changed_at": event.at,
                        "network": _network(event.network),
                    },
                )
            ]
        case ClusterLabelsChanged():
            return [Update("clusters", {"name": event.cluster}, {"labels": event.labels})]
        case ClusterNetworkChanged():
            return [Update("clusters", {"name": event.cluster}, {"network": _network(event.network)})]
        case ClusterHealthChanged():
            return [
                Update(
                    "clusters",
                    {"name": event.cluster},
                    {"healthy": event.healthy, "health_reason": event.reason, "health_changed_at": event.at},
                )
            ]
        case PlacementDecided():
            return _decided(event)
        case PlanIssued():
            return _plan_issued(event, with_payload=tables is None or "plans" in tables)
        case ApplyReported():
            return _apply_reported(event)
        case _:
            return []


def _observed(event: ResourceObserved) -> list[Op]:
    obj = event.object
    at = event.observed_at
    match event.kind:
        case "LLMModel":
            key: dict[str, Any] = {"cluster": event.cluster, "namespace": event.namespace, "name": event.name}
            values = {
                "uid": event.uid,
                "generation": event.generation or 0,
                "spec": obj.get("spec", {}),
                "updated_at": at,
            }
            return [Upsert("models", key, values)]
        case "LLMDeployment":
            key = DeploymentKey(event.cluster, event.namespace or "", event.name).columns()
            values = {
                "uid": event.uid,
                "generation": event.generation or 0,
                "spec": obj.get("spec", {}),
                "labels": obj.get("labels", {}),
                "deleting": bool(obj.get("deletionTimestamp")),
                "has_finalizer": bool(obj.get("finalizers")),
                "observed_status": obj.get("status", {}),
                "created_at": _parse_time(obj.get("creationTimestamp")) or at,
                "updated_at": at,
            }
            return [Upsert("deployments", key, values)]
        case "Node":
            return [Upsert("nodes", {"cluster": event.cluster, "name": event.name}, node_row(event.uid, obj, at))]
        case "Pod":
            key = {"cluster": event.cluster, "namespace": event.namespace, "name": event.name}
            return [Upsert("pods", key, pod_row(event.uid, obj, at, namespace=event.namespace))]
        case "Deployment":
            key = {"cluster": event.cluster, "namespace": event.namespace, "name": event.name}
            return [Upsert("workloads", key, workload_row(event.uid, obj, at, namespace=event.namespace))]
        case "Service":
            key = {"cluster": event.cluster, "namespace": event.namespace, "name": event.name}
            return [Upsert("services", key, service_row(event.uid, obj, at, namespace=event.namespace))]
    return []


def node_row(uid: str, obj: dict[str, Any], at: datetime) -> dict[str, Any]:
    """Projection row of a compact Node snapshot (see watcher.translate)."""
    labels: dict[str, str] = obj.get("labels", {})
    allocatable: dict[str, Any] = obj.get("allocatable", {})
    return {
        "uid": uid,
        "labels": labels,
        "gpu_product": labels.get(GPU_PRODUCT_LABEL),
        "gpu_memory_bytes": gpu_memory_label_bytes(labels.get(GPU_MEMORY_LABEL)),
        "gpu_allocatable": whole_count(allocatable.get(GPU_RESOURCE)),  # int4 column: clamped
        "cpu_allocatable_m": millicores(allocatable.get("cpu")),
        "memory_allocatable_bytes": bytes_of(allocatable.get("memory")),
        "ready": bool(obj.get("ready", False)),
        "schedulable": not obj.get("unschedulable", False),
        "taints": obj.get("taints", []),
        "updated_at": at,
    }


def pod_row(uid: str, obj: dict[str, Any], at: datetime, *, namespace: str | None) -> dict[str, Any]:
    """Projection row of a compact Pod snapshot (see watcher.translate); its identity labels count only in the
    namespace they name (api.labels.deployment_identity)."""
    requests: dict[str, Any] = obj.get("requests", {})
    identity = deployment_identity(obj.get("labels", {}), namespace)
    deployment_key = str(DeploymentKey(*identity)) if identity is not None else None
    return {
        "uid": uid,
        "node_name": obj.get("nodeName"),
        "phase": obj.get("phase", "Pending"),
        "ready": bool(obj.get("ready", False)),
        "gpu_request": whole_count(requests.get(GPU_RESOURCE)),  # int4 column: clamped
        "cpu_request_m": millicores(requests.get("cpu")),
        "memory_request_bytes": bytes_of(requests.get("memory")),
        "deployment_key": deployment_key,
        "updated_at": at,
        # The replica's address (watcher.translate reports it for the operator's own pods only); a value that is
        # not an endpoint address is kept out, so it can never reach an EndpointSlice.
        "pod_ip": _pod_ip(obj.get("podIP")),
    }


def service_row(uid: str, obj: dict[str, Any], at: datetime, *, namespace: str | None) -> dict[str, Any]:
    """Projection row of a compact Service snapshot (see watcher.translate): it counts for the LLMDeployment its
    identity labels name only in that namespace; only addresses that can be endpoints are kept (at most
    api.snapshots.MAX_INGRESS), so a hostile observation cannot put another into an EndpointSlice."""
    identity = deployment_identity(obj.get("labels", {}), namespace)
    raw = obj.get("ingress", [])
    ingress = [ip for ip in (_pod_ip(v) for v in (raw if isinstance(raw, list) else [])[:MAX_INGRESS]) if ip]
    kind = obj.get("type")
    return {
        "uid": uid,
        "deployment_key": str(DeploymentKey(*identity)) if identity is not None else None,
        "service_type": kind if isinstance(kind, str) else "ClusterIP",
        "port": _port(obj.get("port")),
        "node_port": _port(obj.get("nodePort")),
        "ingress": sorted(set(ingress)),
        "updated_at": at,
    }


def workload_row(uid: str, obj: dict[str, Any], at: datetime, *, namespace: str | None) -> dict[str, Any]:
    """Projection row of a compact managed-Deployment snapshot (see watcher.translate). It counts for the
    LLMDeployment its identity labels name only if it is in that namespace (api.labels.deployment_identity):
    a tenant's Deployment labelled as another namespace's copy counts for nobody."""
    status: dict[str, Any] = obj.get("status", {})
    identity = deployment_identity(obj.get("labels", {}), namespace)
    origin, deployment_namespace, deployment_name = identity if identity is not None else (None, None, None)
    return {
        "uid": uid,
        "origin_cluster": origin,
        "deployment_namespace": deployment_namespace,
        "deployment_name": deployment_name,
        "plan_id": obj.get("annotations", {}).get(ANNOTATION_PLAN),
        "replicas": int(obj.get("replicas", 0)),
        "ready_replicas": int(status.get("readyReplicas", 0)),
        "available_replicas": int(status.get("availableReplicas", 0)),
        "updated_replicas": int(status.get("updatedReplicas", 0)),
        "observed_generation": int(status.get("observedGeneration", 0)),
        "generation": int(obj.get("generation", 0)),
        "updated_at": at,
    }


def _decided(event: PlacementDecided) -> list[Op]:
    key = DeploymentKey(event.origin_cluster, event.namespace, event.name).columns()
    ops: list[Op] = [
        Upsert("deployment_plans", key, {"last_outcome": event.outcome, "last_decision_at": event.decided_at})
    ]
    for share in event.shares:
        ops.append(
            Upsert(
                "placements",
                {**key, "cluster": share.cluster},
                {
                    "replicas": share.replicas,
                    "role": share.role,
                    "gpu_type": share.gpu_type,
                    "nodes": share.nodes,
                    "replica_gpus": event.replica_gpus,
                    "replica_cpu_m": event.replica_cpu_m,
                    "replica_memory_bytes": event.replica_memory_bytes,
                    "planned_at": event.decided_at,
                },
            )
        )
    return ops


def _plan_issued(event: PlanIssued, *, with_payload: bool) -> list[Op]:
    plan = event.plan
    ref = plan.deployment
    key = ref.key.columns()
    ops: list[Op] = [Upsert("deployment_plans", key, {"plan_sequence": plan.sequence})]
    if with_payload:
        row = {
            "kind": plan.kind,
            "cluster": plan.cluster,
            **key,
            "epoch": plan.epoch,
            "sequence": plan.sequence,
            "replicas": plan.replicas if isinstance(plan, WorkloadPlan) else None,
            "payload": plan.model_dump(mode="json"),
            "issued_at": plan.issued_at,
        }
        ops.insert(0, Upsert("plans", {"plan_id": plan.plan_id}, row))
    if isinstance(plan, WorkloadPlan):
        ops.append(
            Update(
                "placements",
                {**key, "cluster": plan.cluster},
                {"plan_id": plan.plan_id, "epoch": plan.epoch, "sequence": plan.sequence},
            )
        )
    elif isinstance(plan, StatusPlan | ModelStatusPlan):
        ops.append(Upsert("deployment_plans", key, {"last_status": plan.status.wire()}))
    return ops


def _apply_reported(event: ApplyReported) -> list[Op]:
    key = DeploymentKey(event.origin_cluster, event.namespace, event.name).columns()
    ops: list[Op] = [
        Upsert(
            "apply_results",
            {"plan_id": event.plan_id, "cluster": event.cluster},
            {
                **key,
                "outcome": event.outcome,
                "message": event.message,
                "objects": event.objects,
                "finished_at": event.finished_at,
            },
        ),
    ]
    if event.outcome in ("Applied", "Failed", "Deleted", "Duplicate"):
        # A Duplicate report means an earlier delivery applied the plan but its report was lost.
        outcome = "Applied" if event.outcome == "Duplicate" else event.outcome
        ops.append(
            Update(
                "placements",
                {**key, "cluster": event.cluster, "plan_id": event.plan_id},
                {
                    "applied_plan_id": event.plan_id,
                    "apply_outcome": outcome,
                    "apply_message": event.message,
                    "applied_at": event.finished_at,
                },
            )
        )
    if event.outcome == "Deleted":
        # The workload is gone from that cluster; a share with no replicas left has nothing more to track.
        ops.append(Delete("placements", {**key, "cluster": event.cluster, "plan_id": event.plan_id, "replicas": 0}))
    return ops


def _network(network: ClusterNetwork | None) -> dict[str, Any] | None:
    return network.model_dump(mode="json") if network is not None else None


def _port(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535 else None


def _pod_ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(_ENDPOINT_IP.validate_python(value))
    except ValueError:
        return None


_ENDPOINT_IP: TypeAdapter[str] = TypeAdapter(EndpointIP)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
