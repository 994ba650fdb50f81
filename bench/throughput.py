"""Throughput on the real fleet: sustained LLMDeployment changes per second across 3 clusters, raised step by step
until the pipeline lags, with the stage that saturates named from the components' own metrics.

The operator runs as in production (planner process + one agent process per cluster, default settings). K
LLMDeployments per cluster (a small CPU model, 1 replica each) are created and settled first. Then, for each
rate R of a ladder, a separate load process (so its CPU is not the operator's) sends R changes per second for D
seconds, open loop, round-robin over all deployments in the 3 clusters: each change is a merge patch of
`spec.networkPolicy.allowedSources` carrying a new revision number, which the operator must carry to the
NetworkPolicy in the target cluster (a real spec change: new generation, new plan, server-side apply, new status;
no pod restarts, so the fleet's scheduler is not what is measured). A change is done when the target's
NetworkPolicy shows its revision or a later one (level-based: a later change supersedes an earlier one).

Per step, from the bench's own stamps: latency of each change end to end and per stage (patch → the watcher's
event on NATS → the planner's plan on NATS → the NetworkPolicy seen in the target); from the components'
/metrics and JetStream: planner consumer lag, planner busy time (Σ step seconds / wall), applier busy time
(Σ apply seconds / wall) and plan backlog per cluster, events published by the watchers; CPU per process group.
A step LAGS when its changes are not all done within the drain time, or the latency of its last quarter is more
than twice that of its first quarter plus 0.5 s (a queue growing for as long as the load lasts). The saturation
point is the highest rate that does not lag; the bottleneck is the stage whose queue grows there.

The ladder stops after two lagging rates in a row (--keep-going runs it all).

Run: `python -m bench.throughput [--per-cluster 30] [--rates 1,2,5,10,20,40,80] [--duration 20] [--keep-fleet]`;
writes bench/results/throughput.json. No fixed target in the issue: it asks where the pipeline saturates.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import nats

from bench.common import print_table, servers, write_result
from bench.fleet import (
    API_VERSION,
    LLMD,
    LLMM,
    Metrics,
    Operator,
    bench_fleet,
    code_version,
    create_namespace,
    following,
    load_average,
    log_dir,
    percentile,
    run_main,
    say,
    standard_meter,
    wait_until,
)
from kubeapi import RESOURCES, Kube
from llm_operator.runtime import Member, connect_kube

NAMESPACE = "bench-throughput"
MODEL = "tiny"
ROLES = ("a100", "mixed", "cpu")
NETWORK_POLICIES = RESOURCES["NetworkPolicy"]
DRAIN_S = 30.0


def model_body() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMModel",
        "metadata": {"name": MODEL, "namespace": NAMESPACE},
        "spec": {
            "modelName": "tiny",
            "image": "registry.example/tiny:v1",
            "resources": {"cpu": "100m", "memory": "128Mi"},
        },
    }


def sources(rev: int) -> dict[str, Any]:
    return {"networkPolicy": {"allowedSources": [{"podSelector": {"matchLabels": {"rev": str(rev)}}}]}}


def llmd_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"modelRef": MODEL, "replicas": 1, **sources(0)},
    }


def names(per_cluster: int) -> list[tuple[str, str]]:
    """(origin role, name) in the order the load goes round: one cluster after the other."""
    return [(role, f"tp-{role}-{i:03d}") for i in range(per_cluster) for role in ROLES]


def _rev_of_sources(spec: dict[str, Any] | None) -> int | None:
    """The revision in a spec as the apiserver holds it (camelCase) or as a plan carries it (snake_case)."""
    spec = spec or {}
    try:
        if "networkPolicy" in spec:
            return int(spec["networkPolicy"]["allowedSources"][0]["podSelector"]["matchLabels"]["rev"])
        return int(spec["network_policy"]["allowed_sources"][0]["pod_selector"]["match_labels"]["rev"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _rev_of_policy(obj: dict[str, Any]) -> int | None:
    try:
        peers = obj["spec"]["ingress"][0]["from"]
        return max(int(p["podSelector"]["matchLabels"]["rev"]) for p in peers if "podSelector" in p)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class Progress:
    """For each deployment, (time, revision) as each stage first showed it, kept sorted by time."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, list[tuple[float, int]]]] = defaultdict(lambda: defaultdict(list))

    def mark(self, stage: str, name: str, at: float, rev: int | None) -> None:
        if rev is None:
            return
        entries = self.seen[stage][name]
        if not entries or rev > entries[-1][1]:
            entries.append((at, rev))

    def done_at(self, stage: str, name: str, rev: int) -> float | None:
        """The first time the stage showed `rev` or a later revision for the deployment."""
        entries = self.seen[stage][name]
        revs = [r for _, r in entries]
        i = bisect.bisect_left(revs, rev)
        return entries[i][0] if i < len(entries) else None

    def latest(self, stage: str, name: str) -> int:
        entries = self.seen[stage][name]
        return entries[-1][1] if entries else -1


