"""The recorder: the writes of the event log, the projections and the bookkeeping tables (consumer positions, the
outbox, dead letters).

It is the only writer of the event log and of every projection row while the operator runs. Two other store
modules write, each its own table or moment: `store.epochs` inserts the planner's leadership epochs, and
`store.replay.rebuild` empties the projections and refolds them (through `apply_ops`, under `lock_writers`),
then puts back the clusters' heartbeat times.

Guarantees:
- `lock_writers` takes a transaction-scoped advisory lock; every writing transaction takes it first, so event
  positions are assigned in commit order and a reader tailing by position never skips a row.
- `append` is idempotent: events whose ``event_id`` is already stored (or repeated within the batch) are dropped
  and consume no stream version; new events get consecutive versions per stream. Ids and versions are kept in
  `event_ids` and `event_streams` (the partitioned log cannot hold them unique, migration 0007), written in the
  same transaction as the events; a writer breaking the locking rule fails on them.
- Each event is stored with its retention class (`retention_of`): only observations can ever be pruned.
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
from typing import Any, NamedTuple

from pydantic_core import to_json
from sqlalchemy import Column, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from api.events import (
    ApplyReported,
    ClusterHealthChanged,
    ClusterHeartbeat,
    ClusterJoined,
    ClusterLabelsChanged,
    ClusterNetworkChanged,
    Event,
    LoadObserved,
    PlacementDecided,
    PlanIssued,
    ResourceDeleted,
    ResourceObserved,
    ResyncCompleted,
    ScaleDecided,
    stream_of,
)
from store import sql, tables
from store.errors import DataRefused
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
    ClusterNetworkChanged: "at",
    ClusterHealthChanged: "at",
    PlanIssued: "at",
    LoadObserved: "observed_at",
    ScaleDecided: "decided_at",
}


def occurred_at(event: Event) -> datetime:
    field = _TIME_FIELD.get(type(event))
    if field is None:
        raise TypeError(f"no time for {type(event).__name__}")
    at: datetime = getattr(event, field)
    return at


_ENVELOPE = {"event_id", "type", "schema_version", "cluster"}

OBSERVED_KINDS = frozenset({"Node", "Pod", "Deployment"})
"""Kubernetes objects the watchers report as they are: their events are raw observations. The custom resources
(LLMDeployment, LLMModel) are specs, kept for audit."""


def retention_of(event: Event) -> str:
    """'observation' for raw observations (Nodes, Pods, Deployments, load), which a retention policy may age out;
    'audit' for everything else (specs, decisions, plans, applies, cluster health, resyncs, refusals), kept.

    Resyncs stay audit although they are about observations: replay after a prune must still delete the objects a
    resync found gone, whose last observation a prune keeps (store.retention). Unknown kinds are audit: a new
    kind is never dropped by mistake. Migration 0007 spells the same rule in SQL for the rows it migrated.
    """
    if type(event) is ResourceObserved or type(event) is ResourceDeleted:
        return "observation" if event.kind in OBSERVED_KINDS else "audit"
    if type(event) is LoadObserved:
        return "observation"
    return "audit"


# What a batch needs to know before it is written, in one round trip: which of its event ids are stored already,
# and each of its streams' current version.
_LOOKUP = """
SELECT
    ARRAY(SELECT i.event_id FROM unnest($1::text[]) AS i(event_id)
          WHERE EXISTS (SELECT 1 FROM event_ids e WHERE e.event_id = i.event_id)) AS stored,
    ARRAY(SELECT coalesce((SELECT v.version FROM event_streams v WHERE v.stream_id = s.stream_id), 0)
          FROM unnest($2::text[]) WITH ORDINALITY AS s(stream_id, ord) ORDER BY s.ord) AS versions
