"""The shapes of the compact object snapshots watchers publish (see watcher.translate), checked strictly.

Guarantees: `check_snapshot(kind, obj)` returns None for a snapshot the fold and the planner can use as it is, and
otherwise a reason naming the first offending field (``labels: Input should be a valid dictionary``). Types are
strict — no "5" for 5, no list for a map, no number for a string — quantities must be Kubernetes quantities,
times RFC 3339, counts within their columns. Every field is optional (the fold supplies defaults), unknown fields
are allowed (a newer watcher may send more), and the snapshot itself is never rewritten: the check only decides
whether the event is accepted at decode (a refused one is dead-lettered by the planner). Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from api.quantity import INT4_MAX, INT8_MAX, parse_quantity

MAX_INGRESS = 16
"""Ingress addresses kept per Service (a load balancer has one or a few; more is noise or hostile)."""


def _quantity(value: str | int) -> str | int:
    parse_quantity(value)  # QuantityError is a ValueError: pydantic reports it with the field's location
    return value


def _time(value: str) -> str:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {value[:40]!r}") from exc
    return value


QuantityText = Annotated[StrictStr | StrictInt, AfterValidator(_quantity)]
Time = Annotated[StrictStr, AfterValidator(_time)]
Count = Annotated[StrictInt, Field(ge=0, le=INT4_MAX)]
Generation = Annotated[StrictInt, Field(ge=0, le=INT8_MAX)]
Labels = dict[StrictStr, StrictStr]


class _Snapshot(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    labels: Labels = Field(default_factory=dict)


class CustomResourceSnapshot(_Snapshot):
    annotations: Labels = Field(default_factory=dict)
    creationTimestamp: Time | None = None  # noqa: N815 - the Kubernetes field name
    deletionTimestamp: Time | None = None  # noqa: N815
    finalizers: list[StrictStr] = Field(default_factory=list)
    generation: Generation | None = None
    managers: list[dict[StrictStr, StrictStr]] = Field(default_factory=list)
    spec: dict[StrictStr, Any] = Field(default_factory=dict)
    status: dict[StrictStr, Any] = Field(default_factory=dict)


class Taint(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    key: StrictStr | None = None
    value: StrictStr | None = None
    effect: StrictStr | None = None


class NodeSnapshot(_Snapshot):
    allocatable: dict[StrictStr, QuantityText] = Field(default_factory=dict)
    capacity: dict[StrictStr, QuantityText] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    unschedulable: StrictBool = False
    ready: StrictBool = False


class PodSnapshot(_Snapshot):
    nodeName: StrictStr | None = None  # noqa: N815
    phase: StrictStr = "Pending"
    ready: StrictBool = False
    requests: dict[StrictStr, QuantityText] = Field(default_factory=dict)


class WorkloadCondition(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: StrictStr | None = None
    status: StrictStr | None = None
    reason: StrictStr | None = None
    message: StrictStr | None = None


class WorkloadStatus(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    replicas: Count = 0
    readyReplicas: Count = 0  # noqa: N815 - the Kubernetes field names
    availableReplicas: Count = 0  # noqa: N815
    updatedReplicas: Count = 0  # noqa: N815
    observedGeneration: Generation = 0  # noqa: N815


class WorkloadSnapshot(_Snapshot):
    annotations: Labels = Field(default_factory=dict)
    generation: Generation = 0
    replicas: Count = 0
    status: WorkloadStatus = Field(default_factory=WorkloadStatus)
    conditions: list[WorkloadCondition] = Field(default_factory=list)


class ServiceSnapshot(_Snapshot):
    """One of the operator's Services: how it is exposed (the ``exposed`` network mode points the origin at it)."""

    type: StrictStr = "ClusterIP"
    port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    nodePort: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None  # noqa: N815 - the Kubernetes field name
    ingress: list[StrictStr] = Field(default_factory=list, max_length=MAX_INGRESS)


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    "LLMModel": TypeAdapter(CustomResourceSnapshot),
    "LLMDeployment": TypeAdapter(CustomResourceSnapshot),
    "Node": TypeAdapter(NodeSnapshot),
    "Pod": TypeAdapter(PodSnapshot),
    "Deployment": TypeAdapter(WorkloadSnapshot),
    "Service": TypeAdapter(ServiceSnapshot),
}


def check_snapshot(kind: str, obj: dict[str, Any]) -> str | None:
    """None if `obj` is a usable snapshot of `kind`, else why not (first error, with its location)."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        return f"no snapshot shape for kind {kind!r}"
    try:
        adapter.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<snapshot>"
        return f"{where}: {first['msg']}"
    return None
