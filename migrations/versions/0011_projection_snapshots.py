"""projection snapshots: the projections copied at a log position (store.snapshots)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

`history --as-of` and the dashboard's "as of" view fold the log up to a time; on a big fleet the whole log takes
tens of seconds. A snapshot is the projections at one position; the fold starts from the newest one recorded
before the time asked for. `projection_snapshots` holds one row per snapshot (tied to the projection tables'
shape by `fingerprint`); `projection_snapshot_tables` one row per kept table, its rows as a JSON array
(compressed by TOAST), so a look that needs a few tables reads only those. Deleting a snapshot deletes its tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "projection_snapshots",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("recorded_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_projection_snapshots"),
    )
    op.create_table(
        "projection_snapshot_tables",
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["position"],
            ["projection_snapshots.position"],
            name="fk_projection_snapshot_tables_position_projection_snapshots",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("position", "name", name="pk_projection_snapshot_tables"),
    )


def downgrade() -> None:
    op.drop_table("projection_snapshot_tables")
    op.drop_table("projection_snapshots")
