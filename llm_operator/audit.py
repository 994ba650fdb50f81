"""Audit and reporting commands: history, explain, status, report, replay, dead-letters.

Guarantees: read-only against the store, except `replay --rebuild`, which rewrites projections only (never the
log) inside one transaction that holds the writers' lock; every command prints a table for people and, where it
says so, JSON or CSV for scripts. The reads are the store's (`store.reports`, typed rows); this module only picks
and presents them. The commands' options are in `llm_operator.audit_cli`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from api.events import PlacementDecided, ScaleDecided
from llm_operator.runtime import OperatorError, hub_urls
from llm_operator.settings import Settings
from llm_operator.timeline import timeline
from planner.capacity import TERMINATED_PHASES, gpu_capacity
from planner.memory import facts_of
from store import replay
from store.errors import StoreError
from store.reports import VIEWS, Reports, open_reports
from store.retention import horizon_note
from store.rows import BoundPodRow, NodeRow, PlacementRow

out = Console()

REPORTS = VIEWS


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[Reports]:
    async with hub_urls(settings, need_nats=False) as (_, url):
        try:
            async with open_reports(url) as reports:
                yield reports
        except StoreError as exc:
            raise OperatorError(str(exc)) from exc


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


async def _origin_of(reports: Reports, namespace: str, name: str, cluster: str | None) -> str:
    if cluster:
        return cluster
    origins = await reports.origins(namespace, name)
    if not origins:
        raise OperatorError(f"no history for llmdeployment {namespace}/{name}")
    if len(origins) > 1:
        raise OperatorError(f"{namespace}/{name} exists in several clusters ({', '.join(origins)}): pass --cluster")
    return origins[0]


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
    async with database(settings) as reports:
        when = parse_time(as_of)
        if when is not None:
            await _as_of(reports, kind, parts, when, cluster, as_json)
            return
        if kind != "llmdeployment":
            raise OperatorError("history takes llmdeployment/<namespace>/<name> (use --as-of for clusters/fleet)")
        namespace, name = parts
        origin = await _origin_of(reports, namespace, name, cluster)
        events = await reports.history(origin, namespace, name, since=parse_time(since), until=parse_time(until))
        kept_from = await reports.horizon()
    lines = timeline(events)
    start = parse_time(since)
    # The timeline holds the workloads' observations too: say so when it reaches back past what is kept.
    reaches_past = kept_from is not None and (start is None or start < kept_from)
    if as_json:
        sys.stdout.write(json.dumps([line.as_dict() for line in lines], indent=2) + "\n")
        if reaches_past and kept_from is not None:
            sys.stderr.write(f"note: {horizon_note(kept_from)}\n")
        return
    if reaches_past and kept_from is not None:
        out.print(Text(f"note: {horizon_note(kept_from)}", style="yellow"))
    rows = [[line.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], line.cluster, line.kind, line.summary] for line in lines]
    out.print(
        _table(f"llmdeployment {namespace}/{name} (origin {origin})", ["TIME", "CLUSTER", "WHAT", "DETAILS"], rows)
    )


async def _as_of(
    reports: Reports, kind: str, parts: list[str], when: datetime, cluster: str | None, as_json: bool
) -> None:
    state = await reports.as_of(when, names=DEPLOYMENT_TABLES if kind == "llmdeployment" else CAPACITY_TABLES)
    kept_from = await reports.horizon()
    incomplete = kept_from is not None and when < kept_from
    result: dict[str, Any] = {
        "as_of": when.isoformat(),
        # How the state was made: from the projection snapshot at this log position (None: from the start), and
        # how many events were folded after it.
        "fold": {"snapshot_position": state.snapshot_position, "events_folded": state.events_folded},
        # complete: every fact recorded up to `as_of` is in the log; otherwise `note` says what is missing.
        "retention": {
            "observations_kept_from": kept_from.isoformat() if kept_from else None,
            "complete": not incomplete,
            "note": horizon_note(kept_from) if incomplete and kept_from is not None else None,
        },
    }
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
    if incomplete and kept_from is not None:
        out.print(Text(f"note: {horizon_note(kept_from)}", style="yellow"))
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


CAPACITY_TABLES = ("clusters", "nodes", "pods", "placements")
"""The projections the capacity rule and a fleet's or cluster's look at a past moment read."""
DEPLOYMENT_TABLES = ("deployments", "deployment_plans", "placements", "workloads")
"""The projections a deployment's look at a past moment reads."""


