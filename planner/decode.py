"""Wire bytes to a verdict: a validated event the planner may use, or a dead letter with a reason. Pure.

Guarantees:
- Every delivery gets exactly one verdict: `Decoded.event` (then `ops` holds what folding it does) or
  `Decoded.refused` (a reason a person can act on, naming the field at fault).
- An event is refused when it is not JSON of this vocabulary, when it claims another cluster than the subject it
  arrived on, when it is one only the planner records, when its snapshot cannot be folded (a field of the wrong
  type or a quantity out of the grammar: the fold's error is the reason; a number its column cannot hold), or
  when a string in it holds what Postgres text and jsonb cannot store: NUL (U+0000) or a lone UTF-16
  surrogate. Such an event cannot be stored as an event without changing what the cluster said (escaping it
  would make a different string that a later version could collide with); the raw bytes (ASCII JSON, with the
  character still escaped) go to the dead letters unchanged, so nothing is lost. Every other character, control
  characters included, is kept as it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio.lowlevel

from api.events import (
    ClusterHealthChanged,
    ClusterHeartbeat,
    ClusterJoined,
    ClusterLabelsChanged,
    ClusterNetworkChanged,
    Event,
    MalformedEvent,
    PlacementDecided,
    PlanIssued,
    ScaleDecided,
    decode_event,
)
from bus.subjects import Subjects
from store import limits
from store.projections import Op, fold

_PLANNER_ONLY: frozenset[type[Event]] = frozenset(
    {
        ClusterJoined,
        ClusterLabelsChanged,
        ClusterNetworkChanged,
        ClusterHealthChanged,
        PlacementDecided,
        PlanIssued,
        ScaleDecided,
    }
)
# JSON escapes of what Postgres refuses (NUL, surrogates); raw control bytes are not valid JSON and never decode.
# Matching the bytes first keeps the walk over the decoded event off the path of ordinary messages.
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


@dataclass(frozen=True)
class Delivery:
    subject: str
    stream_sequence: int
    data: bytes
    stored_at: datetime | None = None
    """When JetStream stored the message: the time a heartbeat counts from."""


@dataclass(frozen=True)
class Decoded:
    """One delivery decoded, checked and folded: the pure part of a step, which `prepare` does ahead of it."""

    event: Event | None
    """None: the message is refused (`refused` says why) and goes to the dead letters."""
    refused: str | None = None
    ops: Sequence[Op] = ()
    """What folding the event does to the projections (applied only if the event is new)."""
    raw_ok: bool = True
    """The wire bytes can be stored as the event's payload as they are (False: store it re-serialised)."""


def decode_delivery(delivery: Delivery, subjects: Subjects) -> Decoded:
    try:
        event = decode_event(delivery.data)
        _check_origin(event, delivery.subject, subjects)
    except MalformedEvent as exc:
        return Decoded(None, exc.reason)
    raw_ok = True
    if _SUSPECT.search(delivery.data):
        where = unstorable_at(event.model_dump(mode="python"))
        if where is not None:
            return Decoded(None, f"{type(event).__name__} holds {where[1]} at {where[0]}; Postgres cannot store it")
        raw_ok = False  # escaped in a field the model drops, or a literal backslash: store the model's JSON
    if type(event) is ClusterHeartbeat:
        return Decoded(event, None, (), raw_ok)
    try:
        ops = fold(event)
    except Exception as exc:  # a snapshot of the wrong shape (a buggy or hostile agent): the fold cannot read it
        return Decoded(None, f"{type(event).__name__} of {_what(event)} cannot be read: {type(exc).__name__}: {exc}")
    wrong = limits.problem(ops)
    if wrong is not None:
        return Decoded(None, f"{type(event).__name__} of {_what(event)}: {wrong}")
    return Decoded(event, None, ops, raw_ok)


def _what(event: Event) -> str:
    kind = getattr(event, "kind", None)
    name = getattr(event, "name", None)
    return f"{kind} {name}" if kind and name else event.type


async def prepare(deliveries: Sequence[Delivery], subjects: Subjects, *, chunk: int = 64) -> list[Decoded]:
    """`decode_delivery` for each, yielding to the event loop every `chunk` deliveries: the planner prepares the
    next batch while the current step waits on Postgres, and the step's replies must not wait behind a whole
    batch of decoding."""
    out: list[Decoded] = []
    for index, delivery in enumerate(deliveries):
        if index and index % chunk == 0:
            await anyio.lowlevel.checkpoint()
        out.append(decode_delivery(delivery, subjects))
    return out


def unstorable_at(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, what) of the first string (value or key) Postgres text/jsonb cannot hold; None if none."""
    if isinstance(value, str):
        what = _unstorable(value)
        return (path or "<root>", what) if what else None
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key)
            what = _unstorable(key_text)
            if what:
                return (f"{path}.{key_text!r}" if path else repr(key_text), f"{what} in a key")
            found = unstorable_at(item, f"{path}.{key_text}" if path else key_text)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unstorable_at(item, f"{path}[{index}]")
            if found:
                return found
    return None


def _unstorable(text: str) -> str | None:
    if "\0" in text:
        return "a NUL character (U+0000)"
    if any("\ud800" <= c <= "\udfff" for c in text):
        return "a lone UTF-16 surrogate"
    return None


def _check_origin(event: Event, subject: str, subjects: Subjects) -> None:
    if type(event) in _PLANNER_ONLY:
        raise MalformedEvent(f"{event.type} events are recorded by the planner only, not published by clusters")
    claimed = subjects.cluster_of(subject)
    if claimed != event.cluster:
        raise MalformedEvent(f"event says cluster {event.cluster!r} but arrived on {subject!r}")
