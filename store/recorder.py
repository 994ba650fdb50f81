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

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic_core import to_json
from sqlalchemy import Column, Table, and_, delete, func, literal_column, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
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


# Which field holds the time each event happened. Dispatch is on the exact class: `isinstance` against pydantic
# models goes through ABCMeta's Python-level check, which costs more than the rest of this function per event.
_TIME_FIELD: dict[type[Event], str] = {
    ResourceObserved: "observed_at",
    ResourceDeleted: "observed_at",
    ResyncCompleted: "observed_at",
    ClusterHeartbeat: "sent_at",
    ApplyReported: "finished_at",
    PlacementDecided: "decided_at",
    ClusterJoined: "at",
    ClusterLabelsChanged: "at",
    ClusterHealthChanged: "at",
    PlanIssued: "at",
}


def occurred_at(event: Event) -> datetime:
    field = _TIME_FIELD.get(type(event))
    if field is None:
        raise TypeError(f"no time for {type(event).__name__}")
    at: datetime = getattr(event, field)
    return at


_ENVELOPE = {"event_id", "type", "schema_version", "cluster"}

# What a batch needs to know before it is written, in one round trip: which of its event ids are stored already,
# and each of its streams' current version.
_LOOKUP = text("""
SELECT
    ARRAY(SELECT i.event_id FROM unnest(CAST(:event_ids AS text[])) AS i(event_id)
          WHERE EXISTS (SELECT 1 FROM events e WHERE e.event_id = i.event_id)) AS stored,
    ARRAY(SELECT coalesce((SELECT max(e.stream_version) FROM events e WHERE e.stream_id = s.stream_id), 0)
          FROM unnest(CAST(:stream_ids AS text[])) WITH ORDINALITY AS s(stream_id, ord) ORDER BY s.ord) AS versions
""")
# Positions for the new events, taken in batch order (nextval is evaluated row by row in series order; they are
# sorted again in Python, so the guarantee does not rest on that).
_RESERVE = text(
    "SELECT nextval(pg_get_serial_sequence('events', 'position')) FROM generate_series(1, CAST(:count AS integer))"
)
EVENT_COLUMNS = (  # the events table's columns, in the order the log's COPY writes them
    "position",
    "event_id",
    "stream_id",
    "stream_version",
    "type",
    "schema_version",
    "cluster",
    "payload",
    "metadata",
    "occurred_at",
    "object_key",
)


def object_key(event: Event) -> str | None:
    """The key under which later observations supersede earlier ones (see store.projections)."""
    if type(event) is ResourceObserved or type(event) is ResourceDeleted:
        return f"{event.cluster}/{event.kind}/{event.uid}"
    return None


def payload_json(event: Event) -> str:
    return event.model_dump_json(exclude=_ENVELOPE)


def payload_of(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude=_ENVELOPE)


async def append(
    conn: AsyncConnection,
    items: Sequence[tuple[Event, dict[str, Any]]],
    *,
    raw: Sequence[bytes | None] | None = None,
) -> list[Recorded]:
    """Append (event, metadata) pairs not yet stored; return what was new, in order, with positions.

    `raw`, when given, holds the JSON each event was decoded from (None where there is none): it is stored as the
    payload as it is, which saves serialising the event again; readers take the envelope from the columns.

    The caller holds the writers' lock (`lock_writers`), so nothing else writes events between the look-up and the
    write: the versions and positions worked out here are still free when the rows land. Rows are written with
    COPY, which costs the server and the driver far less per row than an INSERT from arrays (no array to build
    and take apart, no sort, no per-element type checks); the unique constraints on event id and (stream,
    version) still hold the line if a caller ever broke the locking rule.
    """
    if not items:
        return []
    # Repeats inside the batch: the first occurrence is the one appended.
    first: dict[str, int] = {}
    for index, (event, _) in enumerate(items):
        first.setdefault(event.event_id, index)
    candidates = list(first.values())
    streams = {index: stream_of(items[index][0]) for index in candidates}
    distinct_streams = list(dict.fromkeys(streams.values()))
    looked_up = (await conn.execute(_LOOKUP, {"event_ids": list(first), "stream_ids": distinct_streams})).one()
    stored = set(looked_up.stored)
    version = dict(zip(distinct_streams, looked_up.versions, strict=True))
    fresh = [index for index in candidates if items[index][0].event_id not in stored]
    if not fresh:
        return []
    positions = sorted((await conn.execute(_RESERVE, {"count": len(fresh)})).scalars())

    raws = raw or [None] * len(items)
    recorded: list[Recorded] = []
    rows: list[tuple[Any, ...]] = []
    for index, position in zip(fresh, positions, strict=True):
        event, metadata = items[index]
        stream = streams[index]
        version[stream] += 1
        raw_json = raws[index]
        rows.append(
            (
                position,
                event.event_id,
                stream,
                version[stream],
                event.type,
                event.schema_version,
                event.cluster,
                raw_json.decode() if raw_json is not None else payload_json(event),
                to_json(metadata).decode(),  # several times faster than json.dumps, same JSON
                occurred_at(event),
                object_key(event),
            )
        )
        recorded.append(Recorded(event, position, stream, version[stream]))
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    await driver.copy_records_to_table("events", columns=EVENT_COLUMNS, records=rows)
    return recorded


