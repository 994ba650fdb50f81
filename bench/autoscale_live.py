"""The fleet autoscaler's reaction on live metrics: target breached → new replica Available, and a picture of a run.

Set-up (as root: the pod network needs it): the test fleet (t-a100, t-mixed, t-cpu; brought up if needed and
held with the test sessions' shared lock, so a finishing test session never deletes it under us; everything here
lives in namespaces of its own), its pod network and the model-server emulator serving this run's pods, an
embedded NATS and Postgres, and the operator as real processes (a planner and an agent per cluster, default
settings except LLMOP_LOAD_INTERVAL_SECONDS=--interval). A closed-loop load generator (llm_operator.loadgen)
sends completions to the replicas' pod IPs.

Rounds (--rounds per kind): a fresh LLMDeployment of 8-GPU replicas (so a100, two 8-GPU nodes, holds at most 2),
autoscaling on TTFT p90 450 ms with no scale-up window, is made Available with R0 replicas and its replicas
answering; then 16 × R0 clients start (TTFT ≈ 1.55 s: the target is breached from that instant) and the round
measures, from that instant, spec.replicas written through /scale and the new replica Available (the origin's
status.readyReplicas = R0 + 1). `in-cluster`: R0 = 1 in a100, the new replica fits there; `spill`: R0 = 2 fill
a100, the new replica lands in mixed. A round is classified by where the new replica actually went (the fleet is
shared with tests). The deployment is deleted and its GPUs are free before the next round.

The plot (--plot-run, default on): one deployment through load rising, a noisy plateau, and load falling, with
1 s samples of the load (clients, answers/s), TTFT (the agents' p90 per cluster, from their LoadObserved, and the
clients' p90) and replicas per cluster; written to docs/autoscale.svg.

Run: `sudo .venv/bin/python -m bench.autoscale_live [--rounds 5] [--interval 2]` (about 8 minutes); writes
bench/results/autoscale_live.json and docs/autoscale.svg (`--plot-only` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import anyio
import nats

from api.events import LoadObserved, decode_event
from bench.common import print_table, servers, write_result
from bench.fleet import (
    API_VERSION,
    LLMD,
    LLMM,
    BenchFleet,
    Operator,
    code_version,
    create_namespace,
    log_dir,
    percentile,
    run_main,
    say,
)
from kubeapi import RESOURCES, Kube, KubeError, NotFound
from llm_operator.fleet import DEFAULT_FLEET, cache_dir, ensure_toolchain, fleet_up, podnet
from llm_operator.fleet.emulator import Emulator, LatencyModel, running
from llm_operator.fleet.spec import A100_80GB, H100_80GB
from llm_operator.loadgen import LoadGenerator, kube_replicas

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SVG = REPO / "docs" / "autoscale.svg"
PREFIX = "t-"  # the test fleet: its pod network is the one the tests make
TARGET_MS = 450
PORT = 8000
LATENCY = LatencyModel(ttft_base_s=0.05, ttft_per_request_s=0.1, max_running=8)


# ------------------------------------------------------------------------------------------------ set-up


@contextlib.contextmanager
def test_fleet() -> Iterator[BenchFleet]:
    """The test fleet, up, held with a shared lock on its sessions file (as a test session holds it)."""
    base = cache_dir() / "test-fleet"
    base.mkdir(parents=True, exist_ok=True)
    specs = tuple(replace(spec, name=f"{PREFIX}{spec.name}") for spec in DEFAULT_FLEET)
    with (base / "sessions.lock").open("a") as sessions:
        fcntl.flock(sessions, fcntl.LOCK_SH)
        toolchain = ensure_toolchain(progress=say)
        members = fleet_up(
            toolchain=toolchain, clusters=specs, kubeconfig=base / "kubeconfig", workdir=base / "kwok", progress=say
        )
        roles = [s.name.removeprefix(PREFIX) for s in specs]
        fleet = BenchFleet(
            toolchain=toolchain,
            kubeconfig=base / "kubeconfig",
            workdir=base / "kwok",
            clusters=dict(zip(roles, members, strict=True)),
            specs=dict(zip(roles, specs, strict=True)),
        )
        for role in roles:
            fleet.kubectl(
                role, "apply", "--server-side", "--force-conflicts", "--field-manager", "llm-operator", "-f",
                str(REPO / "crds"),
            )  # fmt: skip
        yield fleet


@contextlib.contextmanager
def serving(fleet: BenchFleet, namespace: str) -> Iterator[Emulator]:
    base = cache_dir() / "test-fleet"
    net = podnet.PodNetwork(ranges=podnet.pod_ranges([s.pod_cidr for s in fleet.specs.values()]))
    if (reason := podnet.unavailable_reason()) is not None:
        raise SystemExit(f"the pod network cannot be made: {reason}")
    with (
        podnet.shared(net, lock_dir=base),
        running(
            netns=net.name,
            ranges=net.ranges,
            kubeconfig=fleet.kubeconfig,
            clusters={fleet.name(r): str(fleet.clusters[r].context) for r in ("a100", "mixed")},
            namespaces=[namespace],
            latency=LATENCY,
            workdir=base / "emulator",
        ) as emulator,
    ):
        yield emulator


def model() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMModel",
        "metadata": {"name": "live-llm"},
        "spec": {
            "modelName": "acme/live-llm",
            "image": "vllm/vllm-openai:v0.11.0",
            "resources": {"cpu": "4", "memory": "32Gi", "gpu": {"count": 8, "types": [A100_80GB, H100_80GB]}},
            "serving": {"runtime": "vllm"},
        },
    }


def deployment(name: str, clusters: list[str], *, replicas: int, high: int, up_s: int, down_s: int) -> Any:
    return {
        "apiVersion": API_VERSION,
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {
            "modelRef": "live-llm",
            "replicas": replicas,
            "port": PORT,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": high,
                "target": {"timeToFirstTokenP90Ms": TARGET_MS},
                "scaleUpStabilizationSeconds": up_s,
                "scaleDownStabilizationSeconds": down_s,
            },
            "placement": {"clusters": clusters, "strategy": "Pack", "allowSplit": True, "maxClusters": 2},
        },
    }


async def poll(check: Any, *, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        await anyio.sleep(interval)


def placed(obj: dict[str, Any]) -> dict[str, int]:
    """Ready replicas per cluster running some, from the origin's status."""
    rows = (obj.get("status") or {}).get("placements", [])
    return {p["cluster"]: p.get("readyReplicas", 0) for p in rows if p.get("replicas", 0) > 0}


