"""The database handle every component that needs Postgres is given: an async SQLAlchemy engine.

Guarantees: `Engine` and `Connection` are the types the rest of the code names, so that no package but the store
imports SQLAlchemy; `open_engine` builds the pool the same way everywhere (with TLS when given a `DatabaseTls`:
the server's certificate and host name are verified; with `read_only`, the server refuses every write on its
connections); `describe` never shows a password.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

Engine = AsyncEngine
Connection = AsyncConnection


@dataclass(frozen=True)
class DatabaseTls:
    """TLS to Postgres: the CA that signed the server's certificate, and our client certificate if it wants one."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None)
        if self.cert:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return context


def open_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 5, tls: DatabaseTls | None = None, read_only: bool = False
) -> Engine:
    connect_args: dict[str, object] = {"ssl": tls.context()} if tls is not None else {}
    if read_only:
        # Every transaction on these connections is READ ONLY (the server refuses writes), whatever the role may
        # do: a second wall behind the dashboard's read-only role.
        connect_args["server_settings"] = {"default_transaction_read_only": "on"}
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, connect_args=connect_args
    )


def describe(url_or_engine: str | Engine) -> str:
    """The URL with its password hidden (or a placeholder when it cannot even be parsed)."""
    if isinstance(url_or_engine, AsyncEngine):
        return url_or_engine.url.render_as_string(hide_password=True)
    try:
        return make_url(url_or_engine).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


async def ping(engine: Engine) -> None:
    """Raises the driver's error when the database does not answer."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
