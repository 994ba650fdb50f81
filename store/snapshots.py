"""Projection snapshots: the projections copied at a log position, so a look at the past folds only what followed.

`history --as-of` and the dashboard's "as of" view fold the log recorded up to a time (`store.replay.as_of`). On
bench.scale's fleet (10,000 deployments, 124,000 events) the whole fold takes ~18 s. A snapshot is the state at
one position, kept; `as_of(t)` starts from the newest snapshot it may use and folds only the events after it.

Guarantees:
- A snapshot at position P holds exactly the rows that folding the log up to P gives. The live projections are
  written in the same transaction as the events they fold; the copy is made in a REPEATABLE READ transaction whose
  first read happens while another connection holds the writers' lock, so it sees whole steps only, and every
  event up to P. The volatile heartbeat time (not in the log) is left out, as a fold leaves it out.
- `recorded_until` is the database clock once the writers' lock was granted: every event up to P was recorded
  before it. `as_of(t)` uses a snapshot only when t ≥ recorded_until; then the events recorded up to t are exactly
  the snapshot's and those after P recorded up to t, so starting from the snapshot gives the same state as the
  whole fold (tests/integration/test_snapshots.py compares both at every recorded moment).
- `SNAPSHOT_TABLES` are kept, each apart (its rows as a JSON array written by Postgres itself, compressed by
  TOAST), so a look that needs a few tables decodes only those. `plans` and `apply_results` are not kept: nobody
  looks at them as of a moment (their events are the record), and they were most of a copy's time and size. A
  fold that asks for them starts from the beginning of the log.
- A snapshot is tied to the shape of the projection tables (`FINGERPRINT`): one written before a migration
  changed them is never used, and the next thinning removes it.
- Taking one holds the writers' lock only while the copy's database snapshot is taken (milliseconds); the
  planner steps on meanwhile; the copy itself runs in Postgres (~1 s at 10,000 deployments).
- When (`due`, pure): once `every_events` events were recorded since the last snapshot, or `every_seconds` passed
  and anything was recorded. Thinning (`to_drop`, pure): every snapshot of the last hour is kept, then the first
  of each hour for a day, then the first of each day.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store import recorder, tables
from store.memory import MemoryTables, collection_paused

SNAPSHOT_TABLES = tuple(t for t in tables.PROJECTION_TABLES if t.name not in ("plans", "apply_results"))
VOLATILE = {"clusters": ("last_heartbeat_at",)}
"""Columns the log does not carry; a fold leaves them empty, so a snapshot does too."""


def _fingerprint() -> str:
    shape = [(t.name, [(c.name, str(c.type)) for c in t.columns]) for t in SNAPSHOT_TABLES]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]


FINGERPRINT = _fingerprint()
_KEPT = frozenset(t.name for t in SNAPSHOT_TABLES)
_TIME_COLUMNS = {t.name: tuple(c.name for c in t.columns if isinstance(c.type, DateTime)) for t in SNAPSHOT_TABLES}


@dataclass(frozen=True)
class SnapshotInfo:
    position: int
    recorded_until: datetime
    taken_at: datetime
    rows: int
    bytes: int
    """As stored (compressed)."""
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ pure core


def due(*, events_since: int, seconds_since: float | None, every_events: int, every_seconds: float) -> bool:
    """Whether to take a snapshot now: something was recorded since the last one (or there is none yet), and
    either `every_events` were (0: never by count) or `every_seconds` passed."""
    if events_since <= 0:
        return False
    if seconds_since is None:
        return True
    return (every_events > 0 and events_since >= every_events) or seconds_since >= every_seconds


def to_drop(snapshots: Iterable[tuple[int, datetime, str]], *, now: datetime) -> list[int]:
    """Positions of snapshots to remove. Input: (position, taken_at, fingerprint). Removed: those of another table
    shape; older than an hour, all but the first of each hour; older than a day, all but the first of each day."""
    drop: list[int] = []
    kept: set[datetime] = set()
    for position, taken_at, fingerprint in sorted(snapshots):
        if fingerprint != FINGERPRINT:
            drop.append(position)
            continue
        age = now - taken_at
        if age <= timedelta(hours=1):
            continue
        period = taken_at.replace(minute=0, second=0, microsecond=0)
        if age > timedelta(days=1):
            period = period.replace(hour=0)
        if period in kept:
            drop.append(position)
        else:
            kept.add(period)
    return drop


def decode_into(memory: MemoryTables, name: str, state: str) -> None:
    """A table's rows as Postgres' `json_agg` wrote them → table `name` of the in-memory tables a fold continues
    from. Time columns are ISO 8601 text in JSON: they become datetimes again, by column."""
    table = memory.tables[name]
    key_columns = table.key_columns
    times = _TIME_COLUMNS[name]
    # Decoding builds hundreds of thousands of small containers, none of them garbage: collections triggered
    # by the allocations alone doubled the time (measured on bench.scale's 10,000 deployments).
    with collection_paused():
        rows: list[dict[str, Any]] = json.loads(state)
        put = table.put
        for row in rows:
            for column in times:
                value = row[column]
                if value is not None:
                    row[column] = datetime.fromisoformat(value)
            put(tuple(row[k] for k in key_columns), row)


# ------------------------------------------------------------------------------------------------ I/O shell


def _copy_statement(table: Table) -> str:
    """INSERT … SELECT writing one table's rows as a JSON array, inside Postgres: no row crosses the wire."""
    volatile = VOLATILE.get(table.name, ())
    columns = ", ".join(f"NULL AS {c.name}" if c.name in volatile else c.name for c in table.columns)
    return (
        "INSERT INTO projection_snapshot_tables (position, name, rows, state) "
        f"SELECT :p, '{table.name}', count(*), coalesce(json_agg(t), '[]')::text "
        f"FROM (SELECT {columns} FROM {table.name}) t"
    )


