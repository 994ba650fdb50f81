"""Pure translation of raw Kubernetes objects into compact snapshots and events.

Guarantees:
- A snapshot keeps what the planner and the audit log need and drops what changes without meaning (managedFields
  bodies, node heartbeat times, kubectl's last-applied annotation), so an object that did not change in a way
  that matters yields an identical snapshot (`snapshot_digest`), and the watcher can skip republishing it.
- Event ids are deterministic in (cluster, kind, uid, resourceVersion): republishing after a relist or restart
  produces the same ids for the same observations.
No I/O, no clock: the caller passes `now`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import TypeAdapter

from api.events import ObservedKind, ResourceDeleted, ResourceObserved
from api.labels import (
    ANNOTATION_EPOCH,
    ANNOTATION_PLAN,
    ANNOTATION_SEQUENCE,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_NAMESPACE,
    LABEL_ORIGIN,
    MANAGED_BY,
)
from api.network import EndpointIP
from api.quantity import add_quantities, format_quantity, parse_quantity
from api.snapshots import MAX_INGRESS

_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
_KEPT_POD_LABELS = (LABEL_MANAGED_BY, LABEL_DEPLOYMENT, LABEL_NAMESPACE, LABEL_ORIGIN)
_ENDPOINT_IP: TypeAdapter[str] = TypeAdapter(EndpointIP)


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata", {}) or {}


def _managers(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Who changed the object, without the field sets: enough for `history` to say who/what made a change."""
    out = []
    for entry in meta.get("managedFields", []) or []:
        out.append({k: entry[k] for k in ("manager", "operation", "time", "subresource") if entry.get(k) is not None})
    return out


def _common(obj: dict[str, Any]) -> dict[str, Any]:
    meta = _meta(obj)
    out: dict[str, Any] = {"labels": meta.get("labels", {}) or {}}
    annotations = {k: v for k, v in (meta.get("annotations", {}) or {}).items() if k not in _DROPPED_ANNOTATIONS}
    if annotations:
        out["annotations"] = annotations
    for key in ("creationTimestamp", "deletionTimestamp", "finalizers", "generation"):
        if meta.get(key):
            out[key] = meta[key]
    return out


def custom_resource_snapshot(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        **_common(obj),
        "managers": _managers(_meta(obj)),
        "spec": obj.get("spec", {}),
        "status": obj.get("status", {}),
    }


def node_snapshot(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec", {}) or {}
    status = obj.get("status", {}) or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []) or [])
    return {
        "labels": _meta(obj).get("labels", {}) or {},
        "allocatable": status.get("allocatable", {}) or {},
        "capacity": status.get("capacity", {}) or {},
        "taints": [{k: t[k] for k in ("key", "value", "effect") if k in t} for t in spec.get("taints", []) or []],
        "unschedulable": bool(spec.get("unschedulable", False)),
        "ready": ready,
    }


def pod_requests(spec: dict[str, Any]) -> dict[str, str]:
    """Effective requests as the scheduler counts them: max(sum of containers, largest init container) + overhead.

    Extended resources such as nvidia.com/gpu are given as limits; the apiserver copies them to requests, but a
    snapshot taken from a raw object may predate that, so limits stand in for missing requests.
    """

    def of(container: dict[str, Any]) -> dict[str, Any]:
        resources = container.get("resources", {}) or {}
        merged = dict(resources.get("limits", {}) or {})
        merged.update(resources.get("requests", {}) or {})
        return merged

    total: dict[str, Decimal] = {}
    for container in spec.get("containers", []) or []:
        for name, value in of(container).items():
            total[name] = add_quantities(total.get(name, Decimal(0)), parse_quantity(value))
    for container in spec.get("initContainers", []) or []:
        for name, value in of(container).items():
            total[name] = max(total.get(name, Decimal(0)), parse_quantity(value))
    for name, value in (spec.get("overhead", {}) or {}).items():
        total[name] = add_quantities(total.get(name, Decimal(0)), parse_quantity(value))
    return {name: format_quantity(value) for name, value in sorted(total.items())}