"""
# Move each touched stream's version from what the look-up saw to the batch's last, by compare-and-set: a new
# stream is inserted (a concurrent insert fails on pk_event_streams), a known one updated only if still at the
# version seen. The count tells whether every stream moved.
_ADVANCE = """
WITH u AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::integer[]) AS u(stream_id, seen, last)),
moved AS (
    UPDATE event_streams v SET version = u.last FROM u
    WHERE v.stream_id = u.stream_id AND u.seen > 0 AND v.version = u.seen RETURNING 1
), added AS (
    INSERT INTO event_streams (stream_id, version) SELECT stream_id, last FROM u WHERE seen = 0 RETURNING 1
)
SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM added)
"""


class StreamVersionConflict(DataRefused):
    """A stream's version moved between the look-up and the write: a writer did not take the writers' lock."""


# Positions for the new events, taken in batch order (nextval is evaluated row by row in series order; they are
# sorted again in Python, so the guarantee does not rest on that).
_RESERVE = "SELECT nextval(pg_get_serial_sequence('events', 'position')) FROM generate_series(1, $1::integer)"


async def _reserve_positions(conn: AsyncConnection, count: int) -> list[int]:
    return sorted(r[0] for r in await sql.records(conn, _RESERVE, count))


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
    "retention",
)


def object_key(event: Event) -> str | None:
    """The key under which later observations supersede earlier ones (see store.projections)."""
    if type(event) is ResourceObserved or type(event) is ResourceDeleted:
        return f"{event.cluster}/{event.kind}/{event.uid}"
    return None


def payload_json(event: Event) -> str:
    return event.model_dump_json(exclude=_ENVELOPE)


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
    looked_up = (await sql.records(conn, _LOOKUP, list(first), distinct_streams))[0]
    stored = set(looked_up["stored"])
    version = dict(zip(distinct_streams, looked_up["versions"], strict=True))
    seen = dict(version)
    fresh = [index for index in candidates if items[index][0].event_id not in stored]
    if not fresh:
        return []
    positions = await _reserve_positions(conn, len(fresh))

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
                retention_of(event),
            )
        )
        recorded.append(Recorded(event, position, stream, version[stream]))
    driver = await sql.driver(conn)
    await driver.copy_records_to_table("events", columns=EVENT_COLUMNS, records=rows)
    await driver.copy_records_to_table("event_ids", columns=("event_id",), records=[(row[1],) for row in rows])
    touched = [s for s in distinct_streams if version[s] != seen[s]]
    advanced = await sql.value(conn, _ADVANCE, touched, [seen[s] for s in touched], [version[s] for s in touched])
    if advanced != len(touched):
        # The same failure the old unique constraint gave (a DataRefused once translated): never a silent skip.
        raise StreamVersionConflict(
            f"{len(touched) - int(advanced or 0)} stream version(s) moved under this writer "
            "(event_streams compare-and-set failed): a writer broke the writers' lock"
        )
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
        # A None in a where clause means IS NULL (as SQLAlchemy's `==` renders it), so it is not a parameter.
        where = tuple((c, v is None) for c, v in op.where.items())
        matched = {c: v for c, v in op.where.items() if v is not None}
        match op:
            case Update():
                statement = _update_statement(op.table, where, tuple(op.values))
                await sql.execute(conn, statement, *_bound(op.table, op.values), *_bound(op.table, matched))
            case Delete():
                await sql.execute(conn, _delete_statement(op.table, where), *_bound(op.table, matched))
            case DeleteMissing():
                # One array parameter, not one bind per kept value: a resync of a big cluster keeps thousands.
                statement = _delete_statement(op.table, where, keep=op.column)
                await sql.execute(conn, statement, *_bound(op.table, matched), list(op.keep))
    await flush()


def _is_json(table_name: str, column: str) -> bool:
    return isinstance(_TABLES[table_name].c[column].type, JSONB)


def _json_text(value: Any) -> str | None:
    """A JSONB parameter as the driver takes it: JSON text (see store.sql)."""
    return None if value is None else json.dumps(value, default=str)


def _bound(table_name: str, values: dict[str, Any]) -> list[Any]:
    """Parameter values in the dict's order, JSONB ones as JSON text."""
    return [_json_text(v) if _is_json(table_name, k) else v for k, v in values.items()]


def _conditions(where: tuple[tuple[str, bool], ...], first: int) -> list[str]:
    """`column = $n` for each (column, is None) of a where clause, numbered from `first`; `column IS NULL` for
    a None (which then takes no parameter)."""
    out: list[str] = []
    number = first
    for column, is_null in where:
        if is_null:
            out.append(f"{column} IS NULL")
        else:
            out.append(f"{column} = ${number}")
            number += 1
    return out


@lru_cache(maxsize=256)
def _update_statement(table_name: str, where: tuple[tuple[str, bool], ...], values: tuple[str, ...]) -> str:
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(values, 1))
    return f"UPDATE {table_name} SET {sets} WHERE {' AND '.join(_conditions(where, len(values) + 1))}"


@lru_cache(maxsize=256)
def _delete_statement(table_name: str, where: tuple[tuple[str, bool], ...], keep: str | None = None) -> str:
    conditions = _conditions(where, 1)
    if keep is not None:
        conditions.append(f"NOT ({keep} = ANY(${sum(1 for _, is_null in where if not is_null) + 1}::text[]))")
    return f"DELETE FROM {table_name} WHERE {' AND '.join(conditions)}"


def _array_type(column: Column[Any]) -> str:
    # JSON values travel as text and are cast on the server: one array parameter per column.
    kind = column.type
    if isinstance(kind, JSONB):
        return "text"
    return str(kind.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]


