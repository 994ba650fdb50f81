"""The watcher against a real apiserver: an object it cannot publish costs only itself (issue 15).

An LLMModel with thousands of labels (each legal, the object well within the apiserver's limits) makes a snapshot
larger than NATS' max payload. The watcher must announce it as refused and go on watching: a model created after it
is published, and the cluster's heartbeats never stop. Before, the list's publish failed as a whole and the watcher
relisted that kind forever without ever watching it.
"""

from __future__ import annotations

import json
from functools import partial

import anyio
import pytest
from nats.js import JetStreamContext

from api.events import ClusterHeartbeat, Event, ObservationRefused, ResourceObserved, decode_event
from bus.consume import SequenceReader
from llm_operator.runtime import Member, connect_kube
from tests.fixtures.operator import Kubectl, eventually
from tests.fixtures.services import Hub
from watcher.service import WatcherSettings, run_watcher

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services]


def model(name: str, namespace: str, labels: int = 0) -> str:
    return json.dumps(
        {
            "apiVersion": "llm.example.com/v1alpha1",
            "kind": "LLMModel",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {f"l{i:05d}.example.com/k": "v" * 63 for i in range(labels)},
            },
            "spec": {"modelName": name, "image": "r/x:v1"},
        }
    )


async def test_an_oversized_object_is_refused_and_the_watch_goes_on(
    kubectl: Kubectl, namespace: str, js: JetStreamContext, hub: Hub
) -> None:
    cluster = kubectl.fleet.clusters["cpu"]
    kube = await connect_kube(Member(name=cluster.name, context=cluster.context), kubeconfig=kubectl.fleet.kubeconfig)
    # `create`, not `apply`: kubectl's last-applied annotation could not hold a copy this large.
    await kubectl("cpu", "create", "-f", "-", input=model("huge", namespace, labels=14_000))
    seen: list[Event] = []
    reader = SequenceReader(
        js, stream=hub.subjects.events_stream, subject=hub.subjects.events(cluster.name), start_sequence=1
    )

    async def read() -> None:
        for received in await reader.fetch(256, timeout=0.5):
            seen.append(decode_event(received.data))

    def models(kind: type) -> set[str]:
        return {e.name for e in seen if isinstance(e, kind) and getattr(e, "kind", "") == "LLMModel"}

    settings = WatcherSettings(cluster=cluster.name, namespaces=[namespace], heartbeat_seconds=0.5)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_watcher, kube=kube, js=js, subjects=hub.subjects, settings=settings))

            async def refused() -> bool:
                await read()
                return "huge" in models(ObservationRefused)

            await eventually(refused, timeout=60, what="the oversized LLMModel announced as refused")
            notice = next(e for e in seen if isinstance(e, ObservationRefused))
            assert notice.reason == "TooLarge" and notice.size_bytes and notice.size_bytes > 1_000_000

            # The watch goes on: a model created afterwards is published, heartbeats keep coming.
            await kubectl("cpu", "apply", "-f", "-", input=model("after", namespace))

            async def after_published() -> bool:
                await read()
                return "after" in models(ResourceObserved)

            await eventually(after_published, timeout=60, what="a model created after the oversized one")
            beats = len([e for e in seen if isinstance(e, ClusterHeartbeat)])

            async def still_beating() -> bool:
                await read()
                return len([e for e in seen if isinstance(e, ClusterHeartbeat)]) >= beats + 2

            await eventually(still_beating, timeout=30, what="heartbeats after the refusal")
            assert "huge" not in models(ResourceObserved)
            tg.cancel_scope.cancel()
    finally:
        await reader.close()
        await kube.close()
        await kubectl("cpu", "delete", "llmmodel", "huge", "-n", namespace, "--ignore-not-found", check=False)
