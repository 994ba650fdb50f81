"""Partitions of the event log: created ahead of time, and observations aged out whole by the retention policy.

The log is partitioned by RANGE (retention, recorded_at) (migration 0007): audit events by calendar month,
observations by UTC day, one `events_snapshot` partition and a DEFAULT partition.

Guarantees:
- `ensure_partitions` creates the partitions for the coming days/months; rows that had landed in the DEFAULT
  partition for that range are moved into the new partition in the same transaction (so an insert never fails
  for want of a partition, and creating one later never fails on rows already there).
- `prune` drops whole observation partitions older than the policy keeps, oldest first, at most `max_partitions`
  per call, each in one transaction under the writers' lock. It never touches an audit partition: it only lists
  partitions whose bounds say 'observation'.
- What replay needs survives a prune: before a partition is dropped, the last observation of each object as of
  the partition's end is copied, unchanged (position, times, id), into `events_snapshot`, and snapshot rows it
  supersedes are deleted. Folding the log after a prune therefore gives the same projections as before it, and
  `as_of(t)` is exact for any t at or after the horizon; before it, observations are incomplete (`horizon`).
  Resyncs are audit events, so objects a resync found gone stay gone on replay.
- `event_ids` loses the ids of the dropped rows only; stream versions keep counting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from store import recorder, sql

_BOUND = re.compile(r"FROM \('(\w+)', '([^']+)'\) TO \('\w+', '([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    retention: str
    start: datetime
    end: datetime


def _day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _month(at: datetime) -> datetime:
    return _day(at).replace(day=1)


def _next_month(at: datetime) -> datetime:
    return _month(_month(at) + timedelta(days=32))


def wanted(now: datetime, *, days_ahead: int) -> list[Partition]:
    """The partitions that should exist around `now`: this month and the next for audit; today and
    `days_ahead` days after it for observations."""
    month = _month(now)
    out = [Partition(f"events_audit_{m:%Y%m}", "audit", m, _next_month(m)) for m in (month, _next_month(month))]
    for offset in range(days_ahead + 1):
        day = _day(now) + timedelta(days=offset)
        out.append(Partition(f"events_observation_{day:%Y%m%d}", "observation", day, day + timedelta(days=1)))
    return out


async def partitions(conn: AsyncConnection) -> list[Partition]:
    """The time-bounded partitions of `events` (not the snapshot or default ones), oldest first."""
    found = await sql.records(
        conn,
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass",
    )
    out: list[Partition] = []
    for name, bound in found:
        match = _BOUND.search(str(bound))
        if match is None:
            continue
        retention, start, end = match.groups()
        out.append(Partition(str(name), retention, datetime.fromisoformat(start), datetime.fromisoformat(end)))
    return sorted(out, key=lambda p: (p.start, p.retention))


def _literal(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


async def ensure_partitions(conn: AsyncConnection, *, now: datetime, days_ahead: int = 2) -> list[str]:
    """Create the partitions `wanted` that are missing (in the caller's transaction); their names."""
    await recorder.lock_writers(conn)  # DDL on the log after any writer in flight, never between its statements
    existing = {p.name for p in await partitions(conn)}
    created: list[str] = []
    for part in wanted(now, days_ahead=days_ahead):
        if part.name in existing:
            continue
        lo, hi = _literal(part.start), _literal(part.end)
        # A partition attached next to a DEFAULT one must not match rows the default holds: move them first.
        await sql.execute(conn, f"CREATE TABLE {part.name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        await sql.execute(
            conn,
            f"WITH moved AS (DELETE FROM events_default WHERE retention = $1 AND recorded_at >= $2 "
            f"AND recorded_at < $3 RETURNING *) INSERT INTO {part.name} SELECT * FROM moved",
            part.retention,
            part.start,
            part.end,
        )
        await sql.execute(
            conn,
            f"ALTER TABLE events ATTACH PARTITION {part.name} "
            f"FOR VALUES FROM ('{part.retention}', '{lo}') TO ('{part.retention}', '{hi}')",
        )
        created.append(part.name)
    return created


@dataclass(frozen=True)
class Pruned:
    partition: str
    rows: int
    kept_as_snapshot: int
    kept_from: datetime


async def prune(conn: AsyncConnection, *, now: datetime, keep: timedelta, max_partitions: int = 1) -> list[Pruned]:
    """Drop observation partitions that end at or before `now - keep` (whole UTC days), oldest first.

    Runs in the caller's transaction; takes the writers' lock. Returns what was dropped.
    """
    await recorder.lock_writers(conn)
    cutoff = now - keep
    due = [p for p in await partitions(conn) if p.retention == "observation" and p.end <= cutoff][:max_partitions]
    done: list[Pruned] = []
    for part in due:
        done.append(await _drop(conn, part))
    return done


async def _drop(conn: AsyncConnection, part: Partition) -> Pruned:
    name = part.name
    rows = int(await sql.value(conn, f"SELECT count(*) FROM {name}") or 0)
    # Snapshot rows superseded by an observation in this partition: the newer one is what counts from now on.
    await sql.execute(
        conn,
        f"WITH gone AS (DELETE FROM events_snapshot s WHERE EXISTS (SELECT 1 FROM {name} p "
        f"WHERE p.object_key = s.object_key AND p.position > s.position) RETURNING s.event_id) "
        "DELETE FROM event_ids WHERE event_id IN (SELECT event_id FROM gone)",
    )
    # The last observation of each object as of the partition's end (earlier days are pruned already, or kept
    # and later in position only if this one is superseded there too: the test is on the whole log). A deletion
    # needs no copy: with the earlier observations gone there is nothing left for it to delete.
    columns = ", ".join(c for c in recorder.EVENT_COLUMNS if c != "retention")
    kept = int(
        await sql.value(
            conn,
            f"WITH kept AS (INSERT INTO events ({columns}, recorded_at, retention) "
            f"SELECT {columns}, recorded_at, 'snapshot' FROM {name} p "
            "WHERE p.type = 'ResourceObserved' AND p.object_key IS NOT NULL AND NOT EXISTS ("
            f"  SELECT 1 FROM {name} later WHERE later.object_key = p.object_key AND later.position > p.position"
            ") RETURNING 1) SELECT count(*) FROM kept",
        )
        or 0
    )
    await sql.execute(
        conn,
        f"DELETE FROM event_ids i USING {name} p WHERE i.event_id = p.event_id "
        "AND NOT EXISTS (SELECT 1 FROM events_snapshot s WHERE s.position = p.position)",
    )
    await sql.execute(conn, f"DROP TABLE {name}")
    await sql.execute(
        conn,
        "INSERT INTO event_horizons (retention, kept_from) VALUES ('observation', $1) ON CONFLICT (retention) "
        "DO UPDATE SET kept_from = greatest(event_horizons.kept_from, EXCLUDED.kept_from), pruned_at = now()",
        part.end,
    )
    return Pruned(name, rows, kept, part.end)


async def horizon(conn: AsyncConnection) -> datetime | None:
    """Observations recorded before this time were pruned (None: nothing was ever pruned)."""
    found = await sql.value(conn, "SELECT kept_from FROM event_horizons WHERE retention = 'observation'")
    return found if isinstance(found, datetime) else None


def horizon_note(kept_from: datetime) -> str:
    """What a reader of the log before `kept_from` must be told."""
    return (
        f"observations (nodes, pods, workloads, load) recorded before {kept_from.isoformat()} were pruned by the "
        "retention policy: state before then shows only the last observation of each object kept at pruning, "
        "so nodes, pods, workloads and capacity are incomplete; specs, placements, decisions, plans and applies "
        "are complete"
    )