@lru_cache(maxsize=256)
def _upsert_statement(table_name: str, keys: tuple[str, ...], values: tuple[str, ...]) -> str:
    table = _TABLES[table_name]
    columns = [*keys, *values]
    arrays = ", ".join(f"${i}::{_array_type(table.c[c])}[]" for i, c in enumerate(columns, 1))
    selects = ", ".join(f"CAST(u.{c} AS jsonb)" if _is_json(table_name, c) else f"u.{c}" for c in columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
    conflict = f"DO UPDATE SET {updates}" if values else "DO NOTHING"
    return (
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
    arrays = [
        [_json_text(r[column]) for r in merged.values()]
        if _is_json(table.name, column)
        else [r[column] for r in merged.values()]
        for column in (*keys, *values)
    ]
    await sql.execute(conn, _upsert_statement(table.name, keys, values), *arrays)


# --------------------------------------------------------------------------------------- consumer bookkeeping


async def epoch_and_position(conn: AsyncConnection, consumer: str) -> tuple[int, int]:
    """The newest planner epoch and `consumer`'s position, in one round trip (a step starts with both)."""
    found = (
        await sql.records(
            conn,
            "SELECT (SELECT coalesce(max(epoch), 0) FROM planner_epochs), "
            "(SELECT stream_sequence FROM consumer_positions WHERE consumer = $1)",
            consumer,
        )
    )[0]
    return int(found[0]), int(found[1] or 0)


async def consumer_position(conn: AsyncConnection, consumer: str) -> int:
    found = await sql.value(conn, "SELECT stream_sequence FROM consumer_positions WHERE consumer = $1", consumer)
    return int(found or 0)


async def record_position(conn: AsyncConnection, consumer: str, stream_sequence: int) -> None:
    await sql.execute(
        conn,
        "INSERT INTO consumer_positions (consumer, stream_sequence) VALUES ($1, $2) ON CONFLICT (consumer) DO UPDATE "
        "SET stream_sequence = greatest(consumer_positions.stream_sequence, EXCLUDED.stream_sequence), "
        "updated_at = now()",
        consumer,
        stream_sequence,
    )


async def reset_position(conn: AsyncConnection, consumer: str, stream_sequence: int) -> None:
    """Set `consumer`'s position back (only after its stream was made again: sequences start over)."""
    await sql.execute(
        conn,
        "INSERT INTO consumer_positions (consumer, stream_sequence) VALUES ($1, $2) ON CONFLICT (consumer) DO UPDATE "
        "SET stream_sequence = EXCLUDED.stream_sequence, updated_at = now()",
        consumer,
        stream_sequence,
    )


async def dead_letter(
    conn: AsyncConnection, *, consumer: str, subject: str, stream_sequence: int | None, reason: str, raw: bytes
) -> None:
    """Keep a refused message as it came (bytea holds any bytes); the reason is made storable text."""
    storable = reason[:4000].replace("\0", "\\u0000").encode("utf-8", "backslashreplace").decode()
    stmt = pg_insert(tables.dead_letters).values(
        consumer=consumer, subject=subject, stream_sequence=stream_sequence, reason=storable, raw=raw
    )
    await conn.execute(stmt.on_conflict_do_nothing())


# ------------------------------------------------------------------------------------------------------ outbox


async def outbox_put_many(conn: AsyncConnection, rows: Sequence[tuple[str, str, bytes]]) -> None:
    """(plan id, subject, payload) rows, ids in this order; a plan already in the outbox is left as it is."""
    if rows:
        await sql.execute(
            conn,
            "INSERT INTO outbox (plan_id, subject, payload) "
            "SELECT p, s, b FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS r(p, s, b, n) "
            "ORDER BY n ON CONFLICT (plan_id) DO NOTHING",
            [p for p, _, _ in rows],
            [s for _, s, _ in rows],
            [b for _, _, b in rows],
        )


class OutboxRow(NamedTuple):
    id: int
    plan_id: str
    subject: str
    payload: bytes


async def outbox_pending(conn: AsyncConnection, limit: int = 500) -> list[OutboxRow]:
    """Rows neither sent nor parked, oldest first."""
    found = await sql.records(
        conn,
        "SELECT id, plan_id, subject, payload FROM outbox WHERE sent_at IS NULL AND parked_reason IS NULL "
        "ORDER BY id LIMIT $1",
        limit,
    )
    return [OutboxRow(int(i), str(p), str(s), bytes(b)) for i, p, s, b in found]


async def outbox_park(conn: AsyncConnection, row_id: int, reason: str) -> None:
    """Give up on a row for good, saying why (it is never sent)."""
    await sql.execute(conn, "UPDATE outbox SET parked_reason = $2 WHERE id = $1", row_id, reason)


async def outbox_mark_sent(conn: AsyncConnection, ids: Sequence[int]) -> None:
    if ids:
        await sql.execute(conn, "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", list(ids))


# ------------------------------------------------------------------------------------------- cluster heartbeats


async def touch_heartbeat(conn: AsyncConnection, cluster: str, at: datetime) -> None:
    """Heartbeats are volatile: they move `last_heartbeat_at` forward and are not logged."""
    await sql.execute(
        conn,
        "UPDATE clusters SET last_heartbeat_at = greatest(coalesce(last_heartbeat_at, $2), $2) WHERE name = $1",
        cluster,
        at,
    )
