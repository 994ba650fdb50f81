"""Kubernetes-style status conditions, as pure data and one pure update rule.

Guarantees (mirroring apimachinery's ``meta.SetStatusCondition``): a condition list holds at most one entry per
``type``; ``lastTransitionTime`` changes only when ``status`` flips; reason, message and observedGeneration are
always refreshed. No clock is read here: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(BaseModel):
    """One aspect of the object's state, in the standard Kubernetes shape."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, use_attribute_docstrings=True)

    type: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)
    """Condition type in CamelCase: Ready, Placed, Progressing, Available or Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    """A CamelCase word saying why the condition has this status."""
    message: str = Field(default="", max_length=32768)
    """A sentence for people, with the details."""
    observed_generation: int = Field(default=0, alias="observedGeneration", ge=0)
    """The .metadata.generation this condition was computed from."""
    last_transition_time: datetime = Field(alias="lastTransitionTime")
    """When the status last changed (not when reason or message did)."""


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> tuple[Condition, ...]:
    """Return the list with `type` set; the transition time moves only on a status flip."""
    previous = find_condition(conditions, type)
    transition = previous.last_transition_time if previous and previous.status == status else now
    updated = Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    if previous is None:
        return (*conditions, updated)
    return tuple(updated if c.type == type else c for c in conditions)


def find_condition(conditions: Iterable[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)
