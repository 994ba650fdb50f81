"""The shapes of the compact snapshots watchers send (watcher/translate.py), checked before the fold reads them.

Why: the fold (store/projections.py) trusts the snapshot's types, and what it writes is read again by every later
step (capacity, decisions). A snapshot of the wrong shape from a buggy or compromised agent (labels as a list,
taints as a string, a count as text) would either fail the fold or — worse — be stored and fail every step after.
So the planner checks each snapshot's fields the fold reads, with their types, before it is used.

Guarantees: `problem` returns None for every snapshot `watcher.translate` produces, and a reason naming the field
for any snapshot whose read fields have other types (extra fields are allowed: they are kept, not read). Pure.
"""

from __future__ import annotations

from typing import Any, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

Text = str
Quantity = str | int | float
"""A Kubernetes quantity as JSON carries it; its grammar is the fold's (api/quantity.py) to judge."""


@with_config(ConfigDict(strict=True, extra="allow"))
class _Common(TypedDict):
    labels: NotRequired[dict[str, Text]]
    annotations: NotRequired[dict[str, Text]]


@with_config(ConfigDict(strict=True, extra="allow"))
class _Custom(_Common):
    spec: NotRequired[dict[str, Any]]
    status: NotRequired[dict[str, Any]]
    finalizers: NotRequired[list[Text]]
    creationTimestamp: NotRequired[Text]
    deletionTimestamp: NotRequired[Text]
    generation: NotRequired[int]


@with_config(ConfigDict(strict=True, extra="allow"))
class _Taint(TypedDict):
    key: NotRequired[Text]
    value: NotRequired[Text]
    effect: NotRequired[Text]


@with_config(ConfigDict(strict=True, extra="allow"))
class _Node(_Common):
    allocatable: NotRequired[dict[str, Quantity]]
    capacity: NotRequired[dict[str, Quantity]]
    taints: NotRequired[list[_Taint]]
    unschedulable: NotRequired[bool]
    ready: NotRequired[bool]


@with_config(ConfigDict(strict=True, extra="allow"))
class _Pod(_Common):
    nodeName: NotRequired[Text | None]
    phase: NotRequired[Text]
    ready: NotRequired[bool]
    requests: NotRequired[dict[str, Quantity]]


@with_config(ConfigDict(strict=True, extra="allow"))
class _WorkloadStatus(TypedDict):
    replicas: NotRequired[int]
    readyReplicas: NotRequired[int]
    availableReplicas: NotRequired[int]
    updatedReplicas: NotRequired[int]
    observedGeneration: NotRequired[int]


@with_config(ConfigDict(strict=True, extra="allow"))
class _Workload(_Common):
    generation: NotRequired[int]
    replicas: NotRequired[int]
    status: NotRequired[_WorkloadStatus]


_SHAPES: dict[str, TypeAdapter[Any]] = {
    "LLMModel": TypeAdapter(_Custom),
    "LLMDeployment": TypeAdapter(_Custom),
    "Node": TypeAdapter(_Node),
    "Pod": TypeAdapter(_Pod),
    "Deployment": TypeAdapter(_Workload),
}


def problem(kind: str, snapshot: dict[str, Any]) -> str | None:
    """Why the `kind` snapshot cannot be read as one (the first wrong field), or None."""
    shape = _SHAPES.get(kind)
    if shape is None:
        return None
    try:
        shape.validate_python(snapshot)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        return f"{kind} snapshot field object.{where}: {first['msg']}"
    return None
