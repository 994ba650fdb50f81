"""The event store on real Postgres: ordering, idempotency, exactly-once steps, dead letters, upcasting,
migrations, rebuild and as-of."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from api.events import ClusterHeartbeat, ResyncCompleted, deterministic_id
from api.labels import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_NAMESPACE, LABEL_ORIGIN
from planner.handle import Delivery, StepConfig, step
from planner.memory import CapacityMemory, read_capacity
from store import queries, reader, recorder, replay, schema, tables
from store.epochs import campaign
from store.errors import PermanentStoreError, translated
from store.projections import fold
from tests import builders
from tests.builders import Feed
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]

SEED_MODEL = {
    "modelName": "GPT-Small",
    "image": "your-registry/gpt-small:v1",
    "resources": {"cpu": "2", "memory": "4Gi"},
}
GPU_MODEL = {
    "modelName": "Llama-70B",
    "image": "registry/vllm:1",
    "resources": {"cpu": "8", "memory": "80Gi", "gpu": {"count": 4, "types": ["NVIDIA-A100-SXM4-80GB"]}},
}


def config(hub: Hub) -> StepConfig:
    return StepConfig(
        consumer="planner",
        subjects=hub.subjects,
        heartbeat_timeout=timedelta(seconds=10),
        recovery_hold=timedelta(seconds=2),
    )


async def epoch_of(engine: AsyncEngine) -> int:
    lease = await campaign(engine, holder="test")
    await lease.release()
    return lease.epoch


def heartbeat(cluster: str, seq: int, at: Any) -> ClusterHeartbeat:
    return ClusterHeartbeat(
        event_id=deterministic_id("hb", cluster, str(seq)),
        cluster=cluster,
        labels={"region": "eu"},
        watcher_id="w1",
        sent_at=at,
        sequence=seq,
    )


async def run(engine: AsyncEngine, hub: Hub, feed: Feed, deliveries: list[Any], epoch: int) -> Any:
    async with engine.begin() as conn:
        return await step(
            conn, deliveries=deliveries, epoch=epoch, now=feed.clock, config=config(hub), health_grace_until=feed.clock
        )


def _version_one_of_node_n(event_id: str) -> Any:
    """What a writer bypassing the recorder's lock does first: it takes version 1 of stream Node/a100/n (the
    stream versions live in event_streams since the log is partitioned, migration 0007)."""
    del event_id
    return insert(tables.event_streams).values(stream_id="Node/a100/n", version=1)


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


# ------------------------------------------------------------------------------------------------ the log


async def test_append_is_idempotent_and_numbers_each_stream_from_one(engine: AsyncEngine) -> None:
    node = builders.gpu_node("gpu-1")
    events = [builders.observed("a100", "Node", node), builders.observed("a100", "Node", builders.gpu_node("gpu-2"))]
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        first = await recorder.append(conn, [(e, {}) for e in events + events])  # repeated inside the batch too
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        again = await recorder.append(conn, [(e, {}) for e in events])
    assert [r.stream_version for r in first] == [1, 1]
    assert [r.stream_id for r in first] == ["Node/a100/gpu-1", "Node/a100/gpu-2"]
    assert again == []
    assert await count(engine, tables.events) == 2


async def test_append_numbers_only_new_events_and_keeps_batch_order(engine: AsyncEngine) -> None:
    """A batch mixing stored and new events of the same streams (and repeats inside it): new events get the next
    versions of their stream with no gap, positions follow the batch order, and what is returned is in order."""
    node = builders.gpu_node("gpu-1")
    v1 = builders.observed("a100", "Node", node)
    v2 = builders.observed("a100", "Node", {**node, "metadata": {**node["metadata"], "resourceVersion": "2"}})
    v3 = builders.observed("a100", "Node", {**node, "metadata": {**node["metadata"], "resourceVersion": "3"}})
    other = builders.observed("a100", "Node", builders.gpu_node("gpu-2"))
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        await recorder.append(conn, [(v1, {})])
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        recorded = await recorder.append(conn, [(v2, {}), (other, {"n": 1}), (v1, {}), (v2, {}), (v3, {})])
    assert [r.event.event_id for r in recorded] == [v2.event_id, other.event_id, v3.event_id]
    assert [(r.stream_id, r.stream_version) for r in recorded] == [
        ("Node/a100/gpu-1", 2),
        ("Node/a100/gpu-2", 1),
        ("Node/a100/gpu-1", 3),
    ]
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(tables.events.c.event_id, tables.events.c.position, tables.events.c.metadata).order_by(
                    tables.events.c.position
                )
            )
        ).all()
    assert [r.event_id for r in rows] == [v1.event_id, v2.event_id, other.event_id, v3.event_id]
    assert [r.position for r in rows[1:]] == [r.position for r in recorded]
    assert rows[2].metadata == {"n": 1}


async def test_a_broken_locking_rule_fails_the_write_and_is_translated(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer ignoring the writers' lock takes a stream version between this batch's look-up and its COPY: the
    unique constraint refuses the write, and the driver's error leaves the store as a PermanentStoreError."""
    event = builders.observed("a100", "Node", builders.gpu_node("n"))
    real_reserve = recorder._reserve_positions

    async def reserve(conn: AsyncConnection, count: int) -> list[int]:  # between the look-up and the COPY
        async with engine.begin() as intruder:
            await intruder.execute(_version_one_of_node_n("intruder"))
        return await real_reserve(conn, count)

    async def write() -> None:
        with translated("append"):
            async with engine.begin() as conn:
                await recorder.lock_writers(conn)
                await recorder.append(conn, [(event, {})])

    monkeypatch.setattr(recorder, "_reserve_positions", reserve)
    with pytest.raises(PermanentStoreError, match="pk_event_streams"):
        await write()
    assert await count(engine, tables.events) == 0
    assert await count(engine, tables.event_ids) == 0


