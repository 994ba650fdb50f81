"""Reads of the projections that the planner needs, returned as typed rows (store.rows) or keys.

Guarantees: read-only; every query runs on the caller's connection (`store.sql`: fixed SQL on the driver, the
planner's hot path), so inside the planner's transaction it sees the projections exactly as folded so far in
that transaction. Sets of deployments travel as three parallel arrays (`unnest`), one prepared statement
whatever their number.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from api.keys import DeploymentKey
from store import sql
from store.rows import (
    BoundPodRow,
    ClusterRow,
    DeploymentRow,
    ModelRow,
    NodeRow,
    PlacementRow,
    PlanRow,
    ReplicaRow,
    ServiceRow,
    WorkloadRow,
)

_KEYS = "(SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))"
"""The deployment keys passed as the first three parameters, as a row set for `(a, b, c) IN ...`."""
_LIVE = "phase NOT IN ('Succeeded', 'Failed')"


async def clusters(conn: AsyncConnection) -> list[ClusterRow]:
    return [ClusterRow.of(r) for r in await sql.records(conn, _CLUSTERS)]


_CLUSTERS = f"SELECT {ClusterRow.select()} FROM clusters ORDER BY name"
_NODES = f"SELECT {NodeRow.select()} FROM nodes"


async def nodes(conn: AsyncConnection, clusters: Collection[str] | None = None) -> list[NodeRow]:
    """Every node, or those of `clusters`."""
    if clusters is None:
        found = await sql.records(conn, _NODES + " ORDER BY cluster, name")
    else:
        found = await sql.records(
            conn, _NODES + " WHERE cluster = ANY($1::text[]) ORDER BY cluster, name", sorted(clusters)
        )
    return [NodeRow.of(r) for r in found]


_BOUND_PODS = f"SELECT {BoundPodRow.select()} FROM pods WHERE node_name IS NOT NULL AND {_LIVE}"


async def bound_pods(conn: AsyncConnection, clusters: Collection[str] | None = None) -> list[BoundPodRow]:
    """Pods holding resources on a node: bound and not terminated (all, or those in `clusters`)."""
    if clusters is None:
        found = await sql.records(conn, _BOUND_PODS)
    else:
        found = await sql.records(conn, _BOUND_PODS + " AND cluster = ANY($1::text[])", sorted(clusters))
    return [BoundPodRow.of(r) for r in found]


_PLACEMENTS = f"SELECT {PlacementRow.select()} FROM placements"


async def all_placements(conn: AsyncConnection, clusters: Collection[str] | None = None) -> list[PlacementRow]:
    """Every placement, or those in `clusters`."""
    order = " ORDER BY origin_cluster, namespace, name, cluster"
    if clusters is None:
        found = await sql.records(conn, _PLACEMENTS + order)
    else:
        found = await sql.records(conn, _PLACEMENTS + " WHERE cluster = ANY($1::text[])" + order, sorted(clusters))
    return [PlacementRow.of(r) for r in found]


_DEPLOYMENTS = (
    "SELECT d.origin_cluster, d.namespace, d.name, d.uid, d.generation, d.spec, d.deleting, d.has_finalizer, "
    "d.created_at, coalesce(b.plan_sequence, 0), b.last_status, b.last_outcome "
    "FROM deployments d LEFT JOIN deployment_plans b "
    "ON b.origin_cluster = d.origin_cluster AND b.namespace = d.namespace AND b.name = d.name "
    f"WHERE (d.origin_cluster, d.namespace, d.name) IN {_KEYS}"
)
assert DeploymentRow.COLUMNS[-3:] == ("plan_sequence", "last_status", "last_outcome")


async def deployments(conn: AsyncConnection, keys: Iterable[DeploymentKey]) -> dict[DeploymentKey, DeploymentRow]:
    """Deployment rows with the planner's bookkeeping (plan_sequence, last_status, last_outcome) joined in."""
    keys = list(keys)
    if not keys:
        return {}
    found = [DeploymentRow.of(r) for r in await sql.records(conn, _DEPLOYMENTS, *sql.key_arrays(keys))]
    return {DeploymentKey(r.origin_cluster, r.namespace, r.name): r for r in found}


def _keys(found: Iterable[Any]) -> list[DeploymentKey]:
    return [DeploymentKey(a, b, c) for a, b, c in found]


async def pending_deployment_keys(conn: AsyncConnection) -> list[DeploymentKey]:
    """Deployments waiting for capacity or holding replicas that may need to move (re-evaluated on any change).

    A policy refusal waits too: a cluster that joins or is relabelled may be one the policy admits.
    """
    return _keys(
        await sql.records(
            conn,
            "SELECT origin_cluster, namespace, name FROM deployment_plans "
            "WHERE last_outcome IN ('InsufficientGPU', 'PartiallyPlaced', 'NoEligibleCluster', 'PolicyDenied') "
            "UNION SELECT origin_cluster, namespace, name FROM placements WHERE role <> 'active'",
        )
    )


