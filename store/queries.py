"""Reads of the projections that the planner and the CLI need, returned as plain rows (dicts).

Guarantees: read-only; every query runs on the caller's connection, so inside the planner's transaction it sees
the projections exactly as folded so far in that transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from store import tables

DeploymentKey = tuple[str, str, str]  # (origin cluster, namespace, name)


def _rows(result: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in result.mappings().all()]


async def clusters(conn: AsyncConnection) -> list[dict[str, Any]]:
    return _rows(await conn.execute(select(tables.clusters).order_by(tables.clusters.c.name)))


async def nodes(conn: AsyncConnection, clusters: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Every node, or those of `clusters`."""
    t = tables.nodes
    query = select(t).order_by(t.c.cluster, t.c.name)
    if clusters is not None:
        query = query.where(t.c.cluster.in_(sorted(clusters)))
    return _rows(await conn.execute(query))


async def bound_pods(conn: AsyncConnection, clusters: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Pods holding resources on a node: bound and not terminated (all, or those in `clusters`)."""
    t = tables.pods
    query = select(
        t.c.cluster,
        t.c.node_name,
        t.c.gpu_request,
        t.c.cpu_request_m,
        t.c.memory_request_bytes,
        t.c.deployment_key,
    ).where(t.c.node_name.is_not(None), t.c.phase.not_in(["Succeeded", "Failed"]))
    if clusters is not None:
        query = query.where(t.c.cluster.in_(sorted(clusters)))
    return _rows(await conn.execute(query))


async def all_placements(conn: AsyncConnection, clusters: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Every placement, or those in `clusters`."""
    t = tables.placements
    query = select(t).order_by(t.c.origin_cluster, t.c.namespace, t.c.name, t.c.cluster)
    if clusters is not None:
        query = query.where(t.c.cluster.in_(sorted(clusters)))
    return _rows(await conn.execute(query))


async def deployments(conn: AsyncConnection, keys: Iterable[DeploymentKey]) -> dict[DeploymentKey, dict[str, Any]]:
    """Deployment rows with the planner's bookkeeping (plan_sequence, last_status, last_outcome) joined in."""
    keys = list(keys)
    if not keys:
        return {}
    d, b = tables.deployments, tables.deployment_plans
    joined = d.outerjoin(
        b, and_(b.c.origin_cluster == d.c.origin_cluster, b.c.namespace == d.c.namespace, b.c.name == d.c.name)
    )
    query = select(
        d,
        func.coalesce(b.c.plan_sequence, 0).label("plan_sequence"),
        b.c.last_status,
        b.c.last_outcome,
        b.c.last_decision_at,
    ).select_from(joined)
    rows = _rows(await conn.execute(query.where(tuple_(d.c.origin_cluster, d.c.namespace, d.c.name).in_(keys))))
    return {(r["origin_cluster"], r["namespace"], r["name"]): r for r in rows}


async def pending_deployment_keys(conn: AsyncConnection) -> list[DeploymentKey]:
    """Deployments waiting for capacity or holding replicas that may need to move (re-evaluated on any change)."""
    b = tables.deployment_plans
    p = tables.placements
    waiting = select(b.c.origin_cluster, b.c.namespace, b.c.name).where(
        b.c.last_outcome.in_(["InsufficientGPU", "PartiallyPlaced", "NoEligibleCluster"])
    )
    moving = select(p.c.origin_cluster, p.c.namespace, p.c.name).where(p.c.role != "active")
    rows = (await conn.execute(waiting.union(moving))).all()
    return [(a, b, c) for a, b, c in rows]


async def deployment_keys_on_clusters(conn: AsyncConnection, clusters_: Sequence[str]) -> list[DeploymentKey]:
    p = tables.placements
    rows = (
        await conn.execute(
            select(p.c.origin_cluster, p.c.namespace, p.c.name).where(p.c.cluster.in_(list(clusters_))).distinct()
        )
    ).all()
    return [(a, b, c) for a, b, c in rows]


async def deployment_keys_using_models(
    conn: AsyncConnection, models_: Iterable[tuple[str, str, str]]
) -> list[DeploymentKey]:
    """Deployments in (cluster, namespace) whose spec.modelRef names one of the models."""
    models_ = list(models_)
    if not models_:
        return []
    d = tables.deployments
    cond = or_(
        *(
            and_(d.c.origin_cluster == c, d.c.namespace == ns, d.c.spec["modelRef"].astext == name)
            for c, ns, name in models_
        )
    )
    rows = (await conn.execute(select(d.c.origin_cluster, d.c.namespace, d.c.name).where(cond))).all()
    return [(a, b, c) for a, b, c in rows]


async def orphan_keys(conn: AsyncConnection) -> list[DeploymentKey]:
    """Placements or observed workloads whose LLMDeployment is gone: their workloads must be removed."""
    d = tables.deployments
    p = tables.placements
    w = tables.workloads
    orphan_placements = select(p.c.origin_cluster, p.c.namespace, p.c.name).where(
        ~select(d.c.name)
        .where(d.c.origin_cluster == p.c.origin_cluster, d.c.namespace == p.c.namespace, d.c.name == p.c.name)
        .exists()
    )
    orphan_workloads = select(w.c.origin_cluster, w.c.deployment_namespace, w.c.deployment_name).where(
        w.c.origin_cluster.is_not(None),
        ~select(d.c.name)
        .where(
            d.c.origin_cluster == w.c.origin_cluster,
            d.c.namespace == w.c.deployment_namespace,
            d.c.name == w.c.deployment_name,
        )
        .exists(),
    )
    rows = (await conn.execute(orphan_placements.union(orphan_workloads))).all()
    return [(a, b, c) for a, b, c in rows]


async def latest_epoch(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.coalesce(func.max(tables.planner_epochs.c.epoch), 0))) or 0)


