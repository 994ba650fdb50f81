"""Schema management through alembic only: upgrade, downgrade, and the revision check at start-up.

Guarantees: nothing else in the code creates or alters tables; `require_current` refuses to run components
against a database that is not at the head revision, with a message saying which command fixes it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from store.errors import SchemaNotReady, translated

SCRIPT_LOCATION = str(Path(migrations.__file__).parent)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory(SCRIPT_LOCATION).get_current_head()
    if head is None:  # pragma: no cover - the repository always ships migrations
        raise SchemaNotReady("no migrations found")
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda cfg: command.upgrade(cfg, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, lambda cfg: command.downgrade(cfg, revision))


MIGRATION_LOCK = 0x4C4C4D4F52  # several planners starting at once migrate one after another


async def _run(engine: AsyncEngine, action: object) -> None:
    def work(connection: Connection) -> None:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = connection
        action(cfg)  # type: ignore[operator]

    with translated("migrate"):
        async with engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
            await conn.run_sync(work)


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    with translated("read schema revision"):
        async with engine.connect() as conn:
            return await conn.run_sync(read)


async def require_current(engine: AsyncEngine) -> None:
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        raise SchemaNotReady(
            f"database schema is at {current or 'nothing'}, this version needs {head}: run `llm-operator migrate`"
        )