async def deployment_keys_on_clusters(conn: AsyncConnection, clusters_: Sequence[str]) -> list[DeploymentKey]:
    """Deployments placed in one of the clusters, or applied there (their origin's Service and the ranges their
    serving clusters admit depend on it)."""
    return _keys(
        await sql.records(
            conn,
            "SELECT origin_cluster, namespace, name FROM placements WHERE cluster = ANY($1::text[]) "
            "UNION SELECT origin_cluster, namespace, name FROM placements WHERE origin_cluster = ANY($1::text[])",
            list(clusters_),
        )
    )


async def deployment_keys_using_models(
    conn: AsyncConnection, models_: Iterable[tuple[str, str, str]]
) -> list[DeploymentKey]:
    """Deployments in (cluster, namespace) whose spec.modelRef names one of the models."""
    models_ = list(models_)
    if not models_:
        return []
    return _keys(
        await sql.records(
            conn,
            "SELECT DISTINCT d.origin_cluster, d.namespace, d.name FROM deployments d "
            "JOIN unnest($1::text[], $2::text[], $3::text[]) AS m(cluster, namespace, name) "
            "ON d.origin_cluster = m.cluster AND d.namespace = m.namespace AND d.spec->>'modelRef' = m.name",
            *sql.key_arrays(models_),
        )
    )


async def orphan_keys(conn: AsyncConnection) -> list[DeploymentKey]:
    """Placements or observed workloads whose LLMDeployment is gone: their workloads must be removed."""
    return _keys(
        await sql.records(
            conn,
            "SELECT p.origin_cluster, p.namespace, p.name FROM placements p WHERE NOT EXISTS "
            "(SELECT 1 FROM deployments d WHERE d.origin_cluster = p.origin_cluster AND d.namespace = p.namespace "
            "AND d.name = p.name) "
            "UNION SELECT w.origin_cluster, w.deployment_namespace, w.deployment_name FROM workloads w "
            "WHERE w.origin_cluster IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deployments d "
            "WHERE d.origin_cluster = w.origin_cluster AND d.namespace = w.deployment_namespace "
            "AND d.name = w.deployment_name)",
        )
    )


async def all_deployment_keys(conn: AsyncConnection) -> list[DeploymentKey]:
    """Every deployment, plus every orphaned placement or workload."""
    every = _keys(await sql.records(conn, "SELECT origin_cluster, namespace, name FROM deployments"))
    return every + await orphan_keys(conn)


async def scheduling(
    conn: AsyncConnection, keys: Iterable[DeploymentKey], *, stuck_before: datetime
) -> dict[DeploymentKey, dict[str, tuple[int, int]]]:
    """Per deployment and cluster: (pods bound to a node, pods Pending unscheduled since before `stuck_before`)."""
    wanted = {str(key): DeploymentKey(*key) for key in keys}
    if not wanted:
        return {}
    found = await sql.records(
        conn,
        "SELECT deployment_key, cluster, count(*) FILTER (WHERE node_name IS NOT NULL), "
        "count(*) FILTER (WHERE node_name IS NULL AND phase = 'Pending' AND updated_at < $2) "
        f"FROM pods WHERE deployment_key = ANY($1::text[]) AND {_LIVE} GROUP BY deployment_key, cluster",
        list(wanted),
        stuck_before,
    )
    out: dict[DeploymentKey, dict[str, tuple[int, int]]] = {}
    for key, cluster, bound_count, stuck_count in found:
        out.setdefault(wanted[key], {})[cluster] = (int(bound_count), int(stuck_count))
    return out


async def stuck_deployment_keys(conn: AsyncConnection, *, stuck_before: datetime) -> list[DeploymentKey]:
    """Deployments with pods that no node has taken for too long."""
    found = await sql.records(
        conn,
        "SELECT DISTINCT deployment_key FROM pods WHERE deployment_key IS NOT NULL AND node_name IS NULL "
        "AND phase = 'Pending' AND updated_at < $1",
        stuck_before,
    )
    return [DeploymentKey.parse(str(key)) for (key,) in found]


# ------------------------------------------------------------------------ batched reads for one planner step


T = TypeVar("T", PlacementRow, WorkloadRow, PlanRow)


def _by_deployment(rows: Iterable[T], key: Callable[[T], DeploymentKey]) -> dict[DeploymentKey, list[T]]:
    out: dict[DeploymentKey, list[T]] = {}
    for row in rows:
        out.setdefault(key(row), []).append(row)
    return out


def _placement_key(row: PlacementRow | PlanRow) -> DeploymentKey:
    return DeploymentKey(row.origin_cluster, row.namespace, row.name)


async def placements_for_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[PlacementRow]]:
    found = await sql.records(
        conn,
        f"{_PLACEMENTS} WHERE (origin_cluster, namespace, name) IN {_KEYS} ORDER BY cluster",
        *sql.key_arrays(keys),
    )
    return _by_deployment((PlacementRow.of(r) for r in found), _placement_key)


async def workloads_for_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[WorkloadRow]]:
    found = await sql.records(
        conn,
        f"SELECT {WorkloadRow.select()} FROM workloads "
        f"WHERE (origin_cluster, deployment_namespace, deployment_name) IN {_KEYS}",
        *sql.key_arrays(keys),
    )
    return _by_deployment(
        (WorkloadRow.of(r) for r in found),
        lambda w: DeploymentKey(w.origin_cluster, w.deployment_namespace, w.deployment_name),
    )


