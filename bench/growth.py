"""Event store growth: bytes per cluster per day at the benchmark fleet's churn, by event class.

Runs bench.scale (100 simulated clusters × 20 GPU nodes, the real planner process, real NATS and the embedded
Postgres; the steady phase is the benchmark fleet's churn: 5 scale changes per second and 1 node change per
second, heartbeats every 2 s) and measures the event log over the steady phase: rows and bytes recorded per class,
and the on-disk growth of the log (pg_total_relation_size of every partition of `events`, with their indexes and
TOAST, plus `event_ids` and `event_streams`). Figures are extrapolated to a day and divided by the clusters.

Load observations are off in the scale fleet (no model servers to scrape), but an agent publishes one per
deployment and cluster every `load_interval_seconds` (10 s by default) when they are on: their size is measured by
appending --load-samples real LoadObserved events through the recorder into the same database afterwards, and the
daily figure is given for the fleet's placed deployments at that interval.

Run: `python -m bench.growth [--deployments 1000] [--steady 120]` (other bench.scale options pass through); the
day is extrapolated from the ticks of churn actually sent (5 scale changes and a node change each), so a busy
machine sending slower does not change the figures; writes bench/results/growth.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

CLASSES = {
    "observations (nodes, pods, workloads)": "retention = 'observation' AND type <> 'LoadObserved'",
    "load observations": "type = 'LoadObserved'",
    "specs (LLMDeployment, LLMModel)": "retention <> 'observation' AND type IN ('ResourceObserved', 'ResourceDeleted')",
    "decisions (placement, scale)": "type IN ('PlacementDecided', 'ScaleDecided')",
    "plans issued": "type = 'PlanIssued'",
    "applies reported": "type = 'ApplyReported'",
    "other audit (cluster health, resyncs, refusals)": (
        "retention <> 'observation' AND type NOT IN ('ResourceObserved', 'ResourceDeleted', 'PlacementDecided', "
        "'ScaleDecided', 'PlanIssued', 'ApplyReported')"
    ),
}
"""Event classes as the retention policy sees them: the first two may be pruned, the rest are audit."""
PRUNABLE = ("observations (nodes, pods, workloads)", "load observations")
TUPLE_OVERHEAD = 28
"""Heap tuple header (23, aligned to 24) and its line pointer (4): what a row costs besides its data."""


@dataclass(frozen=True)
class Sample:
    at: float
    rows: dict[str, int]
    row_bytes: dict[str, int]
    """Per class: the rows' stored size (pg_column_size of the row, TOAST-compressed values as stored) plus
    TUPLE_OVERHEAD each."""
    disk_bytes: int
    """pg_total_relation_size over every partition of the log, event_ids and event_streams."""


async def sample(url: str) -> Sample:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows: dict[str, int] = {}
            row_bytes: dict[str, int] = {}
            for name, where in CLASSES.items():
                count, size = (
                    await conn.execute(
                        text(f"SELECT count(*), coalesce(sum(pg_column_size(e.*)), 0) FROM events e WHERE {where}")
                    )
                ).one()
                rows[name] = int(count)
                row_bytes[name] = int(size) + TUPLE_OVERHEAD * int(count)
            disk = await conn.scalar(
                text(
                    "SELECT (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('events')) "
                    "+ pg_total_relation_size('event_ids') + pg_total_relation_size('event_streams')"
                )
            )
    finally:
        await engine.dispose()
    return Sample(time.time(), rows, row_bytes, int(disk or 0))


async def settled(url: str, *, quiet: float = 5.0, limit: float = 600.0) -> Sample:
    """A sample once the log has stopped growing for `quiet` seconds (at most `limit`)."""
    last = await sample(url)
    deadline = time.time() + limit
    while time.time() < deadline:
        await anyio.sleep(quiet)
        now = await sample(url)
        if now.rows == last.rows:
            return now
        last = now
    return last


async def load_row_bytes(url: str, count: int) -> float:
    """Stored bytes on disk per LoadObserved appended through the recorder. Two rounds on the same streams (one
    per deployment and cluster, as the agents publish): the second is measured, so a stream's first row (its
    `event_streams` entry) is not counted against every observation."""
    from api.events import LoadObserved
    from store import recorder

    def round_of(n: int, at: datetime) -> list[LoadObserved]:
        return [
            LoadObserved(
                event_id=f"growth-load-{n}-{i}",
                cluster=f"c{i % 100:03d}",
                origin_cluster=f"c{(i * 7) % 100:03d}",
                namespace=f"ns-{i % 5}",
                name=f"llmd-{i:05d}",
                window_seconds=10.0,
                replicas=1 + i % 2,
                reporting=1 + i % 2,
                waiting=float(i % 4),
                running=float(i % 9),
                requests_per_second=12.5,
                kv_cache_usage=0.42,
                ttft_p90_seconds=0.31,
                ttft_buckets=[(0.1, 10.0), (0.25, 40.0), (0.5, 80.0), (1.0, 95.0), (float("inf"), 100.0)],
                observed_at=at,
            )
            for i in range(count)
        ]

    engine = create_async_engine(url)
    try:
        before = after = None
        for n in range(2):
            before = await sample(url)
            async with engine.begin() as conn:
                await recorder.lock_writers(conn)
                await recorder.append(conn, [(e, {}) for e in round_of(n, datetime.now(UTC))])
            after = await sample(url)
    finally:
        await engine.dispose()
    assert before is not None and after is not None
    return (after.disk_bytes - before.disk_bytes) / count


def growth(
    before: Sample,
    after: Sample,
    *,
    seconds: float,
    clusters: int,
    deployments: int,
    load_bytes: float,
    load_interval: float,
) -> dict[str, Any]:
    """Per class: rows and bytes per day for the fleet and per cluster, extrapolated from `seconds` of churn
    (the samples are taken before the churn and after what it caused was recorded)."""
    per_day = 86_400 / seconds
    added_rows = {k: after.rows[k] - before.rows[k] for k in CLASSES}
    added_bytes = {k: after.row_bytes[k] - before.row_bytes[k] for k in CLASSES}
    disk = after.disk_bytes - before.disk_bytes
    total_rows = sum(added_bytes.values()) or 1
    # Indexes, page fill and the id/version tables: spread over the classes in proportion to their row bytes.
    disk_factor = disk / total_rows
    out: dict[str, Any] = {"churn_seconds": seconds, "disk_factor": disk_factor, "classes": {}}
    for name in CLASSES:
        out["classes"][name] = {
            "rows_per_day_fleet": added_rows[name] * per_day,
            "row_bytes_per_day_per_cluster": added_bytes[name] * per_day / clusters,
            "disk_bytes_per_day_per_cluster": added_bytes[name] * disk_factor * per_day / clusters,
        }
    load_rows_per_day = deployments * 86_400 / load_interval
    out["load_at_interval"] = {
        "interval_seconds": load_interval,
        "deployments": deployments,
        "disk_bytes_per_row": load_bytes,
        "rows_per_day_fleet": load_rows_per_day,
        "disk_bytes_per_day_per_cluster": load_rows_per_day * load_bytes / clusters,
    }
    out["disk_bytes_per_day_per_cluster"] = disk * per_day / clusters
    out["prunable_share"] = sum(added_bytes[k] for k in PRUNABLE) / total_rows
    return out


def _mib(value: float) -> str:
    return f"{value / 2**20:,.2f} MiB"


def report(result: dict[str, Any]) -> None:
    from bench.common import print_table

    g = result["growth"]
    rows = [
        (
            name,
            f"{c['rows_per_day_fleet']:,.0f} rows/day (fleet)",
            _mib(c["disk_bytes_per_day_per_cluster"]),
            "prunable" if name in PRUNABLE else "audit",
        )
        for name, c in g["classes"].items()
    ]
    rows.append(("all classes, on disk", "-", _mib(g["disk_bytes_per_day_per_cluster"]), "-"))
    load = g["load_at_interval"]
    rows.append(
        (
            f"load observations if on ({load['interval_seconds']:.0f} s, {load['deployments']} deployments)",
            f"{load['rows_per_day_fleet']:,.0f} rows/day (fleet)",
            _mib(load["disk_bytes_per_day_per_cluster"]),
            "prunable",
        )
    )
    print_table(
        f"event store growth per cluster per day ({result['clusters']} clusters, steady churn for "
        f"{g['churn_seconds']:.0f} churn-seconds; disk = rows × {g['disk_factor']:.2f} for indexes, pages, ids)",
        rows,
    )


async def main(args: argparse.Namespace) -> int:
    from bench import scale
    from bench.common import write_result
    from bench.fleet import code_version

    holder: dict[str, Any] = {}

    async def before(url: str) -> None:
        # The creation phase's last plans, applies and status writes are not the steady churn: wait them out.
        holder["before"] = await settled(url)

    async def after(url: str, placed: int, ticks: int) -> None:
        # What the churn caused is all recorded when the log stops growing (the planner may lag on a busy
        # machine): bytes are what this measures, not speed.
        holder["after"] = await settled(url)
        holder["placed"] = placed
        holder["ticks"] = ticks
        holder["load_bytes"] = await load_row_bytes(url, args.load_samples)

    args.growth_hooks = (before, after)
    result = await scale.run(args)
    g = growth(
        holder["before"],
        holder["after"],
        # Each tick of the steady phase is the fleet's churn for one second (5 scale changes and a node change),
        # however long a busy machine took to send it: the day is 86,400 ticks.
        seconds=float(holder["ticks"]),
        clusters=args.clusters,
        deployments=holder["placed"],
        load_bytes=holder["load_bytes"],
        load_interval=args.load_interval,
    )
    out = {"clusters": args.clusters, "nodes": args.nodes, "deployments": args.deployments, "growth": g}
    report(out)
    path = write_result(args.result, {**out, "scale": result, "code": code_version()})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    from bench.fleet import run_main
    from bench.scale import parser as scale_parser

    parser = scale_parser()
    parser.description = __doc__
    parser.set_defaults(deployments=1000, steady=120.0, result="growth")
    parser.add_argument("--load-samples", type=int, default=5000, help="LoadObserved events appended to size one")
    parser.add_argument("--load-interval", type=float, default=10.0, help="the agents' load interval (s)")
    arguments = parser.parse_args()
    run_main(lambda: main(arguments))
