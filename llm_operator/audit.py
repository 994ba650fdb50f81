"""Audit and reporting commands: history, explain, status, report, replay, dead-letters.

Guarantees: read-only against the store, except `replay --rebuild`, which rewrites projections only (never the
log) inside one transaction that holds the writers' lock; every command prints a table for people and, where it
says so, JSON or CSV for scripts.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.events import PlacementDecided, ScaleDecided, deployment_stream
from llm_operator.runtime import OperatorError, hub_urls
from llm_operator.settings import Settings
from llm_operator.timeline import timeline
from planner.capacity import gpu_capacity
from planner.memory import facts_of
from store import reader, replay, schema, tables
from store.errors import StoreError
from store.sql import like_escape

out = Console()

REPORTS = {
    "gpu-capacity": "report_gpu_capacity",
    "placements": "report_current_placements",
    "placement-history": "report_placement_history",
    "gpu-hours": "report_gpu_hours",
    "churn": "report_placement_churn",
    "time-to-ready": "report_time_to_ready",
}


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    async with hub_urls(settings, need_nats=False) as (_, url):
        engine = create_async_engine(url)
        try:
            await schema.require_current(engine)
            yield engine
        except StoreError as exc:
            raise OperatorError(str(exc)) from exc
        finally:
            await engine.dispose()


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise OperatorError(f"not a time: {value!r} (use ISO 8601, e.g. 2026-11-27T10:00:00Z)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_target(target: str) -> tuple[str, list[str]]:
    kind, _, rest = target.partition("/")
    kind = {"llmd": "llmdeployment", "llmdeployments": "llmdeployment", "clusters": "cluster"}.get(kind, kind)
    parts = [p for p in rest.split("/") if p]
    if kind == "llmdeployment" and len(parts) == 2:
        return kind, parts
    if kind == "cluster" and len(parts) == 1:
        return kind, parts
    if kind == "fleet" and not parts:
        return kind, parts
    raise OperatorError(f"unknown target {target!r}: use llmdeployment/<namespace>/<name>, cluster/<name> or fleet")


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    # Cells and titles hold tenant strings (names, labels, messages): Text objects are printed as they are, never
    # read as Rich markup (a "[/x]" in a label would raise, other markup could spoof the output).
    table = Table(title=Text(title), header_style="bold", title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    return table


async def _origin_of(engine: AsyncEngine, namespace: str, name: str, cluster: str | None) -> str:
    if cluster:
        return cluster
    e = tables.events
    async with engine.connect() as conn:
        streams = (
            (
                await conn.execute(
                    select(e.c.stream_id)
                    .where(
                        e.c.stream_id.like(f"LLMDeployment/%/{like_escape(namespace)}/{like_escape(name)}", escape="\\")
                    )
                    .distinct()
                )
            )
            .scalars()
            .all()
        )
    if not streams:
        raise OperatorError(f"no history for llmdeployment {namespace}/{name}")
    if len(streams) > 1:
        origins = ", ".join(s.split("/")[1] for s in streams)
        raise OperatorError(f"{namespace}/{name} exists in several clusters ({origins}): pass --cluster")
    return str(streams[0]).split("/")[1]


# --------------------------------------------------------------------------------------------------- history


async def history(
    settings: Settings,
    target: str,
    *,
    cluster: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    as_of: str | None,
) -> None:
    kind, parts = parse_target(target)
    async with database(settings) as engine:
        if as_of:
            await _as_of(engine, kind, parts, parse_time(as_of), cluster, as_json)  # type: ignore[arg-type]
            return
        if kind != "llmdeployment":
            raise OperatorError("history takes llmdeployment/<namespace>/<name> (use --as-of for clusters/fleet)")
        namespace, name = parts
        origin = await _origin_of(engine, namespace, name, cluster)
        async with engine.connect() as conn:
            events = [
                e
                async for e in reader.read(
                    conn,
                    stream_ids=[deployment_stream(origin, namespace, name)],
                    since=parse_time(since),
                    until=parse_time(until),
                )
            ]
    lines = timeline(events)
    if as_json:
        sys.stdout.write(json.dumps([line.as_dict() for line in lines], indent=2) + "\n")
        return
    rows = [[line.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], line.cluster, line.kind, line.summary] for line in lines]
    out.print(
        _table(f"llmdeployment {namespace}/{name} (origin {origin})", ["TIME", "CLUSTER", "WHAT", "DETAILS"], rows)
    )


async def _as_of(
    engine: AsyncEngine, kind: str, parts: list[str], when: datetime, cluster: str | None, as_json: bool
) -> None:
    async with engine.connect() as conn:
        state = await replay.as_of(conn, when)
    result: dict[str, Any] = {"as_of": when.isoformat()}
    if kind == "llmdeployment":
        namespace, name = parts
        deps = [
            d
            for d in state.rows("deployments")
            if d["namespace"] == namespace and d["name"] == name and (cluster is None or d["origin_cluster"] == cluster)
        ]
        result["deployment"] = deps[0] if deps else None
        bookkeeping = [
            b
            for b in state.rows("deployment_plans")
            if b["namespace"] == namespace and b["name"] == name and (cluster is None or b["origin_cluster"] == cluster)
        ]
        if deps and bookkeeping:
            result["deployment"] = {**deps[0], **bookkeeping[0]}
        result["placements"] = [
            p for p in state.rows("placements") if p["namespace"] == namespace and p["name"] == name
        ]
        result["workloads"] = [
            w
            for w in state.rows("workloads")
            if w["deployment_namespace"] == namespace and w["deployment_name"] == name
        ]
    else:
        wanted = parts[0] if kind == "cluster" else None
        result["clusters"] = [c for c in state.rows("clusters") if wanted in (None, c["name"])]
        result["capacity"] = _capacity(state, wanted)
        if kind == "fleet":
            result["placements"] = state.rows("placements")
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    out.print(f"[bold]as of {when.isoformat()}[/bold]")
    if kind == "llmdeployment":
        dep = result["deployment"]
        if dep is None:
            out.print("the deployment did not exist then")
            return
        out.print(f"generation {dep['generation']}, spec: {escape(json.dumps(dep['spec'], sort_keys=True))}")
        out.print(f"last outcome: {escape(str(dep['last_outcome']))}; deleting: {dep['deleting']}")
        out.print(
            _table(
                "placements",
                ["CLUSTER", "ROLE", "REPLICAS", "GPU", "PLAN"],
                [[p["cluster"], p["role"], p["replicas"], p["gpu_type"], p["plan_id"]] for p in result["placements"]],
            )
        )
        out.print(
            _table(
                "workloads",
                ["CLUSTER", "REPLICAS", "READY"],
                [[w["cluster"], w["replicas"], w["ready_replicas"]] for w in result["workloads"]],
            )
        )
        return
    out.print(
        _table(
            "clusters",
            ["NAME", "HEALTHY", "REASON", "LABELS"],
            [[c["name"], c["healthy"], c["health_reason"], c["labels"]] for c in result["clusters"]],
        )
    )
    out.print(_table("GPU capacity", _CAPACITY_COLUMNS, _capacity_rows(result["capacity"])))


def _capacity(state: replay.MemoryTables, cluster: str | None) -> list[dict[str, Any]]:
    """The rows the report_gpu_capacity view gives, by the same rule (planner/capacity.py `gpu_capacity`), over
    folded-in-memory projections."""

    def of_cluster(table: str) -> list[dict[str, Any]]:
        return [r for r in state.rows(table) if cluster in (None, r["cluster"])]

    rows = gpu_capacity(*facts_of(of_cluster("nodes"), of_cluster("pods"), of_cluster("placements")))
    return [
        {
            "cluster": r.cluster,
            "gpu_product": r.gpu_product,
            # numeric(…, 1) as the view rounds it (half away from zero)
            "gpu_memory_gib": (Decimal(r.gpu_memory_bytes) / 2**30).quantize(Decimal("0.1"), ROUND_HALF_UP),
            "nodes": r.nodes,
            "total": r.total,
            "allocated": r.allocated,
            "reserved": r.reserved,
            "free": r.free,
            "unusable_nodes": r.unusable_nodes,
            "unusable_gpus": r.unusable_gpus,
        }
        for r in rows
    ]


_CAPACITY_COLUMNS = ["CLUSTER", "GPU", "MEMORY GiB", "NODES", "TOTAL", "ALLOCATED", "RESERVED", "FREE", "NOT USABLE"]


def _capacity_rows(rows: Any) -> list[list[Any]]:
    """Table rows for `status` and `history --as-of`: GPUs on nodes that do not count (NotReady, cordoned, or
    tainted against our pods) are shown apart, never as free."""
    return [
        [
            r["cluster"],
            r["gpu_product"],
            r["gpu_memory_gib"],
            r["nodes"],
            r["total"],
            r["allocated"],
            r["reserved"],
            r["free"],
            f"{r['unusable_gpus']} GPU(s) on {r['unusable_nodes']} node(s)" if r["unusable_nodes"] else "",
        ]
        for r in rows
    ]


# ---------------------------------------------------------------------------------------------- explain


async def explain(settings: Settings, target: str, *, cluster: str | None, as_json: bool) -> None:
    kind, parts = parse_target(target)
    if kind != "llmdeployment":
        raise OperatorError("explain takes llmdeployment/<namespace>/<name>")
    namespace, name = parts
    async with database(settings) as engine:
        origin = await _origin_of(engine, namespace, name, cluster)
        async with engine.connect() as conn:
            decisions = [
                e
                async for e in reader.read(
                    conn,
                    stream_ids=[deployment_stream(origin, namespace, name)],
                    types=["PlacementDecided", "ScaleDecided"],
                )
            ]
            scalings = [e for e in decisions if isinstance(e.event, ScaleDecided)][-5:]
            decisions = [e for e in decisions if isinstance(e.event, PlacementDecided)]
            dep = (
                (
                    await conn.execute(
                        select(tables.deployments).where(
                            tables.deployments.c.origin_cluster == origin,
                            tables.deployments.c.namespace == namespace,
                            tables.deployments.c.name == name,
                        )
                    )
                )
                .mappings()
                .first()
            )
    if not decisions:
        raise OperatorError(f"no placement decision recorded for {namespace}/{name} yet")
    last = decisions[-1]
    decision = last.event
    assert isinstance(decision, PlacementDecided)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "decided_at": last.recorded_at.isoformat(),
                    "decision": decision.model_dump(mode="json"),
                    "scaling": [e.event.model_dump(mode="json") for e in scalings],
                    "spec": dict(dep["spec"]) if dep else None,
                },
                indent=2,
            )
            + "\n"
        )
        return
    out.print(
        f"[bold]{escape(namespace)}/{escape(name)}[/bold] (origin {escape(origin)}), "
        f"decided {last.recorded_at:%Y-%m-%d %H:%M:%S} "
        f"for generation {decision.generation} by planner epoch {decision.epoch}"
    )
    out.print(f"outcome: [bold]{decision.outcome}[/bold] — {escape(decision.message)}")
    out.print(
        f"per replica: {decision.replica_gpus} GPU(s), {decision.replica_cpu_m}m CPU, "
        f"{decision.replica_memory_bytes // 2**20} MiB memory; desired replicas: {decision.desired_replicas}"
    )
    if dep is not None:
        out.print(f"placement policy: {escape(json.dumps(dep['spec'].get('placement', {}), sort_keys=True))}")
    out.print(
        _table(
            "decision",
            ["CLUSTER", "ROLE", "REPLICAS", "GPU", "NODES"],
            [
                [s.cluster, s.role, s.replicas, s.gpu_type, ", ".join(f"{n}×{c}" for n, c in s.nodes.items())]
                for s in decision.shares
            ],
        )
    )
    if decision.reasons:
        out.print("reasons:")
        for reason in decision.reasons:
            out.print(f"  - {escape(reason)}")
    _print_verdicts(decision)
    if scalings:
        out.print("scaling decisions (fleet autoscaler, latest last):")
        for stored in scalings:
            scaled = stored.event
            assert isinstance(scaled, ScaleDecided)
            out.print(f"  {stored.recorded_at:%Y-%m-%d %H:%M:%S}  {escape(scaled.reason)}")
            for metric, figures in sorted(scaled.metrics.items()):
                out.print(
                    f"      {metric}: value {figures.get('value')}, target {figures.get('target')}, "
                    f"proposal {figures.get('proposal')}"
                )
            if scaled.limits:
                out.print(f"      held back by: {escape('; '.join(scaled.limits))}")
    clusters = decision.inputs.get("clusters", {})
    out.print(
        _table(
            "inputs: clusters at decision time",
            ["CLUSTER", "HEALTHY", "LABELS", "FREE GPUs PER NODE"],
            [
                [
                    c,
                    info.get("healthy"),
                    info.get("labels"),
                    "; ".join(f"{p}: {v}" for p, v in info.get("free_gpus_per_node", {}).items()) or "-",
                ]
                for c, info in sorted(clusters.items())
            ],
        )
    )


def _print_verdicts(decision: PlacementDecided) -> None:
    """Every cluster the decision considered: where it placed, and why each other cluster got nothing."""
    if decision.verdicts:
        out.print(
            _table(
                "clusters considered",
                ["CLUSTER", "ELIGIBLE", "REPLICAS", "WHY NOT", "DETAIL"],
                [
                    [v.cluster, "yes" if v.eligible else "no", v.replicas, v.reason or "", v.detail]
                    for v in decision.verdicts
                ],
            )
        )
    elif decision.outcome in ("Placed", "PartiallyPlaced", "InsufficientGPU", "NoEligibleCluster"):
        out.print("clusters considered: not recorded (the decision predates per-cluster verdicts; see the reasons)")
    for released in decision.released:
        out.print(
            f"released: cluster {released.cluster} ({released.replicas} replica(s)): {released.reason} — "
            f"{released.detail}"
        )


# ------------------------------------------------------------------------------------------ status, reports


async def status(settings: Settings, *, as_json: bool) -> None:
    async with database(settings) as engine, engine.connect() as conn:
        clusters = (await conn.execute(select(tables.clusters).order_by(tables.clusters.c.name))).mappings().all()
        capacity = (await conn.execute(text("SELECT * FROM report_gpu_capacity"))).mappings().all()
        deployments = (
            (
                await conn.execute(
                    text(
                        "SELECT d.namespace, d.name, d.origin_cluster, d.spec->>'replicas' AS replicas,"
                        " b.last_outcome, coalesce(b.last_status->>'readyReplicas', '0') AS ready,"
                        " b.last_status->>'clusters' AS clusters FROM deployments d"
                        " LEFT JOIN deployment_plans b USING (origin_cluster, namespace, name) ORDER BY 1, 2"
                    )
                )
            )
            .mappings()
            .all()
        )
    now = datetime.now(UTC)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "clusters": [dict(c) for c in clusters],
                    "capacity": [dict(c) for c in capacity],
                    "deployments": [dict(d) for d in deployments],
                },
                default=str,
                indent=2,
            )
            + "\n"
        )
        return
    out.print(
        _table(
            "clusters",
            ["CLUSTER", "HEALTH", "LAST HEARTBEAT", "LABELS"],
            [
                [
                    c["name"],
                    "Healthy" if c["healthy"] else f"Unhealthy ({c['health_reason']})",
                    f"{(now - c['last_heartbeat_at']).total_seconds():.0f}s ago" if c["last_heartbeat_at"] else "never",
                    ",".join(f"{k}={v}" for k, v in sorted(c["labels"].items())),
                ]
                for c in clusters
            ],
        )
    )
    out.print(_table("GPUs", _CAPACITY_COLUMNS, _capacity_rows(capacity)))
    out.print(
        _table(
            "deployments",
            ["NAMESPACE", "NAME", "ORIGIN", "REPLICAS", "READY", "CLUSTERS", "STATUS"],
            [
                [
                    d["namespace"],
                    d["name"],
                    d["origin_cluster"],
                    d["replicas"],
                    d["ready"],
                    d["clusters"],
                    d["last_outcome"],
                ]
                for d in deployments
            ],
        )
    )


async def report(settings: Settings, view: str, *, as_csv: bool, limit: int | None) -> None:
    if view not in REPORTS:
        raise OperatorError(f"unknown report {view!r}: choose one of {', '.join(REPORTS)}")
    query = f"SELECT * FROM {REPORTS[view]}" + (f" LIMIT {int(limit)}" if limit else "")
    async with database(settings) as engine, engine.connect() as conn:
        result = await conn.execute(text(query))
        columns = list(result.keys())
        rows = [list(r) for r in result.all()]
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    out.print(_table(f"{view} ({REPORTS[view]})", [c.upper() for c in columns], rows))


async def rebuild(settings: Settings) -> None:
    async with database(settings) as engine:
        with out.status("rebuilding projections from the event log…"):
            async with engine.begin() as conn:
                stats = await replay.rebuild(conn)
    out.print(
        f"rebuilt projections from {stats.events_in_log} events ({stats.events_folded} folded after "
        f"skipping superseded snapshots) in {stats.seconds:.2f}s — {stats.rate:,.0f} events/s"
    )


async def dead_letters(settings: Settings, *, limit: int, as_json: bool) -> None:
    async with database(settings) as engine, engine.connect() as conn:
        rows = (
            (await conn.execute(select(tables.dead_letters).order_by(tables.dead_letters.c.id.desc()).limit(limit)))
            .mappings()
            .all()
        )
    items = [
        {
            "id": r["id"],
            "received_at": r["received_at"].isoformat(),
            "consumer": r["consumer"],
            "subject": r["subject"],
            "stream_sequence": r["stream_sequence"],
            "reason": r["reason"],
            "raw": bytes(r["raw"])[:200].decode("utf-8", "replace"),
        }
        for r in rows
    ]
    if as_json:
        sys.stdout.write(json.dumps(items, indent=2) + "\n")
        return
    out.print(
        _table(
            f"dead letters (newest {limit})",
            ["ID", "RECEIVED", "SUBJECT", "SEQ", "REASON", "MESSAGE"],
            [
                [i["id"], i["received_at"][:19], i["subject"], i["stream_sequence"], i["reason"], i["raw"]]
                for i in items
            ],
        )
    )


# --------------------------------------------------------------------------------------------- registration

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="LLMOP_DATABASE_URL", help="Postgres URL; unset: the embedded Postgres."),
]


def register(app: typer.Typer, *, settings_for: Any, run_async: Any) -> None:
    """Add the audit commands to the main CLI (`settings_for(**options)` builds Settings)."""

    @app.command("history")
    def history_command(
        target: Annotated[
            str, typer.Argument(help="llmdeployment/<namespace>/<name> (or cluster/<name>, fleet with --as-of)")
        ],
        cluster: Annotated[str | None, typer.Option(help="Origin cluster, if the name exists in several.")] = None,
        since: Annotated[str | None, typer.Option(help="Only events recorded at or after (ISO 8601).")] = None,
        until: Annotated[str | None, typer.Option(help="Only events recorded at or before (ISO 8601).")] = None,
        as_of: Annotated[str | None, typer.Option("--as-of", help="Show the state as it was at this time.")] = None,
        as_json: Json = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """The timeline of a deployment: spec changes and who made them, decisions and reasons, plans, applies,
        status — or, with --as-of, the state of a deployment, a cluster or the fleet at a past moment."""
        settings = settings_for(database_url=database_url)
        run_async(
            lambda: history(settings, target, cluster=cluster, since=since, until=until, as_json=as_json, as_of=as_of)
        )

    @app.command("explain")
    def explain_command(
        target: Annotated[str, typer.Argument(help="llmdeployment/<namespace>/<name>")],
        cluster: Annotated[str | None, typer.Option(help="Origin cluster, if the name exists in several.")] = None,
        as_json: Json = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Why a deployment runs where it runs: the last placement decision and its inputs."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: explain(settings, target, cluster=cluster, as_json=as_json))

    @app.command("status")
    def status_command(as_json: Json = False, database_url: DatabaseUrl = None) -> None:
        """The fleet at a glance: clusters and health, free GPUs by type, deployments and where they run."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: status(settings, as_json=as_json))

    @app.command("report")
    def report_command(
        view: Annotated[str, typer.Argument(help=f"One of: {', '.join(REPORTS)}.")],
        as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
        limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Fleet reports from the SQL views (the same views any SQL client can query)."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: report(settings, view, as_csv=as_csv, limit=limit))

    @app.command("replay")
    def replay_command(
        do_rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop and refold every projection.")] = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Rebuild the projections from the event log (the log itself is never changed)."""
        if not do_rebuild:
            raise typer.BadParameter("pass --rebuild to rebuild the projections")
        settings = settings_for(database_url=database_url)
        run_async(lambda: rebuild(settings))

    @app.command("dead-letters")
    def dead_letters_command(
        limit: Annotated[int, typer.Option(help="Newest N.")] = 50,
        as_json: Json = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Messages the planner could not use, with the reason (they are kept; consumption went on)."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: dead_letters(settings, limit=limit, as_json=as_json))
