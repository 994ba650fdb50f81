"""Events lost before the planner read them, on real NATS JetStream and Postgres (issue 15, "Limits, retention and
gaps"): a gap in the stream and a stream made again are detected, said loudly, and repaired by asking the watchers
to resend everything; the watchers' publishers resend what they had already sent when asked; the planner's
read-ahead is bounded in bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import encode_event
from bus.consume import SequenceReader
from bus.control import resync_requests
from bus.publish import publish
from bus.streams import ensure_streams
from planner.readahead import ReadAhead
from tests import builders
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub
from tests.integration.test_hostile import MODEL, caught_up, deployment, heartbeat, planned, planner, position, send
from watcher.publish import KindPublisher

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def gaps_counted(kind: str) -> float:
    return REGISTRY.get_sample_value("llmop_planner_stream_gaps_total", {"kind": kind}) or 0.0


class Requests:
    """Resync requests heard on the bus, as a watcher hears them."""

    def __init__(self) -> None:
        self.ids: list[str] = []


async def listen(js: JetStreamContext, hub: Hub, requests: Requests) -> None:
    async for request_id in resync_requests(js, hub.subjects):
        requests.ids.append(request_id)


async def test_a_gap_in_the_stream_is_detected_and_a_resync_requested(
    engine: AsyncEngine, js: JetStreamContext, hub: Hub
) -> None:
    """Messages removed from the stream before the planner read them (as age or size limits remove them)."""
    await send(
        js,
        hub,
        heartbeat("a100", 1),
        builders.observed("a100", "Node", builders.cpu_node("cpu-1")),
        builders.observed("a100", "Node", builders.cpu_node("cpu-2")),
        builders.observed("a100", "Node", builders.cpu_node("cpu-3")),
        builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)),
        deployment("chat", "gpt-small"),
    )
    for sequence in (2, 3):
        await js.delete_msg(hub.subjects.events_stream, sequence)
    before = gaps_counted("gap")
    requests = Requests()
    async with anyio.create_task_group() as tg:
        tg.start_soon(listen, js, hub, requests)
        await anyio.sleep(0.2)  # subscribed (core NATS delivers only to those listening)
        async with planner(engine, js, hub):
            await eventually(await caught_up(engine, js, hub), timeout=30, what="the planner to read past the gap")
            await eventually(lambda: planned(engine, "chat"), timeout=30, what="the deployment to be placed")
            await eventually(_async(lambda: requests.ids or None), timeout=10, what="a resync request")
        tg.cancel_scope.cancel()
    assert gaps_counted("gap") == before + 1
    assert requests.ids[0].endswith("-2-3")


async def test_a_stream_made_again_is_read_from_its_start_and_a_resync_requested(
    engine: AsyncEngine, js: JetStreamContext, hub: Hub
) -> None:
    """The events stream deleted and created again (an operator, a lost JetStream volume): its sequences start over
    below the planner's committed position. The planner used to wait for the new stream to reach its old position,
    dropping everything before it."""
    await send(
        js,
        hub,
        heartbeat("a100", 1),
        builders.observed("a100", "Node", builders.cpu_node("cpu-1")),
        builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)),
        deployment("chat", "gpt-small"),
        deployment("chat-2", "gpt-small"),
    )
    async with planner(engine, js, hub):
        await eventually(lambda: planned(engine, "chat-2"), timeout=30, what="the deployments to be placed")
    await js.delete_stream(hub.subjects.events_stream)
    await ensure_streams(js, hub.subjects)
    await send(js, hub, heartbeat("a100", 2), deployment("after-reset", "gpt-small"))
    before = gaps_counted("reset")
    requests = Requests()
    async with anyio.create_task_group() as tg:
        tg.start_soon(listen, js, hub, requests)
        await anyio.sleep(0.2)
        async with planner(engine, js, hub, holder="p2"):
            await eventually(lambda: planned(engine, "after-reset"), timeout=30, what="placement after the reset")
            await eventually(_async(lambda: requests.ids or None), timeout=10, what="a resync request")
        tg.cancel_scope.cancel()
    assert gaps_counted("reset") == before + 1
    assert await position(engine) == 2


async def test_a_resync_request_makes_a_publisher_resend_what_it_had_sent(js: JetStreamContext, hub: Hub) -> None:
    nodes = [builders.cpu_node(f"cpu-{i}") for i in range(3)]
    sink = KindPublisher(
        js=js, subjects=hub.subjects, cluster="a100", kind="Node", namespace=None, clock=lambda: datetime.now(UTC)
    )

    async def stored() -> int:
        return int((await js.stream_info(hub.subjects.events_stream)).state.messages)

    await sink.listed(nodes, "100")
    assert await stored() == 4  # three nodes and the ResyncCompleted
    await sink.listed(nodes, "101")
    assert await stored() == 5  # nothing changed: only the ResyncCompleted
    sink.forget("request-1")
    await sink.listed(nodes, "101")  # the same list again, as a relist right after would see it
    assert await stored() == 9  # every node again, and the ResyncCompleted, past the de-duplication window


async def test_the_read_ahead_is_bounded_in_bytes(js: JetStreamContext, hub: Hub) -> None:
    big = {f"k{i}": "v" * 1000 for i in range(100)}  # ~100 KB of labels per node
    for i in range(20):
        node = builders.cpu_node(f"cpu-{i}")
        node["metadata"]["labels"] = {**node["metadata"]["labels"], **big}
        event = builders.observed("a100", "Node", node)
        await publish(js, hub.subjects.events("a100"), encode_event(event), msg_id=event.event_id)
    async with ReadAhead(
        SequenceReader(
            js,
            stream=hub.subjects.events_stream,
            subject=hub.subjects.all_events,
            start_sequence=1,
            buffer_bytes=400_000,
        ),
        subjects=hub.subjects,
        batch_size=1000,
        timeout=2.0,
        max_bytes=300_000,
    ) as reader:
        seen: list[int] = []
        sizes: list[int] = []
        while len(seen) < 20:
            batch = await reader.next()
            seen += [r.stream_sequence for r in batch.received]
            sizes.append(sum(len(r.data) for r in batch.received))
        largest = max(len(r.data) for r in batch.received)
        assert seen == list(range(1, 21))
        assert max(sizes) <= 300_000 + largest
        assert len(sizes) >= 6  # 2 MB in batches of at most ~400 KB


def _async(check: Any) -> Any:
    async def run() -> Any:
        return check()

    return run
