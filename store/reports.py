"""Reads for the audit commands (`status`, `history`, `explain`, `report`, `dead-letters`, `replay --rebuild`),
returned as typed rows.

Guarantees:
- `open_reports` refuses a database whose schema is not at this version's head (`SchemaNotReady`) and disposes of
  its engine on the way out; everything else is read-only against the store, except `Reports.rebuild`, which
  rewrites the projections (never the log) in one transaction that holds the writers' lock (`store.replay`).
- Rows are frozen dataclasses named after what they hold, so callers never index a mapping by a column name;
  `report` alone returns the view's own columns, since the views are the user's interface and any SQL client may
  read them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, text

from api.events import deployment_stream
from api.network import ClusterNetwork
from store import reader, replay, retention, schema, snapshots, tables
from store.engine import Engine, open_engine
from store.errors import translated
from store.reader import StoredEvent
from store.sql import like_escape

VIEWS: Mapping[str, str] = {
    "gpu-capacity": "report_gpu_capacity",
    "placements": "report_current_placements",
    "placement-history": "report_placement_history",
    "gpu-hours": "report_gpu_hours",
    "churn": "report_placement_churn",
    "time-to-ready": "report_time_to_ready",
}
"""The reporting views (created by migrations), by the name `llm-operator report` knows them."""


@dataclass(frozen=True)
class ClusterRow:
    name: str
    labels: dict[str, str]
    healthy: bool
    health_reason: str
    joined_at: datetime
    health_changed_at: datetime
    last_heartbeat_at: datetime | None


@dataclass(frozen=True)
class GpuCapacityRow:
    """One row of the `report_gpu_capacity` view: a cluster's GPUs of one product."""

    cluster: str
    gpu_product: str
    gpu_memory_gib: Decimal
    nodes: int
    total: int
    allocated: int
    reserved: int
    free: int
    unusable_nodes: int
    """Nodes of this product that do not count (NotReady, cordoned, or tainted against our pods)."""
    unusable_gpus: int


@dataclass(frozen=True)
class DeploymentSummary:
    """A deployment as `status` lists it: its spec's replicas and the planner's last word on it."""

    namespace: str
    name: str
    origin_cluster: str
    replicas: str | None
    last_outcome: str | None
    ready: str
    clusters: str | None


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: datetime
    consumer: str
    subject: str
    stream_sequence: int | None
    reason: str
    raw: bytes


@dataclass(frozen=True)
class PartitionSize:
    """A partition of the event log: its class, time range (None for the snapshot and default ones), rows and
    bytes on disk (table, TOAST and indexes)."""

    name: str
    retention: str
    start: datetime | None
    end: datetime | None
    rows: int
    bytes: int


