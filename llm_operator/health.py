"""The operations endpoint of every process: /metrics (Prometheus), /healthz (alive) and /readyz (useful).

Guarantees:
- /healthz answers 200 while the event loop runs and the NATS client has not given up: a stuck or dead process
  fails it, so Kubernetes restarts it.
- /readyz checks the real dependencies each time it is asked — NATS connected, the database answering (planner),
  every member cluster's apiserver answering (agents) — and says which one failed, with 503.
- Checks are bounded by a timeout, so a probe never hangs.
- It listens on 127.0.0.1 unless told otherwise (`Settings.metrics_host`; the chart sets 0.0.0.0 for the kubelet).
- Failure messages name the dependency, never a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bus.connection import Client
from kubeapi import Kube
from llm_operator.logs import redact_text
from store.engine import Engine, ping

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[str | None]]  # None: fine; otherwise what is wrong


def _clients(nc: Client | Sequence[Client]) -> list[Client]:
    return list(nc) if isinstance(nc, Sequence) else [nc]


def checks_for(*, nc: Client | Sequence[Client], engine: Engine | None, kubes: Sequence[Kube]) -> list[Check]:
    clients = _clients(nc)

    async def nats_connected() -> str | None:
        return None if all(c.is_connected for c in clients) else "NATS is not connected"

    async def database() -> str | None:
        assert engine is not None
        try:
            await ping(engine)
        except Exception as exc:  # any driver error means "not ready"; the message says which
            return f"database unreachable: {redact_text(str(exc))}"
        return None

    def apiserver(kube: Kube) -> Check:
        async def check() -> str | None:
            try:
                await kube.version()
            except Exception as exc:  # KubeError or a transport error: not ready either way
                return f"cluster {kube.name}: {exc}"
            return None

        return check

    checks: list[Check] = [nats_connected]
    if engine is not None:
        checks.append(database)
    checks.extend(apiserver(k) for k in kubes)
    return checks


def application(*, nc: Client | Sequence[Client], checks: Sequence[Check], timeout: float = 3.0) -> web.Application:
    clients = _clients(nc)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if any(c.is_closed for c in clients):
            return web.Response(status=503, text="NATS client closed\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems: list[str] = []
        for check in checks:
            with anyio.move_on_after(timeout) as scope:
                problem = await check()
                if problem:
                    problems.append(problem)
            if scope.cancelled_caught:
                problems.append(f"{getattr(check, '__name__', 'check')} timed out")
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, *, port: int, host: str = "127.0.0.1") -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logger.info("serving /metrics, /healthz and /readyz on %s:%d", host, port)
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
