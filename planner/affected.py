"""The affected set: which deployments a step's recorded events call to be reconciled again.

Guarantees: every deployment whose inputs an event may have changed is in the set (its own observations and apply
reports, the workloads it owns, its pods (their readiness and addresses are its endpoints), its Services (their
ingress addresses, in the ``exposed`` network mode), the models it references; on any capacity change, every
deployment waiting for room or holding replicas that may move; on a cluster's health or network change, every
deployment placed there or applied there; on any removal, every orphan). Over-approximating is safe (reconciling
is level-based and quiet when nothing changed); missing one is not. The result is sorted, so decisions run in a
deterministic order.
"""

from __future__ import annotations

from collections.abc import Sequence

from api.events import (
    ApplyReported,
    ClusterHealthChanged,
    ClusterJoined,
    ClusterLabelsChanged,
    ClusterNetworkChanged,
    Event,
    ResourceDeleted,
    ResourceObserved,
    ResyncCompleted,
)
from api.keys import DeploymentKey
from api.labels import LABEL_DEPLOYMENT, LABEL_NAMESPACE, LABEL_ORIGIN, deployment_identity
from api.plans import is_model_lane
from store import queries
from store.engine import Connection


async def affected(conn: Connection, events: Sequence[Event]) -> list[DeploymentKey]:
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
                    keys.add(DeploymentKey(origin, labels.get(LABEL_NAMESPACE, ""), labels.get(LABEL_DEPLOYMENT, "")))
                removals = removals or isinstance(event, ResourceDeleted)
            case ResourceObserved() | ResourceDeleted() if event.kind == "Pod":
                capacity_changed = True
                # A replica's readiness and address are inputs of its deployment's endpoints (planner.traffic); a
                # pod with no address yet is not one (its workload's status tells its deployment the rest).
                if "podIP" in event.object or isinstance(event, ResourceDeleted):
                    identity = deployment_identity(event.object.get("labels", {}), event.namespace)
                    if identity is not None:
                        keys.add(DeploymentKey(*identity))
            case ResourceObserved() | ResourceDeleted() if event.kind == "Service":
                # A Service's ingress addresses are its deployment's endpoints in the ``exposed`` network mode.
                identity = deployment_identity(event.object.get("labels", {}), event.namespace)
                if identity is not None:
                    keys.add(DeploymentKey(*identity))
            case ResourceObserved() | ResourceDeleted():
                capacity_changed = True
            case ResyncCompleted():
                removals = True
                capacity_changed = True
            case ApplyReported() if not is_model_lane(event.name):
                keys.add(DeploymentKey(event.origin_cluster, event.namespace, event.name))
            case ClusterHealthChanged():
                health_changed.append(event.cluster)
                capacity_changed = True
            case ClusterNetworkChanged():
                # How the origin reaches the cluster's replicas, or what its serving clusters admit, changed.
                health_changed.append(event.cluster)
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
