"""Reading the event log: by stream, by position, up to a point in time; old payloads upcast on the way out.

Guarantees:
- Every stored payload is brought to the current schema of its type before it is decoded (`upcast`): upcasters
  run in version order, one step at a time, so a v1 payload read today goes v1 -> v2 -> ... -> current.
- Reads stream rows from the server in chunks (bounded memory), in position order.
- A row that cannot be decoded even after upcasting raises `UnreadableEvent` naming its position: the log is
  append-only and must stay readable, so this is a bug to fix with an upcaster, never something to skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from api.events import EVENT_ADAPTER, Event
from store import tables

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

# The schema version new events of each type are written with. Types not listed are at version 1.
CURRENT_VERSIONS: dict[str, int] = {"PlacementDecided": 2}


def _placement_decided_v1_to_v2(payload: Payload) -> Payload:
    """v1 decisions predate failover roles and per-replica reservations: every share was active, and the
    reservation size was not recorded (0: the next decision records it)."""
    shares = [{**share, "role": share.get("role", "active")} for share in payload.get("shares", [])]
    return {"replica_gpus": 0, "replica_cpu_m": 0, "replica_memory_bytes": 0, **payload, "shares": shares}


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("PlacementDecided", 1): _placement_decided_v1_to_v2,
}


class UnreadableEvent(Exception):
    """A stored event does not decode, even after upcasting."""


@dataclass(frozen=True)
class StoredEvent:
    position: int
    stream_id: str
    stream_version: int
    recorded_at: datetime
    metadata: Mapping[str, Any]
    event: Event


def upcast(
    event_type: str, version: int, payload: Payload, upcasters: Mapping[tuple[str, int], Upcaster] = UPCASTERS
) -> Payload:
    current = CURRENT_VERSIONS.get(event_type, 1)
    while version < current:
        step = upcasters.get((event_type, version))
        if step is None:
            raise UnreadableEvent(f"no upcaster for {event_type} v{version} (current is v{current})")
        payload = step(payload)
        version += 1
    return payload


_ENVELOPE = ("event_id", "type", "schema_version", "cluster")


def decode_row(row: Mapping[str, Any]) -> Event:
    # Payloads recorded from the wire may still carry the envelope; the columns are authoritative.
    payload = {k: v for k, v in row["payload"].items() if k not in _ENVELOPE}
    payload = upcast(row["type"], int(row["schema_version"]), payload)
    data = {
        **payload,
        "event_id": row["event_id"],
        "type": row["type"],
        "schema_version": CURRENT_VERSIONS.get(row["type"], 1),
        "cluster": row["cluster"],
    }
    try:
        return EVENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise UnreadableEvent(f"event at position {row['position']} ({row['type']}): {exc.errors()[0]['msg']}") from exc


def _query(
    *,
    after: int = 0,
    until_position: int | None = None,
    until: datetime | None = None,
    since: datetime | None = None,
    stream_ids: list[str] | None = None,
    stream_prefix: str | None = None,
    types: list[str] | None = None,
) -> Select[Any]:
    e = tables.events
    query = select(e).where(e.c.position > after).order_by(e.c.position)
    if until_position is not None:
        query = query.where(e.c.position <= until_position)
    if until is not None:
        query = query.where(e.c.recorded_at <= until)
    if since is not None:
        query = query.where(e.c.recorded_at >= since)
    if stream_ids is not None:
        query = query.where(e.c.stream_id.in_(stream_ids))
    if stream_prefix is not None:
        query = query.where(e.c.stream_id.startswith(stream_prefix, autoescape=True))
    if types is not None:
        query = query.where(e.c.type.in_(types))
    return query


async def read(conn: AsyncConnection, *, chunk: int = 5000, **filters: Any) -> AsyncIterator[StoredEvent]:
    """Events matching the filters (see `_query`), in position order, streamed from the server."""
    result = await conn.stream(_query(**filters).execution_options(yield_per=chunk))
    async for row in result.mappings():
        yield StoredEvent(
            position=row["position"],
            stream_id=row["stream_id"],
            stream_version=row["stream_version"],
            recorded_at=row["recorded_at"],
            metadata=row["metadata"],
            event=decode_row(row),
        )
