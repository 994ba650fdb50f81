"""The database handle every component that needs Postgres is given: an async SQLAlchemy engine.

Guarantees: `Engine` and `Connection` are the types the rest of the code names, so that no package but the store
imports SQLAlchemy; `open_engine` builds the pool the same way everywhere; `describe` never shows a password.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

Engine = AsyncEngine
Connection = AsyncConnection


def open_engine(url: str, *, pool_size: int = 5, max_overflow: int = 5) -> Engine:
    return create_async_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow)


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
