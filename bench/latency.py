"""Propagation latency on the real fleet, with Kubernetes' own controller latency measured in the same run.

The operator runs as in production (a planner process, an agent process per cluster, default settings) against
the bench fleet (3 kwok clusters with real kube-apiserver, kube-controller-manager and kube-scheduler), an
embedded NATS JetStream and Postgres. One at a time, N times:
1. an LLMDeployment (1 replica of a 1 × A100-80GB model) is server-side applied in the CPU-only cluster
   (b-cpu, the origin A); the only place it fits is the b-a100 cluster (the target B). Measured from just before
   the request to: its watcher's event on NATS, the planner's plan on NATS, the Deployment in B (watch on B),
   that Deployment Available in B, and Ready=True in the LLMDeployment's status in A (watch on A);
2. baseline, in the same cluster B, right after: a plain Deployment is created, and the time to its ReplicaSet
   (kube-controller-manager's deployment controller) is measured the same way — request to watch event. The
   ReplicaSet of the operator's Deployment is timed too (Deployment seen → ReplicaSet seen);
3. both are deleted, and the next round starts only when everything is gone (so rounds do not overlap).
The first rounds are warm-up and not counted. Latencies are wall-clock, client-side, percentiles with linear
interpolation. `kubectl` itself is not in the loop (its process start alone is ~100 ms); the request is the
server-side apply `kubectl apply --server-side` sends.

Run: `python -m bench.latency [--applies 200] [--warmup 5] [--keep-fleet] [--tls]` (about 15 minutes); writes
bench/results/latency.json and docs/latency.svg (`--plot-only` redraws the plot from the JSON); with `--tls`
(NATS and Postgres require TLS with client certificates, bench.tls) bench/results/latency-tls.json only.
Targets (issue 8): p99 ≤ 1 s to the target Deployment, and ≤ 3× the in-cluster baseline (p99 against p99).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import nats

from bench.common import RESULTS, print_table, servers, write_result
from bench.fleet import (
    API_VERSION,
    DEPLOYMENTS,
    LLMD,
    LLMM,
    REPLICA_SETS,
    Operator,
    Timeline,
    bench_fleet,
    code_version,
    condition,
    create_namespace,
    following,
    load_average,
    log_dir,
    percentile,
    run_main,
    say,
    standard_meter,
    summary,
    wait_fleet_known,
)
from kubeapi import Kube

NAMESPACE = "bench-latency"
MODEL = "bench-a100"
TARGET_P99_S = 1.0
TARGET_RATIO = 3.0
SVG = Path(__file__).resolve().parent.parent / "docs" / "latency.svg"


def model_body() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMModel",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "modelName": "bench",
            "image": "registry.example/bench:v1",
            "resources": {"cpu": "4", "memory": "16Gi", "gpu": {"count": 1, "types": ["NVIDIA-A100-SXM4-80GB"]}},
        },
    }


def llmd_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"modelRef": MODEL, "replicas": 1},
    }


def plain_deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "baseline"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "registry.example/plain:v1", "resources": {"requests": {"cpu": "10m"}}}
                    ]
                },
            },
        },
    }


def _available(obj: dict[str, Any]) -> bool:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return int(status.get("availableReplicas") or 0) >= int(spec.get("replicas") or 1) and int(
        status.get("observedGeneration") or 0
    ) >= int(obj.get("metadata", {}).get("generation") or 0)


async def rounds(
    origin: Kube, target: Kube, timeline: Timeline, count: int, start: int, *, timeout: float = 60.0
) -> list[dict[str, float]]:
    out = []
    for i in range(start, start + count):
        name, base = f"lat-{i:04d}", f"base-{i:04d}"
        t0 = time.time()
        await origin.apply(LLMD, llmd_body(name), field_manager="kubectl")
        acked = time.time()
        dep = await timeline.wait(name, "deployment", timeout)
        ready = await timeline.wait(name, "ready", timeout)
        available = await timeline.wait(name, "available", timeout)
        rs = await timeline.wait(name, "replicaset", timeout)

        b0 = time.time()
        await target.create(DEPLOYMENTS, plain_deployment(base))
        base_rs = await timeline.wait(base, "replicaset", timeout)
        base_seen = await timeline.wait(base, "deployment", timeout)

        await target.delete(DEPLOYMENTS, base, namespace=NAMESPACE)
        d0 = time.time()
        await origin.delete(LLMD, name, namespace=NAMESPACE)
        gone = await timeline.wait(name, "gone", timeout)
        await timeline.wait(name, "deployment-deleted", timeout)
        await timeline.wait(base, "deployment-deleted", timeout)
        published = timeline.get(name, "published")
        planned = timeline.get(name, "planned")
        row = {
            "apply_request": acked - t0,
            "to_target_deployment": dep - t0,
            "to_target_available": available - t0,
            "to_ready_in_origin": ready - t0,
            "ready_back_to_origin": ready - available,
            "kcm_replicaset_of_ours": rs - dep,
            "baseline_kcm_replicaset": base_rs - b0,
            "baseline_kcm_seen_to_replicaset": base_rs - base_seen,
            "cleanup": gone - d0,
        }
        if published is not None and planned is not None:
            row.update(
                {
                    "stage_watch_and_publish": published - t0,
                    "stage_planner": planned - published,
                    "stage_applier": dep - planned,
                }
            )
        out.append(row)
        if (i - start + 1) % 20 == 0:
            say(f"{i - start + 1}/{count} rounds; last: target {row['to_target_deployment'] * 1000:.0f} ms")
    return out


def _handlers(timeline: Timeline) -> tuple[Any, Any, Any]:
    def deployments(at: float, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            timeline.mark(name, "deployment-deleted", at)
            return
        timeline.mark(name, "deployment", at)
        if _available(obj):
            timeline.mark(name, "available", at)

    def replica_sets(at: float, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "LISTED"):
            for owner in obj["metadata"].get("ownerReferences") or []:
                if owner.get("kind") == "Deployment":
                    timeline.mark(owner["name"], "replicaset", at)

    def llmds(at: float, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            timeline.mark(name, "gone", at)
        elif condition(obj, "Ready") == "True":
            timeline.mark(name, "ready", at)

    return deployments, replica_sets, llmds


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        bench_fleet(keep=args.keep_fleet) as fleet,
        servers(auth=not args.no_auth, tls=args.tls) as hub,
        log_dir(args.logs) as logs,
    ):
        origin, target = await fleet.kube("cpu"), await fleet.kube("a100")
        mixed = await fleet.kube("mixed")
        operator = Operator(fleet, hub.nats.url, hub.postgres.url("bench"), Path(logs), settings=hub.tls_env())
        operator.identities_dir = hub.grant(operator.prefix, [fleet.name(r) for r in fleet.clusters])
        seed = hub.admin_seed
        nc = await nats.connect(hub.nats.url, nkeys_seed=str(seed) if seed else None, tls=hub.client_ssl())
        try:
            await create_namespace([origin, target, mixed], NAMESPACE)
            await operator.start()
            await wait_fleet_known(
                hub.postgres.url("bench"), [fleet.name(r) for r in fleet.clusters], tls=hub.client_ssl()
            )
            say("operator running: planner + 3 agents (default settings)")
            timeline = Timeline()

            async def on_event(msg: Any) -> None:
                at = time.time()
                event = json.loads(msg.data)
                if event.get("type") == "ResourceObserved" and event.get("kind") == "LLMDeployment":
                    timeline.mark(event["name"], "published", at)

            async def on_plan(msg: Any) -> None:
                at = time.time()
                plan = json.loads(msg.data)
                if plan.get("kind") == "Workload" and plan.get("replicas", 0) > 0:
                    timeline.mark(plan["deployment"]["name"], "planned", at)

            await nc.subscribe(f"{operator.prefix}.events.{fleet.name('cpu')}", cb=on_event)
            await nc.subscribe(f"{operator.prefix}.plans.{fleet.name('a100')}", cb=on_plan)
            await origin.apply(LLMM, model_body(), field_manager="kubectl")
            deployments, replica_sets, llmds = _handlers(timeline)
            watches = [
                (target, DEPLOYMENTS, deployments, NAMESPACE, None),
                (target, REPLICA_SETS, replica_sets, NAMESPACE, None),
                (origin, LLMD, llmds, NAMESPACE, None),
            ]
            async with following(watches):
                say(f"warm-up: {args.warmup} rounds")
                await rounds(origin, target, timeline, args.warmup, 0)
                meter = standard_meter(fleet, operator, hub)
                before, started, load_before = meter.sample(), time.time(), load_average()
                say(f"measuring: {args.applies} rounds")
                measured = await rounds(origin, target, timeline, args.applies, args.warmup)
                elapsed = time.time() - started
                cpu = meter.delta(before, meter.sample(), elapsed)
        finally:
            await nc.close()
            operator.stop()
            for kube in (origin, target, mixed):
                await kube.close()
    return {
        "rounds": measured,
        "seconds": elapsed,
        "cpu_cores": cpu,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def report(raw: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, float]] = raw["rounds"]
    figures = {key: summary([r[key] for r in rows if key in r]) for key in rows[0]}
    ours, base = figures["to_target_deployment"], figures["baseline_kcm_replicaset"]
    ratios = {q: ours[q] / base[q] for q in ("p50", "p95", "p99")}
    targets = {
        "p99 to the target Deployment (ms)": {"value": ours["p99"], "target": TARGET_P99_S * 1000},
        "p99 ours / p99 kube-controller-manager": {"value": ratios["p99"], "target": TARGET_RATIO},
    }
    for t in targets.values():
        t["pass"] = t["value"] <= t["target"]

    def ms(figure: dict[str, float]) -> str:
        return f"{figure['p50']:.0f} / {figure['p95']:.0f} / {figure['p99']:.0f} ms"

    table = [
        ("apply → Deployment in B (p50/p95/p99)", ms(ours), "p99 ≤ 1000 ms", "PASS" if ours["p99"] <= 1000 else "FAIL"),
        ("baseline: Deployment → ReplicaSet (kcm)", ms(base), "-", "-"),
        (
            "ratio ours / baseline (p50, p95, p99)",
            f"{ratios['p50']:.1f}× / {ratios['p95']:.1f}× / {ratios['p99']:.1f}×",
            "p99 ≤ 3×",
            "PASS" if ratios["p99"] <= TARGET_RATIO else "FAIL",
        ),
        ("  baseline watch to watch (seen → RS seen)", ms(figures["baseline_kcm_seen_to_replicaset"]), "-", "-"),
        ("kcm on our Deployments (seen → RS seen)", ms(figures["kcm_replicaset_of_ours"]), "-", "-"),
        ("  stage: watch + publish (A)", ms(figures.get("stage_watch_and_publish", {})), "-", "-")
        if "stage_watch_and_publish" in figures
        else ("  stage: watch + publish (A)", "n/a", "-", "-"),
        ("  stage: planner (NATS → plan on NATS)", ms(figures["stage_planner"]), "-", "-")
        if "stage_planner" in figures
        else ("  stage: planner", "n/a", "-", "-"),
        ("  stage: applier (plan → Deployment seen)", ms(figures["stage_applier"]), "-", "-")
        if "stage_applier" in figures
        else ("  stage: applier", "n/a", "-", "-"),
        ("apply → Deployment Available in B", ms(figures["to_target_available"]), "-", "-"),
        ("apply → Ready=True in A's status", ms(figures["to_ready_in_origin"]), "-", "-"),
        ("  of which Available in B → Ready in A", ms(figures["ready_back_to_origin"]), "-", "-"),
        ("delete → LLMDeployment gone (cleanup)", ms(figures["cleanup"]), "-", "-"),
    ]
    print_table(f"latency benchmark: {len(rows)} applies (after warm-up), one at a time, bench fleet", table)
    return {"figures_ms": figures, "ratios": ratios, "targets": targets}


# ------------------------------------------------------------------------------------------------- the plot


def plot(rows: list[dict[str, float]], path: Path) -> None:
    """An SVG with the two latency distributions as empirical CDFs on a log time axis."""
    ours = sorted(r["to_target_deployment"] * 1000 for r in rows)
    base = sorted(r["baseline_kcm_replicaset"] * 1000 for r in rows)
    ready = sorted(r["to_ready_in_origin"] * 1000 for r in rows)
    width, height, left, right, top, bottom = 760, 470, 70, 20, 40, 130
    lo = 10 ** math.floor(math.log10(max(0.1, min(base + ours))))
    top_value = max(ours + base + ready)
    decade_hi = 10 ** math.floor(math.log10(top_value))
    hi = next(decade_hi * m for m in (1, 2, 5, 10) if decade_hi * m >= top_value)
    span = math.log10(hi) - math.log10(lo)

    def x(ms: float) -> float:
        return left + (math.log10(max(ms, lo)) - math.log10(lo)) / span * (width - left - right)

    def y(frac: float) -> float:
        return top + (1 - frac) * (height - top - bottom)

    def cdf(values: list[float], color: str, label: str, row: int) -> str:
        points = [f"{x(values[0]):.1f},{y(0):.1f}"]
        for i, v in enumerate(values):
            points.append(f"{x(v):.1f},{y(i / len(values)):.1f}")
            points.append(f"{x(v):.1f},{y((i + 1) / len(values)):.1f}")
        p50, p99 = percentile(values, 50), percentile(values, 99)
        legend_y = height - 62 + row * 20
        return (
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(points)}"/>'
            f'<line x1="{left + 12}" y1="{legend_y - 4}" x2="{left + 36}" y2="{legend_y - 4}" '
            f'stroke="{color}" stroke-width="3"/>'
            f'<text x="{left + 42}" y="{legend_y}" font-size="12">{label}: p50 {p50:.0f} ms, p99 {p99:.0f} ms</text>'
        )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" font-size="15" text-anchor="middle">Propagation latency, '
        f"{len(ours)} applies (empirical CDF)</text>",
    ]
    decade = lo
    while decade <= hi:
        for m in (1, 2, 5):
            v = decade * m
            if v > hi:
                break
            gx = x(v)
            parts.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{height - bottom}" stroke="#ddd"/>')
            text = f"{v:g} ms" if v < 1000 else f"{v / 1000:g} s"
            parts.append(
                f'<text x="{gx:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{text}</text>'
            )
        decade *= 10
    for frac in (0, 0.25, 0.5, 0.75, 0.95, 1):
        gy = y(frac)
        parts.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{width - right}" y2="{gy:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" font-size="11" text-anchor="end">{frac:g}</text>')
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#888"/>'
    )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - bottom + 36}" font-size="12" text-anchor="middle">'
        "time from the request (log scale)</text>"
    )
    parts.append(
        f'<text x="16" y="{(top + height - bottom) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 16 {(top + height - bottom) / 2})">fraction of applies</text>'
    )
    if lo <= TARGET_P99_S * 1000 <= hi:
        tx = x(TARGET_P99_S * 1000)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{height - bottom}" stroke="#2ca02c" '
            'stroke-dasharray="5,4" stroke-width="1.5"/>'
            f'<text x="{tx + 5:.1f}" y="{y(0.5):.1f}" font-size="11" fill="#2ca02c">target:</text>'
            f'<text x="{tx + 5:.1f}" y="{y(0.5) + 14:.1f}" font-size="11" fill="#2ca02c">p99 ≤ 1 s</text>'
            f'<text x="{tx + 5:.1f}" y="{y(0.5) + 28:.1f}" font-size="11" fill="#2ca02c">(Deployment)</text>'
        )
    parts.append(cdf(base, "#888888", "kube-controller-manager: Deployment → ReplicaSet (baseline)", 0))
    parts.append(cdf(ours, "#1f77b4", "llm-operator: apply in A → Deployment in B", 1))
    parts.append(cdf(ready, "#d62728", "llm-operator: apply in A → Ready in A's status", 2))
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


async def main(args: argparse.Namespace) -> int:
    if args.plot_only:
        raw = json.loads((RESULTS / "latency.json").read_text())["raw"]
        plot(raw["rounds"], SVG)
        print(f"written {SVG}")
        return 0
    code = code_version()
    raw = await run(args)
    figures = report(raw)
    # A comparison run (TLS) is kept next to the reference run, not over it.
    name = "latency-tls" if args.tls else "latency"
    if not args.tls:
        plot(raw["rounds"], SVG)
    path = write_result(
        name, {**figures, "applies": args.applies, "warmup": args.warmup, "tls": args.tls, "code": code, "raw": raw}
    )
    print(f"written {path}" + ("" if args.tls else f" and {SVG}"))
    return 0 if all(t["pass"] for t in figures["targets"].values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--applies", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--keep-fleet", action="store_true", help="leave the bench fleet running for the next run")
    parser.add_argument("--logs", type=Path, help="keep the operator's logs in this directory")
    parser.add_argument("--no-auth", action="store_true", help="NATS without authentication (to compare)")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="NATS and Postgres with TLS and client certificates (writes bench/results/latency-tls.json)",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw docs/latency.svg from the last results")
    arguments = parser.parse_args()
    run_main(lambda: main(arguments))
