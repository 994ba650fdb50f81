"""Identities on the bus, against the real nats-server with the permissions `llm-operator bus` generates.

Cluster a's identity may publish its own events and consume its own plans, and nothing of cluster b's; it cannot
publish plans; the planner can. Revoking a cluster (reload, no restart) cuts it off and leaves the others running.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from bus.auth import PLANNER, applier_consumer, inbox_prefix
from bus.connection import connect
from bus.consume import WorkQueue
from bus.errors import BusUnavailable
from bus.publish import publish
from bus.streams import ensure_streams
from llm_operator.runtime import OperatorError, connect_as
from llm_operator.settings import Settings
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]

DENIED = 1.0  # seconds to wait for an answer the server will never send (a denied request just times out)


def _settings(hub: Hub) -> Settings:
    return Settings(nats_url=hub.nats_url, nats_identities_dir=hub.identities_dir, subject_prefix=hub.subjects.prefix)


@pytest.fixture
async def clients(hub: Hub) -> AsyncIterator[dict[str, NatsClient]]:
    hub.grant("a", "b")
    opened = {name: await connect_as(_settings(hub), hub.nats_url, name) for name in (PLANNER, "a", "b")}
    await ensure_streams(opened[PLANNER].jetstream(), hub.subjects)
    yield opened
    for client in opened.values():
        await client.close()


def _js(nc: NatsClient) -> JetStreamContext:
    return nc.jetstream(timeout=DENIED)


async def _queue(js: JetStreamContext, hub: Hub, *, name: str, cluster: str) -> WorkQueue:
    return await WorkQueue.open(
        js,
        stream=hub.subjects.plans_stream,
        durable=name,
        subject=hub.subjects.plans(cluster),
        ack_wait=30,
        max_ack_pending=4,
    )


async def test_a_cluster_publishes_only_its_own_events(hub: Hub, clients: dict[str, NatsClient]) -> None:
    a = _js(clients["a"])
    assert await publish(a, hub.subjects.events("a"), b"mine", msg_id="a-1", timeout=5)
    assert await publish(a, hub.subjects.dead_letters("a"), b"parked", msg_id="a-2", timeout=5)
    with pytest.raises(BusUnavailable):
        await publish(a, hub.subjects.events("b"), b"forged", msg_id="a-3", timeout=DENIED)
    with pytest.raises(BusUnavailable):
        await publish(a, hub.subjects.dead_letters("b"), b"forged", msg_id="a-4", timeout=DENIED)


async def test_only_the_planner_publishes_plans_and_it_cannot_forge_dead_letters(
    hub: Hub, clients: dict[str, NatsClient]
) -> None:
    with pytest.raises(BusUnavailable):
        await publish(_js(clients["a"]), hub.subjects.plans("a"), b"self-made plan", msg_id="p-1", timeout=DENIED)
    with pytest.raises(BusUnavailable):
        await publish(_js(clients["a"]), hub.subjects.plans("b"), b"plan for b", msg_id="p-2", timeout=DENIED)
    planner = _js(clients[PLANNER])
    assert await publish(planner, hub.subjects.plans("a"), b"plan for a", msg_id="p-3", timeout=5)
    with pytest.raises(BusUnavailable):
        await publish(planner, hub.subjects.dead_letters("a"), b"forged letter", msg_id="p-4", timeout=DENIED)


async def test_a_cluster_consumes_its_own_plans_and_cannot_read_anothers(
    hub: Hub, clients: dict[str, NatsClient]
) -> None:
    planner = _js(clients[PLANNER])
    await publish(planner, hub.subjects.plans("a"), b"plan for a", msg_id="pa", timeout=5)
    await publish(planner, hub.subjects.plans("b"), b"secret plan for b", msg_id="pb", timeout=5)

    # Its own: through the named, filtered consumer.
    own = await _queue(_js(clients["a"]), hub, name=applier_consumer("a"), cluster="a")
    [delivery] = await own.fetch(4, timeout=5)
    assert delivery.data == b"plan for a"
    await delivery.ack()

    # b's consumer exists (b opened it); a can neither create, bind nor fetch from it.
    b_queue = await _queue(_js(clients["b"]), hub, name=applier_consumer("b"), cluster="b")
    a = _js(clients["a"])
    for name, cluster in ((applier_consumer("b"), "b"), (applier_consumer("a"), "b"), ("sneaky", "b")):
        with pytest.raises(BusUnavailable):
            await _queue(a, hub, name=name, cluster=cluster)
    sub = await a.pull_subscribe_bind(durable=applier_consumer("b"), stream=hub.subjects.plans_stream)
    with pytest.raises(TimeoutError):
        await sub.fetch(1, timeout=DENIED)
    with pytest.raises(TimeoutError):
        await a.get_msg(hub.subjects.plans_stream, seq=2)  # STREAM.MSG.GET: no direct reads

    # b still gets its plan: a's attempts took nothing.
    [b_delivery] = await b_queue.fetch(4, timeout=5)
    assert b_delivery.data == b"secret plan for b"


async def test_a_cluster_cannot_listen_on_anothers_inbox(hub: Hub, clients: dict[str, NatsClient]) -> None:
    """Replies (PubAcks, API answers, pulled plans) travel on inboxes: a cannot subscribe to b's or to all."""
    seen = []

    async def spy(msg: object) -> None:
        seen.append(msg)

    for subject in (f"{inbox_prefix(hub.subjects, 'b')}.>", "_INBOX.>", ">"):
        await clients["a"].subscribe(subject, cb=spy)
    await clients["a"].flush()
    await publish(_js(clients["b"]), hub.subjects.events("b"), b"b's event", msg_id="b-1", timeout=5)
    await clients["a"].flush()  # anything the server routed to a before this answer has been handed to `spy`
    assert seen == []


async def test_a_revoked_cluster_is_cut_off_and_the_others_carry_on(
    hub: Hub, clients: dict[str, NatsClient], tmp_path: Path
) -> None:
    kept = tmp_path / "a.nk"
    shutil.copy(hub.seed("a"), kept)  # what a stolen seed would be
    server_pid = hub.nats.process.pid if hub.nats.process else None

    hub.revoke("a")  # `llm-operator bus revoke-cluster a` + reload

    async def a_cut_off() -> bool:
        return not clients["a"].is_connected

    await eventually(a_cut_off, timeout=10, what="the revoked cluster's connection to close")
    with pytest.raises(BusUnavailable, match="refused"):
        await connect(hub.nats_url, name="revoked", nkey_seed=kept, wait_seconds=5)
    with pytest.raises(OperatorError, match="no NATS identity for cluster a"):
        await connect_as(_settings(hub), hub.nats_url, "a")
    # Nobody restarted: b and the planner kept their connections and still work.
    assert hub.nats.process is not None and hub.nats.process.pid == server_pid
    assert clients["b"].is_connected and clients[PLANNER].is_connected
    assert await publish(_js(clients["b"]), hub.subjects.events("b"), b"still here", msg_id="b-2", timeout=5)
    assert await publish(_js(clients[PLANNER]), hub.subjects.plans("b"), b"plan", msg_id="p-b", timeout=5)


async def test_without_an_identity_nobody_connects(hub: Hub) -> None:
    with pytest.raises(BusUnavailable, match="refused the connection"):
        await connect(hub.nats_url, name="anonymous", wait_seconds=5)
