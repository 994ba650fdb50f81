"""Typed rows of the projections the planner reads (store.queries returns these, never bare dicts).

Guarantees: each row type names exactly the columns its query selects (`COLUMNS`, in the order the query lists
them), so a column added to a table changes no reader until its row type and query say so; JSONB columns come
back as Python values. Frozen, slotted: rows are values, cheap to make by the thousand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar, Self


class _Row:
    COLUMNS: ClassVar[tuple[str, ...]]

    @classmethod
    def of(cls, record: Iterable[Any]) -> Self:
        """From a driver record (its values in `COLUMNS` order)."""
        return cls(*record)

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> Self:
        """From a projection row as a mapping (rows folded in memory, `store.replay.MemoryTables`); a column the
        mapping lacks (one a query joins in) is None."""
        return cls(*map(row.get, cls.COLUMNS))

    @classmethod
    def select(cls, alias: str = "") -> str:
        """The column list to select, in field order (qualified with `alias` if given)."""
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + c for c in cls.COLUMNS)


def _columns(cls: Any) -> Any:
    cls.COLUMNS = tuple(f.name for f in fields(cls))
    return cls


@_columns
@dataclass(frozen=True, slots=True)
class ClusterRow(_Row):
    name: str
    labels: dict[str, str]
    healthy: bool
    health_reason: str
    joined_at: datetime
    health_changed_at: datetime
    last_heartbeat_at: datetime | None
    network: dict[str, Any] | None = None
    """The declared network (api.network.ClusterNetwork as JSON); None: undeclared."""


@_columns
@dataclass(frozen=True, slots=True)
class NodeRow(_Row):
    cluster: str
    name: str
    gpu_product: str | None
    gpu_memory_bytes: int
    gpu_allocatable: int
    cpu_allocatable_m: int
    memory_allocatable_bytes: int
    ready: bool
    schedulable: bool
    taints: list[dict[str, Any]]


@_columns
@dataclass(frozen=True, slots=True)
class BoundPodRow(_Row):
    cluster: str
    node_name: str
    gpu_request: int
    cpu_request_m: int
    memory_request_bytes: int
    deployment_key: str | None


@_columns
@dataclass(frozen=True, slots=True)
class PlacementRow(_Row):
    origin_cluster: str
    namespace: str
    name: str
    cluster: str
    replicas: int
    role: str
    gpu_type: str | None
    nodes: dict[str, int]
    replica_gpus: int
    replica_cpu_m: int
    replica_memory_bytes: int
    plan_id: str | None
    apply_outcome: str | None
    apply_message: str | None
    applied_plan_id: str | None


@_columns
@dataclass(frozen=True, slots=True)
class DeploymentRow(_Row):
    """An LLMDeployment as observed, with the planner's bookkeeping for it joined in."""

    origin_cluster: str
    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    deleting: bool
    has_finalizer: bool
    created_at: datetime
    plan_sequence: int
    last_status: dict[str, Any] | None
    last_outcome: str | None


@_columns
@dataclass(frozen=True, slots=True)
class WorkloadRow(_Row):
    """A Deployment the planner's appliers made, as a watcher last saw it."""

    cluster: str
    origin_cluster: str
    deployment_namespace: str
    deployment_name: str
    plan_id: str | None
    replicas: int
    ready_replicas: int
    available_replicas: int
    updated_replicas: int
    observed_generation: int
    generation: int


@_columns
@dataclass(frozen=True, slots=True)
class PlanRow(_Row):
    """A plan the planner issued (its payload as the appliers received it)."""

    plan_id: str
    origin_cluster: str
    namespace: str
    name: str
    cluster: str
    payload: dict[str, Any]


@_columns
@dataclass(frozen=True, slots=True)
class ReplicaRow(_Row):
    """One live pod of a deployment (not Succeeded or Failed), with its address: what the endpoints follow."""

    deployment_key: str
    cluster: str
    name: str
    pod_ip: str | None
    ready: bool


@_columns
@dataclass(frozen=True, slots=True)
class ServiceRow(_Row):
    """One of a deployment's Services as its cluster's watcher last saw it: how the origin reaches it there in
    the ``exposed`` network mode."""

    deployment_key: str
    cluster: str
    name: str
    service_type: str
    port: int | None
    node_port: int | None
    ingress: list[str]


@_columns
@dataclass(frozen=True, slots=True)
class ModelRow(_Row):
    cluster: str
    namespace: str
    name: str
    spec: dict[str, Any]
