"""The watcher of one member cluster: observe every kind the planner needs, publish, and heartbeat.

Guarantees: one task per (kind, namespace scope) plus the heartbeat, all in one anyio task group; each task
survives its own errors (see watcher.stream); the service ends only when cancelled. Read-only towards Kubernetes.
A resync request from the planner (bus/control.py: it lost events) makes every kind relist at once and resend
everything it sees.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import anyio

from api.events import ClusterHeartbeat, ObservedKind, deterministic_id, encode_event
from api.labels import LABEL_MANAGED_BY, MANAGED_BY
from api.network import ClusterNetwork
from bus.connection import JetStream
from bus.control import resync_requests
from bus.errors import BusUnavailable
from bus.publish import max_body, publish
from bus.subjects import Subjects
from kubeapi import RESOURCES, Kube
from watcher import metrics
from watcher.load import LoadSettings, run_load
from watcher.publish import KindPublisher
from watcher.stream import observe

logger = logging.getLogger(__name__)

# Pods holding resources are the ones not yet terminated; the apiserver reports a pod that stops matching as
# DELETED, which is exactly "its requests no longer count".
_LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


@dataclass(frozen=True)
class WatcherSettings:
    cluster: str
    labels: Mapping[str, str] = field(default_factory=dict)
    namespaces: Sequence[str] = ()
    """Namespaces whose LLM resources are watched; empty means all. Nodes and pods are always cluster-wide."""
    heartbeat_seconds: float = 2.0
    resync_seconds: float = 600.0
    network: ClusterNetwork | None = None
    """How other clusters reach replicas here (api.network), reported with every heartbeat; None: undeclared."""
    load: LoadSettings | None = None
    """Read the model replicas' inference metrics and publish load observations (None: off)."""


def _now() -> datetime:
    return datetime.now(UTC)


async def run_watcher(*, kube: Kube, js: JetStream, subjects: Subjects, settings: WatcherSettings) -> None:
    scopes: list[str | None] = list(settings.namespaces) or [None]
    plan: list[tuple[ObservedKind, str | None, str | None, str | None]] = [
        ("Node", None, None, None),
        ("Pod", None, None, _LIVE_PODS),
    ]
    for namespace in scopes:
        plan += [
            ("LLMModel", namespace, None, None),
            ("LLMDeployment", namespace, None, None),
            ("Deployment", namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY}", None),
            # Our Services: in the ``exposed`` network mode their ingress addresses are where the origin points.
            ("Service", namespace, f"{LABEL_MANAGED_BY}={MANAGED_BY}", None),
        ]
    logger.info(
        "watcher for cluster %s starting (%s)",
        settings.cluster,
        "all namespaces" if scopes == [None] else ", ".join(settings.namespaces),
    )
    relists: list[_Relistable] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_heartbeat, js, subjects, settings)
        if settings.load is not None:
            tg.start_soon(
                partial(run_load, kube=kube, js=js, subjects=subjects, cluster=settings.cluster, settings=settings.load)
            )
        for kind, namespace, labels, fields in plan:
            sink = KindPublisher(
                js=js,
                subjects=subjects,
                cluster=settings.cluster,
                kind=kind,
                namespace=namespace,
                clock=_now,
                max_payload=max_body(js),
            )
            task = _Relistable(
                sink,
                partial(
                    observe,
                    kube=kube,
                    resource=RESOURCES[kind],
                    sink=sink,
                    namespace=namespace,
                    label_selector=labels,
                    field_selector=fields,
                    resync_seconds=settings.resync_seconds,
                ),
            )
            relists.append(task)
            tg.start_soon(task.run)
        tg.start_soon(_answer_resync_requests, js, subjects, settings.cluster, relists)


class _Relistable:
    """One kind's observe loop, which a resync request restarts from a fresh list with nothing remembered."""

    def __init__(self, sink: KindPublisher, observe_: Callable[[], Awaitable[None]]) -> None:
        self._sink = sink
        self._observe = observe_
        self._scope: anyio.CancelScope | None = None

    async def run(self) -> None:
        while True:
            with anyio.CancelScope() as self._scope:
                await self._observe()

    def relist(self, request_id: str) -> None:
        self._sink.forget(request_id)
        if self._scope is not None:
            self._scope.cancel()


async def _answer_resync_requests(
    js: JetStream, subjects: Subjects, cluster: str, relists: Sequence[_Relistable]
) -> None:
    while True:
        try:
            async for request_id in resync_requests(js, subjects):
                logger.warning(
                    "cluster %s: the planner asked for a resync (%s); relisting everything", cluster, request_id
                )
                for task in relists:
                    task.relist(request_id)
        except BusUnavailable as exc:
            logger.warning("cluster %s: resync requests unavailable: %s", cluster, exc)
        await anyio.sleep(5)


async def _heartbeat(js: JetStream, subjects: Subjects, settings: WatcherSettings) -> None:
    watcher_id = str(uuid.uuid4())
    sequence = 0
    while True:
        beat = ClusterHeartbeat(
            event_id=deterministic_id("heartbeat", watcher_id, str(sequence)),
            cluster=settings.cluster,
            labels=dict(settings.labels),
            watcher_id=watcher_id,
            sent_at=_now(),
            sequence=sequence,
            network=settings.network,
        )
        try:
            await publish(
                js,
                subjects.events(settings.cluster),
                encode_event(beat),
                msg_id=beat.event_id,
                timeout=settings.heartbeat_seconds,
            )
            metrics.HEARTBEATS.inc()
            metrics.LAST_HEARTBEAT.set(beat.sent_at.timestamp())
            sequence += 1
        except BusUnavailable as exc:
            metrics.ERRORS.labels(kind="heartbeat").inc()
            logger.warning("cluster %s: heartbeat not delivered: %s", settings.cluster, exc)
        except Exception:  # never let a bug here stop the heartbeats: the cluster would be failed over as dead
            metrics.ERRORS.labels(kind="heartbeat").inc()
            logger.exception("cluster %s: heartbeat failed", settings.cluster)
        await anyio.sleep(settings.heartbeat_seconds)
