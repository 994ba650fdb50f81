"""Dashboard page time on the big database: the one `bench.scale` builds (100 clusters × 20 GPU nodes, 10,000
deployments placed by the real planner).

Method: `bench.scale` runs as usual (its servers, simulated clusters and planner); when it is done, before its
servers stop, the dashboard's app (`dashboard.app.create_app` on `store.browse.open_browse`, read-only) is asked
for each page --requests times in process through httpx's ASGI transport: the time measured is the server's
(queries + rendering), without a network or a browser. Pages: Fleet, Deployments (first page, a search, a GPU
filter), one deployment's page, Audit (the log, a type filter), a report as CSV, the live endpoint; and the
"as of" view (`history --as-of`'s fold) now and at 20 moments spread over the log (reported apart for moments in
the creation burst and after it), each starting from the projection snapshots the planner took during the run
with its default policy, with the fold of the whole log as the baseline.

Run: `python -m bench.dashboard [--deployments 10000] [--requests 30]` (bench.scale's options otherwise default,
with --steady 0), or `--url postgresql+asyncpg://...` to measure a database that exists; writes
bench/results/dashboard.json. Target (issue 19): each page ≤ 1 s server time, p99.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench import scale
from bench.common import print_table, write_result
from bench.fleet import code_version, run_main
from dashboard.app import AS_OF_TABLES, create_app
from llm_operator.audit import fleet_capacity
from llm_operator.gc_tuning import tune_gc
from store.browse import Browse, open_browse

TARGET_MS = 1000.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


BURST_RATE = 100
"""Events per second over the 10 s before a moment above which the log is in a burst (bench.scale's creation of
10,000 deployments records ~700/s; its steady phase a few dozen)."""


async def _rates(url: str, moments: list[datetime]) -> dict[datetime, float]:
    """The log's growth (events/s) over the 10 s before each moment."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            out = {}
            for moment in moments:
                count = await conn.scalar(
                    text("SELECT count(*) FROM events WHERE recorded_at > :a AND recorded_at <= :b"),
                    {"a": moment - timedelta(seconds=10), "b": moment},
                )
                out[moment] = int(count or 0) / 10
            return out
    finally:
        await engine.dispose()