# ------------------------------------------------------------------------------------------------ rounds


async def one_round(
    origin: Kube, kubes: dict[str, Kube], ns: str, fleet: BenchFleet, *, kind: str, index: int
) -> dict[str, Any]:
    start_replicas = 1 if kind == "in-cluster" else 2
    name = f"r{index:02d}-{kind}"
    body = deployment(
        name, [fleet.name("a100"), fleet.name("mixed")], replicas=start_replicas, high=start_replicas + 1,
        up_s=0, down_s=3600,
    )  # fmt: skip
    body["metadata"]["namespace"] = ns
    await origin.create(LLMD, body)

    async def get() -> dict[str, Any]:
        return await origin.get(LLMD, name, namespace=ns)

    async def ready(count: int) -> dict[str, Any] | None:
        obj = await get()
        status = obj.get("status") or {}
        return obj if status.get("readyReplicas") == count and status.get("replicas") == count else None

    before = placed(await poll(lambda: ready(start_replicas), timeout=120, what=f"{name}: {start_replicas} ready"))
    generator = LoadGenerator(resolve=lambda: kube_replicas(kubes, namespace=ns, name=name), concurrency=0)

    async def answering() -> bool:
        return len(generator.replicas) == start_replicas

    result: dict[str, Any] = {"kind": kind, "before": before}
    async with anyio.create_task_group() as tg:
        tg.start_soon(generator.run)
        await poll(answering, timeout=30, what=f"{name}: replicas resolved")
        generator.concurrency = 16 * start_replicas
        breached = time.monotonic()
        scaled_at: float | None = None
        while True:
            obj = await get()
            if scaled_at is None and obj["spec"]["replicas"] > start_replicas:
                scaled_at = time.monotonic() - breached
            status = obj.get("status") or {}
            if status.get("readyReplicas", 0) > start_replicas:
                result["scaled_s"] = scaled_at if scaled_at is not None else time.monotonic() - breached
                result["available_s"] = time.monotonic() - breached
                result["after"] = placed(obj)
                break
            if time.monotonic() - breached > 120:
                raise RuntimeError(f"{name}: no new replica Available after 120 s")
            await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    grown = {c: n - before.get(c, 0) for c, n in result["after"].items() if n > before.get(c, 0)}
    result["landed"] = sorted(grown)
    result["spilled"] = any(c not in before for c in grown)
    await origin.delete(LLMD, name, namespace=ns)

    async def gone() -> bool:
        try:
            await origin.get(LLMD, name, namespace=ns)
        except NotFound:
            pods = await kube_replicas(kubes, namespace=ns, name=name)
            return not pods
        return False

    await poll(gone, timeout=120, what=f"{name}: deleted")
    await anyio.sleep(2)  # the agents' last observation of it is stale before the next round
    say(
        f"{name}: {before} → {result['after']}: /scale after {result['scaled_s']:.2f} s, "
        f"Available after {result['available_s']:.2f} s"
    )
    return result


