"""a plan the bus can never carry is parked in the outbox with its reason, not retried forever

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

The relay used to publish the oldest unsent rows all-or-nothing, so one plan larger than NATS's max_payload held
back every later plan of every cluster. Now such a row keeps `parked_reason` and leaves the set of unsent rows
(the partial index follows), while the rest are sent.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("parked_reason", sa.Text(), nullable=True))
    op.drop_index("ix_outbox_unsent", table_name="outbox")
    op.create_index(
        "ix_outbox_unsent", "outbox", ["id"], postgresql_where=sa.text("sent_at IS NULL AND parked_reason IS NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent", table_name="outbox")
    op.create_index("ix_outbox_unsent", "outbox", ["id"], postgresql_where=sa.text("sent_at IS NULL"))
    op.drop_column("outbox", "parked_reason")