async def last_workload_plans_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[PlanRow]]:
    """The newest workload plan per (deployment, cluster), for many deployments at once."""
    found = await sql.records(
        conn,
        f"SELECT {PlanRow.select('p')} FROM plans p "
        "JOIN (SELECT origin_cluster, namespace, name, cluster, max(sequence) AS sequence "
        f"FROM plans WHERE (origin_cluster, namespace, name) IN {_KEYS} AND kind = 'Workload' "
        "GROUP BY origin_cluster, namespace, name, cluster) newest "
        "ON p.origin_cluster = newest.origin_cluster AND p.namespace = newest.namespace "
        "AND p.name = newest.name AND p.cluster = newest.cluster AND p.sequence = newest.sequence "
        "WHERE p.kind = 'Workload'",
        *sql.key_arrays(keys),
    )
    return _by_deployment((PlanRow.of(r) for r in found), _placement_key)


async def last_endpoints_plans_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[PlanRow]]:
    """The newest endpoints plan per (deployment, cluster): what the origin's Service was last told (the
    `previous` of planner.endpoints.follow) and which serving clusters admit the origin."""
    if not keys:
        return {}
    found = await sql.records(
        conn,
        f"SELECT DISTINCT ON (origin_cluster, namespace, name, cluster) {PlanRow.select()} FROM plans "
        f"WHERE (origin_cluster, namespace, name) IN {_KEYS} AND kind = 'Endpoints' "
        "ORDER BY origin_cluster, namespace, name, cluster, epoch DESC, sequence DESC",
        *sql.key_arrays(keys),
    )
    return _by_deployment((PlanRow.of(r) for r in found), _placement_key)


async def replicas_many(conn: AsyncConnection, keys: Sequence[DeploymentKey]) -> dict[DeploymentKey, list[ReplicaRow]]:
    """The live pods of many deployments, with their addresses and readiness."""
    wanted = {str(key): DeploymentKey(*key) for key in keys}
    if not wanted:
        return {}
    found = await sql.records(
        conn,
        f"SELECT {ReplicaRow.select()} FROM pods WHERE deployment_key = ANY($1::text[]) AND {_LIVE} "
        "ORDER BY cluster, name",
        list(wanted),
    )
    out: dict[DeploymentKey, list[ReplicaRow]] = {}
    for row in (ReplicaRow.of(r) for r in found):
        out.setdefault(wanted[row.deployment_key], []).append(row)
    return out


async def services_many(conn: AsyncConnection, keys: Sequence[DeploymentKey]) -> dict[DeploymentKey, list[ServiceRow]]:
    """The Services of many deployments in every cluster, with their ingress addresses."""
    wanted = {str(key): DeploymentKey(*key) for key in keys}
    if not wanted:
        return {}
    found = await sql.records(
        conn,
        f"SELECT {ServiceRow.select()} FROM services WHERE deployment_key = ANY($1::text[]) ORDER BY cluster, name",
        list(wanted),
    )
    out: dict[DeploymentKey, list[ServiceRow]] = {}
    for row in (ServiceRow.of(r) for r in found):
        out.setdefault(wanted[row.deployment_key], []).append(row)
    return out


async def models_many(
    conn: AsyncConnection, refs: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], ModelRow]:
    refs = list(set(refs))
    if not refs:
        return {}
    found = await sql.records(
        conn,
        f"SELECT {ModelRow.select()} FROM models WHERE (cluster, namespace, name) IN {_KEYS}",
        *sql.key_arrays(refs),
    )
    return {(r.cluster, r.namespace, r.name): r for r in (ModelRow.of(f) for f in found)}


async def plan_sequences(conn: AsyncConnection, keys: Sequence[DeploymentKey]) -> dict[DeploymentKey, int]:
    found = await sql.records(
        conn,
        "SELECT origin_cluster, namespace, name, plan_sequence FROM deployment_plans "
        f"WHERE (origin_cluster, namespace, name) IN {_KEYS}",
        *sql.key_arrays(keys),
    )
    return {DeploymentKey(o, n, d): int(s) for o, n, d, s in found}


async def last_plan(conn: AsyncConnection, key: DeploymentKey) -> tuple[int, dict[str, Any] | None]:
    """The last plan sequence issued for `key` and the last status a plan wrote there (0 and None: none yet)."""
    found = await sql.records(
        conn,
        "SELECT plan_sequence, last_status FROM deployment_plans WHERE origin_cluster = $1 AND namespace = $2 "
        "AND name = $3",
        *key,
    )
    return (int(found[0][0]), found[0][1]) if found else (0, None)


async def plan_payloads(conn: AsyncConnection, plan_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Plans by id (their payloads)."""
    if not plan_ids:
        return {}
    found = await sql.records(
        conn, "SELECT plan_id, payload FROM plans WHERE plan_id = ANY($1::text[])", list(plan_ids)
    )
    return {str(r["plan_id"]): r["payload"] for r in found}