# ------------------------------------------------------------------------------------------------ the plotted run


async def plotted_run(origin: Kube, kubes: dict[str, Kube], ns: str, fleet: BenchFleet, js_url: str) -> Any:
    """Ramp (16 clients), a noisy plateau (13..19), a fall (2 clients); 1 s samples of everything."""
    name = "plotted"
    body = deployment(name, [fleet.name("a100"), fleet.name("mixed")], replicas=1, high=4, up_s=4, down_s=20)
    body["metadata"]["namespace"] = ns
    await origin.create(LLMD, body)

    async def ready1() -> bool:
        status = (await origin.get(LLMD, name, namespace=ns)).get("status") or {}
        return status.get("readyReplicas") == 1

    await poll(ready1, timeout=120, what="the plotted deployment ready")
    observed: list[dict[str, Any]] = []
    nc = await nats.connect(js_url)

    async def on_event(msg: Any) -> None:
        if b'"LoadObserved"' not in msg.data:
            return
        try:
            event = decode_event(msg.data)
        except ValueError:
            return
        if isinstance(event, LoadObserved) and event.name == name:
            observed.append(
                {
                    "at": time.time(),
                    "cluster": event.cluster,
                    "ttft_p90_s": event.ttft_p90_seconds,
                    "reporting": event.reporting,
                }
            )

    await nc.subscribe("bench.events.>", cb=on_event)
    generator = LoadGenerator(resolve=lambda: kube_replicas(kubes, namespace=ns, name=name), concurrency=0)
    samples: list[dict[str, Any]] = []
    phases = [("idle", 6.0), ("ramp", 30.0), ("plateau", 30.0), ("fall", 40.0)]
    noise = random.Random(17)
    started = time.time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(generator.run)
        for phase, seconds in phases:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                generator.concurrency = {"idle": 0, "ramp": 16, "plateau": noise.randint(13, 19), "fall": 2}[phase]
                await anyio.sleep(1.0)
                obj = await origin.get(LLMD, name, namespace=ns)
                window = generator.summary(2.0)
                samples.append(
                    {
                        "t": time.time() - started,
                        "phase": phase,
                        "clients": generator.concurrency,
                        "answers_per_s": window.requests_per_second,
                        "client_p90_s": window.latency_p90_s,
                        "desired": obj["spec"]["replicas"],
                        "ready": placed(obj),
                    }
                )
        tg.cancel_scope.cancel()
    await nc.close()
    await origin.delete(LLMD, name, namespace=ns)
    for o in observed:
        o["t"] = o.pop("at") - started
    return {"samples": samples, "observed": observed, "phases": phases}


# ------------------------------------------------------------------------------------------------ the run


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ns = f"bench-autoscale-{uuid.uuid4().hex[:6]}"
    with test_fleet() as fleet, serving(fleet, ns), servers() as hub, log_dir(args.logs) as logs:
        kubes_all = {role: await fleet.kube(role) for role in fleet.clusters}
        origin = kubes_all["cpu"]
        kubes = {fleet.name(r): kubes_all[r] for r in ("a100", "mixed")}
        operator = Operator(
            fleet,
            hub.nats.url,
            hub.postgres.url("bench"),
            Path(logs),
            settings={"LLMOP_LOAD_INTERVAL_SECONDS": str(args.interval), "LLMOP_NAMESPACES": json.dumps([ns])},
        )
        try:
            await create_namespace(kubes_all.values(), ns)
            await origin.create(LLMM, {**model(), "metadata": {"name": "live-llm", "namespace": ns}})
            await operator.start()
            say(f"operator running, agents scraping every {args.interval:g} s; namespace {ns}")
            rounds: list[dict[str, Any]] = []
            for i in range(args.rounds):
                for kind in ("in-cluster", "spill"):
                    rounds.append(await one_round(origin, kubes, ns, fleet, kind=kind, index=i))
            plotted = await plotted_run(origin, kubes, ns, fleet, hub.nats.url) if args.plot_run else None
        finally:
            operator.stop()
            for kube in kubes_all.values():
                with contextlib.suppress(KubeError):
                    await kube.delete(RESOURCES["Namespace"], ns)
                await kube.close()
    return {"rounds": rounds, "plotted": plotted, "interval_s": args.interval, "target_ms": TARGET_MS}


