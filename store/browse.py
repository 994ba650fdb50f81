"""Reads for the web dashboard (`dashboard/`), on top of the audit commands' reads (`store.reports`).

Guarantees:
- Read-only: `open_browse` opens its engine with every transaction READ ONLY (`open_engine(read_only=True)`), and
  `grant_read_only` makes the database role the dashboard is meant to log in as (SELECT only).
- Nothing here repeats a query of `Reports`: clusters, GPU capacity, a deployment's history, the reporting views,
  dead letters and the fold "as of" a time are `Reports`' own methods, inherited. What is added is what only the
  dashboard asks: the per-node GPU view, one page of a filtered deployment list, one deployment's projections,
  a filtered page of the event log, and the log's head position (what changed since the browser last looked).
- Every read is bounded (a page of rows, or one deployment's rows), so a page costs the same on a fleet of 3 or
  of 10,000 deployments; tenant strings are bound as parameters, never spliced into SQL (LIKE patterns escaped).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from store import schema
from store.engine import Engine, open_engine
from store.errors import translated
from store.reports import Reports
from store.sql import like_escape


@dataclass(frozen=True)
class NodeGpus:
    """One row of the `report_node_gpus` view: a GPU node under the planner's capacity rule."""

    cluster: str
    node: str
    gpu_product: str
    gpu_memory_gib: Decimal
    allocatable: int
    allocated: int
    reserved: int
    free: int
    usable: bool
    """False: NotReady, cordoned, or tainted against our pods (its GPUs count nowhere)."""


@dataclass(frozen=True)
class DeploymentListRow:
    origin_cluster: str
    namespace: str
    name: str
    replicas: int | None
    ready: int
    status: str | None
    clusters: tuple[str, ...]
    gpu_types: tuple[str, ...]
    model: str | None


@dataclass(frozen=True)
class DeploymentPage:
    rows: tuple[DeploymentListRow, ...]
    total: int
    """How many deployments match the filter (the page holds at most `limit` of them)."""


@dataclass(frozen=True)
class DeploymentDetail:
    origin_cluster: str
    namespace: str
    name: str
    uid: str
    generation: int
    spec: dict[str, Any]
    labels: dict[str, str]
    deleting: bool
    observed_status: dict[str, Any]
    created_at: datetime
    last_outcome: str | None
    last_status: dict[str, Any] | None
    last_decision_at: datetime | None
    placements: tuple[dict[str, Any], ...]
    workloads: tuple[dict[str, Any], ...]
    endpoints: dict[str, Any] | None
    """The payload of the newest Endpoints plan issued for this deployment (None: none was)."""
    apply_results: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class LogEntry:
    position: int
    recorded_at: datetime
    cluster: str
    type: str
    stream_id: str
    payload: dict[str, Any]


@asynccontextmanager
async def open_browse(url: str, *, pool_size: int = 5) -> AsyncIterator[Browse]:
    """The dashboard's reads on an engine whose transactions are all READ ONLY; the schema must be at head."""
    engine = open_engine(url, pool_size=pool_size, read_only=True)
    try:
        await schema.require_current(engine)
        yield Browse(engine)
    finally:
        await engine.dispose()


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


async def grant_read_only(engine: Engine, role: str, *, password: str | None) -> None:
    """Create (or update) `role` as a login role that may read every table and view of the public schema, now and
    those later migrations create, and nothing else. Needs a role allowed to create roles (the operator's owner
    in a default install). Idempotent."""
    if not _ROLE.fullmatch(role):
        raise ValueError(f"not a plain role name: {role!r} (lower-case letters, digits, _)")
    with translated("grant the dashboard's read-only role"):
        async with engine.begin() as conn:
            exists = await conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r").bindparams(r=role))
            verb = "ALTER" if exists else "CREATE"
            # Role names cannot be bound parameters; `role` is checked above. The password is quoted by the server.
            if password is not None:
                quoted = await conn.scalar(text("SELECT quote_literal(:p)").bindparams(p=password))
                await conn.execute(text(f"{verb} ROLE {role} LOGIN PASSWORD {quoted}"))
            else:
                await conn.execute(text(f"{verb} ROLE {role} LOGIN"))
            await conn.execute(text(f"ALTER ROLE {role} SET default_transaction_read_only = on"))
            database = await conn.scalar(text("SELECT current_database()"))
            await conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {role}'))
            await conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            await conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
            # Tables and views a later migration creates (as this same owner) are readable too.
            await conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}"))


def role_url(url: str, role: str, *, password: str | None) -> str:
    """`url` logging in as `role` (with `password`) instead: what the dashboard is then started with."""
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


async def can_write(engine: Engine) -> bool:
    """Whether the engine's role may change the event log (the dashboard warns when it is not read-only)."""
    with translated("check the role's privileges"):
        async with engine.connect() as conn:
            return bool(
                await conn.scalar(
                    text(
                        "SELECT has_table_privilege(current_user, 'events', 'INSERT') "
                        "OR has_table_privilege(current_user, 'events', 'UPDATE')"
                    )
                )
            )


