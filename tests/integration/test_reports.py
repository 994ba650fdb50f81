"""The audit commands' reads (`store.reports`) on a realistic history: typed rows with what the projections and
the reporting views hold, and a refusal of a database that is not migrated."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from store.errors import SchemaNotReady
from store.reports import VIEWS, open_reports
from tests.fixtures.services import Hub
from tests.integration.test_store import realistic_history

pytestmark = [pytest.mark.anyio, pytest.mark.services]


async def test_reads_answer_with_typed_rows(engine: AsyncEngine, hub: Hub) -> None:
    await realistic_history(engine, hub)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO dead_letters (consumer, subject, stream_sequence, reason, raw) VALUES (:c, :s, 7, :r, :b)"
            ),
            {"c": "planner", "s": f"{hub.subjects.prefix}.events.a100", "r": "not JSON", "b": b"{nope"},
        )
    async with open_reports(hub.database_url) as reports:
        clusters = await reports.clusters()
        capacity = await reports.gpu_capacity()
        deployments = await reports.deployment_summaries()
        origins = await reports.origins("team", "big")
        decisions = await reports.history("cpu", "team", "big", types=["PlacementDecided"])
        everything = await reports.history("cpu", "team", "big")
        spec = await reports.deployment_spec("cpu", "team", "chat")
        unknown = await reports.deployment_spec("cpu", "team", "nope")
        letters = await reports.dead_letters(limit=5)
        table = await reports.report("gpu-capacity")
        then = await reports.as_of(datetime.now(UTC))

    assert [(c.name, c.healthy) for c in clusters] == [("a100", True), ("cpu", True)]
    assert [(c.cluster, c.gpu_product, c.total, c.free) for c in capacity] == [("a100", "NVIDIA-A100-SXM4-80GB", 8, 0)]
    assert table.columns[:2] == ("cluster", "gpu_product")
    assert [row[:2] for row in table.rows] == [("a100", "NVIDIA-A100-SXM4-80GB")]
    assert [(d.namespace, d.name, d.origin_cluster) for d in deployments] == [
        ("team", "big", "cpu"),
        ("team", "chat", "cpu"),
    ]
    assert origins == ["cpu"]
    assert decisions and all(e.event.type == "PlacementDecided" for e in decisions)
    assert len(everything) > len(decisions)
    assert [e.position for e in everything] == sorted(e.position for e in everything)
    assert spec is not None and spec["modelRef"] == "gpt-small"
    assert unknown is None
    assert [(d.stream_sequence, d.reason, d.raw) for d in letters] == [(7, "not JSON", b"{nope")]
    assert {d["name"] for d in then.rows("deployments")} == {"big", "chat"}
    assert set(VIEWS) == {"gpu-capacity", "placements", "placement-history", "gpu-hours", "churn", "time-to-ready"}


async def test_an_unmigrated_database_is_refused(hub: Hub) -> None:
    hub.postgres.psql(f"CREATE DATABASE {hub.database}_empty")
    try:
        with pytest.raises(SchemaNotReady, match="llm-operator migrate"):
            async with open_reports(hub.postgres.url(f"{hub.database}_empty")):
                pass
    finally:
        hub.postgres.psql(f"DROP DATABASE IF EXISTS {hub.database}_empty WITH (FORCE)")