def report(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]] = []
    for kind, spilled in (("in-cluster", False), ("spill", True)):
        chosen = [r for r in raw["rounds"] if r["spilled"] is spilled]
        for key, label in (("scaled_s", "breach → spec.replicas (/scale)"), ("available_s", "breach → Available")):
            values = [r[key] for r in chosen]
            if not values:
                continue
            figures = {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}
            out[f"{kind} {key}"] = figures
            rows.append(
                (f"{kind}: {label}", f"p50 {figures['p50']:.2f} s, p99 {figures['p99']:.2f} s", "-", f"n={len(values)}")
            )
    print_table(f"autoscaler reaction, agents scraping every {raw['interval_s']:g} s, test fleet", rows)
    return out


# ------------------------------------------------------------------------------------------------ the plot


def plot(plotted: dict[str, Any], path: Path, *, target_ms: float) -> None:
    """Three panels over one time axis: load, TTFT p90, replicas per cluster."""
    samples, observed = plotted["samples"], plotted["observed"]
    width, left, right, top, panel, gap = 920, 70, 230, 40, 150, 40
    height = top + 3 * panel + 2 * gap + 50
    t_max = float(max(s["t"] for s in samples))
    colors = {"a100": "#1f77b4", "mixed": "#ff7f0e", "cpu": "#2ca02c"}

    def color(cluster: str) -> str:
        return next((c for k, c in colors.items() if cluster.endswith(k)), "#9467bd")

    def x(t: float) -> float:
        return left + t / t_max * (width - left - right)

    def y_of(index: int, value: float, vmax: float) -> float:
        base = top + index * (panel + gap)
        return base + panel - min(value, vmax) / vmax * panel

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'viewBox="0 0 {width} {height}">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{(width - right + left) / 2}" y="22" font-size="15" text-anchor="middle">One deployment under '
        f"load: target TTFT p90 {target_ms:g} ms, scale-up window 4 s, scale-down window 20 s</text>",
    ]

    def frame(index: int, title: str, vmax: float, ticks: list[float], unit: str) -> None:
        base = top + index * (panel + gap)
        for v in ticks:
            gy = y_of(index, v, vmax)
            parts.append(f'<line x1="{left}" y1="{gy:.1f}" x2="{width - right}" y2="{gy:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 6}" y="{gy + 4:.1f}" font-size="11" text-anchor="end">{v:g}{unit}</text>')
        parts.append(
            f'<rect x="{left}" y="{base}" width="{width - left - right}" height="{panel}" fill="none" stroke="#888"/>'
        )
        parts.append(f'<text x="{left}" y="{base - 6}" font-size="12" font-weight="bold">{title}</text>')
        for phase, phase_start in _phase_starts(samples):
            px = x(min(phase_start, t_max))
            parts.append(f'<line x1="{px:.1f}" y1="{base}" x2="{px:.1f}" y2="{base + panel}" stroke="#bbb" '
                         'stroke-dasharray="3,3"/>')  # fmt: skip
            if index == 0:
                parts.append(f'<text x="{px + 3:.1f}" y="{base + 12}" font-size="10" fill="#666">{phase}</text>')

    def line(index: int, points: list[tuple[float, float]], vmax: float, stroke: str, *, step: bool = False) -> str:
        coords: list[str] = []
        for i, (t, v) in enumerate(points):
            if step and i:
                coords.append(f"{x(t):.1f},{y_of(index, points[i - 1][1], vmax):.1f}")
            coords.append(f"{x(t):.1f},{y_of(index, v, vmax):.1f}")
        return f'<polyline fill="none" stroke="{stroke}" stroke-width="2" points="{" ".join(coords)}"/>'

    def legend(index: int, row: int, stroke: str, text: str, dash: str = "") -> None:
        ly = top + index * (panel + gap) + 14 + row * 18
        lx = width - right + 10
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 20}" y2="{ly - 4}" stroke="{stroke}" '
                     f'stroke-width="3" {dash}/>')  # fmt: skip
        parts.append(f'<text x="{lx + 25}" y="{ly}" font-size="11">{text}</text>')

    # Load.
    load_max = _nice(max([s["clients"] for s in samples] + [s["answers_per_s"] for s in samples]))
    frame(0, "load", load_max, _ticks(load_max), "")
    parts.append(line(0, [(s["t"], s["clients"]) for s in samples], load_max, "#333", step=True))
    parts.append(line(0, [(s["t"], s["answers_per_s"]) for s in samples], load_max, "#17becf"))
    legend(0, 0, "#333", "clients (in flight)")
    legend(0, 1, "#17becf", "answers/s")
    # TTFT.
    values = [o["ttft_p90_s"] for o in observed if o["ttft_p90_s"] is not None]
    values += [s["client_p90_s"] for s in samples if s["client_p90_s"] is not None]
    ttft_max = _nice(max([*values, target_ms / 1000 * 1.5]))
    frame(1, "time to first token, p90", ttft_max, _ticks(ttft_max), " s")
    ty = y_of(1, target_ms / 1000, ttft_max)
    parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{width - right}" y2="{ty:.1f}" stroke="#d62728" '
                 'stroke-dasharray="6,4"/>')  # fmt: skip
    legend(1, 0, "#d62728", f"target {target_ms:g} ms", 'stroke-dasharray="6,4"')
    clusters = sorted({o["cluster"] for o in observed})
    for row, cluster in enumerate(clusters, start=1):
        points = [
            (o["t"], o["ttft_p90_s"]) for o in observed if o["cluster"] == cluster and o["ttft_p90_s"] is not None
        ]
        if points:
            parts.append(line(1, points, ttft_max, color(cluster)))
        legend(1, row, color(cluster), f"agent {cluster} (vLLM histogram)")
    client = [(s["t"], s["client_p90_s"]) for s in samples if s["client_p90_s"] is not None]
    if client:
        parts.append(line(1, client, ttft_max, "#999"))
    legend(1, len(clusters) + 1, "#999", "clients (full answer)")
    # Replicas.
    rep_max = float(max([s["desired"] for s in samples] + [1]) + 1)
    frame(2, "replicas", rep_max, [float(v) for v in range(int(rep_max) + 1)], "")
    parts.append(line(2, [(s["t"], s["desired"]) for s in samples], rep_max, "#333", step=True))
    legend(2, 0, "#333", "spec.replicas (/scale)")
    ready_clusters = sorted({c for s in samples for c in s["ready"]})
    for row, cluster in enumerate(ready_clusters, start=1):
        parts.append(
            line(2, [(s["t"], s["ready"].get(cluster, 0)) for s in samples], rep_max, color(cluster), step=True)
        )
        legend(2, row, color(cluster), f"ready in {cluster}")
    axis_y = top + 3 * panel + 2 * gap
    for t in range(0, int(t_max) + 1, 10):
        parts.append(f'<text x="{x(t):.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle">{t} s</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _phase_starts(samples: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """When each phase began: its first sample is taken one 1-s tick after its load was set."""
    out: list[tuple[str, float]] = []
    for s in samples:
        if not out or out[-1][0] != s["phase"]:
            out.append((s["phase"], max(0.0, s["t"] - 1.0)))
    return out


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    decade = 10 ** math.floor(math.log10(value))
    return float(next(decade * m for m in (1, 2, 2.5, 5, 10) if decade * m >= value))


def _ticks(vmax: float) -> list[float]:
    return [vmax * i / 4 for i in range(5)]


async def main(args: argparse.Namespace) -> int:
    if args.plot_only:
        raw = json.loads((RESULTS / "autoscale_live.json").read_text())["raw"]
        plot(raw["plotted"], SVG, target_ms=raw["target_ms"])
        print(f"written {SVG}")
        return 0
    code = code_version()
    raw = await run(args)
    figures = report(raw)
    if raw["plotted"]:
        plot(raw["plotted"], SVG, target_ms=TARGET_MS)
    path = write_result(
        "autoscale_live",
        {**figures, "rounds": args.rounds, "latency_model": asdict(LATENCY), "code": code, "raw": raw},
    )
    print(f"written {path}" + (f" and {SVG}" if raw["plotted"] else ""))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind (in-cluster, spill)")
    parser.add_argument("--interval", type=float, default=2.0, help="LLMOP_LOAD_INTERVAL_SECONDS of the agents")
    parser.add_argument("--no-plot-run", dest="plot_run", action="store_false", help="skip the plotted run")
    parser.add_argument("--plot-only", action="store_true", help="redraw docs/autoscale.svg from the last results")
    parser.add_argument("--logs", type=Path, help="keep the operator's logs here")
    args = parser.parse_args()
    run_main(lambda: main(args))
