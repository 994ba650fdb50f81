"""Hostile input against the real planner, on real NATS JetStream and Postgres (issue 15).

The rule: for every message the planner reads, exactly one of these happens in the transaction that moves its
position: it is used, or it is dead-lettered with a reason a person can act on. The planner never exits over
data, and one bad message costs only itself (not its batch, not the fleet).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from nats.js import JetStreamContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import ClusterHeartbeat, Event, deterministic_id, encode_event
from api.signing import generate_private_key, load_signer
from bus.publish import publish
from planner.decode import Delivery
from planner.handle import StepConfig, step
from planner.outbox import relay
from planner.service import PlannerSettings, run_planner
from store import recorder, tables
from store.epochs import campaign
from tests import builders
from tests.builders import Feed
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]

MODEL = {"modelName": "GPT-Small", "image": "registry/gpt-small:v1", "resources": {"cpu": "2", "memory": "4Gi"}}


def heartbeat(cluster: str, seq: int) -> ClusterHeartbeat:
    return ClusterHeartbeat(
        event_id=deterministic_id("hb", cluster, str(seq)),
        cluster=cluster,
        labels={"region": "eu"},
        watcher_id="w1",
        sent_at=datetime.now(UTC),
        sequence=seq,
    )


def deployment(name: str, model: str) -> Event:
    return builders.observed(
        "a100",
        "LLMDeployment",
        builders.llm_deployment(name, "team", {"modelRef": model, "replicas": 1, "port": 8080}),
    )


async def send(js: JetStreamContext, hub: Hub, *events: Event) -> None:
    for event in events:
        await publish(js, hub.subjects.events(event.cluster), encode_event(event), msg_id=event.event_id)


async def send_raw(js: JetStreamContext, hub: Hub, cluster: str, data: bytes, msg_id: str) -> None:
    await publish(js, hub.subjects.events(cluster), data, msg_id=msg_id)


async def stream_end(js: JetStreamContext, hub: Hub) -> int:
    return int((await js.stream_info(hub.subjects.events_stream)).state.last_seq)


async def position(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return await recorder.consumer_position(conn, "planner")


async def dead_letters(engine: AsyncEngine) -> list[tuple[int, str, bytes]]:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(tables.dead_letters.c.stream_sequence, tables.dead_letters.c.reason, tables.dead_letters.c.raw)
        )
        return [(int(s), str(r), bytes(b)) for s, r, b in found.all()]


async def planned(engine: AsyncEngine, name: str) -> bool:
    async with engine.connect() as conn:
        found = await conn.execute(select(tables.placements.c.replicas).where(tables.placements.c.name == name))
        return sum(found.scalars()) >= 1


async def refusal_status(engine: AsyncEngine, name: str, *, first: bool = False) -> dict[str, Any]:
    """The status plan that reported a refusal (the only status plan, or the first one if `first`)."""
    async with engine.connect() as conn:
        found = await conn.execute(
            select(tables.plans.c.payload)
            .where(tables.plans.c.name == name, tables.plans.c.kind == "Status")
            .order_by(tables.plans.c.sequence)
        )
        payloads = list(found.scalars())
    assert payloads if first else len(payloads) == 1
    return dict(payloads[0])


@asynccontextmanager
async def planner(engine: AsyncEngine, js: JetStreamContext, hub: Hub, holder: str = "p1") -> AsyncIterator[None]:
    """A real planner service for the block; an exit of the planner (an exception) fails the test."""
    settings = PlannerSettings(
        holder=holder,
        tick_seconds=0.2,
        retry_seconds=0.2,
        heartbeat_timeout_seconds=60,
        signer=load_signer(generate_private_key()),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_planner(engine=engine, js=js, subjects=hub.subjects, settings=settings))
        yield
        tg.cancel_scope.cancel()


async def caught_up(engine: AsyncEngine, js: JetStreamContext, hub: Hub) -> Callable[[], Awaitable[bool]]:
    end = await stream_end(js, hub)

    async def check() -> bool:
        return await position(engine) >= end

    return check


async def test_a_nul_character_is_dead_lettered_and_the_planner_goes_on(
    engine: AsyncEngine, js: JetStreamContext, hub: Hub
) -> None:
    """The reproduction of issue 15: an LLMModel whose spec holds a NUL (which Postgres text/jsonb refuse) made
    the planner's step fail permanently, the planner exit, and every restart die on the same message."""
    nul_model = builders.observed("a100", "LLMModel", builders.llm_model("nul", "team", {**MODEL, "modelName": "a\0b"}))
    nul_deployment = deployment("bad", "gpt-small")
    nul_deployment.object["spec"]["port"] = 8080
    nul_deployment = nul_deployment.model_copy(
        update={"object": {**nul_deployment.object, "spec": {**nul_deployment.object["spec"], "note": "x\0y"}}}
    )
    await send(
        js,
        hub,
        heartbeat("a100", 1),
        builders.observed("a100", "Node", builders.cpu_node("cpu-1")),
        deployment("uses-nul", "nul"),
        nul_model,
        builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)),
        nul_deployment,
        deployment("chat", "gpt-small"),
    )
    async with planner(engine, js, hub):
        await eventually(await caught_up(engine, js, hub), timeout=30, what="the planner to read past the NULs")
        await eventually(lambda: planned(engine, "chat"), timeout=30, what="the healthy deployment to be placed")
        # And it keeps going: a message after the bad ones is used too.
        await send(js, hub, deployment("later", "gpt-small"))
        await eventually(lambda: planned(engine, "later"), timeout=30, what="a later deployment to be placed")
    letters = await dead_letters(engine)
    assert len(letters) == 2
    reasons = sorted(r for _, r, _ in letters)
    assert "NUL" in reasons[0] and "object.spec.modelName" in reasons[0]
    assert "NUL" in reasons[1] and "object.spec.note" in reasons[1]
    assert all(b"\\u0000" in raw for _, _, raw in letters)  # nothing is lost: the message as it came
    # The refused LLMDeployment's owner is told, through a status plan to its cluster.
    status = await refusal_status(engine, "bad")
    ready = next(c for c in status["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "NUL" in ready["message"] and "object.spec.note" in ready["message"]
    assert [e["reason"] for e in status["events"]] == ["Refused"]
    # And a deployment that uses the refused LLMModel says why its model is missing.
    status = await refusal_status(engine, "uses-nul", first=True)
    ready = next(c for c in status["status"]["conditions"] if c["type"] == "Ready")
    assert "the LLMModel nul it uses was refused" in ready["message"] and "object.spec.modelName" in ready["message"]
    # And the refused LLMModel itself says why, through a model status plan in its own lane (its own sequence).
    async with engine.connect() as conn:
        found = await conn.execute(select(tables.plans.c.payload).where(tables.plans.c.kind == "ModelStatus"))
        model_plans = list(found.scalars())
    assert len(model_plans) == 1
    plan = model_plans[0]
    assert (plan["model"], plan["deployment"]["name"], plan["sequence"]) == ("nul", "LLMModel:nul", 1)
    accepted = next(c for c in plan["status"]["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "NUL" in accepted["message"] and "object.spec.modelName" in accepted["message"]
    assert [e["reason"] for e in plan["events"]] == ["Refused"]
    # A restart reads on from the committed position: no crash loop.
    before = await position(engine)
    fixed = builders.observed("a100", "LLMModel", builders.llm_model("nul", "team", MODEL, generation=2))
    await send(js, hub, deployment("after-restart", "gpt-small"), fixed)
    async with planner(engine, js, hub, holder="p2"):
        await eventually(lambda: planned(engine, "after-restart"), timeout=30, what="placement after a restart")

        # The owner fixes the model: the next version is accepted, and the model's status says so.
        async def model_statuses() -> list[dict[str, Any]] | None:
            async with engine.connect() as conn:
                found = await conn.execute(
                    select(tables.plans.c.payload)
                    .where(tables.plans.c.kind == "ModelStatus")
                    .order_by(tables.plans.c.payload["sequence"].as_integer())
                )
                payloads = list(found.scalars())
            return payloads if len(payloads) == 2 else None

        second = (await eventually(model_statuses, timeout=30, what="the fixed model's status"))[1]
    assert await position(engine) > before
    accepted = next(c for c in second["status"]["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"], second["status"]["observed_generation"]) == ("True", "Valid", 2)
    assert (second["sequence"], [e["reason"] for e in second["events"]]) == (2, ["Accepted"])


async def test_other_control_characters_round_trip_through_the_store(engine: AsyncEngine, hub: Hub) -> None:
    """Postgres accepts every other control character in text and jsonb: they are stored as they came."""
    lease = await campaign(engine, holder="test")
    await lease.release()
    feed = Feed(hub.subjects)
    odd = "".join(chr(c) for c in range(1, 32)) + "\x7f\u2028\u202e\U0001f600[/x]"
    model = builders.observed("a100", "LLMModel", builders.llm_model("odd", "team", {**MODEL, "modelName": odd}))
    config = StepConfig(
        consumer="planner", subjects=hub.subjects, heartbeat_timeout=timedelta(seconds=10), recovery_hold=timedelta(0)
    )
    async with engine.begin() as conn:
        result = await step(
            conn,
            deliveries=feed.deliver(model),
            epoch=lease.epoch,
            now=feed.clock,
            config=config,
            health_grace_until=feed.clock,
        )
    assert result.dead_letters == 0 and result.recorded == 1
    async with engine.connect() as conn:
        spec = (await conn.execute(select(tables.models.c.spec).where(tables.models.c.name == "odd"))).scalar_one()
        payload = (
            await conn.execute(select(tables.events.c.payload).where(tables.events.c.type == "ResourceObserved"))
        ).scalar_one()
    assert spec["modelName"] == odd
    assert payload["object"]["spec"]["modelName"] == odd


async def test_a_number_beyond_its_column_costs_only_its_own_message(
    engine: AsyncEngine, js: JetStreamContext, hub: Hub
) -> None:
    """A snapshot from a buggy agent whose number does not fit its column (a GPU count beyond int4): it used to
    make the database refuse the whole batch, and the driver's error was taken for a transient one (retried
    forever). Now the count is clamped to what its column holds when the snapshot is folded (api.quantity), so the
    message is used without breaking the batch, and the rest is used too."""
    node = builders.observed("a100", "Node", builders.gpu_node("gpu-1"))
    huge = builders.observed("a100", "Node", builders.gpu_node("gpu-huge"))
    allocatable = {**huge.object["allocatable"], "nvidia.com/gpu": str(2**40)}
    huge = huge.model_copy(update={"object": {**huge.object, "allocatable": allocatable}})
    cpu = builders.observed("a100", "Node", builders.cpu_node("cpu-1"))
    await send(js, hub, heartbeat("a100", 1), node, huge, cpu)
    await send(js, hub, builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)))
    await send(js, hub, deployment("chat", "gpt-small"))
    async with planner(engine, js, hub):
        await eventually(await caught_up(engine, js, hub), timeout=30, what="the planner to read past the bad node")
        await eventually(lambda: planned(engine, "chat"), timeout=30, what="the healthy deployment to be placed")
    assert await dead_letters(engine) == []
    async with engine.connect() as conn:
        nodes = dict((await conn.execute(select(tables.nodes.c.name, tables.nodes.c.gpu_allocatable))).all())
    assert nodes == {"cpu-1": 0, "gpu-1": 8, "gpu-huge": 2**31 - 1}


async def test_a_value_the_database_refuses_costs_only_its_own_message(
    engine: AsyncEngine, js: JetStreamContext, hub: Hub
) -> None:
    """A value no check before the database knows to refuse (a NaN, which JSON parsers take and jsonb does not)
    makes Postgres refuse the whole batch's transaction: the batch is retried message by message, the offender
    dead-lettered with the database's reason, and the rest of the batch used."""
    node = builders.observed("a100", "Node", builders.gpu_node("gpu-1"))
    # Snapshots of nodes and pods are checked field by field at decode (api.snapshots); a model's spec is the
    # user's free-form object until placement reads it, so a NaN there reaches the store.
    nan = builders.observed("a100", "LLMModel", builders.llm_model("gpt-nan", "team", MODEL))
    cpu = builders.observed("a100", "Node", builders.cpu_node("cpu-1"))
    await send(js, hub, heartbeat("a100", 1), node)
    await send_raw(js, hub, "a100", encode_event(nan).replace(b'"spec":{', b'"spec":{"odd":NaN,', 1), "nan")
    await send(js, hub, cpu, builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)))
    await send(js, hub, deployment("chat", "gpt-small"))
    async with planner(engine, js, hub):
        await eventually(await caught_up(engine, js, hub), timeout=30, what="the planner to read past the NaN")
        await eventually(lambda: planned(engine, "chat"), timeout=30, what="the healthy deployment to be placed")
    letters = await dead_letters(engine)
    assert [s for s, _, _ in letters] == [3]
    assert "the store refused it" in letters[0][1] and "json" in letters[0][1].lower()
    assert b"gpt-nan" in letters[0][2]
    async with engine.connect() as conn:
        models = (await conn.execute(select(tables.models.c.name))).scalars().all()
    assert sorted(models) == ["gpt-small"]
    async with engine.connect() as conn:
        nodes = (await conn.execute(select(tables.nodes.c.name))).scalars().all()
    assert sorted(nodes) == ["cpu-1", "gpu-1"]