# --------------------------------------------------------------------------------------------- load process


async def generate(args: argparse.Namespace) -> None:
    """The load process: `rate` patches per second for `duration` seconds, open loop; writes what it sent."""
    roles = dict(item.split("=", 1) for item in args.contexts.split(","))
    kubes = {
        role: await connect_kube(Member(name=role, context=context), kubeconfig=Path(args.kubeconfig))
        for role, context in roles.items()
    }
    targets = names(args.per_cluster)
    records: list[tuple[float, float, str, int, bool]] = []
    in_flight = anyio.Semaphore(128)

    async def patch(role: str, name: str, rev: int) -> None:
        async with in_flight:
            sent = time.time()
            try:
                await kubes[role].merge_patch(
                    LLMD, name, {"spec": sources(rev)}, namespace=NAMESPACE, field_manager="bench-load"
                )
                ok = True
            except Exception:  # any failure counts as a change not made
                ok = False
            records.append((sent, time.time(), name, rev, ok))

    total = int(args.rate * args.duration)
    start = time.time() + 0.2
    async with anyio.create_task_group() as tg:
        for i in range(total):
            delay = start + i / args.rate - time.time()
            if delay > 0:
                await anyio.sleep(delay)
            role, name = targets[(args.start_rev + i) % len(targets)]
            tg.start_soon(patch, role, name, args.start_rev + i + 1)
    for kube in kubes.values():
        await kube.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    Path(args.out).write_text(json.dumps({"start": start, "records": records, "cpu_seconds": cpu}))  # noqa: ASYNC240


# --------------------------------------------------------------------------------------------- the benchmark


async def sample_loop(operator: Operator, js: Any, prefix: str, fleet_names: dict[str, str], out: list[Any]) -> None:
    """Every second: planner consumer lag and applier plan backlog (JetStream consumer pending + unacked)."""
    assert operator.planner is not None
    while True:
        at = time.time()
        try:
            planner = await operator.planner.metrics()
            lag = planner.value("llmop_planner_consumer_lag")
        except Exception:  # a missed sample is not a result
            lag = float("nan")
        backlog = {}
        for role, cluster in fleet_names.items():
            try:
                info = await js.consumer_info(f"{prefix.upper()}_PLANS", f"applier-{cluster}")
                backlog[role] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            except Exception:  # the consumer may not exist yet
                backlog[role] = 0
        out.append((at, lag, backlog))
        await anyio.sleep(1.0)


async def scrape(operator: Operator) -> dict[str, Metrics]:
    out = {}
    for component in operator.components():
        out[component.name] = await component.metrics()
    return out


def metric_rates(before: dict[str, Metrics], after: dict[str, Metrics], seconds: float) -> dict[str, Any]:
    p0, p1 = before["planner"], after["planner"]

    def d(m0: Metrics, m1: Metrics, name: str, **labels: str) -> float:
        return m1.value(name, **labels) - m0.value(name, **labels)

    out: dict[str, Any] = {
        "planner_events_recorded_per_s": d(p0, p1, "llmop_planner_events_total", result="recorded") / seconds,
        "planner_steps_per_s": d(p0, p1, "llmop_planner_step_seconds_count") / seconds,
        "planner_busy": d(p0, p1, "llmop_planner_step_seconds_sum") / seconds,
        "planner_plans_per_s": d(p0, p1, "llmop_planner_plans_total") / seconds,
        "planner_decisions_per_s": d(p0, p1, "llmop_planner_decisions_total") / seconds,
        "watcher_published_per_s": {},
        "applier_plans_per_s": {},
        "applier_busy": {},
        "applier_retries": {},
    }
    steps = d(p0, p1, "llmop_planner_step_seconds_count")
    out["planner_mean_step_ms"] = 1000 * d(p0, p1, "llmop_planner_step_seconds_sum") / steps if steps else 0.0
    for role in ROLES:
        a0, a1 = before[f"agent-{role}"], after[f"agent-{role}"]
        out["watcher_published_per_s"][role] = d(a0, a1, "llmop_watcher_events_published_total") / seconds
        out["applier_plans_per_s"][role] = d(a0, a1, "llmop_applier_plans_total") / seconds
        out["applier_busy"][role] = d(a0, a1, "llmop_applier_apply_seconds_sum") / seconds
        out["applier_retries"][role] = d(a0, a1, "llmop_applier_plans_total", outcome="Retry")
    return out


