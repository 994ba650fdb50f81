"""report_gpu_capacity follows the planner's capacity rule, node by node

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Until now the view summed every GPU node of a cluster, NotReady, cordoned and tainted ones included, charged
reservations to the GPU product of the share rather than to the nodes the planner expected, and clamped free GPUs
per cluster; so `status` and `report gpu-capacity` could show GPUs the planner will never use. The view now spells
in SQL the rule of planner/capacity.py (`usable`, `gpu_capacity`):
- a node counts if it is Ready, not cordoned, and every NoSchedule/NoExecute taint on it is tolerated by GPU model
  pods, which tolerate `nvidia.com/gpu` only (api/scheduling.py; the view holds only nodes with GPUs, which only
  GPU replicas are placed on);
- allocated: GPUs requested by pods bound to the node and not terminated;
- reserved: a placement's replicas not yet bound, charged to the nodes the planner expected, in node name order,
  each at most what was expected there less what of the deployment is bound there;
- free: per node max(0, allocatable − allocated − reserved), then summed;
- nodes that do not count are tallied apart (unusable_nodes, unusable_gpus).
tests/integration/test_store.py proves the planner, this view, `status` and `history --as-of` agree. A change of
the rule needs a new migration: this one is a snapshot.
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

GPU_CAPACITY = """
    WITH live AS (
        SELECT cluster, node_name, deployment_key, gpu_request FROM pods
        WHERE node_name IS NOT NULL AND phase NOT IN ('Succeeded', 'Failed')
    ), requested AS (
        SELECT cluster, node_name AS node, sum(gpu_request) AS gpus FROM live GROUP BY cluster, node_name
    ), bound_in_cluster AS (
        SELECT cluster, deployment_key, count(*) AS pods FROM live
        WHERE deployment_key IS NOT NULL GROUP BY cluster, deployment_key
    ), bound_on_node AS (
        SELECT cluster, deployment_key, node_name AS node, count(*) AS pods FROM live
        WHERE deployment_key IS NOT NULL GROUP BY cluster, deployment_key, node_name
    ), expected AS (
        -- Per placement and expected node: the placement's outstanding replicas (not yet bound anywhere in the
        -- cluster) and the room left on that node (expected there, less what is bound there).
        SELECT pl.origin_cluster, pl.namespace, pl.name, pl.cluster, e.key AS node, pl.replica_gpus,
               greatest(pl.replicas - coalesce(bc.pods, 0), 0) AS outstanding,
               greatest(e.value::int - coalesce(bn.pods, 0), 0) AS room
        FROM placements pl
        CROSS JOIN LATERAL jsonb_each_text(pl.nodes) e
        LEFT JOIN bound_in_cluster bc ON bc.cluster = pl.cluster
            AND bc.deployment_key = pl.origin_cluster || '/' || pl.namespace || '/' || pl.name
        LEFT JOIN bound_on_node bn ON bn.cluster = pl.cluster AND bn.deployment_key = bc.deployment_key
            AND bn.node = e.key
        WHERE pl.replicas > 0
    ), charged AS (
        -- Outstanding replicas fill the expected nodes in name order (byte order, as Python sorts).
        SELECT cluster, node,
               replica_gpus * greatest(0, least(room, outstanding - (sum(room) OVER w - room))) AS gpus
        FROM expected
        WINDOW w AS (PARTITION BY origin_cluster, namespace, name, cluster ORDER BY node COLLATE "C"
                     ROWS UNBOUNDED PRECEDING)
    ), reserved AS (
        SELECT cluster, node, sum(gpus) AS gpus FROM charged GROUP BY cluster, node
    ), per_node AS (
        SELECT n.cluster, n.gpu_product, n.gpu_memory_bytes, n.gpu_allocatable,
               n.ready AND n.schedulable AND NOT EXISTS (
                   SELECT 1 FROM jsonb_array_elements(
                       CASE jsonb_typeof(n.taints) WHEN 'array' THEN n.taints ELSE '[]'::jsonb END) t
                   WHERE t->>'effect' IN ('NoSchedule', 'NoExecute')
                     AND t->>'key' IS DISTINCT FROM 'nvidia.com/gpu'
               ) AS usable,
               coalesce(r.gpus, 0) AS allocated, coalesce(s.gpus, 0) AS reserved
        FROM nodes n
        LEFT JOIN requested r ON r.cluster = n.cluster AND r.node = n.name
        LEFT JOIN reserved s ON s.cluster = n.cluster AND s.node = n.name
        WHERE n.gpu_allocatable > 0 AND n.gpu_product IS NOT NULL
    )
    SELECT cluster, gpu_product, round(max(gpu_memory_bytes) / 1073741824.0, 1) AS gpu_memory_gib,
           count(*) FILTER (WHERE usable) AS nodes,
           coalesce(sum(gpu_allocatable) FILTER (WHERE usable), 0)::bigint AS total,
           coalesce(sum(allocated) FILTER (WHERE usable), 0)::bigint AS allocated,
           coalesce(sum(reserved) FILTER (WHERE usable), 0)::bigint AS reserved,
           coalesce(sum(greatest(gpu_allocatable - allocated - reserved, 0)) FILTER (WHERE usable), 0)::bigint
               AS free,
           count(*) FILTER (WHERE NOT usable) AS unusable_nodes,
           coalesce(sum(gpu_allocatable) FILTER (WHERE NOT usable), 0)::bigint AS unusable_gpus
    FROM per_node
    GROUP BY cluster, gpu_product
    ORDER BY cluster COLLATE "C", gpu_product COLLATE "C"
