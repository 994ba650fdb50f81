"""Replay: rebuild the projections from the log, or fold the log up to a point in time into memory.

Guarantees:
- `rebuild` empties every projection and refolds the whole log in one transaction (holding the writers' lock,
  so no planner step interleaves); afterwards the projections equal what live folding produced; the volatile
  `clusters.last_heartbeat_at` (not logged) is carried over, so a live planner sees no false silence.
- Memory stays bounded: events are streamed from the server in chunks and applied chunk by chunk.
- Superseded observations are skipped: an observation of an object is replaced by any later observation or
  deletion of the same object (full snapshots), so only the last one per object needs folding. This is what makes
  a rebuild of a long log fast; it relies on the `object_key` the recorder stores (`store.recorder.object_key`).
- `as_of` folds the log recorded up to a time into `MemoryTables` (no database writes): the state the operator
  knew at that moment.
- After a prune (store.retention) both still hold for what the log keeps: the last observation of every object
  as of the retention horizon is kept, so a rebuild equals the live projections and `as_of(t)` is exact for t at
  or after the horizon. Before it, nodes, pods and workloads are incomplete: `ReplayStats.observations_kept_from`
  and `store.retention.horizon` say from when observations are complete, for the callers to tell their users.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store import recorder, retention, snapshots, tables
from store.memory import MemoryTables, Row
from store.projections import UNFOLDED_FIELDS, Op, fold
from store.reader import decode_row

_SUPERSEDABLE = ("ResourceObserved", "ResourceDeleted")


def _folded_columns() -> str:
    """The events' columns the fold reads, with the payload fields it never reads left out (decoding them was
    most of a replay's time: store.projections.UNFOLDED_FIELDS)."""
    stripped = " ".join(
        f"WHEN '{kind}' THEN payload" + "".join(f" - '{f}'" for f in fields) for kind, fields in UNFOLDED_FIELDS.items()
    )
    return ", ".join(
        f"CASE type {stripped} ELSE payload END AS payload" if c.name == "payload" else c.name
        for c in tables.events.columns
        if c.name != "metadata"  # who sent an event is not folded either
    )


_FOLDED_COLUMNS = _folded_columns()


def _latest_per_object(until: datetime | None, after: int | None = None) -> Any:
    """Events in position order (after position `after`, recorded up to `until`, when given), keeping for each
    object only its last observation or deletion.

    The last event per object comes from one walk of the (object_key, position) index (DISTINCT ON); every other
    event (decisions, plans, cluster health, resyncs) is kept.
    """
    window = "AND recorded_at <= :until" if until is not None else ""
    if after is not None:
        window += " AND position > :after"
    # Positions first (an index-only walk), whole rows only for the winners: most observations are superseded and
    # their payloads are never read.
    query = text(f"""
        WITH latest AS (
            SELECT DISTINCT ON (object_key) position FROM events
            WHERE object_key IS NOT NULL {window}
            ORDER BY object_key, position DESC
        )
        SELECT {_FOLDED_COLUMNS} FROM (
            SELECT * FROM events WHERE object_key IS NULL {window}
            UNION ALL
            SELECT events.* FROM events JOIN latest USING (position)
        ) merged ORDER BY position
    """)
    params = {k: v for k, v in (("until", until), ("after", after)) if v is not None}
    return query.bindparams(**params) if params else query


@dataclass
class ReplayStats:
    events_in_log: int = 0
    events_folded: int = 0
    seconds: float = 0.0
    observations_kept_from: datetime | None = None
    """Observations recorded before this were pruned (the rebuild used the last one of each object kept)."""

    @property
    def rate(self) -> float:
        return self.events_in_log / self.seconds if self.seconds else 0.0


async def _stream_ops(
    conn: AsyncConnection,
    *,
    until: datetime | None,
    chunk: int,
    sink: Callable[[list[Op]], Any],
    after: int | None = None,
    names: Collection[str] | None = None,
) -> int:
    folded = 0
    result = await conn.stream(_latest_per_object(until, after).execution_options(yield_per=chunk))
    async for rows in result.mappings().partitions(chunk):
        ops: list[Op] = []
        for row in rows:
            ops.extend(fold(decode_row(dict(row)), tables=names))
        folded += len(rows)
        await sink(ops)
    return folded


async def rebuild(conn: AsyncConnection, *, chunk: int = 5000) -> ReplayStats:
    """Drop and refold every projection, inside the caller's transaction."""
    started = time.perf_counter()
    await recorder.lock_writers(conn)
    stats = ReplayStats(
        events_in_log=int(await conn.scalar(select(func.count()).select_from(tables.events)) or 0),
        observations_kept_from=await retention.horizon(conn),
    )
    # Heartbeat times are not in the log: keep them, or a running planner would see every cluster as silent
    # right after the rebuild and fail them over.
    heartbeats = (await conn.execute(select(tables.clusters.c.name, tables.clusters.c.last_heartbeat_at))).all()
    names = ", ".join(t.name for t in tables.PROJECTION_TABLES)
    await conn.execute(text(f"TRUNCATE {names}"))

    # A second connection streams the log while this one writes; both see the same committed events because
    # the writers' lock is held.
    async def sink(ops: list[Op]) -> None:
        await recorder.apply_ops(conn, ops)

    engine = conn.engine
    async with engine.connect() as reader:
        stats.events_folded = await _stream_ops(reader, until=None, chunk=chunk, sink=sink)
    for name, last_heartbeat_at in heartbeats:
        await conn.execute(
            update(tables.clusters).where(tables.clusters.c.name == name).values(last_heartbeat_at=last_heartbeat_at)
        )
    stats.seconds = time.perf_counter() - started
    return stats


async def as_of(
    conn: AsyncConnection,
    until: datetime,
    *,
    names: Collection[str] | None = None,
    chunk: int = 5000,
    from_snapshot: bool = True,
) -> MemoryTables:
    """The projections `names` (default: all) as the log recorded up to `until` folds them: from the newest usable
    projection snapshot (store.snapshots) and the events after it, or from the start (`from_snapshot=False`, or
    none usable)."""
    start = await snapshots.usable(conn, until, names=names) if from_snapshot else None
    memory, after = (MemoryTables(names), None) if start is None else (start[1], start[0])

    async def sink(ops: list[Op]) -> None:
        memory.apply(ops)

    memory.events_folded = await _stream_ops(conn, until=until, chunk=chunk, sink=sink, after=after, names=names)
    memory.snapshot_position = after
    return memory


async def snapshot(conn: AsyncConnection) -> dict[str, list[Row]]:
    """Every projection row (for comparing a rebuild with the live state), volatile columns left out."""
    out: dict[str, list[Row]] = {}
    for table in tables.PROJECTION_TABLES:
        key = list(table.primary_key.columns)
        rows = (await conn.execute(select(table).order_by(*key))).mappings().all()
        out[table.name] = [{k: v for k, v in r.items() if k != "last_heartbeat_at"} for r in rows]
    return out


__all__ = ["MemoryTables", "ReplayStats", "Row", "as_of", "rebuild", "snapshot"]
