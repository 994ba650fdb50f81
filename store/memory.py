"""The projection tables as dictionaries, changed by the same fold operations as the database.

Guarantees: applying the ops `store.projections.fold` returns gives the rows the recorder's writes give in
Postgres (tests/integration/test_store.py compares both on a realistic history), including server defaults for
columns a first upsert leaves out. Pure: no I/O; `store.replay.as_of` and `store.snapshots` fill it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
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

    def __post_init__(self) -> None:
        self.key_columns = tuple(c.name for c in self.table.primary_key.columns)

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


__all__ = ["MemoryTable", "MemoryTables", "Row"]
