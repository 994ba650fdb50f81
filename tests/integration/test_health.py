"""/metrics, /healthz and /readyz of a running planner, on real NATS and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import anyio
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from llm_operator import health
from llm_operator.embedded import _free_port
from llm_operator.runtime import connect_nats, run_components
from llm_operator.settings import Settings
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


@pytest.fixture
async def planner_port(hub: Hub) -> AsyncIterator[int]:
    port = _free_port()
    hub.grant()
    settings = Settings(
        nats_url=hub.nats_url,
        nats_identities_dir=hub.identities_dir,
        database_url=hub.database_url,
        subject_prefix=hub.subjects.prefix,
        metrics_port=port,
    )
    async with anyio.create_task_group() as tg:
        started = anyio.Event()
        tg.start_soon(
            lambda: run_components(
                settings=settings,
                members=[],
                nats_url=hub.nats_url,
                database_url=hub.database_url,
                run_planner_too=True,
                install=False,
                migrate=False,
                started=started,
            )
        )
        await started.wait()
        yield port
        tg.cancel_scope.cancel()


async def test_a_running_planner_is_healthy_ready_and_exports_metrics(planner_port: int) -> None:
    async def leading() -> str | None:
        status, body = await get(planner_port, "/metrics")
        return body if status == 200 and "llmop_planner_leader 1.0" in body else None

    body = await eventually(leading, timeout=30, what="the planner to lead and say so in /metrics")
    assert "llmop_planner_step_seconds_bucket" in body
    assert await get(planner_port, "/healthz") == (200, "ok\n")
    assert await get(planner_port, "/readyz") == (200, "ok\n")


async def test_readyz_names_the_dependency_that_is_down(hub: Hub) -> None:
    nc = await connect_nats(hub.nats_url, name="health-test", nkey_seed=hub.admin_seed)
    dead = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{_free_port()}/nothing")
    port = _free_port()
    app = health.application(nc=nc, checks=health.checks_for(nc=nc, engine=dead, kubes=[]), timeout=5)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: health.serve(app, port=port, host="127.0.0.1"))
            status, body = await eventually(lambda: _reachable(port), timeout=10, what="the health endpoint to listen")
            assert status == 503
            assert body.startswith("database unreachable")
            assert await get(port, "/healthz") == (200, "ok\n")
            tg.cancel_scope.cancel()
    finally:
        await nc.close()
        await dead.dispose()


async def _reachable(port: int) -> tuple[int, str] | None:
    try:
        return await get(port, "/readyz")
    except aiohttp.ClientConnectionError:
        return None
