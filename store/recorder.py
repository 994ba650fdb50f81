"""The recorder: the only place SQL runs for writes to the event log, projections and bookkeeping tables.

Guarantees:
- `lock_writers` takes a transaction-scoped advisory lock; every writing transaction takes it first, so event
  positions are assigned in commit order and a reader tailing by position never skips a row.
- `append` is idempotent: events whose ``event_id`` is already stored (or repeated within the batch) are dropped
  and consume no stream version; new events get consecutive versions per stream.
- `apply_ops` executes fold operations in order, batching consecutive upserts on one table into one statement.
- All functions take the caller's connection: the caller owns the transaction, so events, projections, consumer
  position, outbox and dead letters commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, delete, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from store import tables
from store.events import (
    ApplyReported,
    ClusterHealthChanged,
    ClusterHeartbeat,
    ClusterJoined,
    ClusterLabelsChanged,
    Event,
    PlacementDecided,
    PlanIssued,
    ResourceDeleted,
    ResourceObserved,
    ResyncCompleted,
    stream_of,
)
from store.projections import Delete, DeleteMissing, Op, Update, Upsert

WRITERS_LOCK = 0x4C4C4D4F50  # "LLMOP": one lock for all writers of the event log
_TABLES: dict[str, Table] = {t.name: t for t in tables.metadata.tables.values()}


@dataclass(frozen=True)
class Recorded:
    event: Event
    position: int
    stream_id: str
    stream_version: int


async def lock_writers(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITERS_LOCK})


def occurred_at(event: Event) -> datetime:
    match event:
        case ResourceObserved() | ResourceDeleted() | ResyncCompleted():
            return event.observed_at
        case ClusterHeartbeat():
            return event.sent_at
        case ApplyReported():
            return event.finished_at
        case PlacementDecided():
            return event.decided_at
        case ClusterJoined() | ClusterLabelsChanged() | ClusterHealthChanged() | PlanIssued():
            return event.at
    raise TypeError(f"no time for {type(event).__name__}")


def payload_of(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude={"event_id", "type", "schema_version", "cluster"})


async def append(conn: AsyncConnection, items: Sequence[tuple[Event, dict[str, Any]]]) -> list[Recorded]:
    """Append (event, metadata) pairs not yet stored; return what was new, in order, with positions."""
    if not items:
        return []
    ids = list({e.event_id for e, _ in items})
    known = set(
        (await conn.execute(select(tables.events.c.event_id).where(tables.events.c.event_id.in_(ids)))).scalars()
    )
    fresh: list[tuple[Event, dict[str, Any], str]] = []
    for event, meta in items:
        if event.event_id in known:
            continue
        known.add(event.event_id)
        fresh.append((event, meta, stream_of(event)))
    if not fresh:
        return []
    streams = list({s for _, _, s in fresh})
    current = dict(
        (
            await conn.execute(
                select(tables.events.c.stream_id, func.max(tables.events.c.stream_version))
                .where(tables.events.c.stream_id.in_(streams))
                .group_by(tables.events.c.stream_id)
            )
        ).all()
    )
    rows = []
    versions: list[int] = []
    for event, meta, stream in fresh:
        version = current.get(stream, 0) + 1
        current[stream] = version
        versions.append(version)
        rows.append(
            {
                "event_id": event.event_id,
                "stream_id": stream,
                "stream_version": version,
                "type": event.type,
                "schema_version": event.schema_version,
                "cluster": event.cluster,
                "payload": payload_of(event),
                "metadata": meta,
                "occurred_at": occurred_at(event),
            }
        )
    result = await conn.execute(
        pg_insert(tables.events).returning(
            tables.events.c.event_id, tables.events.c.position, sort_by_parameter_order=True
        ),
        rows,
    )
    positions = [p for _, p in result.all()]
    return [
        Recorded(event, position, stream, version)
        for (event, _, stream), position, version in zip(fresh, positions, versions, strict=True)
    ]


async def apply_ops(conn: AsyncConnection, ops: Iterable[Op]) -> None:
    """Execute fold operations in order; consecutive upserts on one table with one column set go together."""
    pending: list[Upsert] = []

    async def flush() -> None:
        if pending:
            await _upsert_many(conn, pending)
            pending.clear()

    for op in ops:
        if isinstance(op, Upsert):
            if pending and (pending[0].table != op.table or pending[0].values.keys() != op.values.keys()):
                await flush()
            pending.append(op)
            continue
        await flush()
        table = _TABLES[op.table]
        match op:
            case Update():
                await conn.execute(update(table).where(_eq(table, op.where)).values(op.values))
            case Delete():
                await conn.execute(delete(table).where(_eq(table, op.where)))
            case DeleteMissing():
                await conn.execute(delete(table).where(_eq(table, op.where), table.c[op.column].not_in(list(op.keep))))
    await flush()


def _eq(table: Table, where: dict[str, Any]) -> Any:
    return and_(*(table.c[k] == v for k, v in where.items()))


async def _upsert_many(conn: AsyncConnection, ops: list[Upsert]) -> None:
    table = _TABLES[ops[0].table]
    # Within one statement a key may appear once (ON CONFLICT cannot touch a row twice): the last upsert wins,
    # which is what applying them one by one would leave.
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for op in ops:
        merged[tuple(op.key.values())] = {**op.key, **op.values}
    rows = list(merged.values())
    key_columns = list(ops[0].key)
    value_columns = list(ops[0].values)
    stmt = pg_insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=key_columns,
        set_={c: stmt.excluded[c] for c in value_columns},
    )
    await conn.execute(stmt, rows)


# --------------------------------------------------------------------------------------- consumer bookkeeping


async def consumer_position(conn: AsyncConnection, consumer: str) -> int:
    found = await conn.scalar(
        select(tables.consumer_positions.c.stream_sequence).where(tables.consumer_positions.c.consumer == consumer)
    )
    return int(found or 0)


async def record_position(conn: AsyncConnection, consumer: str, stream_sequence: int) -> None:
    stmt = pg_insert(tables.consumer_positions).values(consumer=consumer, stream_sequence=stream_sequence)
    stmt = stmt.on_conflict_do_update(
        index_elements=["consumer"],
        set_={
            "stream_sequence": func.greatest(
                tables.consumer_positions.c.stream_sequence, stmt.excluded.stream_sequence
            ),
            "updated_at": func.now(),
        },
    )
    await conn.execute(stmt)


async def dead_letter(
    conn: AsyncConnection, *, consumer: str, subject: str, stream_sequence: int | None, reason: str, raw: bytes
) -> None:
    stmt = pg_insert(tables.dead_letters).values(
        consumer=consumer, subject=subject, stream_sequence=stream_sequence, reason=reason[:4000], raw=raw
    )
    await conn.execute(stmt.on_conflict_do_nothing())


# ------------------------------------------------------------------------------------------------------ outbox


async def outbox_put(conn: AsyncConnection, *, plan_id: str, subject: str, payload: bytes) -> None:
    stmt = pg_insert(tables.outbox).values(plan_id=plan_id, subject=subject, payload=payload)
    await conn.execute(stmt.on_conflict_do_nothing(index_elements=["plan_id"]))


async def outbox_pending(conn: AsyncConnection, limit: int = 500) -> list[tuple[int, str, str, bytes]]:
    rows = await conn.execute(
        select(tables.outbox.c.id, tables.outbox.c.plan_id, tables.outbox.c.subject, tables.outbox.c.payload)
        .where(tables.outbox.c.sent_at.is_(None))
        .order_by(tables.outbox.c.id)
        .limit(limit)
    )
    return [(int(i), str(p), str(s), bytes(b)) for i, p, s, b in rows]


async def outbox_mark_sent(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(
            update(tables.outbox).where(tables.outbox.c.id.in_(list(ids))).values(sent_at=literal_column("now()"))
        )


# ------------------------------------------------------------------------------------------- cluster heartbeats


async def touch_heartbeat(conn: AsyncConnection, cluster: str, at: datetime) -> None:
    """Heartbeats are volatile: they move `last_heartbeat_at` forward and are not logged."""
    await conn.execute(
        update(tables.clusters)
        .where(tables.clusters.c.name == cluster)
        .values(last_heartbeat_at=func.greatest(func.coalesce(tables.clusters.c.last_heartbeat_at, at), at))
    )
