"""Builders for realistic watcher observations, as the real translate functions produce them from raw objects.

Each builder takes a raw Kubernetes-shaped object (what the apiserver returns) and runs it through
`watcher.translate`, so tests exercise the same snapshot code as production.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from api.events import Event, ResourceObserved, encode_event
from bus.subjects import Subjects
from planner.decode import Delivery
from watcher import translate

_rv = itertools.count(1000)
# The feed's clock starts an hour before the session, on whatever day the tests run: the store stamps
# `recorded_at` with the real time and the reporting views count up to now(), so a fixed date would make
# results depend on the day (tests written on one day failed on every later one).
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


def stamp(at: datetime) -> str:
    """Kubernetes' RFC 3339 form of a time, as the apiserver writes it."""
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(
    name: str,
    namespace: str | None = None,
    *,
    uid: str | None = None,
    generation: int | None = None,
    labels: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "uid": uid or str(uuid.uuid4()),
        "resourceVersion": str(next(_rv)),
        "labels": labels or {},
        "creationTimestamp": stamp(T0),
        **extra,
    }
    if namespace:
        out["namespace"] = namespace
    if generation is not None:
        out["generation"] = generation
    return out


def gpu_node(
    name: str,
    *,
    product: str = "NVIDIA-A100-SXM4-80GB",
    memory_mib: int = 81920,
    gpus: int = 8,
    cpu: str = "96",
    memory: str = "1Ti",
    uid: str | None = None,
) -> dict[str, Any]:
    labels = {
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.memory": str(memory_mib),
        "kubernetes.io/hostname": name,
    }
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta(name, uid=uid, labels=labels),
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": stamp(T0)}],
        },
    }


def cpu_node(name: str, *, cpu: str = "32", memory: str = "128Gi") -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta(name, labels={"kubernetes.io/hostname": name}),
        "spec": {},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def llm_model(name: str, namespace: str, spec: dict[str, Any], *, generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "llm.example.com/v1alpha1",
        "kind": "LLMModel",
        "metadata": meta(name, namespace, generation=generation),
        "spec": spec,
    }


def llm_deployment(
    name: str,
    namespace: str,
    spec: dict[str, Any],
    *,
    generation: int = 1,
    uid: str | None = None,
    deleting: bool = False,
    finalizers: list[str] | None = None,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if deleting:
        extra["deletionTimestamp"] = stamp(T0 + timedelta(minutes=30))
    if finalizers is not None:
        extra["finalizers"] = finalizers
    m = meta(name, namespace, generation=generation, uid=uid, **extra)
    m["managedFields"] = [{"manager": "kubectl-client-side-apply", "operation": "Update", "time": stamp(T0)}]
    return {"apiVersion": "llm.example.com/v1alpha1", "kind": "LLMDeployment", "metadata": m, "spec": spec}


def observed(cluster: str, kind: Any, obj: dict[str, Any], at: datetime | None = None) -> ResourceObserved:
    return translate.observed(cluster, kind, obj, at or T0)


class Feed:
    """Turns events into JetStream-like deliveries with increasing stream sequences."""

    def __init__(self, subjects: Subjects) -> None:
        self.subjects = subjects
        self.sequence = 0
        self.clock = T0

    def tick(self, seconds: float = 1.0) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def deliver(self, *events: Event) -> list[Delivery]:
        out = []
        for event in events:
            self.sequence += 1
            out.append(Delivery(self.subjects.events(event.cluster), self.sequence, encode_event(event)))
        return out

    def raw(self, cluster: str, data: bytes) -> Delivery:
        self.sequence += 1
        return Delivery(self.subjects.events(cluster), self.sequence, data)