"""

# The view as migration 0002 created it, for downgrade.
GPU_CAPACITY_0002 = """
    WITH node_totals AS (
        SELECT cluster, gpu_product, max(gpu_memory_bytes) AS gpu_memory_bytes, count(*) AS nodes,
               sum(gpu_allocatable) AS total
        FROM nodes WHERE gpu_allocatable > 0 AND gpu_product IS NOT NULL
        GROUP BY cluster, gpu_product
    ), allocated AS (
        SELECT p.cluster, n.gpu_product, sum(p.gpu_request) AS allocated
        FROM pods p JOIN nodes n ON n.cluster = p.cluster AND n.name = p.node_name
        WHERE p.phase NOT IN ('Succeeded', 'Failed') AND p.gpu_request > 0
        GROUP BY p.cluster, n.gpu_product
    ), bound AS (
        SELECT cluster, deployment_key, count(*) AS pods
        FROM pods WHERE node_name IS NOT NULL AND phase NOT IN ('Succeeded', 'Failed')
        GROUP BY cluster, deployment_key
    ), reserved AS (
        SELECT pl.cluster, pl.gpu_type AS gpu_product,
               sum(greatest(pl.replicas - coalesce(b.pods, 0), 0) * pl.replica_gpus) AS reserved
        FROM placements pl
        LEFT JOIN bound b ON b.cluster = pl.cluster
            AND b.deployment_key = pl.origin_cluster || '/' || pl.namespace || '/' || pl.name
        WHERE pl.replicas > 0 AND pl.gpu_type IS NOT NULL
        GROUP BY pl.cluster, pl.gpu_type
    )
    SELECT t.cluster, t.gpu_product, round(t.gpu_memory_bytes / 1073741824.0, 1) AS gpu_memory_gib, t.nodes,
           t.total, coalesce(a.allocated, 0) AS allocated, coalesce(r.reserved, 0) AS reserved,
           greatest(t.total - coalesce(a.allocated, 0) - coalesce(r.reserved, 0), 0) AS free
    FROM node_totals t
    LEFT JOIN allocated a ON a.cluster = t.cluster AND a.gpu_product = t.gpu_product
    LEFT JOIN reserved r ON r.cluster = t.cluster AND r.gpu_product = t.gpu_product
    ORDER BY t.cluster, t.gpu_product
"""


def upgrade() -> None:
    # DROP and CREATE, not CREATE OR REPLACE: the columns change.
    op.execute("DROP VIEW report_gpu_capacity")
    op.execute(f"CREATE VIEW report_gpu_capacity AS {GPU_CAPACITY}")


def downgrade() -> None:
    op.execute("DROP VIEW report_gpu_capacity")
    op.execute(f"CREATE VIEW report_gpu_capacity AS {GPU_CAPACITY_0002}")
