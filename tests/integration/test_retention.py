"""The partitioned event log and its retention policy, on real Postgres: migration 0007 keeps every row, partitions
are created ahead (and take back what the DEFAULT partition caught), a prune drops whole days of observations and
never an audit event, replay after a prune still rebuilds the same state, and `history --as-of` says when it
reaches past what is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.events import ClusterHealthChanged, LoadObserved
from store import recorder, replay, retention, schema
from store.reader import decode_row
from tests import builders
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub
from tests.integration.test_store import realistic_history

pytestmark = [pytest.mark.anyio, pytest.mark.services]


async def _scalar(engine: AsyncEngine, query: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(text(query), params)


def _day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def test_migration_0007_moves_every_row_into_partitions_with_its_class(hub: Hub) -> None:
    """Rows written at 0006 (two days, both classes) come through with their positions, ids, versions and the
    class the recorder gives today; the views read the new table; appends go on from the old positions."""
    database = f"{hub.database}_part"
    hub.postgres.psql(f"CREATE DATABASE {database}")
    engine = create_async_engine(hub.postgres.url(database))
    try:
        await schema.upgrade(engine, "0009")
        events = [
            builders.observed("a100", "Node", builders.gpu_node("gpu-1")),
            builders.observed("cpu", "Node", builders.cpu_node("cpu-1")),
            builders.observed("cpu", "LLMDeployment", builders.llm_deployment("chat", "team", {"modelRef": "m"})),
            ClusterHealthChanged(
                event_id="h1", cluster="a100", healthy=False, reason="HeartbeatTimeout", at=builders.T0
            ),
            LoadObserved.model_validate(
                {
                    "event_id": "load-1",
                    "cluster": "a100",
                    "origin_cluster": "cpu",
                    "namespace": "team",
                    "name": "chat",
                    "window_seconds": 10,
                    "replicas": 1,
                    "reporting": 1,
                    "observed_at": builders.T0,
                }
            ),
        ]
        async with engine.begin() as conn:
            for position, event in enumerate(events, 1):
                await conn.execute(
                    text(
                        "INSERT INTO events (event_id, stream_id, stream_version, type, schema_version, cluster, "
                        "payload, metadata, occurred_at, recorded_at, object_key) VALUES (:id, :stream, 1, :type, "
                        ":v, :cluster, CAST(:payload AS jsonb), '{}', :at, :recorded, :key)"
                    ),
                    {
                        "id": event.event_id,
                        "stream": f"s{position}",
                        "type": event.type,
                        "v": event.schema_version,
                        "cluster": event.cluster,
                        "payload": recorder.payload_json(event),
                        "at": builders.T0,
                        # the first two a day earlier than the rest
                        "recorded": datetime.now(UTC) - timedelta(days=1 if position <= 2 else 0),
                        "key": recorder.object_key(event),
                    },
                )
        await schema.upgrade(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM events ORDER BY position"))).mappings().all()
            partitions = await retention.partitions(conn)
            ids = await conn.scalar(text("SELECT count(*) FROM event_ids"))
            versions = await conn.scalar(text("SELECT sum(version) FROM event_streams"))
            placements_view = await conn.scalar(text("SELECT count(*) FROM report_placement_history"))
            in_default = await conn.scalar(text("SELECT count(*) FROM events_default"))
        assert [r["position"] for r in rows] == [1, 2, 3, 4, 5]
        assert [r["retention"] for r in rows] == [recorder.retention_of(decode_row(r)) for r in rows]
        assert [r["retention"] for r in rows] == ["observation", "observation", "audit", "audit", "observation"]
        assert (ids, versions, placements_view, in_default) == (5, 5, 0, 0)
        yesterday = _day(datetime.now(UTC) - timedelta(days=1))
        assert any(p.retention == "observation" and p.start == yesterday for p in partitions)

        later = builders.observed("a100", "Node", builders.gpu_node("gpu-2"))
        async with engine.begin() as conn:
            await recorder.lock_writers(conn)
            again = await recorder.append(conn, [(events[0], {}), (later, {})])  # a repeat and a new one
        assert [(r.event.event_id, r.position) for r in again] == [(later.event_id, 6)]

        await schema.downgrade(engine, "0009")
        assert await _scalar(engine, "SELECT count(*) FROM events") == 6
        await schema.upgrade(engine)
        assert await _scalar(engine, "SELECT count(*) FROM events WHERE retention = 'observation'") == 4
    finally:
        await engine.dispose()
        hub.postgres.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def test_a_partition_created_later_takes_back_the_rows_the_default_one_caught(engine: AsyncEngine) -> None:
    far = datetime.now(UTC) + timedelta(days=40)
    async with engine.begin() as conn:
        await recorder.lock_writers(conn)
        await recorder.append(conn, [(builders.observed("a100", "Node", builders.gpu_node("n")), {})])
        # No partition covers that day yet: the row lands in the DEFAULT partition (never a failed write).
        await conn.execute(text("UPDATE events SET recorded_at = :far"), {"far": far})
    assert await _scalar(engine, "SELECT count(*) FROM events_default") == 1
    async with engine.begin() as conn:
        created = await retention.ensure_partitions(conn, now=far, days_ahead=1)
    assert f"events_observation_{far:%Y%m%d}" in created
    assert await _scalar(engine, "SELECT count(*) FROM events_default") == 0
    assert await _scalar(engine, f"SELECT count(*) FROM events_observation_{far:%Y%m%d}") == 1


async def _age(engine: AsyncEngine, base: datetime) -> int:
    """Move the log into the past: the first half of it (by position) to `base` + 1 h, the rest a day later.
    Returns the last position of the first half."""
    async with engine.begin() as conn:
        await retention.ensure_partitions(conn, now=base, days_ahead=12)
        last = int(await conn.scalar(text("SELECT max(position) FROM events")) or 0)
        half = last // 2
        await conn.execute(
            text("UPDATE events SET recorded_at = :at WHERE position <= :half"),
            {"at": base + timedelta(hours=1), "half": half},
        )
        await conn.execute(
            text("UPDATE events SET recorded_at = :at WHERE position > :half"),
            {"at": base + timedelta(days=1, hours=1), "half": half},
        )
    return half


def _differences(left: dict[str, list[Any]], right: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: (left[name], right.get(name)) for name in left if left[name] != right.get(name)}


def _memory(tables: replay.MemoryTables) -> dict[str, list[Any]]:
    return {
        name: [{k: v for k, v in r.items() if k != "last_heartbeat_at"} for r in tables.rows(name)]
        for name in tables.tables
    }


async def test_a_prune_drops_a_day_of_observations_only_and_replay_still_rebuilds_the_same_state(
    engine: AsyncEngine, hub: Hub
) -> None:
    await realistic_history(engine, hub)
    base = _day(datetime.now(UTC)) - timedelta(days=10)
    half = await _age(engine, base)
    after_horizon = base + timedelta(days=1, hours=2)
    async with engine.connect() as conn:
        live = await replay.snapshot(conn)
        before_at = _memory(await replay.as_of(conn, after_horizon))
    audit_before = await _scalar(engine, "SELECT count(*) FROM events WHERE retention = 'audit'")
    first_day = await _scalar(
        engine, "SELECT count(*) FROM events WHERE retention = 'observation' AND position <= :h", h=half
    )
    assert first_day > 0
    # The Nodes were observed once, in the first day; gpu-2 was then found gone by a resync (an audit event).
    assert sorted(n["name"] for n in live["nodes"]) == ["cpu-1", "gpu-1"]

    now = datetime.now(UTC)
    async with engine.begin() as conn:
        pruned = await retention.prune(
            conn, now=now, keep=now - (base + timedelta(days=1, minutes=30)), max_partitions=10
        )
    assert [p.partition for p in pruned] == [f"events_observation_{base:%Y%m%d}"]
    assert pruned[0].rows == first_day
    assert pruned[0].kept_as_snapshot >= 3  # gpu-1, gpu-2, cpu-1 at least: each one's last observation
    assert await _scalar(engine, "SELECT count(*) FROM events WHERE retention = 'audit'") == audit_before
    assert (
        await _scalar(engine, "SELECT count(*) FROM events WHERE retention = 'observation' AND position <= :h", h=half)
        == 0
    )
    assert await _scalar(engine, "SELECT count(*) FROM event_ids") == await _scalar(
        engine, "SELECT count(*) FROM events"
    )
    async with engine.connect() as conn:
        kept_from = await retention.horizon(conn)
    assert kept_from == base + timedelta(days=1)

    async with engine.begin() as conn:
        stats = await replay.rebuild(conn)
    async with engine.connect() as conn:
        rebuilt = await replay.snapshot(conn)
        after_at = _memory(await replay.as_of(conn, after_horizon))
    assert stats.observations_kept_from == kept_from
    assert _differences(live, rebuilt) == {}
    assert _differences(before_at, after_at) == {}

    # A second run has nothing left to do: the next day is within the policy.
    async with engine.begin() as conn:
        again = await retention.prune(
            conn, now=now, keep=now - (base + timedelta(days=1, minutes=30)), max_partitions=10
        )
    assert again == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_operator", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


async def test_history_as_of_says_when_it_reaches_past_the_retention_horizon(
    engine: AsyncEngine, hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands' own code in process (a subprocess costs seconds each); `store prune` as users run it."""
    from llm_operator import audit
    from llm_operator.settings import Settings

    await realistic_history(engine, hub)
    base = _day(datetime.now(UTC)) - timedelta(days=10)
    await _age(engine, base)
    settings = Settings(database_url=hub.database_url)
    before_horizon = (base + timedelta(hours=2)).isoformat()
    after_horizon = (base + timedelta(days=1, hours=2)).isoformat()

    async def as_of(when: str, *, as_json: bool) -> str:
        capsys.readouterr()
        await audit.history(settings, "fleet", cluster=None, since=None, until=None, as_json=as_json, as_of=when)
        return capsys.readouterr().out

    # Nothing pruned yet: complete, and no note.
    assert json.loads(await as_of(before_horizon, as_json=True))["retention"] == {
        "observations_kept_from": None,
        "complete": True,
        "note": None,
    }

    # Keep everything recorded since half an hour into the second day: the first day goes.
    keep_days = str((datetime.now(UTC) - (base + timedelta(days=1, minutes=30))) / timedelta(days=1))
    pruned = await anyio.to_thread.run_sync(
        lambda: _cli("store", "prune", "--keep-days", keep_days, "--database-url", hub.database_url)
    )
    assert pruned.returncode == 0, pruned.stderr
    assert f"dropped events_observation_{base:%Y%m%d}" in pruned.stdout
    assert "audit events are complete" in pruned.stdout

    found = json.loads(await as_of(before_horizon, as_json=True))["retention"]
    assert found["complete"] is False
    assert found["observations_kept_from"] == (base + timedelta(days=1)).isoformat()
    assert "were pruned by the retention policy" in found["note"]
    assert "placements, decisions, plans and applies are complete" in found["note"]
    assert "were pruned by the retention policy" in " ".join((await as_of(before_horizon, as_json=False)).split())
    assert json.loads(await as_of(after_horizon, as_json=True))["retention"]["complete"] is True
    assert "pruned" not in await as_of(after_horizon, as_json=False)

    capsys.readouterr()
    await audit.rebuild(settings)
    assert "were pruned by the retention policy" in " ".join(capsys.readouterr().out.split())


