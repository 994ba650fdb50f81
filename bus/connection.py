"""Connecting to NATS: one client per process, reconnecting forever once connected.

Guarantees:
- `connect` waits up to `wait_seconds` for a server to accept TCP (NATS restarting while we start is normal), then
  raises `BusUnavailable` with one line naming the URL and what failed.
- `JetStream` and `Client` are the types the rest of the code names; they are defined here so that no other
  package imports ``nats``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from bus.errors import BusUnavailable

logger = logging.getLogger(__name__)

JetStream = JetStreamContext
Client = NatsClient


async def _reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if some server of the (comma-separated) NATS URL accepts TCP connections, else why not."""
    problems = []
    for server in url.split(","):
        parsed = urlsplit(server.strip() if "://" in server else f"nats://{server.strip()}")
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(parsed.hostname or "127.0.0.1", parsed.port or 4222)
            await stream.aclose()
            return None
        except (OSError, TimeoutError) as exc:
            problems.append(f"{parsed.hostname}:{parsed.port or 4222}: {exc or 'timed out'}")
    return "; ".join(problems)


async def connect(url: str, *, name: str, credentials: Path | None = None, wait_seconds: float = 30.0) -> Client:
    """Connect; once connected, reconnect forever."""
    deadline = time.monotonic() + wait_seconds
    while problem := await _reachable(url):
        left = deadline - time.monotonic()
        if left <= 0:
            raise BusUnavailable(f"cannot reach NATS at {url} ({problem})")
        logger.warning("NATS at %s not reachable (%s); retrying for another %.0fs", url, problem, left)
        await anyio.sleep(min(1.0, left))

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS: %s", exc)

    closing: list[NatsClient] = []

    async def on_disconnect() -> None:
        if closing and (closing[0].is_closed or closing[0].is_draining):
            return  # our own shutdown
        logger.warning("NATS: disconnected from %s; reconnecting", url)

    async def on_reconnect() -> None:
        logger.info("NATS: reconnected to %s", url)

    try:
        client = await nats.connect(
            url,
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            user_credentials=str(credentials) if credentials else None,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            allow_reconnect=True,
        )
    except Exception as exc:  # nats raises several unrelated types for "cannot connect"
        raise BusUnavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from exc
    closing.append(client)
    return client
