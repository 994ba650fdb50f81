"""The event vocabulary: every fact any component records or sends, as frozen pydantic models.

Guarantees:
- One discriminated union, `Event`, keyed by ``type``; `decode_event` is the only way bytes become events, and it
  raises `MalformedEvent` (with a reason a person can read) for anything that is not one.
- Event ids are deterministic where the fact is: an observation's id is derived from (cluster, kind, uid,
  resourceVersion), so the same observation published twice is one event (JetStream ``Nats-Msg-Id`` and the
  store's unique ``event_id`` both use it).
- Each event names the stream it belongs to (`stream_id`): everything about one LLMDeployment — observations in
  its origin cluster, decisions, plans, apply results, its workloads' progress in target clusters — is one stream,
  so its history is one ordered read.
- ``schema_version`` lets old stored payloads be upcast when read (`store.upcast`).
No I/O here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from api.labels import deployment_identity
from api.plans import Plan

ObservedKind = Literal["LLMModel", "LLMDeployment", "Node", "Pod", "Deployment"]
_ID_NAMESPACE = uuid.UUID("5b0c7a4e-8d2f-4f61-9a43-2f0d1c3e9b71")


def deterministic_id(*parts: str) -> str:
    """A UUID derived from the parts: the same fact always gets the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


def deployment_stream(origin_cluster: str, namespace: str, name: str) -> str:
    return f"LLMDeployment/{origin_cluster}/{namespace}/{name}"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    schema_version: int = 1
    cluster: str = Field(min_length=1, max_length=63)
    """The member cluster the fact is about, or 'hub' for the planner's own facts."""


# ------------------------------------------------------------------------------------ from watchers (per cluster)


class ResourceObserved(_Event):
    """A watcher saw an object as it now is (a full compact snapshot, never a diff)."""

    type: Literal["ResourceObserved"] = "ResourceObserved"
    kind: ObservedKind
    namespace: str | None = None
    name: str
    uid: str
    resource_version: str
    generation: int | None = None
    observed_at: datetime
    object: dict[str, Any]

    @staticmethod
    def id_for(cluster: str, kind: str, uid: str, resource_version: str) -> str:
        return deterministic_id("observed", cluster, kind, uid, resource_version)


class ResourceDeleted(_Event):
    """A watcher saw an object disappear."""

    type: Literal["ResourceDeleted"] = "ResourceDeleted"
    kind: ObservedKind
    namespace: str | None = None
    name: str
    uid: str
    resource_version: str
    observed_at: datetime
    object: dict[str, Any] = Field(default_factory=dict)

    @staticmethod
    def id_for(cluster: str, kind: str, uid: str, resource_version: str) -> str:
        return deterministic_id("deleted", cluster, kind, uid, resource_version)


class ResyncCompleted(_Event):
    """A watcher listed a kind afresh: these uids exist; anything else of that kind in the cluster is gone.

    This is how a deletion missed while a watcher was down or disconnected still reaches the store.
    """

    type: Literal["ResyncCompleted"] = "ResyncCompleted"
    kind: ObservedKind
    namespace: str | None = None
    """The namespace the list covered; None for a cluster-wide list."""
    uids: list[str]
    resource_version: str
    observed_at: datetime

    @staticmethod
    def id_for(cluster: str, kind: str, namespace: str | None, resource_version: str) -> str:
        return deterministic_id("resync", cluster, kind, namespace or "", resource_version)


class ClusterHeartbeat(_Event):
    """A watcher is alive. Heartbeats refresh cluster health; they are not kept in the log themselves
    (ClusterJoined / ClusterLabelsChanged / ClusterHealthChanged record what they mean)."""

    type: Literal["ClusterHeartbeat"] = "ClusterHeartbeat"
    labels: dict[str, str] = Field(default_factory=dict)
    watcher_id: str
    sent_at: datetime
    sequence: int = Field(ge=0)


class ApplyReported(_Event):
    """An applier's result for one plan in its cluster."""

    type: Literal["ApplyReported"] = "ApplyReported"
    plan_id: str
    origin_cluster: str
    namespace: str
    name: str
    outcome: Literal["Applied", "Deleted", "Failed", "Duplicate", "Stale"]
    message: str = ""
    objects: list[str] = Field(default_factory=list)
    epoch: int
    sequence: int
    finished_at: datetime

    @staticmethod
    def id_for(plan_id: str, cluster: str) -> str:
        return deterministic_id("applied", plan_id, cluster)


