"""events.object_key: which object an observation is about, so replay can skip superseded snapshots fast

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("events", sa.Column("object_key", sa.Text(), nullable=True))
    # Events written before this revision get their key from the payload, as the recorder now writes it.
    op.execute(
        "UPDATE events SET object_key = cluster || '/' || (payload->>'kind') || '/' || (payload->>'uid') "
        "WHERE type IN ('ResourceObserved', 'ResourceDeleted')"
    )
    op.create_index(
        "ix_events_object_key_position",
        "events",
        ["object_key", "position"],
        unique=False,
        postgresql_where=sa.text("object_key IS NOT NULL"),
    )
    # Decisions, plans and other events that are never superseded: replay reads all of them, by position.
    op.create_index(
        "ix_events_unkeyed_position",
        "events",
        ["position"],
        unique=False,
        postgresql_where=sa.text("object_key IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_events_unkeyed_position", table_name="events", postgresql_where=sa.text("object_key IS NULL"))
    op.drop_index(
        "ix_events_object_key_position", table_name="events", postgresql_where=sa.text("object_key IS NOT NULL")
    )
    op.drop_column("events", "object_key")