@dataclass(frozen=True)
class ReportTable:
    """A reporting view's rows, with its columns in the view's order."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@asynccontextmanager
async def open_reports(url: str) -> AsyncIterator[Reports]:
    engine = open_engine(url)
    try:
        await schema.require_current(engine)
        yield Reports(engine)
    finally:
        await engine.dispose()


class Reports:
    """The audit commands' reads on one engine (each read on a connection of its own)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        return self._engine

    async def _all(self, action: str, sql: str, **params: Any) -> Sequence[Any]:
        """Every row of one SQL statement, on a connection of its own; driver errors become StoreErrors."""
        with translated(action):
            async with self._engine.connect() as conn:
                return (await conn.execute(text(sql), params)).all()

    async def origins(self, namespace: str, name: str) -> list[str]:
        """The clusters in which an LLMDeployment `namespace/name` has a history (usually one)."""
        e = tables.events
        with translated("read deployment origins"):
            async with self._engine.connect() as conn:
                streams = (
                    (
                        await conn.execute(
                            select(e.c.stream_id)
                            .where(
                                e.c.stream_id.like(
                                    f"LLMDeployment/%/{like_escape(namespace)}/{like_escape(name)}", escape="\\"
                                )
                            )
                            .distinct()
                        )
                    )
                    .scalars()
                    .all()
                )
        return sorted(str(s).split("/")[1] for s in streams)

    async def history(
        self,
        origin: str,
        namespace: str,
        name: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        types: list[str] | None = None,
    ) -> list[StoredEvent]:
        """A deployment's events (of `types`, if given), in the order they were recorded."""
        with translated("read a deployment's history"):
            async with self._engine.connect() as conn:
                return [
                    e
                    async for e in reader.read(
                        conn,
                        stream_ids=[deployment_stream(origin, namespace, name)],
                        since=since,
                        until=until,
                        types=types,
                    )
                ]

    async def deployment_spec(self, origin: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The deployment's spec as last observed, or None when it is gone (or never was)."""
        d = tables.deployments
        with translated("read a deployment"):
            async with self._engine.connect() as conn:
                spec = await conn.scalar(
                    select(d.c.spec).where(d.c.origin_cluster == origin, d.c.namespace == namespace, d.c.name == name)
                )
        return dict(spec) if spec is not None else None

    async def as_of(
        self, when: datetime, *, names: Collection[str] | None = None, from_snapshot: bool = True
    ) -> replay.MemoryTables:
        """The projections `names` (default: all) as they were at `when`, folded in memory from the log recorded
        up to then (from the newest projection snapshot before it, when one may be used: store.snapshots)."""
        with translated("fold the log up to a time"):
            async with self._engine.connect() as conn:
                return await replay.as_of(conn, when, names=names, from_snapshot=from_snapshot)

    async def horizon(self) -> datetime | None:
        """Observations recorded before this time were pruned (None: none ever were)."""
        with translated("read the retention horizon"):
            async with self._engine.connect() as conn:
                return await retention.horizon(conn)

    async def prune(
        self, *, now: datetime, keep: timedelta, max_partitions: int, days_ahead: int
    ) -> tuple[list[str], list[retention.Pruned]]:
        """Create the coming partitions, then drop aged-out observation partitions (store.retention)."""
        with translated("prune the event log"):
            async with self._engine.begin() as conn:
                created = await retention.ensure_partitions(conn, now=now, days_ahead=days_ahead)
            async with self._engine.begin() as conn:
                return created, await retention.prune(conn, now=now, keep=keep, max_partitions=max_partitions)

    async def take_snapshot(self, *, now: datetime) -> tuple[snapshots.SnapshotInfo | None, int]:
        """Copy the projections into a projection snapshot now (None: nothing recorded since the last one), and
        thin the old ones; returns the snapshot and how many were removed."""
        with translated("take a projection snapshot"):
            # Thinning first: a snapshot of another table shape may sit at the very position to copy.
            async with self._engine.begin() as conn:
                thinned = await snapshots.thin(conn, now=now)
            return await snapshots.take(self._engine), thinned

    async def snapshots(self) -> list[snapshots.SnapshotInfo]:
        """Every projection snapshot, oldest first."""
        with translated("read the projection snapshots"):
            async with self._engine.connect() as conn:
                return await snapshots.listed(conn)

    async def log_partitions(self) -> list[PartitionSize]:
        """Every partition of the event log with its size, oldest first."""
        with translated("read the event log's partitions"):
            async with self._engine.connect() as conn:
                bounded = {p.name: p for p in await retention.partitions(conn)}
                found = (
                    await conn.execute(
                        text(
                            "SELECT c.relname, pg_total_relation_size(c.oid), c.reltuples FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"
                        )
                    )
                ).all()
        out = []
        for name, size, tuples in found:
            part = bounded.get(name)
            kind = part.retention if part else ("snapshot" if name == "events_snapshot" else "default")
            out.append(
                PartitionSize(
                    name=name,
                    retention=kind,
                    start=part.start if part else None,
                    end=part.end if part else None,
                    rows=max(int(tuples), 0),
                    bytes=int(size),
                )
            )
        return sorted(out, key=lambda p: (p.start is None, p.start or datetime.min, p.name))

    async def clusters(self) -> list[ClusterRow]:
        c = tables.clusters
        with translated("read clusters"):
            async with self._engine.connect() as conn:
                found = (await conn.execute(select(c).order_by(c.c.name))).mappings().all()
        return [
            ClusterRow(
                name=r["name"],
                labels=dict(r["labels"]),
                healthy=r["healthy"],
                health_reason=r["health_reason"],
                joined_at=r["joined_at"],
                health_changed_at=r["health_changed_at"],
                last_heartbeat_at=r["last_heartbeat_at"],
            )
            for r in found
        ]

    async def cluster_networks(self) -> dict[str, ClusterNetwork]:
        """Each cluster's declared network (api.network), as the clusters projection holds it (folded from the
        heartbeats' ClusterJoined / ClusterNetworkChanged). A cluster that declared none, or whose stored value is
        not a valid ClusterNetwork, is left out, as undeclared."""
        with translated("read cluster networks"):
            async with self._engine.connect() as conn:
                found = (await conn.execute(text("SELECT name, network FROM clusters WHERE network IS NOT NULL"))).all()
        networks: dict[str, ClusterNetwork] = {}
        for cluster, network in found:
            try:
                networks[str(cluster)] = ClusterNetwork.model_validate(network)
            except ValidationError:
                continue
        return networks

    async def gpu_capacity(self) -> list[GpuCapacityRow]:
        """The `report_gpu_capacity` view."""
        found = await self._all(
            "read GPU capacity",
            "SELECT cluster, gpu_product, gpu_memory_gib, nodes, total, allocated, reserved, free, "
            "unusable_nodes, unusable_gpus FROM report_gpu_capacity",
        )
        return [
            GpuCapacityRow(
                cluster=cluster,
                gpu_product=product,
                gpu_memory_gib=memory,
                nodes=int(nodes),
                total=int(total),
                allocated=int(allocated),
                reserved=int(reserved),
                free=int(free),
                unusable_nodes=int(unusable_nodes),
                unusable_gpus=int(unusable_gpus),
            )
            for (
                cluster,
                product,
                memory,
                nodes,
                total,
                allocated,
                reserved,
                free,
                unusable_nodes,
                unusable_gpus,
            ) in found
        ]

    async def deployment_summaries(self) -> list[DeploymentSummary]:
        """Every deployment, by namespace and name."""
        with translated("read deployments"):
            async with self._engine.connect() as conn:
                found = (
                    await conn.execute(
                        text(
                            "SELECT d.namespace, d.name, d.origin_cluster, d.spec->>'replicas' AS replicas,"
                            " b.last_outcome, coalesce(b.last_status->>'readyReplicas', '0') AS ready,"
                            " b.last_status->>'clusters' AS clusters FROM deployments d"
                            " LEFT JOIN deployment_plans b USING (origin_cluster, namespace, name) ORDER BY 1, 2"
                        )
                    )
                ).all()
        return [
            DeploymentSummary(
                namespace=namespace,
                name=name,
                origin_cluster=origin,
                replicas=replicas,
                last_outcome=outcome,
                ready=ready,
                clusters=clusters,
            )
            for namespace, name, origin, replicas, outcome, ready, clusters in found
        ]

    async def report(self, view: str, *, limit: int | None = None) -> ReportTable:
        """A reporting view by its report name (a key of `VIEWS`; anything else raises KeyError)."""
        query = f"SELECT * FROM {VIEWS[view]}" + (f" LIMIT {int(limit)}" if limit else "")
        with translated(f"read report {view}"):
            async with self._engine.connect() as conn:
                result = await conn.execute(text(query))
                columns = tuple(result.keys())
                rows = tuple(tuple(r) for r in result.all())
        return ReportTable(columns=columns, rows=rows)

    async def rebuild(self) -> replay.ReplayStats:
        """Drop and refold every projection from the log, in one transaction."""
        with translated("rebuild the projections"):
            async with self._engine.begin() as conn:
                return await replay.rebuild(conn)

    async def dead_letters(self, *, limit: int) -> list[DeadLetter]:
        """The newest `limit` dead letters, newest first."""
        t = tables.dead_letters
        with translated("read dead letters"):
            async with self._engine.connect() as conn:
                found = (await conn.execute(select(t).order_by(t.c.id.desc()).limit(limit))).mappings().all()
        return [
            DeadLetter(
                id=r["id"],
                received_at=r["received_at"],
                consumer=r["consumer"],
                subject=r["subject"],
                stream_sequence=r["stream_sequence"],
                reason=r["reason"],
                raw=bytes(r["raw"]),
            )
            for r in found
        ]
