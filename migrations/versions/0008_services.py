"""the operator's Services as the watchers see them: the load balancer addresses of the exposed network mode

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

`services`: one row per Service the operator manages (label-selected by the watcher), with the LLMDeployment its
identity labels name, its type, port, node port and ingress addresses (validated endpoint addresses). In a
serving cluster that declares the ``exposed`` network, the origin's EndpointSlices point at those addresses. A
projection, rebuilt by replay.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("cluster", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("deployment_key", sa.Text(), nullable=True),
        sa.Column("service_type", sa.Text(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("node_port", sa.Integer(), nullable=True),
        sa.Column("ingress", postgresql.JSONB(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "namespace", "name", name=op.f("pk_services")),
    )
    op.create_index("ix_services_deployment_key", "services", ["deployment_key"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_services_deployment_key", table_name="services")
    op.drop_table("services")