def pod_snapshot(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec", {}) or {}
    status = obj.get("status", {}) or {}
    labels = _meta(obj).get("labels", {}) or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []) or [])
    out = {
        "labels": {k: v for k, v in labels.items() if k in _KEPT_POD_LABELS},
        "nodeName": spec.get("nodeName"),
        "phase": status.get("phase", "Pending"),
        "ready": ready,
        "requests": pod_requests(spec),
    }
    # Where a replica of ours can be reached (the origin's EndpointSlices point there in the flat network mode).
    # Only for pods we manage: other pods' addresses are of no use to the planner.
    if labels.get(LABEL_MANAGED_BY) == MANAGED_BY and isinstance(status.get("podIP"), str):
        out["podIP"] = status["podIP"]
    return out


def workload_snapshot(obj: dict[str, Any]) -> dict[str, Any]:
    meta = _meta(obj)
    status = obj.get("status", {}) or {}
    annotations = meta.get("annotations", {}) or {}
    return {
        "labels": meta.get("labels", {}) or {},
        "annotations": {
            k: annotations[k] for k in (ANNOTATION_PLAN, ANNOTATION_EPOCH, ANNOTATION_SEQUENCE) if k in annotations
        },
        "generation": meta.get("generation", 0),
        "replicas": (obj.get("spec", {}) or {}).get("replicas", 0),
        "status": {
            k: status[k]
            for k in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas", "observedGeneration")
            if k in status
        },
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message")} for c in status.get("conditions", []) or []
        ],
    }


def service_snapshot(obj: dict[str, Any]) -> dict[str, Any]:
    """One of our Services: its type, its ``http`` port (and node port) and its load balancer's addresses, which
    are the origin's endpoints in the ``exposed`` network mode. Addresses that could not be endpoints (not IPv4,
    loopback, link-local; api.network) are left out, and at most `MAX_INGRESS` are kept."""
    spec = obj.get("spec", {}) or {}
    status = obj.get("status", {}) or {}
    labels = _meta(obj).get("labels", {}) or {}
    out: dict[str, Any] = {
        "labels": {k: v for k, v in labels.items() if k in _KEPT_POD_LABELS},
        "type": spec.get("type") if isinstance(spec.get("type"), str) else "ClusterIP",
    }
    ports = [p for p in spec.get("ports", []) or [] if isinstance(p, dict)]
    port = next((p for p in ports if p.get("name") == "http"), ports[0] if ports else None)
    if port is not None:
        for key in ("port", "nodePort"):
            value = port.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
                out[key] = value
    ingress: list[str] = []
    for entry in (status.get("loadBalancer", {}) or {}).get("ingress", []) or []:
        ip = entry.get("ip") if isinstance(entry, dict) else None
        if not isinstance(ip, str) or len(ingress) >= MAX_INGRESS:
            continue
        try:
            ingress.append(_ENDPOINT_IP.validate_python(ip))
        except ValueError:
            continue
    out["ingress"] = sorted(set(ingress))
    return out


SNAPSHOTS = {
    "LLMModel": custom_resource_snapshot,
    "LLMDeployment": custom_resource_snapshot,
    "Node": node_snapshot,
    "Pod": pod_snapshot,
    "Deployment": workload_snapshot,
    "Service": service_snapshot,
}


def snapshot(kind: ObservedKind, obj: dict[str, Any]) -> dict[str, Any]:
    return SNAPSHOTS[kind](obj)


def snapshot_digest(snap: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(snap, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def observed(cluster: str, kind: ObservedKind, obj: dict[str, Any], now: datetime) -> ResourceObserved:
    meta = _meta(obj)
    uid = meta["uid"]
    rv = str(meta.get("resourceVersion", ""))
    return ResourceObserved(
        event_id=ResourceObserved.id_for(cluster, kind, uid, rv),
        cluster=cluster,
        kind=kind,
        namespace=meta.get("namespace"),
        name=meta["name"],
        uid=uid,
        resource_version=rv,
        generation=meta.get("generation"),
        observed_at=now,
        object=snapshot(kind, obj),
    )


def deleted(cluster: str, kind: ObservedKind, obj: dict[str, Any], now: datetime) -> ResourceDeleted:
    meta = _meta(obj)
    uid = meta["uid"]
    rv = str(meta.get("resourceVersion", ""))
    return ResourceDeleted(
        event_id=ResourceDeleted.id_for(cluster, kind, uid, rv),
        cluster=cluster,
        kind=kind,
        namespace=meta.get("namespace"),
        name=meta["name"],
        uid=uid,
        resource_version=rv,
        observed_at=now,
        object=snapshot(kind, obj),
    )
