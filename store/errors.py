"""Store errors: the one boundary where database driver exceptions become the store's own.

Guarantees: code outside `store` never sees SQLAlchemy/asyncpg exceptions from store calls wrapped with
`translated` (including the driver's own exceptions from the COPY the recorder runs directly); it sees
`TransientStoreError` (retry later: connection lost, server restarting, serialization failure) or
`PermanentStoreError` (a bug or a broken schema: retrying will not help), of which `DataRefused` says the data
itself was refused (a value out of a column's range, a character Postgres cannot store, a broken constraint): the
caller can set the data aside and go on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from asyncpg.exceptions._base import DataError as DriverDataError
from sqlalchemy import exc as sa_exc


class StoreError(Exception):
    """Base of the store's errors."""


class TransientStoreError(StoreError):
    """The database could not be reached or asked us to retry."""


class PermanentStoreError(StoreError):
    """The operation cannot succeed by retrying (schema missing, constraint broken by a bug)."""


class DataRefused(PermanentStoreError):
    """The database (or the driver, before sending) refused a value: this data can never be written as it is."""


class SchemaNotReady(PermanentStoreError):
    """The database has not been migrated to the version this code needs."""


# Class 22 (data exception: out of range, untranslatable character, invalid text) and 23 (integrity constraint).
_DATA_SQLSTATE_CLASSES = ("22", "23")
_TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004"}


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Run a block, translating driver exceptions into store errors that name `action`."""
    try:
        yield
    except StoreError:
        raise
    except (OSError, ConnectionError) as exc:
        raise TransientStoreError(f"{action}: database unreachable ({exc})") from exc
    except sa_exc.DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(
            getattr(exc.orig, "__cause__", None), "sqlstate", None
        )
        if (
            exc.connection_invalidated
            or sqlstate in _TRANSIENT_SQLSTATES
            or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
        ):
            raise TransientStoreError(f"{action}: {exc.orig}") from exc
        if sqlstate == "42P01":
            raise SchemaNotReady(f"{action}: the database is not migrated; run `llm-operator migrate`") from exc
        if isinstance(exc.orig, DriverDataError) or str(sqlstate or "")[:2] in _DATA_SQLSTATE_CLASSES:
            raise DataRefused(f"{action}: {exc.orig}") from exc
        raise PermanentStoreError(f"{action}: {exc.orig}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise PermanentStoreError(f"{action}: {exc}") from exc
    # The recorder writes events with the driver's COPY, whose errors SQLAlchemy never sees.
    except DriverDataError as exc:  # a value the driver cannot encode (e.g. out of int4): before InterfaceError
        raise DataRefused(f"{action}: {exc}") from exc
    except asyncpg.InterfaceError as exc:
        raise TransientStoreError(f"{action}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        if isinstance(exc, asyncpg.PostgresConnectionError) or sqlstate in _TRANSIENT_SQLSTATES:
            raise TransientStoreError(f"{action}: {exc}") from exc
        if str(sqlstate or "")[:2] in _DATA_SQLSTATE_CLASSES:
            raise DataRefused(f"{action}: {exc}") from exc
        raise PermanentStoreError(f"{action}: {exc}") from exc
