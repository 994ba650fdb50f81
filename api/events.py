"""The event vocabulary: every fact any component records or sends, as frozen pydantic models.

Guarantees:
- One discriminated union, `Event`, keyed by ``type``; `decode_event` is the only way bytes become events, and it
  raises `MalformedEvent` (with a reason a person can read) for anything that is not one.
- Event ids are deterministic where the fact is: an observation's id is derived from (cluster, kind, uid,
  resourceVersion), so the same observation published twice is one event (JetStream ``Nats-Msg-Id`` and the
  store's unique ``event_id`` both use it).
- Every event belongs to one stream, `stream_of(event)` (the store keeps it in its events' ``stream_id`` column):
  everything about one LLMDeployment — observations in its origin cluster, decisions, plans, apply results, its
  workloads' progress in target clusters — is one stream, so its history is one ordered read.
- ``schema_version`` lets old stored payloads be upcast when read (`store.reader.upcast`).
No I/O here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from api.labels import deployment_identity
from api.network import ClusterNetwork
from api.plans import Plan
from api.snapshots import check_snapshot

ObservedKind = Literal["LLMModel", "LLMDeployment", "Node", "Pod", "Deployment", "Service"]
_ID_NAMESPACE = uuid.UUID("5b0c7a4e-8d2f-4f61-9a43-2f0d1c3e9b71")


def deterministic_id(*parts: str) -> str:
    """A UUID derived from the parts: the same fact always gets the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join(parts)))


def deployment_stream(origin_cluster: str, namespace: str, name: str) -> str:
    return f"LLMDeployment/{origin_cluster}/{namespace}/{name}"


ApplyOutcome = Literal["Applied", "Deleted", "Failed", "Duplicate", "Stale", "Superseded"]
"""What an applier did with a plan: applied it, deleted what it removes, failed, or recognised it as already
applied (Duplicate) or superseded (Stale)."""
PlacementRole = Literal["active", "retiring", "removing"]
"""A cluster's part in a placement: serving; still serving until the replacement elsewhere is Available; or being
emptied."""


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

    @model_validator(mode="after")
    def _snapshot_has_its_kinds_shape(self) -> ResourceObserved:
        if problem := check_snapshot(self.kind, self.object):
            raise ValueError(f"{self.kind} snapshot: {problem}")
        return self

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

    @model_validator(mode="after")
    def _snapshot_has_its_kinds_shape(self) -> ResourceDeleted:
        if problem := check_snapshot(self.kind, self.object):
            raise ValueError(f"{self.kind} snapshot: {problem}")
        return self

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


class ObservationRefused(_Event):
    """A watcher saw an object it cannot report: its snapshot could not be made, or is larger than the bus carries.

    The object itself is not published (the store keeps what it knew before); this small notice says which object,
    which version, and why, so the refusal is in the log and can be shown on the object's status."""

    type: Literal["ObservationRefused"] = "ObservationRefused"
    kind: ObservedKind
    namespace: str | None = Field(default=None, max_length=253)
    name: str = Field(max_length=253)
    uid: str = Field(max_length=128)
    resource_version: str = Field(max_length=64)
    reason: Literal["Untranslatable", "TooLarge"]
    message: str = Field(max_length=1000)
    size_bytes: int | None = None
    observed_at: datetime

    @staticmethod
    def id_for(cluster: str, kind: str, uid: str, resource_version: str) -> str:
        return deterministic_id("refused", cluster, kind, uid, resource_version)


class ClusterHeartbeat(_Event):
    """A watcher is alive. Heartbeats refresh cluster health; they are not kept in the log themselves
    (ClusterJoined / ClusterLabelsChanged / ClusterNetworkChanged / ClusterHealthChanged record what they mean)."""

    type: Literal["ClusterHeartbeat"] = "ClusterHeartbeat"
    labels: dict[str, str] = Field(default_factory=dict)
    watcher_id: str
    sent_at: datetime
    sequence: int = Field(ge=0)
    network: ClusterNetwork | None = None
    """How other clusters reach replicas here (api.network); absent from watchers older than this field."""