class Browse(Reports):
    """`Reports` plus the dashboard's own reads (each on a connection of its own)."""

    async def head(self) -> int:
        """The position of the newest event in the log (0 when empty): it moves whenever anything is recorded."""
        with translated("read the log's head"):
            async with self._engine.connect() as conn:
                return int(await conn.scalar(text("SELECT coalesce(max(position), 0) FROM events")) or 0)

    async def node_gpus(self) -> list[NodeGpus]:
        """The `report_node_gpus` view."""
        found = await self._all(
            "read GPU nodes",
            "SELECT cluster, node, gpu_product, gpu_memory_gib, allocatable, allocated, reserved, free, usable "
            "FROM report_node_gpus",
        )
        return [
            NodeGpus(
                cluster=c,
                node=n,
                gpu_product=p,
                gpu_memory_gib=m,
                allocatable=int(a),
                allocated=int(al),
                reserved=int(r),
                free=int(f),
                usable=bool(u),
            )
            for c, n, p, m, a, al, r, f, u in found
        ]

    async def deployment_page(
        self,
        *,
        search: str = "",
        origin: str = "",
        status: str = "",
        gpu: str = "",
        limit: int = 200,
        offset: int = 0,
    ) -> DeploymentPage:
        """Deployments matching every given filter (`search`: a substring of namespace/name), by namespace and
        name, one page of them."""
        where = ["TRUE"]
        params: dict[str, Any] = {}
        if search:
            where.append("(d.namespace || '/' || d.name) ILIKE :search ESCAPE '\\'")
            params["search"] = f"%{like_escape(search)}%"
        if origin:
            where.append("d.origin_cluster = :origin")
            params["origin"] = origin
        if status:
            where.append("coalesce(b.last_outcome, 'Pending') = :status")
            params["status"] = status
        if gpu:
            where.append(
                "EXISTS (SELECT 1 FROM placements g WHERE g.origin_cluster = d.origin_cluster "
                "AND g.namespace = d.namespace AND g.name = d.name AND g.gpu_type = :gpu)"
            )
            params["gpu"] = gpu
        condition = " AND ".join(where)
        source = (
            "FROM deployments d LEFT JOIN deployment_plans b "
            "ON b.origin_cluster = d.origin_cluster AND b.namespace = d.namespace AND b.name = d.name "
            f"WHERE {condition}"
        )
        order = 'ORDER BY {t}.namespace COLLATE "C", {t}.name COLLATE "C", {t}.origin_cluster COLLATE "C"'
        # The page first, then its placements: the aggregate runs for the rows shown, not for every match.
        query = (
            "WITH page AS (SELECT d.origin_cluster, d.namespace, d.name, d.spec->>'replicas' AS replicas, "
            "coalesce(b.last_status->>'readyReplicas', '0') AS ready, b.last_outcome, d.spec->>'modelRef' AS model "
            f"{source} {order.format(t='d')} LIMIT :limit OFFSET :offset) "
            "SELECT page.*, coalesce(p.clusters, '{}'), coalesce(p.gpu_types, '{}') FROM page "
            "LEFT JOIN LATERAL (SELECT array_agg(DISTINCT q.cluster) AS clusters, "
            "array_agg(DISTINCT q.gpu_type) FILTER (WHERE q.gpu_type IS NOT NULL) AS gpu_types FROM placements q "
            "WHERE q.origin_cluster = page.origin_cluster AND q.namespace = page.namespace "
            f"AND q.name = page.name AND q.replicas > 0) p ON TRUE {order.format(t='page')}"
        )
        with translated("read deployments"):
            async with self._engine.connect() as conn:
                total = int(await conn.scalar(text(f"SELECT count(*) {source}").bindparams(**params)) or 0)
                found = (await conn.execute(text(query).bindparams(**params, limit=limit, offset=offset))).all()
        return DeploymentPage(
            rows=tuple(
                DeploymentListRow(
                    origin_cluster=o,
                    namespace=ns,
                    name=n,
                    replicas=int(r) if r is not None and str(r).isdigit() else None,
                    ready=int(ready) if str(ready).isdigit() else 0,
                    status=outcome,
                    clusters=tuple(sorted(c for c in clusters if c)),
                    gpu_types=tuple(sorted(g for g in gpus if g)),
                    model=model,
                )
                for o, ns, n, r, ready, outcome, model, clusters, gpus in found
            ),
            total=total,
        )

    async def deployment_origins_and_statuses(self) -> tuple[list[str], list[str]]:
        """The values the deployment filters offer: origin clusters and outcomes present."""
        with translated("read deployment filters"):
            async with self._engine.connect() as conn:
                origins = (await conn.execute(text("SELECT name FROM clusters ORDER BY name"))).scalars().all()
                statuses = (
                    (await conn.execute(text("SELECT DISTINCT last_outcome FROM deployment_plans ORDER BY 1")))
                    .scalars()
                    .all()
                )
        return [str(o) for o in origins], [str(s) for s in statuses if s is not None]

    async def deployment(self, origin: str, namespace: str, name: str) -> DeploymentDetail | None:
        """One deployment's projections: spec and status, placements, workloads, endpoints, apply results."""
        key = {"o": origin, "ns": namespace, "n": name}
        with translated("read a deployment"):
            async with self._engine.connect() as conn:
                row = (
                    (
                        await conn.execute(
                            text(
                                "SELECT d.*, b.last_outcome, b.last_status, b.last_decision_at FROM deployments d "
                                "LEFT JOIN deployment_plans b ON b.origin_cluster = d.origin_cluster "
                                "AND b.namespace = d.namespace AND b.name = d.name "
                                "WHERE d.origin_cluster = :o AND d.namespace = :ns AND d.name = :n"
                            ).bindparams(**key)
                        )
                    )
                    .mappings()
                    .first()
                )
                if row is None:
                    return None
                placements = (
                    (
                        await conn.execute(
                            text(
                                "SELECT * FROM placements WHERE origin_cluster = :o AND namespace = :ns "
                                "AND name = :n ORDER BY cluster"
                            ).bindparams(**key)
                        )
                    )
                    .mappings()
                    .all()
                )
                workloads = (
                    (
                        await conn.execute(
                            text(
                                "SELECT * FROM workloads WHERE origin_cluster = :o AND deployment_namespace = :ns "
                                "AND deployment_name = :n ORDER BY cluster, namespace, name"
                            ).bindparams(**key)
                        )
                    )
                    .mappings()
                    .all()
                )
                endpoints = await conn.scalar(
                    text(
                        "SELECT payload FROM plans WHERE origin_cluster = :o AND namespace = :ns AND name = :n "
                        "AND kind = 'Endpoints' ORDER BY epoch DESC, sequence DESC LIMIT 1"
                    ).bindparams(**key)
                )
                results = (
                    (
                        await conn.execute(
                            text(
                                "SELECT * FROM apply_results WHERE origin_cluster = :o AND namespace = :ns "
                                "AND name = :n ORDER BY finished_at DESC LIMIT 50"
                            ).bindparams(**key)
                        )
                    )
                    .mappings()
                    .all()
                )
        return DeploymentDetail(
            origin_cluster=row["origin_cluster"],
            namespace=row["namespace"],
            name=row["name"],
            uid=row["uid"],
            generation=int(row["generation"]),
            spec=dict(row["spec"]),
            labels=dict(row["labels"]),
            deleting=bool(row["deleting"]),
            observed_status=dict(row["observed_status"] or {}),
            created_at=row["created_at"],
            last_outcome=row["last_outcome"],
            last_status=dict(row["last_status"]) if row["last_status"] is not None else None,
            last_decision_at=row["last_decision_at"],
            placements=tuple(dict(p) for p in placements),
            workloads=tuple(dict(w) for w in workloads),
            endpoints=dict(endpoints) if endpoints is not None else None,
            apply_results=tuple(dict(r) for r in results),
        )

    async def log(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        cluster: str = "",
        deployment: str = "",
        types: list[str] | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        """The newest `limit` events matching every filter (and older than position `before`), newest first.

        `deployment` is `namespace/name` or a part of it, matched against the deployment streams."""
        where = ["TRUE"]
        params: dict[str, Any] = {"limit": limit}
        if since is not None:
            where.append("recorded_at >= :since")
            params["since"] = since
        if until is not None:
            where.append("recorded_at <= :until")
            params["until"] = until
        if cluster:
            where.append("cluster = :cluster")
            params["cluster"] = cluster
        if deployment:
            where.append("stream_id LIKE :stream ESCAPE '\\'")
            params["stream"] = f"LLMDeployment/%{like_escape(deployment)}%"
        if types:
            where.append("type = ANY(:types)")
            params["types"] = list(types)
        if before is not None:
            where.append("position < :before")
            params["before"] = before
        with translated("search the event log"):
            async with self._engine.connect() as conn:
                found = (
                    await conn.execute(
                        text(
                            "SELECT position, recorded_at, cluster, type, stream_id, payload FROM events "
                            f"WHERE {' AND '.join(where)} ORDER BY position DESC LIMIT :limit"
                        ).bindparams(**params)
                    )
                ).all()
        return [
            LogEntry(position=int(p), recorded_at=at, cluster=c, type=t, stream_id=s, payload=dict(payload))
            for p, at, c, t, s, payload in found
        ]


__all__ = [
    "Browse",
    "DeploymentDetail",
    "DeploymentListRow",
    "DeploymentPage",
    "LogEntry",
    "NodeGpus",
    "can_write",
    "grant_read_only",
    "open_browse",
    "role_url",
]
