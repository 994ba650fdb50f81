"""Leader election among planners: a Postgres session advisory lock, and an epoch per term.

Guarantees:
- At most one planner holds the lock at a time; whoever holds it appends a new row to ``planner_epochs`` and plans
  with that epoch. Every planning transaction re-checks that its epoch is the newest (planner.handle), so even a
  leader that lost its lock without noticing cannot commit after its successor began.
- The lock lives on a dedicated connection; if that connection dies, Postgres releases the lock and a standby
  takes over; `Lease.check` notices the loss and the service stops planning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store import tables
from store.errors import StoreError, TransientStoreError, translated

logger = logging.getLogger(__name__)

LEADER_LOCK = 0x4C4C4D4F51


class LeaseLost(Exception):
    """The leader's lock connection failed: another planner may lead now."""


@dataclass
class Lease:
    connection: AsyncConnection
    epoch: int
    holder: str

    async def check(self) -> None:
        try:
            with translated("leader lease check"):
                held = await self.connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                        "AND objid = :k AND granted"
                    ),
                    {"k": LEADER_LOCK & 0xFFFFFFFF},
                )
                await self.connection.commit()
        except StoreError as exc:
            raise LeaseLost(str(exc)) from exc
        if not held:
            raise LeaseLost("advisory lock no longer held")

    async def release(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.connection.close()
            except Exception:  # the connection may already be broken; closing is best effort
                logger.debug("closing the leader connection failed", exc_info=True)


async def campaign(engine: AsyncEngine, *, holder: str, retry_interval: float = 1.0) -> Lease:
    """Wait until this planner holds the leader lock; return its lease with a fresh epoch."""
    announced = False
    while True:
        conn: AsyncConnection | None = None
        try:
            with translated("leader election"):
                conn = await engine.connect()
                got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK})
                await conn.commit()
                if got:
                    async with engine.begin() as tx:
                        epoch = await tx.scalar(
                            insert(tables.planner_epochs).values(holder=holder).returning(tables.planner_epochs.c.epoch)
                        )
                    logger.info("planner %s leads with epoch %s", holder, epoch)
                    lease, conn = Lease(conn, int(epoch or 0), holder), None
                    return lease
        except TransientStoreError as exc:
            logger.warning("leader election: %s (retrying)", exc)
        finally:
            # Not leading (or cancelled half-way): give the connection, and with it any lock, back.
            if conn is not None:
                with anyio.CancelScope(shield=True):
                    await conn.close()
        if not announced:
            logger.info("planner %s is standing by: another planner leads", holder)
            announced = True
        await anyio.sleep(retry_interval)