class ApplyReported(_Event):
    """An applier's result for one plan in its cluster."""

    type: Literal["ApplyReported"] = "ApplyReported"
    plan_id: str
    origin_cluster: str
    namespace: str
    name: str
    outcome: ApplyOutcome
    """Superseded: a newer plan of the same kind for the deployment arrived before this one ran; it was not run."""
    message: str = ""
    objects: list[str] = Field(default_factory=list)
    epoch: int
    sequence: int
    finished_at: datetime

    @staticmethod
    def id_for(plan_id: str, cluster: str) -> str:
        return deterministic_id("applied", plan_id, cluster)


class LoadObserved(_Event):
    """One cluster's agent read the inference metrics of one LLMDeployment's ready replicas there, over a window
    between two scrapes: a compact summary, published every few seconds (never the raw metrics).

    Sums, not averages, so the planner can combine clusters: the time-to-first-token histogram is the bucket
    deltas of the window (upper bound, count), so the fleet's p90 is computed from summed buckets, never by
    averaging per-cluster quantiles. A figure no replica reported is None (missing, which never scales down)."""

    # The histogram's last bound is +Inf, which JSON has no number for: written as the string "Infinity".
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    type: Literal["LoadObserved"] = "LoadObserved"
    origin_cluster: str = Field(min_length=1, max_length=63)
    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    window_seconds: float = Field(gt=0, le=3600)
    replicas: int = Field(ge=0, le=100000)
    """Ready replicas of the deployment in this cluster (the ones scraped)."""
    reporting: int = Field(ge=0, le=100000)
    """Replicas whose metrics were read and made sense over the window."""
    waiting: float | None = Field(default=None, ge=0)
    """Requests queued, summed over the reporting replicas."""
    running: float | None = Field(default=None, ge=0)
    """Requests being served, summed over the reporting replicas."""
    requests_per_second: float | None = Field(default=None, ge=0)
    """Requests finished per second over the window, summed over the reporting replicas."""
    kv_cache_usage: float | None = Field(default=None, ge=0, le=1)
    """Mean KV-cache fill of the reporting replicas, 0 to 1."""
    ttft_p90_seconds: float | None = Field(default=None, ge=0)
    """p90 time to first token in this cluster over the window (for people; the planner uses the buckets)."""
    ttft_buckets: list[tuple[float, float]] = Field(default_factory=list, max_length=64)
    """Time-to-first-token histogram deltas over the window: (upper bound in seconds, cumulative count), the
    last bound +Inf. Empty: no histogram (the runtime has none, or no replica reported one)."""
    problems: list[Annotated[str, Field(max_length=300)]] = Field(default_factory=list, max_length=8)
    """Why replicas did not report (timeouts, unparsable metrics), at most 8, for the ScalingActive condition."""
    observed_at: datetime

    @staticmethod
    def id_for(cluster: str, origin: str, namespace: str, name: str, observed_at: datetime) -> str:
        return deterministic_id("load", cluster, origin, namespace, name, observed_at.isoformat())


# ----------------------------------------------------------------------------------------- from the planner (hub)


class ClusterJoined(_Event):
    type: Literal["ClusterJoined"] = "ClusterJoined"
    labels: dict[str, str] = Field(default_factory=dict)
    at: datetime
    network: ClusterNetwork | None = None
    """The network the cluster declared in the heartbeat that made it join (None: undeclared)."""


class ClusterLabelsChanged(_Event):
    type: Literal["ClusterLabelsChanged"] = "ClusterLabelsChanged"
    labels: dict[str, str]
    at: datetime


class ClusterNetworkChanged(_Event):
    """A cluster's heartbeats declare another network than the one recorded (api.network)."""

    type: Literal["ClusterNetworkChanged"] = "ClusterNetworkChanged"
    network: ClusterNetwork | None
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
    role: PlacementRole = "active"
    gpu_type: str | None = None
    nodes: dict[str, int] = Field(default_factory=dict)