async def test_concurrent_writers_never_make_a_tailing_reader_skip_a_row(engine: AsyncEngine) -> None:
    """Writers hold their transactions open for random times after inserting; a reader tails `position > last`.
    Because writers serialise on the advisory lock, positions become visible in order and nothing is skipped."""
    writers, batches = 4, 25
    done = anyio.Event()
    seen: list[int] = []

    async def writer(w: int) -> None:
        rng = random.Random(w)
        for b in range(batches):
            node = builders.gpu_node(f"w{w}-b{b}")
            async with engine.begin() as conn:
                await recorder.lock_writers(conn)
                await recorder.append(conn, [(builders.observed(f"c{w}", "Node", node), {})])
                await anyio.sleep(rng.random() * 0.01)  # work inside the transaction, after the position is taken

    async def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            async with engine.connect() as conn:
                rows = (
                    (
                        await conn.execute(
                            select(tables.events.c.position)
                            .where(tables.events.c.position > last)
                            .order_by(tables.events.c.position)
                        )
                    )
                    .scalars()
                    .all()
                )
            seen.extend(rows)
            last = rows[-1] if rows else last
            if finished and not rows:
                return
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tail)
        async with anyio.create_task_group() as writing:
            for w in range(writers):
                writing.start_soon(writer, w)
        done.set()
    async with engine.connect() as conn:
        stored = (await conn.execute(select(tables.events.c.position).order_by(tables.events.c.position))).scalars()
        all_positions = list(stored)
    assert len(all_positions) == writers * batches
    assert seen == all_positions, "the tailing reader skipped or reordered rows"


async def test_stream_versions_are_unique_per_stream(engine: AsyncEngine) -> None:
    event = builders.observed("a100", "Node", builders.gpu_node("n"))
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        await recorder.append(conn, [(event, {})])
    with pytest.raises(Exception, match="pk_event_streams"):
        async with engine.begin() as conn:
            await conn.execute(_version_one_of_node_n("other"))