async def apply_ops(conn: AsyncConnection, ops: Iterable[Op]) -> None:
    """Execute fold operations with the effect of running them in order.

    Operations on different tables commute, so upserts are held per (table, column set) and written as one
    statement each; they are flushed early only when an update or delete touches their table.
    """
    pending: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[Upsert]] = {}

    async def flush(table_name: str | None = None) -> None:
        for group in [g for g in pending if table_name is None or g[0] == table_name]:
            await _upsert_many(conn, pending.pop(group))

    for op in ops:
        if isinstance(op, Upsert):
            group = (op.table, tuple(op.key), tuple(op.values))
            # An upsert of the same key with other columns must stay ordered after the earlier one.
            if any(g[0] == op.table and g != group for g in pending):
                await flush(op.table)
            pending.setdefault(group, []).append(op)
            continue
        await flush(op.table)
        table = _TABLES[op.table]
        match op:
            case Update():
                await conn.execute(update(table).where(_eq(table, op.where)).values(op.values))
            case Delete():
                await conn.execute(delete(table).where(_eq(table, op.where)))
            case DeleteMissing():
                # One array parameter, not one bind per kept value: a resync of a big cluster keeps thousands.
                keep = text(f"NOT ({op.column} = ANY(CAST(:keep AS text[])))").bindparams(keep=list(op.keep))
                await conn.execute(delete(table).where(_eq(table, op.where), keep))
    await flush()


def _eq(table: Table, where: dict[str, Any]) -> Any:
    return and_(*(table.c[k] == v for k, v in where.items()))


def _array_type(column: Column[Any]) -> str:
    # JSON values travel as text and are cast on the server: one array parameter per column.
    kind = column.type
    if isinstance(kind, JSONB):
        return "text"
    return str(kind.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


@lru_cache(maxsize=256)
def _upsert_statement(table_name: str, keys: tuple[str, ...], values: tuple[str, ...]) -> Any:
    table = _TABLES[table_name]
    columns = [*keys, *values]
    arrays = ", ".join(f"CAST(:c{i} AS {_array_type(table.c[c])}[])" for i, c in enumerate(columns))
    selects = ", ".join(f"CAST(u.{c} AS jsonb)" if isinstance(table.c[c].type, JSONB) else f"u.{c}" for c in columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
    conflict = f"DO UPDATE SET {updates}" if values else "DO NOTHING"
    return text(
        f"INSERT INTO {table_name} ({', '.join(columns)}) SELECT {selects} FROM unnest({arrays}) "
        f"AS u({', '.join(columns)}) ON CONFLICT ({', '.join(keys)}) {conflict}"
    )


async def _upsert_many(conn: AsyncConnection, ops: list[Upsert]) -> None:
    table = _TABLES[ops[0].table]
    # Within one statement a key may appear once (ON CONFLICT cannot touch a row twice): the last upsert wins,
    # which is what applying them one by one would leave.
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for op in ops:
        merged[tuple(op.key.values())] = {**op.key, **op.values}
    keys, values = tuple(ops[0].key), tuple(ops[0].values)
    params: dict[str, list[Any]] = {}
    for i, column in enumerate((*keys, *values)):
        as_json = isinstance(table.c[column].type, JSONB)
        params[f"c{i}"] = [
            (None if row[column] is None else json.dumps(row[column], default=str)) if as_json else row[column]
            for row in merged.values()
        ]
    await conn.execute(_upsert_statement(table.name, keys, values), params)


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


async def outbox_put_many(conn: AsyncConnection, rows: Sequence[tuple[str, str, bytes]]) -> None:
    """(plan id, subject, payload) rows; a plan already in the outbox is left as it is."""
    if rows:
        values = [{"plan_id": p, "subject": s, "payload": b} for p, s, b in rows]
        await conn.execute(pg_insert(tables.outbox).values(values).on_conflict_do_nothing(index_elements=["plan_id"]))


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
