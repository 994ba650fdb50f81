"""Fixed SQL run on the caller's transaction through its own asyncpg connection: the planner's hot path.

Why: through SQLAlchemy Core one statement costs 340–1,000 µs of the planner's CPU on the reference machine
(building the construct and its cache key, the execution context, the result wrapper) against ~80 µs through
the driver, and a planner step runs about 30 statements: the step was mostly that overhead. SQLAlchemy still
owns the engine, the pool, transactions, the schema and every statement off the hot path.

Guarantees:
- Statements run inside the caller's transaction. SQLAlchemy begins it lazily, on its first statement; if none
  ran yet, a no-op runs through SQLAlchemy first, so nothing here is ever autocommitted on its own.
- asyncpg prepares each distinct text once per connection (its statement cache) and binds parameters by position
  with the server's types. JSON/JSONB columns come back as Python values (the SQLAlchemy dialect installs those
  codecs on every connection); JSONB parameters are passed as JSON text.
- Driver errors leave as asyncpg exceptions, which `store.errors.translated` turns into store errors.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_BEGIN = text("SELECT 1")


def like_escape(value: str) -> str:
    """`value` as a literal inside a LIKE pattern with ``ESCAPE '\\'``: its ``%``, ``_`` and ``\\`` match only
    themselves."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, with the transaction begun."""
    # The checked-out connection is an attribute away (`get_raw_connection` would cost a greenlet switch per
    # statement); a connection invalidated inside the transaction raises here as it would on any statement.
    sync = conn.sync_connection
    assert sync is not None, "the connection is not started"
    connection = sync.connection.driver_connection
    assert isinstance(connection, asyncpg.Connection)
    if not connection.is_in_transaction():
        await conn.execute(_BEGIN)  # SQLAlchemy issues its deferred BEGIN before its first statement
    return connection


async def rows(conn: AsyncConnection, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await (await driver(conn)).fetch(sql, *args)]


async def records(conn: AsyncConnection, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows as the driver's records (tuple-like, and indexable by name): for rows that are unpacked at once."""
    return list(await (await driver(conn)).fetch(sql, *args))


async def value(conn: AsyncConnection, sql: str, *args: Any) -> Any:
    return await (await driver(conn)).fetchval(sql, *args)


async def execute(conn: AsyncConnection, sql: str, *args: Any) -> None:
    await (await driver(conn)).execute(sql, *args)


def key_arrays(keys: Any) -> tuple[list[str], list[str], list[str]]:
    """(origin cluster, namespace, name) keys as three parallel arrays, for `unnest($1::text[], $2, $3)`."""
    keys = list(keys)
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