PassOverReason = Literal[
    "unhealthy",
    "selector_mismatch",
    "no_acceptable_gpu_type",
    "gpu_memory_below_floor",
    "no_node_with_room",
    "max_clusters_reached",
    "split_not_allowed",
    "not_needed",
    "unschedulable",
]
"""Why a decision gave a cluster no replicas:
- unhealthy, selector_mismatch: the policy excludes the cluster (it is not eligible);
- no_acceptable_gpu_type: no usable node has a GPU of a listed type (or, with no type listed, any GPU; for a
  CPU-only model: a node without GPUs);
- gpu_memory_below_floor: it has GPUs of an acceptable type, but each has less memory than the model's minMemory;
- no_node_with_room: no node has k free GPUs (and the CPU and memory) for one replica;
- max_clusters_reached: the policy's maxClusters is used up by other clusters;
- split_not_allowed: allowSplit is false and the deployment lives in another cluster;
- not_needed: it had room, but other clusters (earlier in the preference order, or already running replicas)
  hold every replica asked for;
- unschedulable: its scheduler left replicas Pending too long, so they are placed elsewhere in this decision."""

ReleaseReason = Literal["unhealthy", "selector_mismatch", "max_clusters_reached"]
"""Why a decision let go of a share it found: the cluster is not eligible any more, or maxClusters was lowered."""


class ClusterVerdict(BaseModel):
    """What one decision made of one cluster: eligible (the policy admits it) or not, the replicas it gives it,
    and when it gives none, why (a code for programs, a detail for people)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str
    eligible: bool
    replicas: int = Field(default=0, ge=0)
    reason: PassOverReason | None = None
    """None: the cluster holds replicas of this decision."""
    detail: str = ""


class ReleasedShare(BaseModel):
    """A share the decision found and let go of. Unlike a scale-down, its replicas keep running (retiring) until
    their replacements elsewhere are ready."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str
    replicas: int = Field(ge=0)
    reason: ReleaseReason
    detail: str = ""


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
    verdicts: tuple[ClusterVerdict, ...] = ()
    """Per cluster of the fleet, in name order. Empty in decisions recorded before verdicts were kept (those are
    read as they are: the field is additive, old payloads decode unchanged) and in decisions that did not place
    (a spec problem, a deletion)."""
    released: tuple[ReleasedShare, ...] = ()


class ScaleDecided(_Event):
    """The fleet autoscaler changed (or, with `to_replicas` equal to `from_replicas`, could not evaluate) the
    replicas of one LLMDeployment, with every input it used: `history` and `explain` read these."""

    type: Literal["ScaleDecided"] = "ScaleDecided"
    origin_cluster: str
    namespace: str
    name: str
    generation: int
    from_replicas: int
    to_replicas: int
    reason: str
    """One line a person reads, e.g. "TTFT p90 1.4 s > 800 ms over 60 s on a100"."""
    metrics: dict[str, Any] = Field(default_factory=dict)
    """The fleet's figures and per-metric proposals: {metric: {value, target, ratio, proposal}}."""
    clusters: dict[str, Any] = Field(default_factory=dict)
    """Per cluster: the observation used (replicas, reporting, waiting, ttft p90, ...)."""
    limits: list[str] = Field(default_factory=list)
    """What held the proposal back: stabilisation window, rate limit, min/max."""
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
    | ObservationRefused
    | ClusterHeartbeat
    | ApplyReported
    | ClusterJoined
    | ClusterLabelsChanged
    | ClusterNetworkChanged
    | ClusterHealthChanged
    | PlacementDecided
    | PlanIssued
    | LoadObserved
    | ScaleDecided,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


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
    if type(event) is LoadObserved:
        # Its own stream: observations every few seconds would bury a deployment's history (ScaleDecided, in the
        # deployment's stream, carries the figures a decision used).
        return f"Load/{event.origin_cluster}/{event.namespace}/{event.name}/{event.cluster}"
    if type(event) is ObservationRefused:
        if event.kind == "LLMDeployment":
            return deployment_stream(event.cluster, event.namespace or "", event.name)
        return f"{event.kind}/{event.cluster}/{event.namespace or ''}/{event.name}".replace("//", "/")
    if type(event) is ApplyReported or type(event) is PlacementDecided or type(event) is ScaleDecided:
        return deployment_stream(event.origin_cluster, event.namespace, event.name)
    if type(event) is PlanIssued:
        ref = event.plan.deployment
        return deployment_stream(ref.origin_cluster, ref.namespace, ref.name)
    return f"Cluster/{event.cluster}"