def stage_latencies(
    progress: Progress, records: Sequence[Sequence[Any]], window_end: float
) -> dict[str, list[float | None]]:
    """Per change (in send order): seconds from its patch to each stage showing it (None: never, in time)."""
    out: dict[str, list[float | None]] = {"published": [], "planned": [], "applied": []}
    for sent, _done, name, rev, ok in records:
        if not ok:
            continue
        for stage, values in out.items():
            at = progress.done_at(stage, name, rev)
            values.append(at - sent if at is not None and at <= window_end else None)
    return out


def _p(values: Sequence[float | None], q: float) -> float:
    done = [v for v in values if v is not None]
    return percentile(done, q) * 1000 if done else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    targets = names(args.per_cluster)
    with bench_fleet(keep=args.keep_fleet) as fleet, servers() as hub, log_dir(args.logs) as logs:
        kubes: dict[str, Kube] = {role: await fleet.kube(role) for role in ROLES}
        operator = Operator(fleet, hub.nats.url, hub.postgres.url("bench"), logs)
        nc = await nats.connect(hub.nats.url)
        progress = Progress()
        steps: list[dict[str, Any]] = []
        try:
            await create_namespace(kubes.values(), NAMESPACE)
            await operator.start()
            say("operator running: planner + 3 agents (default settings)")

            async def on_event(msg: Any) -> None:
                at = time.time()
                if b'"LLMDeployment"' not in msg.data:
                    return
                event = json.loads(msg.data)
                if event.get("type") == "ResourceObserved" and event.get("kind") == "LLMDeployment":
                    progress.mark("published", event["name"], at, _rev_of_sources(event["object"].get("spec")))

            async def on_plan(msg: Any) -> None:
                at = time.time()
                plan = json.loads(msg.data)
                if plan.get("kind") == "Workload" and plan.get("replicas", 0) > 0:
                    progress.mark("planned", plan["deployment"]["name"], at, _rev_of_sources(plan.get("spec")))

            def on_policy(at: float, kind: str, obj: dict[str, Any]) -> None:
                if kind != "DELETED":
                    name = (obj["metadata"].get("labels") or {}).get("llm.example.com/deployment", "")
                    progress.mark("applied", name, at, _rev_of_policy(obj))

            await nc.subscribe(f"{operator.prefix}.events.>", cb=on_event)
            await nc.subscribe(f"{operator.prefix}.plans.>", cb=on_plan)
            watches = [(kubes[r], NETWORK_POLICIES, on_policy, NAMESPACE, None) for r in ROLES]
            async with following(watches):
                for role in ROLES:
                    await kubes[role].apply(LLMM, model_body(), field_manager="kubectl")
                for role, name in targets:
                    await kubes[role].apply(LLMD, llmd_body(name), field_manager="kubectl")
                if not await wait_until(
                    lambda: all(progress.latest("applied", name) >= 0 for _, name in targets),
                    deadline=time.time() + 180,
                ):
                    raise RuntimeError("the deployments did not all get their NetworkPolicy in 180 s")
                await anyio.sleep(5)  # let the status round-trips of the set-up settle
                say(f"{len(targets)} deployments placed with their NetworkPolicy; starting the load ladder")
                meter = standard_meter(fleet, operator, hub)
                samples: list[Any] = []
                rev = 0
                async with anyio.create_task_group() as tg:
                    names_by_role = {r: fleet.name(r) for r in ROLES}
                    tg.start_soon(sample_loop, operator, nc.jetstream(), operator.prefix, names_by_role, samples)
                    for rate in args.rates:
                        step = await one_step(args, fleet, operator, progress, meter, samples, rate, rev, logs)
                        rev += int(rate * args.duration)
                        steps.append(step)
                        lagging = [s["lags"] for s in steps[-2:]]
                        if len(lagging) == 2 and all(lagging) and not args.keep_going:
                            say(f"{rate:g}/s lags, as did the rate before: stopping the ladder")
                            break
                    tg.cancel_scope.cancel()
        finally:
            await nc.close()
            operator.stop()
            for kube in kubes.values():
                await kube.close()
    return {"steps": steps, "deployments": len(targets), "load_average_after": load_average()}


