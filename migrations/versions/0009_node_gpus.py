"""report_node_gpus: the GPU capacity rule per node (the per-node grid of the dashboard)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

`report_gpu_capacity` (0005) sums, per cluster and GPU product, what the planner's capacity rule says of each node.
This view is the same rule stopped one step earlier: one row per GPU node with its allocatable, allocated,
reserved and free GPUs and whether it counts at all. It is built from 0005's own SQL text (its CTEs up to
`per_node`, with the node's name added), so the two views cannot disagree: summing this view's usable nodes by
cluster and product gives `report_gpu_capacity` row for row (tests/integration/test_dashboard_store.py).
"""

from __future__ import annotations

import importlib

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

_RULE = importlib.import_module("migrations.versions.0005_one_capacity_rule").GPU_CAPACITY
_CTES, _, _ = _RULE.partition("\n    SELECT cluster, gpu_product, round(")
assert "per_node AS" in _CTES, "0005's text changed: this view is built from it"
_PER_NODE = _CTES.replace("SELECT n.cluster, n.gpu_product,", "SELECT n.cluster, n.name AS node, n.gpu_product,", 1)
assert _PER_NODE != _CTES

NODE_GPUS = f"""{_PER_NODE}
    SELECT cluster, node, gpu_product, round(gpu_memory_bytes / 1073741824.0, 1) AS gpu_memory_gib,
           gpu_allocatable AS allocatable, allocated::bigint AS allocated, reserved::bigint AS reserved,
           greatest(gpu_allocatable - allocated - reserved, 0)::bigint AS free, usable
    FROM per_node
    ORDER BY cluster COLLATE "C", gpu_product COLLATE "C", node COLLATE "C"
"""


def upgrade() -> None:
    op.execute(f"CREATE VIEW report_node_gpus AS {NODE_GPUS}")


def downgrade() -> None:
    op.execute("DROP VIEW report_node_gpus")
