"""The watcher's publishing side on a real NATS: one bad or oversized object costs only itself.

The objects are fed to the watcher's sink as the list/watch loop hands them over (a real apiserver is exercised
in tests/e2e/test_hostile_watch.py); here the point is what reaches JetStream.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from api.events import Event, ObservationRefused, ResourceObserved, ResyncCompleted, decode_event
from bus.publish import max_body
from tests import builders
from tests.fixtures.services import Hub
from watcher.publish import KindPublisher

pytestmark = [pytest.mark.services, pytest.mark.anyio]


def _now() -> datetime:
    return datetime.now(UTC)


async def published(js: JetStreamContext, hub: Hub) -> list[Event]:
    info = await js.stream_info(hub.subjects.events_stream)
    first, last = info.state.first_seq, info.state.last_seq
    return [
        decode_event((await js.get_msg(hub.subjects.events_stream, seq)).data or b"") for seq in range(first, last + 1)
    ]


def refused(kind: str, reason: str) -> float:
    return REGISTRY.get_sample_value("llmop_watcher_objects_refused_total", {"kind": kind, "reason": reason}) or 0.0


def huge_node(name: str) -> dict[str, Any]:
    node = builders.gpu_node(name)
    # Each label is legal; together they are more than NATS' default max_payload (1 MiB).
    node["metadata"]["labels"].update({f"l{i:05d}.example.com/k": "v" * 63 for i in range(14_000)})
    return node


async def test_untranslatable_and_oversized_nodes_are_refused_and_the_rest_is_published(
    js: JetStreamContext, hub: Hub
) -> None:
    sink = KindPublisher(
        js=js,
        subjects=hub.subjects,
        cluster="east",
        kind="Node",
        namespace=None,
        clock=_now,
        max_payload=max_body(js),
    )
    good, garbage, huge, nameless, other = (
        builders.gpu_node("good"),
        builders.gpu_node("garbage"),
        huge_node("huge"),
        builders.gpu_node("nameless"),
        builders.gpu_node("other"),
    )
    garbage["status"]["allocatable"] = ["not", "a", "map"]
    del nameless["metadata"]["name"]
    before_big, before_bad = refused("Node", "TooLarge"), refused("Node", "Untranslatable")

    await sink.listed([good, garbage, huge, nameless, other], "100")

    events = await published(js, hub)
    observed = sorted(e.name for e in events if isinstance(e, ResourceObserved))
    assert observed == ["good", "other"]
    notices = {e.name: e for e in events if isinstance(e, ObservationRefused)}
    assert set(notices) == {"garbage", "huge"}
    assert notices["huge"].reason == "TooLarge" and notices["huge"].size_bytes
    assert "max payload" in notices["huge"].message
    assert notices["garbage"].reason == "Untranslatable"
    resync = next(e for e in events if isinstance(e, ResyncCompleted))
    # The refused objects exist: the store keeps what it knew of them rather than taking them for deleted.
    assert huge["metadata"]["uid"] in resync.uids and garbage["metadata"]["uid"] in resync.uids
    assert refused("Node", "TooLarge") == before_big + 1
    assert refused("Node", "Untranslatable") == before_bad + 2

    # The watch goes on: the same oversized version again is counted, not announced again; a new good object and
    # the huge node shrunk back are published.
    count = len(events)
    await sink.changed("MODIFIED", huge)
    assert len(await published(js, hub)) == count
    small = builders.gpu_node("huge", uid=huge["metadata"]["uid"])
    await sink.changed("MODIFIED", small)
    await sink.changed("ADDED", builders.gpu_node("late"))
    names = [e.name for e in (await published(js, hub))[count:] if isinstance(e, ResourceObserved)]
    assert names == ["huge", "late"]
    # A deletion of an object too large to snapshot is still reported.
    await sink.changed("DELETED", huge_node("huge-2"))
    assert (await published(js, hub))[-1].type == "ResourceDeleted"