async def one_step(
    args: argparse.Namespace,
    fleet: Any,
    operator: Operator,
    progress: Progress,
    meter: Any,
    samples: list[Any],
    rate: float,
    start_rev: int,
    logs: Path,
) -> dict[str, Any]:
    out = logs / f"load-{rate}.json"
    contexts = ",".join(f"{r}={fleet.clusters[r].context}" for r in ROLES)
    argv = [sys.executable, "-m", "bench.throughput", "--generate", "--rate", str(rate)]
    argv += ["--duration", str(args.duration), "--start-rev", str(start_rev), "--per-cluster", str(args.per_cluster)]
    argv += ["--kubeconfig", str(fleet.kubeconfig), "--contexts", contexts, "--out", str(out)]
    say(f"step {rate}/s for {args.duration:.0f}s")
    metrics_before = await scrape(operator)
    cpu_before, t_start = meter.sample(), time.time()
    load = await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=None, env=dict(os.environ))
    await load.wait()
    t_end = time.time()
    cpu = meter.delta(cpu_before, meter.sample(), t_end - t_start)
    metrics_after = await scrape(operator)
    sent = json.loads(out.read_text())
    records = sent["records"]
    cpu["load process"] = sent["cpu_seconds"] / (t_end - t_start)
    last_rev = {name: rev for _, _, name, rev, ok in sorted(records, key=lambda r: r[3]) if ok}
    deadline = time.time() + DRAIN_S
    await wait_until(lambda: all(progress.latest("applied", n) >= r for n, r in last_rev.items()), deadline=deadline)
    drained = time.time()
    lat = stage_latencies(progress, records, drained)
    applied = lat["applied"]
    undone = sum(1 for v in applied if v is None)
    ordered = sorted((r[0], a) for r, a in zip([r for r in records if r[4]], applied, strict=True))
    quarter = max(1, len(ordered) // 4)
    first = [a for _, a in ordered[:quarter]]
    last = [a for _, a in ordered[-quarter:]]
    first_p50, last_p50 = _p(first, 50) / 1000, _p(last, 50) / 1000
    growing = any(v is None for v in last) or last_p50 > 2 * first_p50 + 0.5
    window = [s for s in samples if t_start <= s[0] <= drained]
    ok = [r for r in records if r[4]]
    sent_rate = len(ok) / max(1e-9, max(r[0] for r in ok) - sent["start"]) if ok else 0.0
    result = {
        "rate": rate,
        "changes": len(records),
        "failed_patches": len(records) - len(ok),
        "sent_per_s": sent_rate,
        "patch_ms": {"p50": _p([r[1] - r[0] for r in ok], 50), "p99": _p([r[1] - r[0] for r in ok], 99)},
        "not_done_after_drain": undone,
        "drain_s": drained - t_end,
        "latency_ms": {
            stage: {"p50": _p(v, 50), "p95": _p(v, 95), "p99": _p(v, 99), "max": _p(v, 100)} for stage, v in lat.items()
        },
        "stage_ms": {
            "watcher (patch → event on NATS)": _stage(lat, None, "published"),
            "planner (event → plan on NATS)": _stage(lat, "published", "planned"),
            "applier (plan → NetworkPolicy seen)": _stage(lat, "planned", "applied"),
        },
        "first_quarter_p50_s": first_p50,
        "last_quarter_p50_s": last_p50,
        "lags": bool(undone) or growing,
        "planner_consumer_lag_max": max((s[1] for s in window), default=0.0),
        "applier_backlog_max": {r: max((s[2].get(r, 0) for s in window), default=0) for r in ROLES},
        "metrics": metric_rates(metrics_before, metrics_after, t_end - t_start),
        "cpu_cores": cpu,
    }
    busy = result["metrics"]["applier_busy"]
    say(
        f"  {rate}/s: sent {sent_rate:.1f}/s, e2e p50 {result['latency_ms']['applied']['p50']:.0f} ms "
        f"p99 {result['latency_ms']['applied']['p99']:.0f} ms, not done {undone}, planner busy "
        f"{result['metrics']['planner_busy']:.0%}, applier busy "
        + ", ".join(f"{r} {b:.0%}" for r, b in busy.items())
        + f", lag max {result['planner_consumer_lag_max']:.0f}, backlog {result['applier_backlog_max']}"
    )
    return result


def _stage(lat: dict[str, list[float | None]], start: str | None, end: str) -> dict[str, float]:
    values: list[float | None] = []
    for i, e in enumerate(lat[end]):
        s = 0.0 if start is None else lat[start][i]
        values.append(e - s if e is not None and s is not None else None)
    return {"p50": _p(values, 50), "p99": _p(values, 99)}


def bottleneck(step: dict[str, Any]) -> str:
    """The stage whose latency dominates at this step, with the evidence for it."""
    stages = step["stage_ms"]
    name, worst = max(stages.items(), key=lambda kv: kv[1]["p99"] if kv[1]["p99"] == kv[1]["p99"] else -1)
    m = step["metrics"]
    evidence = (
        f"p99 {worst['p99']:.0f} ms of {step['latency_ms']['applied']['p99']:.0f} ms; "
        f"planner busy {m['planner_busy']:.0%}"
        f" (lag ≤ {step['planner_consumer_lag_max']:.0f}), applier busy "
        + ", ".join(f"{r} {b:.0%}" for r, b in m["applier_busy"].items())
        + f" (backlog ≤ {max(step['applier_backlog_max'].values())})"
    )
    return f"{name.split(' ')[0]}: {evidence}"


def report(raw: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for s in raw["steps"]:
        lat = s["latency_ms"]["applied"]
        rows.append(
            (
                f"{s['rate']:g} changes/s ({s['sent_per_s']:.1f} sent)",
                f"e2e p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms; not done {s['not_done_after_drain']}",
                "no lag",
                "LAGS" if s["lags"] else "ok",
            )
        )
        for stage, v in s["stage_ms"].items():
            rows.append((f"  {stage}", f"p50 {v['p50']:.0f} ms, p99 {v['p99']:.0f} ms", "-", "-"))
        m = s["metrics"]
        rows.append(
            (
                "  planner busy / consumer lag max / mean step",
                f"{m['planner_busy']:.0%} / {s['planner_consumer_lag_max']:.0f} / {m['planner_mean_step_ms']:.0f} ms",
                "-",
                "-",
            )
        )
        rows.append(
            (
                "  applier busy (a100, mixed, cpu) / backlog max",
                ", ".join(f"{b:.0%}" for b in m["applier_busy"].values())
                + " / "
                + ", ".join(str(b) for b in s["applier_backlog_max"].values()),
                "-",
                "-",
            )
        )
        cpu = s["cpu_cores"]
        top = sorted(((k, v) for k, v in cpu.items() if not k.startswith("machine")), key=lambda kv: -kv[1])[:4]
        rows.append(
            (
                "  CPU (cores): machine / top",
                f"{cpu['machine busy']:.2f} / " + ", ".join(f"{k} {v:.2f}" for k, v in top),
                "-",
                "-",
            )
        )
    print_table(f"throughput benchmark: {raw['deployments']} LLMDeployments over 3 clusters", rows)
    sustained = [s for s in raw["steps"] if not s["lags"]]
    lagging = [s for s in raw["steps"] if s["lags"]]
    result: dict[str, Any] = {
        "sustained_changes_per_s": max((s["rate"] for s in sustained), default=0.0),
        "first_lagging_rate": lagging[0]["rate"] if lagging else None,
        "bottleneck": bottleneck(lagging[0]) if lagging else bottleneck(raw["steps"][-1]),
    }
    print(f"\nsustained: {result['sustained_changes_per_s']:g} changes/s; first lagging rate: "
          f"{result['first_lagging_rate']}; bottleneck: {result['bottleneck']}")  # fmt: skip
    return result


async def main(args: argparse.Namespace) -> int:
    if args.generate:
        await generate(args)
        return 0
    code = code_version()
    raw = await run(args)
    figures = report(raw)
    path = write_result("throughput", {**figures, "duration_s": args.duration, "code": code, "raw": raw})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-cluster", type=int, default=30, help="LLMDeployments per cluster")
    parser.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0]
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    parser.add_argument("--keep-going", action="store_true", help="run every rate even after two in a row lag")
    parser.add_argument("--keep-fleet", action="store_true", help="leave the bench fleet running for the next run")
    parser.add_argument("--logs", type=Path, help="keep the operator's logs in this directory")
    # The load process (started by the benchmark itself).
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--start-rev", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", default="", help=argparse.SUPPRESS)
    parser.add_argument("--contexts", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    run_main(lambda: main(arguments))
