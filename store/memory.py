"""The projection tables as dictionaries, changed by the same fold operations as the database.

Guarantees: applying the ops `store.projections.fold` returns gives the rows the recorder's writes give in
Postgres (tests/integration/test_store.py compares both on a realistic history), including server defaults for
columns a first upsert leaves out. Pure: no I/O; `store.replay.as_of` and `store.snapshots` fill it.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from store import tables
from store.projections import Delete, DeleteMissing, Op, Update, Upsert

Row = dict[str, Any]


@dataclass
class MemoryTable:
    table: Table
    rows: dict[tuple[Any, ...], Row] = field(default_factory=dict)
    key_columns: tuple[str, ...] = ()
    by_uid: dict[Any, set[tuple[Any, ...]]] | None = None
    """Keys by the object's uid, for tables of Kubernetes objects: a deletion names the uid, not the key, and a scan
    of 10,000 pods per deleted pod made a look at a busy hour take seconds."""
    _defaults: Row = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key_columns = tuple(c.name for c in self.table.primary_key.columns)
        if "uid" in self.table.columns:
            self.by_uid = {}
        for column in self.table.columns:
            arg = getattr(column.server_default, "arg", None)
            self._defaults[column.name] = int(arg) if isinstance(arg, str) and arg.isdigit() else None

    def key_of(self, values: dict[str, Any]) -> tuple[Any, ...] | None:
        if all(k in values for k in self.key_columns):
            return tuple(values[k] for k in self.key_columns)
        return None

    def matching(self, where: dict[str, Any]) -> list[tuple[Any, ...]]:
        key = self.key_of(where)
        if key is not None:
            candidates: Iterable[tuple[Any, ...]] = [key] if key in self.rows else []
        elif self.by_uid is not None and "uid" in where:
            candidates = list(self.by_uid.get(where["uid"], ()))
        else:
            candidates = list(self.rows)
        return [k for k in candidates if all(self.rows[k].get(c) == v for c, v in where.items())]

    def defaults(self) -> Row:
        """A new row's values before its first upsert: the columns' server defaults."""
        return dict(self._defaults)

    def put(self, key: tuple[Any, ...], row: Row) -> None:
        """Add a row that is not there yet."""
        self.rows[key] = row
        if self.by_uid is not None:
            self.by_uid.setdefault(row.get("uid"), set()).add(key)

    def update(self, key: tuple[Any, ...], values: dict[str, Any]) -> None:
        row = self.rows[key]
        if self.by_uid is not None and "uid" in values and values["uid"] != row.get("uid"):
            self._unindex(key, row)
            row.update(values)
            self.by_uid.setdefault(row.get("uid"), set()).add(key)
        else:
            row.update(values)

    def remove(self, key: tuple[Any, ...]) -> None:
        self._unindex(key, self.rows.pop(key))

    def _unindex(self, key: tuple[Any, ...], row: Row) -> None:
        if self.by_uid is not None:
            keys = self.by_uid.get(row.get("uid"))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_uid[row.get("uid")]


class MemoryTables:
    """The projection tables as dictionaries, updated by the same fold operations as the database."""

    def __init__(self, names: Collection[str] | None = None) -> None:
        """All projection tables, or only `names`: ops on the others are skipped (each op touches one table and
        reads no other, so the tables kept are exactly what a fold of all of them would give)."""
        self.tables = {t.name: MemoryTable(t) for t in tables.PROJECTION_TABLES if names is None or t.name in names}
        if names is not None and (unknown := set(names) - set(self.tables)):
            raise ValueError(f"not projection tables: {sorted(unknown)}")
        self.snapshot_position: int | None = None
        """The log position of the projection snapshot this state started from (None: from the start)."""
        self.events_folded = 0
        """Events folded into it (after the snapshot, if any)."""

    def apply(self, ops: Iterable[Op]) -> None:
        for op in ops:
            table = self.tables.get(op.table)
            if table is None:
                continue
            match op:
                case Upsert():
                    key = tuple(op.key[k] for k in table.key_columns)
                    if key in table.rows:
                        table.update(key, op.values)
                    else:
                        table.put(key, {**table.defaults(), **op.key, **op.values})
                case Update():
                    for key in table.matching(op.where):
                        table.update(key, op.values)
                case Delete():
                    for key in table.matching(op.where):
                        table.remove(key)
                case DeleteMissing():
                    keep = set(op.keep)
                    for key in table.matching(op.where):
                        if table.rows[key].get(op.column) not in keep:
                            table.remove(key)

    def rows(self, name: str) -> list[Row]:
        return [self.tables[name].rows[k] for k in sorted(self.tables[name].rows, key=str)]


class _Collector:
    """Pauses of Python's cyclic garbage collector that nest (concurrent requests of one process)."""

    def __init__(self) -> None:
        self.pauses = 0
        self.resume = False

    @contextmanager
    def paused(self) -> Iterator[None]:
        if self.pauses == 0:
            self.resume = gc.isenabled()
            gc.disable()
        self.pauses += 1
        try:
            yield
        finally:
            self.pauses -= 1
            if self.pauses == 0 and self.resume:
                gc.enable()


_COLLECTOR = _Collector()


def collection_paused() -> Any:
    """A context in which the cyclic garbage collector does not run (nesting allowed).

    A folded state of a big fleet is a million small objects (rows decoded from JSON) and holds no reference cycle:
    reference counting frees it. While it is alive, every collection would walk all of it (each look at the past
    paid for several such walks); hold the state inside this context and drop it before leaving.
    """
    return _COLLECTOR.paused()


__all__ = ["MemoryTable", "MemoryTables", "Row", "collection_paused"]
