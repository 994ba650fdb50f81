"""reporting views: GPU capacity, placements, placement history, GPU-hours, churn, time to Ready

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Every view is plain SQL over the projections and the event log, so any SQL client can report on the fleet.
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

VIEWS: dict[str, str] = {
    # Per cluster and GPU product: allocatable GPUs, GPUs requested by running pods, GPUs reserved for planned
    # replicas not yet running, and what is left.
    "report_gpu_capacity": """
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
    """,
    # Where every deployment runs now, with what the target cluster reports.
    "report_current_placements": """
        SELECT d.namespace, d.name, d.origin_cluster, p.cluster, p.role, p.replicas,
               coalesce(w.ready_replicas, 0) AS ready_replicas, p.gpu_type, p.replica_gpus,
               p.replicas * p.replica_gpus AS gpus, b.last_outcome AS outcome, p.planned_at
        FROM placements p
        JOIN deployments d ON d.origin_cluster = p.origin_cluster AND d.namespace = p.namespace AND d.name = p.name
        LEFT JOIN deployment_plans b ON b.origin_cluster = p.origin_cluster AND b.namespace = p.namespace
            AND b.name = p.name
        LEFT JOIN workloads w ON w.cluster = p.cluster AND w.origin_cluster = p.origin_cluster
            AND w.deployment_namespace = p.namespace AND w.deployment_name = p.name
        ORDER BY d.namespace, d.name, p.cluster
    """,
    # Every placement decision ever made, with its outcome and the resulting placement.
    "report_placement_history": """
        SELECT e.position, e.recorded_at, e.payload->>'origin_cluster' AS origin_cluster,
               e.payload->>'namespace' AS namespace, e.payload->>'name' AS name,
               (e.payload->>'generation')::bigint AS generation, e.payload->>'outcome' AS outcome,
               (e.payload->>'desired_replicas')::int AS desired_replicas,
               (SELECT string_agg((s->>'cluster') || '=' || (s->>'replicas')
                                  || CASE WHEN coalesce(s->>'role', 'active') <> 'active'
                                          THEN ' (' || (s->>'role') || ')' ELSE '' END,
                                  ', ' ORDER BY s->>'cluster')
                FROM jsonb_array_elements(e.payload->'shares') s) AS placement,
               e.payload->>'message' AS message, (e.payload->>'epoch')::bigint AS epoch
        FROM events e WHERE e.type = 'PlacementDecided'
    """,
    # Allocated GPU-hours per deployment and day: the GPUs a placement held (running or reserved), integrated
    # from each decision's time (occurred_at: when the planner decided) to the next decision for that deployment.
    "report_gpu_hours": """
        WITH decisions AS (
            SELECT e.payload->>'origin_cluster' AS origin_cluster, e.payload->>'namespace' AS namespace,
                   e.payload->>'name' AS name, e.occurred_at AS start_at,
                   lead(e.occurred_at, 1, now()) OVER (
                       PARTITION BY e.payload->>'origin_cluster', e.payload->>'namespace', e.payload->>'name'
                       ORDER BY e.position) AS end_at,
                   coalesce((e.payload->>'replica_gpus')::int, 0) * coalesce(
                       (SELECT sum((s->>'replicas')::int) FROM jsonb_array_elements(e.payload->'shares') s
                        WHERE coalesce(s->>'role', 'active') <> 'removing'), 0) AS gpus
            FROM events e WHERE e.type = 'PlacementDecided'
        ), per_day AS (
            SELECT d.*, day FROM decisions d,
                 generate_series(date_trunc('day', d.start_at), date_trunc('day', d.end_at), interval '1 day') day
            WHERE d.gpus > 0 AND d.end_at > d.start_at
        )
        SELECT day::date AS day, namespace, name, origin_cluster,
               round(sum(gpus * extract(epoch FROM least(end_at, day + interval '1 day') - greatest(start_at, day))
                         / 3600.0)::numeric, 3) AS gpu_hours
        FROM per_day GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3
    """,
    # Placement churn per deployment and day: decisions, and replicas that appeared in or left a cluster.
    "report_placement_churn": """
        WITH decisions AS (
            SELECT e.recorded_at, e.payload->>'origin_cluster' AS origin_cluster,
                   e.payload->>'namespace' AS namespace, e.payload->>'name' AS name,
                   coalesce((SELECT jsonb_object_agg(s->>'cluster', (s->>'replicas')::int)
                             FROM jsonb_array_elements(e.payload->'shares') s), '{}'::jsonb) AS now_map,
                   coalesce(lag((SELECT jsonb_object_agg(s->>'cluster', (s->>'replicas')::int)
                                 FROM jsonb_array_elements(e.payload->'shares') s)) OVER (
                       PARTITION BY e.payload->>'origin_cluster', e.payload->>'namespace', e.payload->>'name'
                       ORDER BY e.position), '{}'::jsonb) AS before_map
            FROM events e WHERE e.type = 'PlacementDecided'
        ), deltas AS (
            SELECT d.recorded_at, d.origin_cluster, d.namespace, d.name,
                   (SELECT coalesce(sum(greatest(coalesce((d.now_map->>k)::int, 0)
                                                 - coalesce((d.before_map->>k)::int, 0), 0)), 0)
                    FROM jsonb_object_keys(d.now_map || d.before_map) k) AS added,
                   (SELECT coalesce(sum(greatest(coalesce((d.before_map->>k)::int, 0)
                                                 - coalesce((d.now_map->>k)::int, 0), 0)), 0)
                    FROM jsonb_object_keys(d.now_map || d.before_map) k) AS removed
            FROM decisions d
        )
        SELECT recorded_at::date AS day, namespace, name, origin_cluster, count(*) AS decisions,
               sum(added) AS replicas_added, sum(removed) AS replicas_removed
        FROM deltas GROUP BY 1, 2, 3, 4
        ORDER BY 1, 2, 3
    """,
    # From the moment a spec generation was first observed to the first status reporting it Ready.
    "report_time_to_ready": """
        WITH generations AS (
            SELECT cluster AS origin_cluster, payload->>'namespace' AS namespace, payload->>'name' AS name,
                   (payload->>'generation')::bigint AS generation, min(recorded_at) AS applied_at
            FROM events
            WHERE type = 'ResourceObserved' AND payload->>'kind' = 'LLMDeployment'
            GROUP BY 1, 2, 3, 4
        ), ready AS (
            SELECT payload->'plan'->'deployment'->>'origin_cluster' AS origin_cluster,
                   payload->'plan'->'deployment'->>'namespace' AS namespace,
                   payload->'plan'->'deployment'->>'name' AS name,
                   (payload->'plan'->>'generation')::bigint AS generation, recorded_at
            FROM events
            WHERE type = 'PlanIssued' AND payload->'plan'->>'kind' = 'Status'
              AND payload->'plan'->'status'->'conditions' @> '[{"type": "Ready", "status": "True"}]'
        )
        SELECT g.namespace, g.name, g.origin_cluster, g.generation, g.applied_at, r.ready_at,
               round(extract(epoch FROM r.ready_at - g.applied_at)::numeric, 3) AS seconds
        FROM generations g
        LEFT JOIN LATERAL (
            SELECT min(recorded_at) AS ready_at FROM ready
            WHERE ready.origin_cluster = g.origin_cluster AND ready.namespace = g.namespace
              AND ready.name = g.name AND ready.generation >= g.generation AND ready.recorded_at >= g.applied_at
        ) r ON true
        ORDER BY g.applied_at
    """,
}


def upgrade() -> None:
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW IF EXISTS {name}")