async def test_a_plan_too_large_for_the_bus_is_parked_and_reported_and_blocks_no_other(
    engine: AsyncEngine, js: JetStreamContext, hub: Hub
) -> None:
    """A model near the apiserver's size limit (160 environment values of 8 KiB: 1.3 MB) makes a workload plan
    above NATS's max_payload (1 MiB). It used to hold back every plan of every cluster (the relay published its
    batch all-or-nothing, and failed on it forever); now it is parked with its reason and reported as a failed
    apply in the deployment's status, and the other deployment's plans are sent."""
    lease = await campaign(engine, holder="test")
    await lease.release()
    feed = Feed(hub.subjects)
    config = StepConfig(
        consumer="planner", subjects=hub.subjects, heartbeat_timeout=timedelta(seconds=60), recovery_hold=timedelta(0)
    )
    big_env = [{"name": f"BLOB_{i}", "value": "x" * 8192} for i in range(160)]  # the CRD's limits: 8 KiB, 256
    events: list[Event] = [
        heartbeat("a100", 1),
        builders.observed("a100", "Node", builders.cpu_node("cpu-1")),
        builders.observed("a100", "LLMModel", builders.llm_model("huge", "team", {**MODEL, "env": big_env})),
        builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)),
        deployment("big", "huge"),
        deployment("chat", "gpt-small"),
    ]

    async def run(deliveries: list[Any]) -> None:
        async with engine.begin() as conn:
            await step(
                conn,
                deliveries=deliveries,
                epoch=lease.epoch,
                now=datetime.now(UTC),
                config=config,
                health_grace_until=feed.clock,
                mode="full",
            )

    await run(feed.deliver(*events))
    sent = await relay(engine, js, subjects=hub.subjects, signer=load_signer(generate_private_key()))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(tables.outbox.c.plan_id, tables.outbox.c.parked_reason))).all()
        plans = {
            r.plan_id: r.name for r in (await conn.execute(select(tables.plans.c.plan_id, tables.plans.c.name))).all()
        }
    parked = [(plans[p], reason) for p, reason in rows if reason]
    assert [name for name, _ in parked] == ["big"]
    assert "more than the bus carries" in parked[0][1]
    assert sent == len(rows) - 1  # everything else went out, the other deployment's plans included
    plans_on_bus = int((await js.stream_info(hub.subjects.plans_stream)).state.messages)
    assert plans_on_bus == sent
    assert {plans[p] for p, reason in rows if not reason} >= {"chat"}

    # The failure comes back on the events stream, as the applier would have reported it, and reaches the status.
    reader = await js.subscribe(hub.subjects.all_events, stream=hub.subjects.events_stream, ordered_consumer=True)
    message = await reader.next_msg(timeout=10)
    await reader.unsubscribe()
    await run([Delivery(message.subject, feed.sequence + 1, message.data)])
    async with engine.connect() as conn:
        status = (
            await conn.execute(
                select(tables.deployment_plans.c.last_status).where(tables.deployment_plans.c.name == "big")
            )
        ).scalar_one()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert "more than the bus carries" in ready["message"]