# ----------------------------------------------------------------------------------------- from the planner (hub)


class ClusterJoined(_Event):
    type: Literal["ClusterJoined"] = "ClusterJoined"
    labels: dict[str, str] = Field(default_factory=dict)
    at: datetime


class ClusterLabelsChanged(_Event):
    type: Literal["ClusterLabelsChanged"] = "ClusterLabelsChanged"
    labels: dict[str, str]
    at: datetime


class ClusterHealthChanged(_Event):
    type: Literal["ClusterHealthChanged"] = "ClusterHealthChanged"
    healthy: bool
    reason: str
    last_heartbeat_at: datetime | None = None
    at: datetime


class ClusterShare(BaseModel):
    """Replicas assigned to one cluster, and on which nodes the planner expects them to fit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str
    replicas: int = Field(ge=0)
    role: Literal["active", "retiring", "removing"] = "active"
    gpu_type: str | None = None
    nodes: dict[str, int] = Field(default_factory=dict)


class PlacementDecided(_Event):
    """The planner's decision for one deployment, with its reasons: `explain` and audits read these."""

    type: Literal["PlacementDecided"] = "PlacementDecided"
    schema_version: int = 2
    origin_cluster: str
    namespace: str
    name: str
    generation: int
    desired_replicas: int
    outcome: Literal[
        "Placed",
        "PartiallyPlaced",
        "InsufficientGPU",
        "ModelNotFound",
        "InvalidSpec",
        "Suspended",
        "Deleting",
        "NoEligibleCluster",
        "PolicyDenied",
    ]
    shares: list[ClusterShare] = Field(default_factory=list)
    replica_gpus: int = 0
    replica_cpu_m: int = 0
    replica_memory_bytes: int = 0
    """Resources of one replica: what each planned-but-not-yet-running replica reserves."""
    reasons: list[str] = Field(default_factory=list)
    message: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    epoch: int
    decided_at: datetime


class PlanIssued(_Event):
    """A plan was written to the outbox for a cluster's applier."""

    type: Literal["PlanIssued"] = "PlanIssued"
    plan: Plan
    at: datetime


Event = Annotated[
    ResourceObserved
    | ResourceDeleted
    | ResyncCompleted
    | ClusterHeartbeat
    | ApplyReported
    | ClusterJoined
    | ClusterLabelsChanged
    | ClusterHealthChanged
    | PlacementDecided
    | PlanIssued,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_TYPES = frozenset(
    t.model_fields["type"].default
    for t in (
        ResourceObserved,
        ResourceDeleted,
        ResyncCompleted,
        ClusterHeartbeat,
        ApplyReported,
        ClusterJoined,
        ClusterLabelsChanged,
        ClusterHealthChanged,
        PlacementDecided,
        PlanIssued,
    )
)


class MalformedEvent(ValueError):
    """Bytes that are not an event of this vocabulary; `reason` says why, for the dead-letter table."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_event(data: bytes) -> Event:
    try:
        return EVENT_ADAPTER.validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise MalformedEvent(f"{first['msg']} at {where} ({exc.error_count()} error(s))") from exc


def encode_event(event: _Event) -> bytes:
    return event.model_dump_json().encode()


def stream_of(event: _Event) -> str:
    """The store stream an event belongs to; see the module docstring."""
    # Exact-class tests, not `match`/`isinstance`: pydantic models' metaclass is an ABCMeta, whose instance check
    # runs Python code, and the recorder asks this for every event it appends.
    if type(event) is ResourceObserved or type(event) is ResourceDeleted:
        if event.kind == "LLMDeployment":
            return deployment_stream(event.cluster, event.namespace or "", event.name)
        if event.kind == "Deployment":
            identity = deployment_identity(event.object.get("labels", {}), event.namespace)
            if identity is not None:
                return deployment_stream(*identity)
            return f"Deployment/{event.cluster}/{event.namespace}/{event.name}"
        if event.namespace:
            return f"{event.kind}/{event.cluster}/{event.namespace}/{event.name}"
        return f"{event.kind}/{event.cluster}/{event.name}"
    if type(event) is ResyncCompleted:
        return f"Resync/{event.cluster}/{event.kind}"
    if type(event) is ApplyReported or type(event) is PlacementDecided:
        return deployment_stream(event.origin_cluster, event.namespace, event.name)
    if type(event) is PlanIssued:
        ref = event.plan.deployment
        return deployment_stream(ref.origin_cluster, ref.namespace, ref.name)
    return f"Cluster/{event.cluster}"