async def test_the_leading_planner_creates_partitions_ahead_and_prunes_one_day_per_run(
    engine: AsyncEngine, hub: Hub
) -> None:
    from planner.service import Retention, _keep_log

    await realistic_history(engine, hub)
    base = _day(datetime.now(UTC)) - timedelta(days=10)
    await _age(engine, base)
    ahead = f"events_observation_{datetime.now(UTC) + timedelta(days=5):%Y%m%d}"
    # Both aged days are older than the policy keeps.
    keep = datetime.now(UTC) - (base + timedelta(days=2, minutes=30))
    policy = Retention(observations=keep, check_seconds=0.05, days_ahead=5)

    async def both_pruned() -> bool:
        async with engine.connect() as conn:
            return await retention.horizon(conn) == base + timedelta(days=2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep_log, engine, policy)
        await eventually(both_pruned, timeout=30, what="the two aged days pruned, one per run", interval=0.05)
        tg.cancel_scope.cancel()
    async with engine.connect() as conn:
        names = {p.name for p in await retention.partitions(conn)}
        kept_from = await retention.horizon(conn)
    assert ahead in names
    assert f"events_observation_{base:%Y%m%d}" not in names
    assert kept_from == base + timedelta(days=2)
    assert await _scalar(engine, "SELECT count(*) FROM events WHERE retention = 'audit'") > 0
