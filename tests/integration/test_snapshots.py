"""Projection snapshots on real Postgres: a look at the past from a snapshot equals the whole fold; a snapshot is
used only when every event it holds was recorded by then; one of another table shape is never used; taking one
waits for a step in flight and includes it; the leading planner takes them and thins them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import ResourceObserved
from store import recorder, replay, snapshots
from store.memory import MemoryTables
from tests import builders
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub
from tests.integration.test_store import epoch_of, realistic_history, run

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def _rows(state: MemoryTables) -> dict[str, list[Any]]:
    return {name: state.rows(name) for name in state.tables}


async def _recorded_times(engine: AsyncEngine) -> list[datetime]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT DISTINCT recorded_at FROM events ORDER BY 1"))).scalars())


async def _more_history(engine: AsyncEngine, hub: Hub, feed: builders.Feed) -> None:
    """Changes after the snapshot: a new deployment, a new node, the big deployment scaled again."""
    epoch = await epoch_of(engine)
    later: list[list[ResourceObserved]] = [
        [
            builders.observed(
                "cpu",
                "LLMDeployment",
                builders.llm_deployment("late", "team", {"modelRef": "llama", "replicas": 1}, uid="late-uid"),
            )
        ],
        [builders.observed("a100", "Node", builders.gpu_node("gpu-3"))],
        [
            builders.observed(
                "cpu",
                "LLMDeployment",
                builders.llm_deployment(
                    "big", "team", {"modelRef": "llama", "replicas": 1, "port": 8080}, uid="big-uid", generation=3
                ),
            )
        ],
    ]
    for events in later:
        feed.tick(5)
        await run(engine, hub, feed, feed.deliver(*events), epoch)


async def test_as_of_from_a_snapshot_equals_the_whole_fold_at_every_moment(engine: AsyncEngine, hub: Hub) -> None:
    feed = await realistic_history(engine, hub)
    taken = await snapshots.take(engine)
    assert taken is not None and taken.rows > 10
    await _more_history(engine, hub, feed)

    moments = await _recorded_times(engine)
    moments.append(datetime.now(UTC) + timedelta(days=1))
    used = 0
    kept = [t.name for t in snapshots.SNAPSHOT_TABLES]
    async with engine.connect() as conn:
        for moment in moments:
            whole = await replay.as_of(conn, moment, names=kept, from_snapshot=False)
            started = await replay.as_of(conn, moment, names=kept)
            assert _rows(started) == _rows(whole), moment
            if moment >= taken.recorded_until:
                # Every later moment starts from the snapshot and folds less than the whole log.
                assert started.snapshot_position == taken.position, moment
                assert started.events_folded < whole.events_folded, moment
                used += 1
            else:
                assert started.snapshot_position is None, moment
    assert used >= 3  # the moments of the three later steps, and tomorrow
    big = [d for d in (await _as_of_now(engine)).rows("deployments") if d["name"] == "big"]
    assert big[0]["generation"] == 3
    async with engine.connect() as conn:
        # Plans are not kept in snapshots: a fold that asks for them starts from the beginning.
        everything = await replay.as_of(conn, moments[-1])
        two = await replay.as_of(conn, moments[-1], names=["placements", "deployment_plans"])
        two_whole = await replay.as_of(conn, moments[-1], names=["placements", "deployment_plans"], from_snapshot=False)
    assert everything.snapshot_position is None and everything.rows("plans")
    assert two.snapshot_position == taken.position and sorted(two.tables) == ["deployment_plans", "placements"]
    # Folding without the plans table skips rendering plan payloads; what it folds is the same.
    for name in ("placements", "deployment_plans"):
        assert two.rows(name) == two_whole.rows(name) == everything.rows(name), name


async def _as_of_now(engine: AsyncEngine) -> MemoryTables:
    async with engine.connect() as conn:
        return await replay.as_of(conn, datetime.now(UTC) + timedelta(days=1), names=["deployments", "placements"])


async def test_a_snapshot_of_another_table_shape_is_never_used_and_is_thinned(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    taken = await snapshots.take(engine)
    assert taken is not None
    assert (await _as_of_now(engine)).snapshot_position == taken.position
    async with engine.begin() as conn:
        # What a snapshot written before a migration changed a projection table looks like.
        await conn.execute(text("UPDATE projection_snapshots SET fingerprint = 'before-0012'"))
    assert (await _as_of_now(engine)).snapshot_position is None
    async with engine.begin() as conn:
        assert await snapshots.thin(conn, now=datetime.now(UTC)) == 1
        assert await snapshots.listed(conn) == []


async def test_nothing_recorded_since_the_last_snapshot_takes_none(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    assert await snapshots.take(engine) is not None
    assert await snapshots.take(engine) is None


async def test_two_takers_at_once_make_one_snapshot_and_no_error(engine: AsyncEngine, hub: Hub) -> None:
    feed = await realistic_history(engine, hub)
    results: list[snapshots.SnapshotInfo | None] = []

    async def take() -> None:
        results.append(await snapshots.take(engine))

    for _ in range(3):  # the race is between two copies of one position; give it a few chances
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            tg.start_soon(take)
        await _more_history(engine, hub, feed)
    taken = [r for r in results if r is not None]
    async with engine.connect() as conn:
        listed = await snapshots.listed(conn)
    assert len(taken) == len(listed) == 3, results
    assert sorted(r.position for r in taken) == [s.position for s in listed]


async def test_a_snapshot_waits_for_a_step_in_flight_and_includes_it(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    node = builders.gpu_node("gpu-9")
    event = builders.observed("a100", "Node", node)
    result: list[snapshots.SnapshotInfo | None] = []
    async with engine.connect() as writer:
        await writer.begin()
        await recorder.lock_writers(writer)
        await recorder.append(writer, [(event, {})])
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                result.append(await snapshots.take(engine))

            tg.start_soon(take)

            async def waiting_for_the_lock() -> bool:
                async with engine.connect() as conn:
                    waiting = await conn.scalar(
                        text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                    )
                return bool(waiting)

            await eventually(waiting_for_the_lock, timeout=10, what="the snapshot waiting for the writers' lock")
            assert result == []
            await writer.commit()
    async with engine.connect() as conn:
        last = await conn.scalar(text("SELECT max(position) FROM events"))
    assert result[0] is not None and result[0].position == last


async def test_the_leading_planner_takes_snapshots_and_thins_them(engine: AsyncEngine, hub: Hub) -> None:
    from planner.service import SnapshotPolicy, _keep_snapshots

    feed = await realistic_history(engine, hub)

    async def fingerprints() -> list[tuple[int, str]]:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT position, fingerprint FROM projection_snapshots ORDER BY 1"))
            return [(r[0], r[1]) for r in rows]

    async def last_position() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(text("SELECT max(position) FROM events")) or 0)

    async def one_taken() -> bool:
        return len(await fingerprints()) == 1

    async def caught_up_and_thinned() -> bool:
        found = await fingerprints()
        return (
            bool(found) and found[-1][0] == await last_position() and all(f == snapshots.FINGERPRINT for _, f in found)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep_snapshots, engine, SnapshotPolicy(every_events=1, every_seconds=3600, check_seconds=0.05))
        await eventually(one_taken, timeout=20, what="a first snapshot", interval=0.05)
        async with engine.begin() as conn:
            # As if a migration had changed a projection table since: the next round removes it.
            await conn.execute(text("UPDATE projection_snapshots SET fingerprint = 'before-0012'"))
        await _more_history(engine, hub, feed)
        await eventually(caught_up_and_thinned, timeout=20, what="a snapshot of the latest step", interval=0.05)
        tg.cancel_scope.cancel()
    # The foreign snapshot is gone (a current one may have been taken at its position since).
    assert "before-0012" not in [fingerprint for _, fingerprint in await fingerprints()]


async def test_the_store_commands_take_and_list_snapshots_and_history_as_of_starts_from_them(
    engine: AsyncEngine, hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_operator import audit
    from llm_operator.settings import Settings
    from tests.integration.test_retention import _cli

    await realistic_history(engine, hub)
    settings = Settings(database_url=hub.database_url)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()

    async def fleet_as_of() -> dict[str, Any]:
        capsys.readouterr()
        await audit.history(settings, "fleet", cluster=None, since=None, until=None, as_json=True, as_of=tomorrow)
        return dict(json.loads(capsys.readouterr().out))

    before = await fleet_as_of()
    taken = await anyio.to_thread.run_sync(lambda: _cli("store", "snapshot", "--database-url", hub.database_url))
    again = await anyio.to_thread.run_sync(lambda: _cli("store", "snapshot", "--database-url", hub.database_url))
    listed = await anyio.to_thread.run_sync(lambda: _cli("store", "snapshots", "--database-url", hub.database_url))
    async with engine.connect() as conn:
        last = await conn.scalar(text("SELECT max(position) FROM events"))
    assert taken.returncode == 0, taken.stderr
    assert f"projection snapshot at position {last}:" in taken.stdout
    assert "none taken" in again.stdout
    assert str(last) in listed.stdout

    after = await fleet_as_of()
    assert before["fold"] == {"snapshot_position": None, "events_folded": before["fold"]["events_folded"]}
    assert after["fold"] == {"snapshot_position": last, "events_folded": 0}
    assert {k: v for k, v in after.items() if k != "fold"} == {k: v for k, v in before.items() if k != "fold"}
