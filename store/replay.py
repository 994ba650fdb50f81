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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store import recorder, retention, tables
from store.projections import Delete, DeleteMissing, Op, Update, Upsert, fold
from store.reader import decode_row

_SUPERSEDABLE = ("ResourceObserved", "ResourceDeleted")


def _latest_per_object(until: datetime | None) -> Any:
    """Events in position order, keeping for each object only its last observation or deletion.

    The last event per object comes from one walk of the (object_key, position) index (DISTINCT ON); every other
    event (decisions, plans, cluster health, resyncs) is kept.
    """
    window = "AND recorded_at <= :until" if until is not None else ""
    # Positions first (an index-only walk), whole rows only for the winners: most observations are superseded and
    # their payloads are never read.
    query = text(f"""
        WITH latest AS (
            SELECT DISTINCT ON (object_key) position FROM events
            WHERE object_key IS NOT NULL {window}
            ORDER BY object_key, position DESC
        )
        SELECT * FROM (
            SELECT * FROM events WHERE object_key IS NULL {window}
            UNION ALL
            SELECT events.* FROM events JOIN latest USING (position)
        ) merged ORDER BY position
    """)
    return query.bindparams(until=until) if until is not None else query


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
    conn: AsyncConnection, *, until: datetime | None, chunk: int, sink: Callable[[list[Op]], Any]
) -> int:
    folded = 0
    result = await conn.stream(_latest_per_object(until).execution_options(yield_per=chunk))
    async for rows in result.mappings().partitions(chunk):
        ops: list[Op] = []
        for row in rows:
            ops.extend(fold(decode_row(dict(row))))
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


# ------------------------------------------------------------------------------------------------ in memory


Row = dict[str, Any]


@dataclass
class MemoryTable:
    table: Table
    rows: dict[tuple[Any, ...], Row] = field(default_factory=dict)

    @property
    def key_columns(self) -> list[str]:
        return [c.name for c in self.table.primary_key.columns]

    def key_of(self, values: dict[str, Any]) -> tuple[Any, ...] | None:
        if all(k in values for k in self.key_columns):
            return tuple(values[k] for k in self.key_columns)
        return None

    def matching(self, where: dict[str, Any]) -> list[tuple[Any, ...]]:
        key = self.key_of(where)
        candidates = [key] if key is not None and key in self.rows else ([] if key is not None else list(self.rows))
        return [k for k in candidates if all(self.rows[k].get(c) == v for c, v in where.items())]

    def defaults(self) -> Row:
        out: Row = {}
        for column in self.table.columns:
            default = column.server_default
            arg = getattr(default, "arg", None)
            out[column.name] = int(arg) if isinstance(arg, str) and arg.isdigit() else None
        return out


class MemoryTables:
    """The projection tables as dictionaries, updated by the same fold operations as the database."""

    def __init__(self) -> None:
        self.tables = {t.name: MemoryTable(t) for t in tables.PROJECTION_TABLES}

    def apply(self, ops: Iterable[Op]) -> None:
        for op in ops:
            table = self.tables[op.table]
            match op:
                case Upsert():
                    key = tuple(op.key[k] for k in table.key_columns)
                    row = table.rows.get(key)
                    if row is None:
                        table.rows[key] = {**table.defaults(), **op.key, **op.values}
                    else:
                        row.update(op.values)
                case Update():
                    for key in table.matching(op.where):
                        table.rows[key].update(op.values)
                case Delete():
                    for key in table.matching(op.where):
                        del table.rows[key]
                case DeleteMissing():
                    keep = set(op.keep)
                    for key in table.matching(op.where):
                        if table.rows[key].get(op.column) not in keep:
                            del table.rows[key]

    def rows(self, name: str) -> list[Row]:
        return [self.tables[name].rows[k] for k in sorted(self.tables[name].rows, key=str)]


async def as_of(conn: AsyncConnection, until: datetime, *, chunk: int = 5000) -> MemoryTables:
    memory = MemoryTables()

    async def sink(ops: list[Op]) -> None:
        memory.apply(ops)

    await _stream_ops(conn, until=until, chunk=chunk, sink=sink)
    return memory


async def snapshot(conn: AsyncConnection) -> dict[str, list[Row]]:
    """Every projection row (for comparing a rebuild with the live state), volatile columns left out."""
    out: dict[str, list[Row]] = {}
    for table in tables.PROJECTION_TABLES:
        key = list(table.primary_key.columns)
        rows = (await conn.execute(select(table).order_by(*key))).mappings().all()
        out[table.name] = [{k: v for k, v in r.items() if k != "last_heartbeat_at"} for r in rows]
    return out


__all__ = ["MemoryTables", "ReplayStats", "as_of", "rebuild", "snapshot"]