async def all_deployment_keys(conn: AsyncConnection) -> list[DeploymentKey]:
    """Every deployment, plus every orphaned placement or workload."""
    d = tables.deployments
    rows = (await conn.execute(select(d.c.origin_cluster, d.c.namespace, d.c.name))).all()
    return [(a, b, c) for a, b, c in rows] + await orphan_keys(conn)


async def scheduling(
    conn: AsyncConnection, keys: Iterable[DeploymentKey], *, stuck_before: datetime
) -> dict[DeploymentKey, dict[str, tuple[int, int]]]:
    """Per deployment and cluster: (pods bound to a node, pods Pending unscheduled since before `stuck_before`)."""
    wanted = {f"{o}/{n}/{d}": (o, n, d) for o, n, d in keys}
    if not wanted:
        return {}
    t = tables.pods
    live = t.c.phase.not_in(["Succeeded", "Failed"])
    bound = func.count().filter(t.c.node_name.is_not(None))
    stuck = func.count().filter(t.c.node_name.is_(None), t.c.phase == "Pending", t.c.updated_at < stuck_before)
    rows = await conn.execute(
        select(t.c.deployment_key, t.c.cluster, bound, stuck)
        .where(t.c.deployment_key.in_(list(wanted)), live)
        .group_by(t.c.deployment_key, t.c.cluster)
    )
    out: dict[DeploymentKey, dict[str, tuple[int, int]]] = {}
    for key, cluster, bound_count, stuck_count in rows:
        out.setdefault(wanted[key], {})[cluster] = (int(bound_count), int(stuck_count))
    return out


async def stuck_deployment_keys(conn: AsyncConnection, *, stuck_before: datetime) -> list[DeploymentKey]:
    """Deployments with pods that no node has taken for too long."""
    t = tables.pods
    rows = await conn.execute(
        select(t.c.deployment_key)
        .where(
            t.c.deployment_key.is_not(None),
            t.c.node_name.is_(None),
            t.c.phase == "Pending",
            t.c.updated_at < stuck_before,
        )
        .distinct()
    )
    out = []
    for (key,) in rows:
        origin, namespace, name = str(key).split("/", 2)
        out.append((origin, namespace, name))
    return out


# ------------------------------------------------------------------------ batched reads for one planner step


def _by_deployment(
    rows: list[dict[str, Any]], origin: str, namespace: str, name: str
) -> dict[DeploymentKey, list[dict[str, Any]]]:
    out: dict[DeploymentKey, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault((row[origin], row[namespace], row[name]), []).append(row)
    return out


async def placements_for_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[dict[str, Any]]]:
    t = tables.placements
    rows = _rows(
        await conn.execute(
            select(t).where(tuple_(t.c.origin_cluster, t.c.namespace, t.c.name).in_(list(keys))).order_by(t.c.cluster)
        )
    )
    return _by_deployment(rows, "origin_cluster", "namespace", "name")


async def workloads_for_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[dict[str, Any]]]:
    t = tables.workloads
    rows = _rows(
        await conn.execute(
            select(t).where(tuple_(t.c.origin_cluster, t.c.deployment_namespace, t.c.deployment_name).in_(list(keys)))
        )
    )
    return _by_deployment(rows, "origin_cluster", "deployment_namespace", "deployment_name")


async def last_workload_plans_many(
    conn: AsyncConnection, keys: Sequence[DeploymentKey]
) -> dict[DeploymentKey, list[dict[str, Any]]]:
    """The newest workload plan per (deployment, cluster), for many deployments at once."""
    t = tables.plans
    mine = (tuple_(t.c.origin_cluster, t.c.namespace, t.c.name).in_(list(keys)), t.c.kind == "Workload")
    newest = (
        select(t.c.origin_cluster, t.c.namespace, t.c.name, t.c.cluster, func.max(t.c.sequence).label("sequence"))
        .where(*mine)
        .group_by(t.c.origin_cluster, t.c.namespace, t.c.name, t.c.cluster)
        .subquery()
    )
    rows = _rows(
        await conn.execute(
            select(t)
            .join(
                newest,
                and_(
                    t.c.origin_cluster == newest.c.origin_cluster,
                    t.c.namespace == newest.c.namespace,
                    t.c.name == newest.c.name,
                    t.c.cluster == newest.c.cluster,
                    t.c.sequence == newest.c.sequence,
                ),
            )
            .where(t.c.kind == "Workload")
        )
    )
    return _by_deployment(rows, "origin_cluster", "namespace", "name")


async def models_many(
    conn: AsyncConnection, refs: Iterable[tuple[str, str, str]]
) -> dict[tuple[str, str, str], dict[str, Any]]:
    refs = list(set(refs))
    if not refs:
        return {}
    t = tables.models
    rows = _rows(await conn.execute(select(t).where(tuple_(t.c.cluster, t.c.namespace, t.c.name).in_(refs))))
    return {(r["cluster"], r["namespace"], r["name"]): r for r in rows}


async def plan_sequences(conn: AsyncConnection, keys: Sequence[DeploymentKey]) -> dict[DeploymentKey, int]:
    b = tables.deployment_plans
    rows = await conn.execute(
        select(b.c.origin_cluster, b.c.namespace, b.c.name, b.c.plan_sequence).where(
            tuple_(b.c.origin_cluster, b.c.namespace, b.c.name).in_(list(keys))
        )
    )
    return {(o, n, d): int(s) for o, n, d, s in rows}
