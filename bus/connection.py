"""Connecting to NATS: one client per identity, reconnecting forever once connected.

Guarantees:
- `connect` waits up to `wait_seconds` for a server to accept TCP (NATS restarting while we start is normal), then
  raises `BusUnavailable` with one line naming the URL and what failed. A server that refuses our identity or our
  TLS handshake is not retried: that needs a person, so it fails at once and says so.
- The client authenticates with an nkey seed file or a ``.creds`` file, uses TLS when given a `Tls`, and takes its
  reply inboxes under `inbox_prefix` (the only subscriptions its permissions allow).
- Credentials never leave this module: every URL in a log line or an error goes through `redact_url`.
- `JetStream` and `Client` are the types the rest of the code names; they are defined here so that no other
  package imports ``nats``.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from bus.errors import BusUnavailable

logger = logging.getLogger(__name__)

JetStream = JetStreamContext
Client = NatsClient


def redact_url(url: str) -> str:
    """The (comma-separated) NATS URL with any password or token replaced by ``***``."""
    out = []
    for entry in url.split(","):
        server = entry.strip()
        scheme, sep, rest = server.partition("://")
        if not sep:
            scheme, rest = "", server
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            rest = f"{user}:***@{hostpart}" if colon else f"***@{hostpart}"
        out.append(f"{scheme}{sep}{rest}")
    return ",".join(out)


@dataclass(frozen=True)
class Tls:
    """TLS to the server: the CA that signs its certificate, and our client certificate (mutual TLS) if any."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    hostname: str | None = None
    """The name the server's certificate must carry, when it differs from the URL's host."""

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None)
        if self.cert:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context


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


class _Refused(Exception):
    """The first connection attempt failed; `fatal` when retrying cannot help (identity or TLS refused)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        text = str(cause).lower()
        self.fatal = isinstance(cause, ssl.SSLError | nats.errors.AuthorizationError) or any(
            word in text for word in ("authorization", "authentication", "permissions", "tls", "certificate")
        )


async def connect(
    url: str,
    *,
    name: str,
    credentials: Path | None = None,
    nkey_seed: Path | None = None,
    inbox_prefix: str | None = None,
    tls: Tls | None = None,
    wait_seconds: float = 30.0,
) -> Client:
    """Connect; once connected, reconnect forever."""
    safe_url = redact_url(url)
    deadline = time.monotonic() + wait_seconds
    while True:
        problem = await _reachable(url)
        if problem is None:
            try:
                return await _connect_once(
                    url, name=name, credentials=credentials, nkey_seed=nkey_seed, inbox_prefix=inbox_prefix, tls=tls
                )
            except _Refused as exc:
                if exc.fatal:
                    raise BusUnavailable(f"NATS at {safe_url} refused the connection: {exc}") from None
                problem = str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise BusUnavailable(f"cannot reach NATS at {safe_url} ({problem})")
        logger.warning("NATS at %s not reachable (%s); retrying for another %.0fs", safe_url, problem, left)
        await anyio.sleep(min(1.0, left))


async def _connect_once(
    url: str,
    *,
    name: str,
    credentials: Path | None,
    nkey_seed: Path | None,
    inbox_prefix: str | None,
    tls: Tls | None,
) -> Client:
    safe_url = redact_url(url)
    client = NatsClient()
    connected = False

    async def on_error(exc: Exception) -> None:
        if not connected:
            # nats-py retries a refused first connection forever; we report it instead (raised out of connect).
            raise _Refused(exc)
        # Permission violations arrive only here (the call itself just times out): say which.
        logger.warning("NATS (%s): %s", name, exc)

    async def on_disconnect() -> None:
        if client.is_closed or client.is_draining:
            return  # our own shutdown
        logger.warning("NATS: %s disconnected from %s; reconnecting", name, safe_url)

    async def on_reconnect() -> None:
        logger.info("NATS: %s reconnected to %s", name, safe_url)

    options: dict[str, object] = {}
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if tls is not None:
        try:
            options["tls"] = tls.context()
        except (OSError, ssl.SSLError) as exc:
            raise BusUnavailable(f"NATS TLS files: {exc}") from None
        if tls.hostname:
            options["tls_hostname"] = tls.hostname
    try:
        await client.connect(
            url,
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            user_credentials=str(credentials) if credentials else None,
            nkeys_seed=str(nkey_seed) if nkey_seed else None,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            allow_reconnect=True,
            **options,  # type: ignore[arg-type]
        )
    except _Refused:
        await _abandon(client)
        raise
    except Exception as exc:  # nats raises several unrelated types for "cannot connect"
        await _abandon(client)
        raise _Refused(exc) from None
    connected = True
    return client


async def _abandon(client: Client) -> None:
    # Bounded: closing a client whose TLS handshake failed can wait for a transport that never finishes.
    with anyio.move_on_after(2, shield=True):
        try:
            await client.close()
        except Exception as exc:  # a half-made client may fail to close; nothing is left to release then
            logger.debug("closing a refused NATS client: %s", exc)
