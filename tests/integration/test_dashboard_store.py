"""The dashboard's store reads on real Postgres: the per-node view adds up to report_gpu_capacity (one rule), the
dashboard's engine and role cannot write, and the deployment list filters by bound parameters."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from store.browse import can_write, grant_read_only, open_browse, role_url
from store.engine import open_engine
from store.errors import StoreError, translated
from tests.fixtures.services import Hub
from tests.integration.test_capacity_rule import fleet_history

pytestmark = [pytest.mark.anyio, pytest.mark.services]


async def test_the_node_view_adds_up_to_the_capacity_view_on_a_fleet_with_unusable_nodes(
    engine: AsyncEngine, hub: Hub
) -> None:
    await fleet_history(engine, hub)  # cordoned, NotReady, tainted nodes; a reservation; someone else's jobs
    async with open_browse(hub.database_url) as browse:
        nodes = await browse.node_gpus()
        capacity = await browse.gpu_capacity()
    assert {n.usable for n in nodes} == {True, False}
    summed: dict[tuple[str, str], list[int]] = {}
    for n in nodes:
        s = summed.setdefault((n.cluster, n.gpu_product), [0] * 7)
        if n.usable:
            for i, v in enumerate((1, n.allocatable, n.allocated, n.reserved, n.free)):
                s[i] += v
        else:
            s[5] += 1
            s[6] += n.allocatable
    assert summed == {
        (r.cluster, r.gpu_product): [
            r.nodes,
            r.total,
            r.allocated,
            r.reserved,
            r.free,
            r.unusable_nodes,
            r.unusable_gpus,
        ]
        for r in capacity
    }
    assert any(r.allocated for r in capacity), "the history should leave GPUs in use to compare"


async def test_the_dashboards_engine_and_role_cannot_write(engine: AsyncEngine, hub: Hub) -> None:
    # Its engine refuses writes even when the role could (the owner's, here).
    async with open_browse(hub.database_url) as browse:
        assert await can_write(browse.engine)
        with pytest.raises(StoreError, match="read-only"), translated("try a write"):
            async with browse.engine.begin() as conn:
                await conn.execute(text("DELETE FROM events"))
    # The role `--grant` makes may read every view, and write nothing even outside the dashboard's engine.
    role = f"ro_{hub.database}"
    await grant_read_only(engine, role, password=None)
    await grant_read_only(engine, role, password=None)  # idempotent
    url = role_url(hub.database_url, role, password=None)
    async with open_browse(url) as browse:
        assert not await can_write(browse.engine)
        assert (await browse.report("gpu-capacity")).columns[0] == "cluster"
        await browse.node_gpus()
    plain = open_engine(url)
    try:
        async with plain.begin() as conn:
            await conn.execute(text("SET TRANSACTION READ WRITE"))
            with pytest.raises(Exception, match="permission denied"):
                await conn.execute(text("DELETE FROM events"))
    finally:
        await plain.dispose()
    with pytest.raises(ValueError, match="plain role name"):
        await grant_read_only(engine, "x; DROP TABLE events", password=None)


async def test_the_deployment_list_filters_with_bound_parameters(engine: AsyncEngine, hub: Hub) -> None:
    await fleet_history(engine, hub)
    async with open_browse(hub.database_url) as browse:
        every = await browse.deployment_page()
        assert [(r.namespace, r.name, r.clusters) for r in every.rows] == [("team", "big", ("a100",))]
        assert every.rows[0].gpu_types == ("NVIDIA-A100-SXM4-80GB",)
        for hostile in ("%", "_", "' OR 1=1 --", "\\"):
            found: Any = await browse.deployment_page(search=hostile)
            assert found.total == 0
        assert (await browse.deployment_page(search="team/bi")).total == 1
        assert (await browse.deployment_page(gpu="NVIDIA-H100-80GB-HBM3")).total == 0
        assert (await browse.deployment_page(origin="cpu", status=every.rows[0].status or "Pending")).total == 1
        log = await browse.log(deployment="team/big", types=["PlacementDecided"])
        assert log and all(e.type == "PlacementDecided" for e in log)
        assert await browse.log(deployment="%") == []
        assert await browse.head() >= log[0].position