_COPIES = [text(_copy_statement(t)) for t in SNAPSHOT_TABLES]
_TAKEN_MEANWHILE = {"23505", "40001"}
"""unique_violation, serialization_failure: what inserting a position another transaction inserted first raises."""


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)


async def take(engine: AsyncEngine) -> SnapshotInfo | None:
    """Copy the projections as they are now into a new snapshot; None when nothing was recorded since the last."""
    started = time.perf_counter()
    async with engine.connect() as locker, engine.connect() as copier:
        await copier.execution_options(isolation_level="REPEATABLE READ")
        await locker.begin()
        await recorder.lock_writers(locker)
        recorded_until = (await locker.execute(text("SELECT clock_timestamp()"))).scalar_one()
        await copier.begin()
        # The first read fixes what this transaction sees: made while the lock is held, it sees whole steps.
        position, isolation = (
            await copier.execute(text("SELECT max(position), current_setting('transaction_isolation') FROM events"))
        ).one()
        await locker.rollback()
        if isolation != "repeatable read":  # every copy must read the same moment as the position
            raise RuntimeError(f"a projection snapshot needs a repeatable-read transaction, got {isolation}")
        latest = (
            await copier.execute(
                text("SELECT max(position) FROM projection_snapshots WHERE fingerprint = :f"), {"f": FINGERPRINT}
            )
        ).scalar_one()
        if position is None or (latest is not None and latest >= position):
            await copier.rollback()
            return None
        try:
            await copier.execute(
                text(
                    "INSERT INTO projection_snapshots (position, recorded_until, fingerprint, rows) "
                    "VALUES (:p, :r, :f, 0)"
                ),
                {"p": position, "r": recorded_until, "f": FINGERPRINT},
            )
        except DBAPIError as exc:
            if _sqlstate(exc) not in _TAKEN_MEANWHILE:
                raise
            # Another taker (the planner, or `store snapshot` by hand) copied this very position meanwhile.
            await copier.rollback()
            return None
        for copy in _COPIES:
            await copier.execute(copy, {"p": position})
        header = (
            await copier.execute(
                text(
                    "UPDATE projection_snapshots SET rows = (SELECT sum(rows) FROM projection_snapshot_tables "
                    "WHERE position = :p) WHERE position = :p RETURNING taken_at, rows"
                ),
                {"p": position},
            )
        ).one()
        await copier.commit()
        stored = await copier.scalar(
            text("SELECT sum(pg_column_size(state)) FROM projection_snapshot_tables WHERE position = :p"),
            {"p": position},
        )
        await copier.rollback()
    return SnapshotInfo(
        position=position,
        recorded_until=recorded_until,
        taken_at=header.taken_at,
        rows=header.rows,
        bytes=int(stored or 0),
        seconds=time.perf_counter() - started,
    )