async def test_a_stream_moved_by_a_writer_without_the_lock_fails_the_compare_and_set(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known stream (version 1) is moved to 2 by an intruder between this batch's look-up and its write: the
    compare-and-set on event_streams refuses the batch, as the unique constraint on the log did."""
    first = builders.observed("a100", "Node", builders.gpu_node("n"))
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        await recorder.append(conn, [(first, {})])
    real_reserve = recorder._reserve_positions

    async def reserve(conn: AsyncConnection, count: int) -> list[int]:
        async with engine.begin() as intruder:
            await intruder.execute(text("UPDATE event_streams SET version = 2 WHERE stream_id = 'Node/a100/n'"))
        return await real_reserve(conn, count)

    monkeypatch.setattr(recorder, "_reserve_positions", reserve)
    second = builders.observed("a100", "Node", builders.gpu_node("n"))

    async def write() -> None:
        with translated("append"):
            async with engine.begin() as conn:
                await recorder.lock_writers(conn)
                await recorder.append(conn, [(second, {})])

    with pytest.raises(PermanentStoreError, match="compare-and-set"):
        await write()
    assert await count(engine, tables.events) == 1


# ---------------------------------------------------------------------------------------------- planner step


async def test_a_redelivered_batch_changes_nothing(engine: AsyncEngine, hub: Hub) -> None:
    epoch = await epoch_of(engine)
    feed = Feed(hub.subjects)
    batch = feed.deliver(
        heartbeat("a100", 0, feed.clock),
        builders.observed("a100", "Node", builders.gpu_node("gpu-1")),
        builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", SEED_MODEL)),
        builders.observed(
            "a100",
            "LLMDeployment",
            builders.llm_deployment("chat", "team", {"modelRef": "gpt-small", "replicas": 2, "port": 8080}),
        ),
    )
    first = await run(engine, hub, feed, batch, epoch)
    async with engine.connect() as conn:
        before = await replay.snapshot(conn)
        events_before = await count(engine, tables.events)
    second = await run(engine, hub, feed, batch, epoch)
    async with engine.connect() as conn:
        after = await replay.snapshot(conn)
    assert first.recorded >= 3
    assert first.plans >= 1
    assert (second.recorded, second.plans, second.duplicates) == (0, 0, len(batch))
    assert after == before
    assert await count(engine, tables.events) == events_before
    assert await count(engine, tables.outbox) == first.plans


async def test_malformed_and_foreign_messages_go_to_dead_letters_and_the_rest_is_recorded(
    engine: AsyncEngine, hub: Hub
) -> None:
    epoch = await epoch_of(engine)
    feed = Feed(hub.subjects)
    good = builders.observed("a100", "Node", builders.gpu_node("gpu-1"))
    liar = builders.observed("mixed", "Node", builders.gpu_node("gpu-9"))
    deliveries = [
        feed.raw("a100", b"{not json"),
        feed.raw("a100", b'{"type": "Teleported", "event_id": "x", "cluster": "a100"}'),
        feed.raw("a100", b'{"type": "ResourceObserved", "event_id": "y", "cluster": "a100"}'),
        *feed.deliver(good),
        # an event that claims another cluster than the subject it was published on
        feed.raw("a100", liar.model_dump_json().encode()),
        # only the planner may record decisions
        feed.raw(
            "a100", b'{"type": "ClusterJoined", "event_id": "z", "cluster": "a100", "at": "2026-11-27T09:00:00Z"}'
        ),
    ]
    result = await run(engine, hub, feed, deliveries, epoch)
    async with engine.connect() as conn:
        reasons = await conn.execute(select(tables.dead_letters.c.reason).order_by(tables.dead_letters.c.id))
        letters = list(reasons.scalars())
        nodes = (await conn.execute(select(tables.nodes.c.name))).scalars().all()
    assert result.dead_letters == 5
    assert "Invalid JSON" in letters[0]
    assert "does not match any of the expected tags" in letters[1]
    assert "Field required" in letters[2]
    assert "says cluster 'mixed'" in letters[3]
    assert "recorded by the planner only" in letters[4]
    assert nodes == ["gpu-1"]
    assert result.position == feed.sequence  # consumption went past the bad messages


async def test_a_step_from_a_deposed_leader_is_refused(engine: AsyncEngine, hub: Hub) -> None:
    old = await epoch_of(engine)
    await epoch_of(engine)  # a new leader took over
    feed = Feed(hub.subjects)
    with pytest.raises(Exception, match="superseded"):
        await run(engine, hub, feed, feed.deliver(builders.observed("a100", "Node", builders.gpu_node("g"))), old)
    assert await count(engine, tables.events) == 0


async def test_a_planner_behind_the_stream_does_not_take_its_own_lag_for_a_clusters_silence(
    engine: AsyncEngine, hub: Hub
) -> None:
    """Silence is judged on the stream's clock: as of the newest message read, not the wall clock. A planner
    reading a backlog 15 s late must not fail a cluster over whose later heartbeats are still in that backlog;
    once it has read 12 s of stream without one, the cluster is silent."""
    epoch = await epoch_of(engine)
    feed = Feed(hub.subjects)
    t0 = feed.clock

    def at(deliveries: list[Delivery], seconds: float) -> list[Delivery]:
        return [replace(d, stored_at=t0 + timedelta(seconds=seconds)) for d in deliveries]

    async def step_at(deliveries: list[Delivery], now_seconds: float) -> dict[str, bool]:
        async with engine.begin() as conn:
            await step(
                conn,
                deliveries=deliveries,
                epoch=epoch,
                now=t0 + timedelta(seconds=now_seconds),
                config=config(hub),
                health_grace_until=t0,  # the leader started at t0: no grace left to hide anything
            )
            return {c.name: c.healthy for c in await queries.clusters(conn)}

    both = at(feed.deliver(heartbeat("a100", 0, t0), heartbeat("cpu", 0, t0)), 0)
    assert await step_at(both, 0) == {"a100": True, "cpu": True}
    # 15 s later the planner reads messages stored at 1-3 s; a100's next heartbeats come after them.
    early = at(feed.deliver(*(heartbeat("cpu", n, t0) for n in (1, 2, 3))), 3)
    assert await step_at(early, 15) == {"a100": True, "cpu": True}
    # It reads on: a100 heartbeat stored at 4 s, then 12 s of stream in which only cpu is heard.
    assert await step_at(at(feed.deliver(heartbeat("a100", 1, t0)), 4), 16) == {"a100": True, "cpu": True}
    later = at(feed.deliver(heartbeat("cpu", 4, t0)), 16)
    assert await step_at(later, 17) == {"a100": False, "cpu": True}


# ---------------------------------------------------------------------------------------------- reading


async def test_old_payloads_are_upcast_when_read(engine: AsyncEngine) -> None:
    v1 = {
        "origin_cluster": "a100",
        "namespace": "team",
        "name": "chat",
        "generation": 1,
        "desired_replicas": 2,
        "outcome": "Placed",
        "shares": [{"cluster": "a100", "replicas": 2, "gpu_type": None, "nodes": {}}],
        "reasons": [],
        "message": "placed a100=2",
        "inputs": {},
        "epoch": 1,
        "decided_at": "2026-11-27T09:00:00+00:00",
    }
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.events).values(
                event_id="old-decision",
                stream_id="LLMDeployment/a100/team/chat",
                stream_version=1,
                type="PlacementDecided",
                schema_version=1,
                cluster="a100",
                payload=v1,
                metadata={},
                occurred_at=builders.T0,
                retention="audit",
            )
        )
    async with engine.connect() as conn:
        stored = [e async for e in reader.read(conn)]
    decision = stored[0].event
    assert decision.type == "PlacementDecided"
    assert decision.schema_version == 2
    assert [s.role for s in decision.shares] == ["active"]
    assert decision.replica_gpus == 0


# --------------------------------------------------------------------------------------- migrations, replay


async def test_migrations_upgrade_downgrade_upgrade_and_match_the_models(hub: Hub) -> None:
    database = f"{hub.database}_mig"
    hub.postgres.psql(f"CREATE DATABASE {database}")
    engine = create_async_engine(hub.postgres.url(database))
    try:
        await schema.upgrade(engine)
        assert await schema.current_revision(engine) == schema.head_revision()
        await schema.downgrade(engine, "base")
        async with engine.connect() as conn:
            left = await conn.scalar(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
            )
        assert left == 0
        await schema.upgrade(engine)

        def diff(connection: Connection) -> list[Any]:
            # Partitions of the event log are made and dropped at run time (store.retention): not in the models.
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, _: (
                        not (kind == "table" and str(name).startswith(tables.PARTITION_PREFIX))
                    ),
                },
            )
            return list(compare_metadata(context, tables.metadata))

        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
            found = await conn.execute(
                text("SELECT relname, reloptions FROM pg_class WHERE relname IN ('pods', 'events')")
            )
            options: dict[str, Any] = dict(found.all())
        assert differences == []
        assert options == {"pods": ["fillfactor=70"], "events": None}  # projections updated in place keep room
    finally:
        await engine.dispose()
        hub.postgres.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def realistic_history(engine: AsyncEngine, hub: Hub) -> Feed:
    """Clusters join, nodes and models appear, deployments are created, scaled, applied, deleted, and a node
    disappears during a resync."""
    epoch = await epoch_of(engine)
    feed = Feed(hub.subjects)
    a100_1, a100_2 = builders.gpu_node("gpu-1"), builders.gpu_node("gpu-2")
    steps: list[list[Any]] = [
        [heartbeat("a100", 0, feed.clock), heartbeat("cpu", 0, feed.clock)],
        [
            builders.observed("a100", "Node", a100_1),
            builders.observed("a100", "Node", a100_2),
            builders.observed("cpu", "Node", builders.cpu_node("cpu-1")),
        ],
        [
            builders.observed("cpu", "LLMModel", builders.llm_model("llama", "team", GPU_MODEL)),
            builders.observed("cpu", "LLMModel", builders.llm_model("gpt-small", "team", SEED_MODEL)),
        ],
        [
            builders.observed(
                "cpu",
                "LLMDeployment",
                builders.llm_deployment(
                    "big", "team", {"modelRef": "llama", "replicas": 2, "port": 8080}, uid="big-uid"
                ),
            )
        ],
        [
            builders.observed(
                "cpu",
                "LLMDeployment",
                builders.llm_deployment("chat", "team", {"modelRef": "gpt-small", "replicas": 2}, uid="chat-uid"),
            )
        ],
        [
            builders.observed(
                "cpu",
                "LLMDeployment",
                builders.llm_deployment(
                    "big", "team", {"modelRef": "llama", "replicas": 3, "port": 8080}, uid="big-uid", generation=2
                ),
            )
        ],
        [
            builders.observed(
                "cpu",
                "LLMDeployment",
                builders.llm_deployment(
                    "chat",
                    "team",
                    {"modelRef": "gpt-small", "replicas": 2},
                    uid="chat-uid",
                    deleting=True,
                    finalizers=["llm.example.com/cleanup"],
                ),
            )
        ],
    ]
    for events in steps:
        feed.tick(5)
        await run(engine, hub, feed, feed.deliver(*events), epoch)
    # A resync in which gpu-2 is gone.
    from api.events import ResyncCompleted

    feed.tick(5)
    resync = ResyncCompleted(
        event_id="resync-1",
        cluster="a100",
        kind="Node",
        uids=[a100_1["metadata"]["uid"]],
        resource_version="9999",
        observed_at=feed.clock,
    )
    await run(engine, hub, feed, feed.deliver(resync), epoch)
    return feed


async def test_rebuilt_projections_equal_the_live_ones(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    async with engine.connect() as conn:
        live = await replay.snapshot(conn)
    async with engine.begin() as conn:
        stats = await replay.rebuild(conn)
    async with engine.connect() as conn:
        rebuilt = await replay.snapshot(conn)
    assert stats.events_in_log > 10
    assert sorted(n["name"] for n in live["nodes"]) == ["cpu-1", "gpu-1"]  # gpu-2 vanished in the resync
    assert len(live["placements"]) >= 1
    for name in live:
        differing = [
            (i, k, before.get(k), after.get(k))
            for i, (before, after) in enumerate(zip(live[name], rebuilt[name], strict=False))
            for k in before.keys() | after.keys()
            if before.get(k) != after.get(k)
        ]
        assert len(rebuilt[name]) == len(live[name]) and not differing, (name, differing)


async def test_folding_in_memory_gives_the_same_rows_as_the_database(engine: AsyncEngine, hub: Hub) -> None:
    feed = await realistic_history(engine, hub)
    async with engine.connect() as conn:
        live = await replay.snapshot(conn)
        memory = await replay.as_of(conn, feed.clock + timedelta(days=1))
    for name, rows in live.items():
        in_memory = [{k: v for k, v in r.items() if k != "last_heartbeat_at"} for r in memory.rows(name)]
        key = [c.name for c in tables.metadata.tables[name].primary_key.columns]
        assert sorted(in_memory, key=lambda r: [r[k] for k in key]) == rows, name


async def test_as_of_shows_the_state_at_that_time(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    async with engine.connect() as conn:
        times = (
            await conn.execute(
                select(tables.events.c.recorded_at, tables.events.c.type, tables.events.c.payload["generation"].astext)
                .where(
                    tables.events.c.stream_id == "LLMDeployment/cpu/team/big",
                    tables.events.c.type == "ResourceObserved",
                )
                .order_by(tables.events.c.position)
            )
        ).all()
        first_generation_time = times[0][0]
        state = await replay.as_of(conn, first_generation_time)
        later = await replay.as_of(conn, times[-1][0])
    big_then = [d for d in state.rows("deployments") if d["name"] == "big"]
    big_later = [d for d in later.rows("deployments") if d["name"] == "big"]
    assert big_then[0]["spec"]["replicas"] == 2
    assert big_then[0]["generation"] == 1
    assert big_later[0]["spec"]["replicas"] == 3
    assert big_later[0]["generation"] == 2


async def test_reporting_views_answer_from_the_projections(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    async with engine.connect() as conn:
        capacity = (await conn.execute(text("SELECT * FROM report_gpu_capacity"))).mappings().all()
        placements = await conn.execute(text("SELECT * FROM report_current_placements WHERE name = 'big'"))
        current = placements.mappings().all()
        history = (
            (await conn.execute(text("SELECT * FROM report_placement_history WHERE name = 'big' ORDER BY position")))
            .mappings()
            .all()
        )
        hours = (await conn.execute(text("SELECT * FROM report_gpu_hours WHERE name = 'big'"))).mappings().all()
        churn = (await conn.execute(text("SELECT * FROM report_placement_churn WHERE name = 'big'"))).mappings().all()
        first_day, today = (
            await conn.execute(
                text("SELECT min(occurred_at)::date, current_date FROM events WHERE type = 'PlacementDecided'")
            )
        ).one()
    assert [(c["cluster"], c["gpu_product"], c["total"]) for c in capacity] == [("a100", "NVIDIA-A100-SXM4-80GB", 8)]
    # 3 replicas × 4 GPUs were planned, 2 on gpu-1 and 1 on gpu-2; gpu-2 vanished in the resync, so what is planned
    # there is held on no node that counts (the planner's per-node rule), and gpu-1 has nothing free.
    assert (capacity[0]["reserved"], capacity[0]["free"]) == (8, 0)
    assert [(p["cluster"], p["replicas"], p["replica_gpus"]) for p in current] == [("a100", 3, 4)]
    assert [h["outcome"] for h in history][:2] == ["Placed", "Placed"]
    assert history[0]["placement"] == "a100=2"
    assert history[1]["placement"] == "a100=3"
    # GPU hours run from the first decision (an hour before the session) to now, split at midnight: one row
    # per day the span touches, whichever day the test runs on.
    assert [h["day"] for h in hours] == sorted({first_day, today})
    assert sum(float(h["gpu_hours"]) for h in hours) > 0
    assert churn[0]["replicas_added"] == 3
    assert churn[0]["replicas_removed"] == 0


async def test_fold_is_pure(engine: AsyncEngine) -> None:
    event = builders.observed("a100", "Node", builders.gpu_node("gpu-1"))
    assert fold(event) == fold(event)


# ------------------------------------------------------------------------------------------ capacity memory


def _pod(name: str, node: str, gpus: int, *, ours: bool = True, phase: str = "Running") -> dict[str, Any]:
    labels = (
        {LABEL_ORIGIN: "cpu", LABEL_NAMESPACE: "team", LABEL_DEPLOYMENT: "big", LABEL_MANAGED_BY: "llm-operator"}
        if ours
        else {"app": "someone-elses-job"}
    )
    requests = {"cpu": "8", "memory": "80Gi", "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": builders.meta(name, "team", uid=f"{name}-uid", labels=labels),
        "spec": {"nodeName": node, "containers": [{"name": "main", "resources": {"requests": requests}}]},
        "status": {"phase": phase},
    }


async def test_capacity_carried_from_step_to_step_equals_a_full_rebuild(engine: AsyncEngine, hub: Hub) -> None:
    """The planner keeps the fleet's capacity in memory and reads again only the clusters that changed; after
    every step of a history with placements, pods binding where the planner did not expect them, someone else's
    pods, a node shrinking, a scale-down, a node vanishing in a resync and a deletion, what it holds equals a
    rebuild from every node, pod and placement. A step that does not commit makes it forget."""
    epoch = await epoch_of(engine)
    feed = Feed(hub.subjects)
    memory = CapacityMemory()
    gpu_1, gpu_2 = builders.gpu_node("gpu-1", uid="gpu-1-uid"), builders.gpu_node("gpu-2", uid="gpu-2-uid")

    def big(replicas: int, generation: int, **extra: Any) -> Any:
        spec = {"modelRef": "llama", "replicas": replicas, "port": 8080}
        obj = builders.llm_deployment("big", "team", spec, uid="big-uid", generation=generation, **extra)
        return builders.observed("cpu", "LLMDeployment", obj)

    history: list[list[Any]] = [
        [heartbeat("a100", 0, feed.clock), heartbeat("cpu", 0, feed.clock)],
        [
            builders.observed("a100", "Node", gpu_1),
            builders.observed("a100", "Node", gpu_2),
            builders.observed("cpu", "Node", builders.cpu_node("cpu-1")),
            builders.observed("cpu", "LLMModel", builders.llm_model("llama", "team", GPU_MODEL)),
        ],
        [big(3, 1)],
        # Someone else's job takes 2 GPUs of gpu-2; one of ours binds on gpu-2, wherever the planner expected it.
        [
            builders.observed("a100", "Pod", _pod("other-job", "gpu-2", 2, ours=False)),
            builders.observed("a100", "Pod", _pod("big-0", "gpu-2", 4)),
        ],
        [builders.observed("a100", "Node", builders.gpu_node("gpu-1", uid="gpu-1-uid", gpus=4))],
        [big(1, 2)],
        [builders.observed("a100", "Pod", _pod("other-job", "gpu-2", 2, ours=False, phase="Succeeded"))],
        [
            ResyncCompleted(
                event_id="resync-gpu-2",
                cluster="a100",
                kind="Node",
                uids=["gpu-1-uid"],
                resource_version="9999",
                observed_at=feed.clock,
            )
        ],
        [big(1, 3, deleting=True, finalizers=["llm.example.com/cleanup"])],
    ]
    compared = 0
    for events in history:
        feed.tick(5)
        async with engine.begin() as conn:
            await step(
                conn,
                deliveries=feed.deliver(*events),
                epoch=epoch,
                now=feed.clock,
                config=config(hub),
                health_grace_until=feed.clock,
                memory=memory,
            )
        async with engine.connect() as conn:
            carried, rebuilt = await memory.current(conn), await read_capacity(conn)
        assert carried.clusters == rebuilt.clusters, f"after {[type(e).__name__ for e in events]}"
        compared += 1
    async with engine.connect() as conn:
        placements = await queries.all_placements(conn)
    assert compared == len(history) and placements, "the history placed nothing: it would prove nothing"

    # A step that is rolled back leaves the memory describing a transaction that never happened: forget it.
    feed.tick(5)
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await step(
            conn,
            deliveries=feed.deliver(builders.observed("a100", "Pod", _pod("ghost", "gpu-1", 4, ours=False))),
            epoch=epoch,
            now=feed.clock,
            config=config(hub),
            health_grace_until=feed.clock,
            memory=memory,
        )
        with_ghost = await memory.current(conn)
        await transaction.rollback()
        rebuilt = await read_capacity(conn)
    assert with_ghost.clusters != rebuilt.clusters  # the memory holds the ghost pod the rollback undid
    memory.forget()
    async with engine.connect() as conn:
        assert (await memory.current(conn)).clusters == (await read_capacity(conn)).clusters


# ------------------------------------------------------------------------------------- the driver fast path


async def test_driver_statements_belong_to_the_callers_transaction(engine: AsyncEngine) -> None:
    """`store.sql` runs on the driver under SQLAlchemy's connection; SQLAlchemy begins transactions lazily, so a
    driver statement that came first must still be inside the transaction: a rollback takes it back."""

    class Abandon(Exception):
        pass

    async def write_then_abandon() -> None:
        async with engine.begin() as conn:
            await recorder.outbox_put_many(conn, [("p-rolled-back", "plans.x", b"{}")])  # first statement
            assert [r[1] for r in await recorder.outbox_pending(conn)] == ["p-rolled-back"]
            raise Abandon

    with pytest.raises(Abandon):
        await write_then_abandon()
    assert await count(engine, tables.outbox) == 0

    async with engine.begin() as conn:
        await recorder.outbox_put_many(conn, [("p-2", "plans.x", b"2"), ("p-1", "plans.x", b"1")])
    async with engine.connect() as conn:
        pending = await recorder.outbox_pending(conn)
    assert [(plan_id, payload) for _, plan_id, _, payload in pending] == [("p-2", b"2"), ("p-1", b"1")]  # in order