def _capacity(state: replay.MemoryTables, cluster: str | None) -> list[dict[str, Any]]:
    """The rows the report_gpu_capacity view gives, by the same rule (planner/capacity.py `gpu_capacity`), over
    folded-in-memory projections."""

    def of_cluster(table: str) -> Iterable[dict[str, Any]]:
        # In no order: the rule sums per node and sorts what it returns.
        rows = state.tables[table].rows.values()
        return rows if cluster is None else [r for r in rows if r["cluster"] == cluster]

    nodes = [NodeRow.from_mapping(n) for n in of_cluster("nodes")]
    # What the planner's query selects: pods bound to a node and not terminated.
    pods = [
        BoundPodRow.from_mapping(p)
        for p in of_cluster("pods")
        if p["node_name"] is not None and p.get("phase") not in TERMINATED_PHASES
    ]
    placements = [PlacementRow.from_mapping(p) for p in of_cluster("placements")]
    rows = gpu_capacity(*facts_of(nodes, pods, placements))
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


def fleet_capacity(state: replay.MemoryTables) -> list[dict[str, Any]]:
    """The fleet's GPU capacity rows at the moment `state` was folded to (what `history fleet --as-of` shows);
    the dashboard's "as of" view is given this function."""
    return _capacity(state, None)


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
    async with database(settings) as reports:
        origin = await _origin_of(reports, namespace, name, cluster)
        decisions = await reports.history(origin, namespace, name, types=["PlacementDecided", "ScaleDecided"])
        scalings = [e for e in decisions if isinstance(e.event, ScaleDecided)][-5:]
        decisions = [e for e in decisions if isinstance(e.event, PlacementDecided)]
        spec = await reports.deployment_spec(origin, namespace, name)
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
                    "spec": spec,
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
    if spec is not None:
        out.print(f"placement policy: {escape(json.dumps(spec.get('placement', {}), sort_keys=True))}")
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
    async with database(settings) as reports:
        clusters = await reports.clusters()
        networks = await reports.cluster_networks()
        capacity = await reports.gpu_capacity()
        deployments = await reports.deployment_summaries()
    now = datetime.now(UTC)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "clusters": [
                        {
                            **dataclasses.asdict(c),
                            "network": n.model_dump(mode="json") if (n := networks.get(c.name)) else None,
                        }
                        for c in clusters
                    ],
                    "capacity": [dataclasses.asdict(c) for c in capacity],
                    "deployments": [dataclasses.asdict(d) for d in deployments],
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
            ["CLUSTER", "HEALTH", "LAST HEARTBEAT", "NETWORK", "POD RANGES", "LABELS"],
            [
                [
                    c.name,
                    "Healthy" if c.healthy else f"Unhealthy ({c.health_reason})",
                    f"{(now - c.last_heartbeat_at).total_seconds():.0f}s ago" if c.last_heartbeat_at else "never",
                    # How other clusters reach its replicas, as its agent declared it (docs/deploy.md).
                    networks[c.name].mode if c.name in networks else "undeclared",
                    ",".join(networks[c.name].pod_cidrs) if c.name in networks else "",
                    ",".join(f"{k}={v}" for k, v in sorted(c.labels.items())),
                ]
                for c in clusters
            ],
        )
    )
    out.print(_table("GPUs", _CAPACITY_COLUMNS, _capacity_rows([dataclasses.asdict(c) for c in capacity])))
    out.print(
        _table(
            "deployments",
            ["NAMESPACE", "NAME", "ORIGIN", "REPLICAS", "READY", "CLUSTERS", "STATUS"],
            [
                [d.namespace, d.name, d.origin_cluster, d.replicas, d.ready, d.clusters, d.last_outcome]
                for d in deployments
            ],
        )
    )


async def report(settings: Settings, view: str, *, as_csv: bool, limit: int | None) -> None:
    if view not in REPORTS:
        raise OperatorError(f"unknown report {view!r}: choose one of {', '.join(REPORTS)}")
    async with database(settings) as reports:
        found = await reports.report(view, limit=limit)
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(found.columns)
        writer.writerows(found.rows)
        return
    out.print(_table(f"{view} ({REPORTS[view]})", [c.upper() for c in found.columns], [list(r) for r in found.rows]))


async def rebuild(settings: Settings) -> None:
    async with database(settings) as reports:
        with out.status("rebuilding projections from the event log…"):
            stats = await reports.rebuild()
    out.print(
        f"rebuilt projections from {stats.events_in_log} events ({stats.events_folded} folded after "
        f"skipping superseded snapshots) in {stats.seconds:.2f}s — {stats.rate:,.0f} events/s"
    )
    if stats.observations_kept_from is not None:
        out.print(
            f"observations before {stats.observations_kept_from.isoformat()} were pruned by the retention policy: "
            "the current state is rebuilt exactly (the last observation of each object was kept); specs, "
            "placements, decisions, plans and applies are complete"
        )


async def dead_letters(settings: Settings, *, limit: int, as_json: bool) -> None:
    async with database(settings) as reports:
        letters = await reports.dead_letters(limit=limit)
    items: list[dict[str, Any]] = [
        {
            "id": r.id,
            "received_at": r.received_at.isoformat(),
            "consumer": r.consumer,
            "subject": r.subject,
            "stream_sequence": r.stream_sequence,
            "reason": r.reason,
            "raw": r.raw[:200].decode("utf-8", "replace"),
        }
        for r in letters
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
