"""what the planner needs to point the origin's Service at the replicas: pod addresses and declared networks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

`pods.pod_ip`: the address of a replica, from the watcher's snapshot (only the operator's own pods carry one).
`clusters.network`: the network a cluster declares with its heartbeat (api.network.ClusterNetwork; NULL:
undeclared), folded from ClusterJoined and ClusterNetworkChanged. Both are projections, rebuilt by replay.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("pods", sa.Column("pod_ip", sa.Text(), nullable=True))
    op.add_column("clusters", sa.Column("network", postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("clusters", "network")
    op.drop_column("pods", "pod_ip")