async def usable(
    conn: AsyncConnection, until: datetime, *, names: Collection[str] | None = None
) -> tuple[int, MemoryTables] | None:
    """The newest snapshot a fold of the tables `names` (default: every projection) up to `until` may start
    from, with its position, those tables decoded. None if there is none, or a table asked for is not kept."""
    wanted = set(names) if names is not None else {t.name for t in tables.PROJECTION_TABLES}
    if not wanted <= _KEPT:
        return None
    position = (
        await conn.execute(
            text("SELECT max(position) FROM projection_snapshots WHERE fingerprint = :f AND recorded_until <= :t"),
            {"f": FINGERPRINT, "t": until},
        )
    ).scalar_one()
    if position is None:
        return None
    memory = MemoryTables(wanted)
    found = await conn.execute(
        text("SELECT name, state FROM projection_snapshot_tables WHERE position = :p AND name = ANY(:n)"),
        {"p": position, "n": sorted(wanted)},
    )
    for name, state in found:
        decode_into(memory, name, state)
    return int(position), memory


async def head(conn: AsyncConnection) -> tuple[int, int | None, datetime | None]:
    """The log's last position, and the last snapshot's position and time (None: no snapshot yet)."""
    row = (
        await conn.execute(
            text(
                "SELECT (SELECT coalesce(max(position), 0) FROM events), s.position, s.taken_at FROM "
                "(SELECT 1) one LEFT JOIN LATERAL (SELECT position, taken_at FROM projection_snapshots "
                "WHERE fingerprint = :f ORDER BY position DESC LIMIT 1) s ON true"
            ),
            {"f": FINGERPRINT},
        )
    ).one()
    return int(row[0]), row[1], row[2]


async def listed(conn: AsyncConnection) -> list[SnapshotInfo]:
    result = await conn.execute(
        text(
            "SELECT s.position, s.recorded_until, s.taken_at, s.rows, "
            "(SELECT coalesce(sum(pg_column_size(t.state)), 0) FROM projection_snapshot_tables t "
            " WHERE t.position = s.position) AS bytes "
            "FROM projection_snapshots s ORDER BY s.position"
        )
    )
    return [
        SnapshotInfo(
            position=r.position, recorded_until=r.recorded_until, taken_at=r.taken_at, rows=r.rows, bytes=r.bytes
        )
        for r in result
    ]


async def thin(conn: AsyncConnection, *, now: datetime) -> int:
    """Remove the snapshots `to_drop` names (their tables go with them); returns how many."""
    existing = (await conn.execute(text("SELECT position, taken_at, fingerprint FROM projection_snapshots"))).all()
    drop: Sequence[int] = to_drop(((r[0], r[1], r[2]) for r in existing), now=now)
    if drop:
        await conn.execute(text("DELETE FROM projection_snapshots WHERE position = ANY(:p)"), {"p": list(drop)})
    return len(drop)


__all__ = [
    "FINGERPRINT",
    "SNAPSHOT_TABLES",
    "SnapshotInfo",
    "decode_into",
    "due",
    "head",
    "listed",
    "take",
    "thin",
    "to_drop",
    "usable",
]
