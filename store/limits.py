"""What the projection columns can hold, checked before a fold's rows are written. Pure (reads table metadata).

Why: a value out of a column's range (a GPU count above int4 from a hostile snapshot) makes Postgres refuse the
whole transaction of a planner step; the step then has to be retried message by message (planner/isolate.py).
Checking the fold's rows first refuses just that message, at no cost to its batch.

Guarantees: `problem` names the first integer of an upsert or update that its column (smallint, integer, bigint)
cannot hold, or None. Other types are left to the database (and to the isolation if it refuses).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import BigInteger, Integer, SmallInteger

from store import tables
from store.projections import Op, Update, Upsert

_RANGES: dict[tuple[str, str], tuple[int, int]] = {}
for _table in tables.metadata.tables.values():
    for _column in _table.columns:
        # BigInteger and SmallInteger are Integer subclasses: the most specific test first.
        if isinstance(_column.type, BigInteger):
            _RANGES[(_table.name, _column.name)] = (-(2**63), 2**63 - 1)
        elif isinstance(_column.type, SmallInteger):
            _RANGES[(_table.name, _column.name)] = (-(2**15), 2**15 - 1)
        elif isinstance(_column.type, Integer):
            _RANGES[(_table.name, _column.name)] = (-(2**31), 2**31 - 1)


def problem(ops: Iterable[Op]) -> str | None:
    for op in ops:
        if not isinstance(op, Upsert | Update):
            continue
        for column, value in {**getattr(op, "key", {}), **op.values}.items():
            bounds = _RANGES.get((op.table, column))
            if bounds is not None and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
                return f"{column} = {value} is out of range for {op.table}.{column} ({bounds[0]}..{bounds[1]})"
    return None