async def _as_of_pages(
    client: httpx.AsyncClient, browse: Browse, url: str, *, moments: int, requests: int
) -> dict[str, dict[str, float]]:
    """The Audit page "as of": now (`requests` times) and at `moments` moments spread evenly over the log's recorded
    time, each fold starting from the projection snapshots the planner took while bench.scale ran; and, as the
    baseline in the same run, the fold of the whole log up to now without snapshots (what every look cost before)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            first, last = (await conn.execute(text("SELECT min(recorded_at), max(recorded_at) FROM events"))).one()
            snapshots_taken = int(await conn.scalar(text("SELECT count(*) FROM projection_snapshots")) or 0)
    finally:
        await engine.dispose()
    span = (last - first).total_seconds()
    past = [first + timedelta(seconds=span * (i + 1) / (moments + 1)) for i in range(moments)]
    rates = await _rates(url, past)
    out: dict[str, dict[str, float]] = {}
    groups = (
        ("audit as of now", [None] * requests),
        (f"audit as of past moments, log growing ≥ {BURST_RATE} events/s", [m for m in past if rates[m] >= BURST_RATE]),
        (f"audit as of past moments, log growing < {BURST_RATE} events/s", [m for m in past if rates[m] < BURST_RATE]),
    )
    for name, times_asked in groups:
        if not times_asked:
            continue
        times, folded, from_snapshot = [], [], 0
        for moment in times_asked:
            when = moment or datetime.now(UTC)
            started = time.perf_counter()
            response = await client.get("/audit", params={"as_of": when.isoformat()})
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and 'id="as-of"' in response.text, response.status_code
            # What that page folded (the same call the page makes, again, outside the timing).
            state = await browse.as_of(when, names=AS_OF_TABLES)
            folded.append(state.events_folded)
            from_snapshot += state.snapshot_position is not None
        out[name] = {
            "p50_ms": statistics.median(times),
            "p99_ms": _pct(times, 0.99),
            "max_ms": max(times),
            "bytes": len(response.content),
            "events_folded_p50": statistics.median(folded),
            "events_folded_max": max(folded),
            "from_snapshot": from_snapshot,
            "looks": len(times),
        }
        print(f"  {name}: {out[name]}", flush=True)
    started = time.perf_counter()
    whole = await browse.as_of(datetime.now(UTC), names=AS_OF_TABLES, from_snapshot=False)
    baseline = (time.perf_counter() - started) * 1000
    out["as of now, whole log folded (baseline, no snapshot)"] = {
        "p50_ms": baseline,
        "p99_ms": baseline,
        "max_ms": baseline,
        "bytes": 0,
        "events_folded_p50": whole.events_folded,
        "events_folded_max": whole.events_folded,
        "from_snapshot": 0,
        "looks": 1,
        "snapshots_in_store": snapshots_taken,
    }
    print(f"  baseline (whole fold, no snapshot): {baseline:.0f} ms, {whole.events_folded} events", flush=True)
    return out


async def measure(url: str, *, requests: int, as_of_moments: int = 20) -> dict[str, Any]:
    async with open_browse(url) as browse:
        app = create_app(browse=browse, capacity_as_of=fleet_capacity)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            total = (await browse.deployment_page(limit=1)).total
            page = await browse.deployment_page(limit=1, offset=total // 2)
            one = page.rows[0] if page.rows else None
            pages = {
                "fleet": "/fleet",
                "deployments": "/deployments",
                "deployments, search": "/deployments?search=ns-3/llmd-12",
                "deployments, GPU filter, page 10": "/deployments?gpu=NVIDIA-H100-80GB-HBM3&offset=1800",
                "one deployment": (
                    f"/deployment?origin={one.origin_cluster}&namespace={one.namespace}&name={one.name}"
                    if one
                    else "/deployment"
                ),
                "audit": "/audit",
                "audit, type filter": "/audit?type=PlacementDecided&report=placements",
                "report CSV (placements, every row)": "/audit/report/placements.csv",
                "live endpoint": "/api/head",
            }
            rows: dict[str, dict[str, float]] = {}
            for name, path in pages.items():
                times = []
                for _ in range(requests):
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                rows[name] = {
                    "p50_ms": statistics.median(times),
                    "p99_ms": _pct(times, 0.99),
                    "max_ms": max(times),
                    "bytes": len(response.content),
                }
                print(f"  {name}: {rows[name]}", flush=True)
            rows.update(await _as_of_pages(client, browse, url, moments=as_of_moments, requests=requests))
            events = await browse.head()
    return {"pages": rows, "events_in_log": events, "requests_per_page": requests}


def report(result: dict[str, Any]) -> None:
    print_table(
        f"dashboard pages on {result['events_in_log']} events ({result['requests_per_page']} requests each): "
        "server time p50 / p99 / max",
        [
            (
                name,
                f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} / {r['max_ms']:.0f} ms ({r['bytes'] / 1024:.0f} KiB)",
                f"≤ {TARGET_MS:.0f} ms p99",
                "PASS" if r["p99_ms"] <= TARGET_MS else "FAIL",
            )
            for name, r in result["pages"].items()
        ],
    )


async def main(args: argparse.Namespace) -> int:
    code = code_version()
    tune_gc()  # as `llm-operator dashboard` does (every CLI command does)
    if args.url:
        # An existing database (one bench.scale left, or a copy of a real one): measure only.
        dashboard = await measure(args.url, requests=args.requests)
        report(dashboard)
        print(f"written {write_result(args.result, {'dashboard': dashboard, 'url': 'given', 'code': code})}")
        return 0
    original = scale.summarise

    async def summarise_then_measure(*a: Any, **kw: Any) -> dict[str, Any]:
        # bench.scale has placed every deployment and its planner still runs: measure the pages on its database.
        result = await original(*a, **kw)
        result["dashboard"] = await measure(a[1], requests=args.requests)
        return result

    scale.summarise = summarise_then_measure
    result = await scale.run(args)
    dashboard = result["dashboard"]
    report(dashboard)
    path = write_result(args.result, {"dashboard": dashboard, "scale": _scale_summary(result), "code": code})
    print(f"written {path}")
    return 0


def _scale_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "dashboard" and not isinstance(v, list)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--steady", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--no-echo", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--logs", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=30, help="requests per page")
    parser.add_argument("--url", help="measure this database instead of building one with bench.scale")
    parser.add_argument("--result", default="dashboard", help="write bench/results/<this>.json")
    arguments = parser.parse_args()
    run_main(lambda: main(arguments))
