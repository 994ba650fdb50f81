"""What the operator's model pods tolerate, and when a toleration lets a pod onto a tainted node.

Guarantees:
- One definition of the tolerations: render writes `GPU_POD_TOLERATIONS` into every GPU model pod, and the
  planner's capacity rule (planner/capacity.py `usable`) counts a node only if the replicas placement puts there
  tolerate every NoSchedule/NoExecute taint on it. So the planner never counts a node the scheduler would refuse
  its pods, and the test fleet needs no exception of its own.
- Matching follows Kubernetes for the tolerations we emit (operator Exists: any value; no effect: every effect).
  Only Exists tolerations exist here, so a taint's value never matters.
- The `report_gpu_capacity` view (migration 0005) spells the same rule in SQL; a test keeps them in agreement.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from api.labels import GPU_RESOURCE

BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
"""Taint effects that keep a pod off a node unless it tolerates them (PreferNoSchedule only discourages)."""


@dataclass(frozen=True)
class Toleration:
    """A toleration with operator Exists: it matches taints with `key` (any value) and `effect` (None: any)."""

    key: str
    effect: str | None = None

    def matches(self, key: str, effect: str) -> bool:
        return key == self.key and (self.effect is None or effect == self.effect)

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": "Exists"}
        if self.effect is not None:
            out["effect"] = self.effect
        return out


GPU_POD_TOLERATIONS: tuple[Toleration, ...] = (Toleration(GPU_RESOURCE),)
"""GPU model pods tolerate the NVIDIA GPU operator's taint on GPU nodes (nvidia.com/gpu=present:NoSchedule), with
every effect; CPU-only model pods tolerate nothing, so they never occupy GPU nodes."""
CPU_POD_TOLERATIONS: tuple[Toleration, ...] = ()


def tolerates_all(tolerations: Iterable[Toleration], taints: Iterable[tuple[str, str]]) -> bool:
    """Do `tolerations` let a pod onto a node with `taints` ((key, effect) pairs)? Only blocking effects count."""
    tolerations = tuple(tolerations)
    return all(
        effect not in BLOCKING_EFFECTS or any(t.matches(key, effect) for t in tolerations) for key, effect in taints
    )
