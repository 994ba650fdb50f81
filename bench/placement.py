"""Placement benchmark: 10,000 deployments over 100 clusters × 20 nodes.

Measures, in one process and one run:
- full placement: every deployment placed one after another, each decision taking the capacity the previous one
  left (`Decision.capacity`), exactly as the planner's step does (planner/handle.py `_decide`); repeated, median;
- one incremental change against the filled fleet, one `place()` call each (p50/p99 over many): one deployment
  scaled up by a replica, one scaled down by a replica, one new deployment;
- the planner's step: capacity carried from the previous step, the clusters the change touched read again from
  their nodes, bound pods and reservations, then one `place()` (and, for comparison, the step as it was before
  the planner kept capacity in memory: a full rebuild from every node, pod and reservation of the fleet);
- peak RSS of the process (ru_maxrss), and VmRSS at the end.
A naive cluster-sum placer (Karmada's default estimator model: allocatable − requested summed per cluster) runs on
the same input as a baseline, to show how many of its replicas no node could actually hold.

Targets (from the issue): full placement ≤ 1 s, one incremental change ≤ 10 ms, RSS ≤ 500 MB. The fleet and the
deployments come from a seeded generator, so every run measures the same input. Timings depend on the machine and
on what else runs on it: the output records a calibration loop and the load average next to the figures.

Run: `python -m bench.placement [--deployments N] [--clusters N] [--nodes N] [--repeat N] [--seed N]`; writes
bench/results/placement.json and exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from llm_operator.gc_tuning import tune_gc
from planner.capacity import NodeFacts, PodUsage, Reservation, free_capacity
from planner.fleet import FleetCapacity
from planner.placement import (
    ClusterInfo,
    Clusters,
    Demand,
    Policy,
    Requirement,
    Share,
    gpu_type_matches,
    place,
    rank_clusters,
)

GiB = 2**30
MiB = 2**20
T = TypeVar("T")
T_Cluster = TypeVar("T_Cluster", NodeFacts, PodUsage, Reservation)
RESULTS = Path(__file__).parent / "results" / "placement.json"

# (product, GPU memory) as GPU feature discovery labels them.
PRODUCTS = (
    ("NVIDIA-H100-80GB-HBM3", 81559 * MiB),
    ("NVIDIA-A100-SXM4-80GB", 81920 * MiB),
    ("NVIDIA-A100-PCIE-40GB", 40960 * MiB),
    ("NVIDIA-L40S", 46068 * MiB),
)
REGIONS = ("us-east", "us-west", "eu-west", "ap-south")
# GPU type lists users write, with how often (weights).
TYPE_LISTS: tuple[tuple[tuple[str, ...], int], ...] = (
    ((), 20),
    (("NVIDIA-H100-80GB-HBM3",), 15),
    (("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"), 25),
    (("NVIDIA-A100*",), 20),
    (("NVIDIA-L40S", "NVIDIA-A100-PCIE-40GB"), 10),
    (("NVIDIA-A100-SXM4-80GB",), 10),
)

TARGET_FULL_S = 1.0
TARGET_CHANGE_MS = 10.0
TARGET_RSS_MB = 500.0


@dataclass(frozen=True)
class Workload:
    demand: Demand
    policy: Policy


@dataclass(frozen=True)
class Fleet:
    clusters: tuple[ClusterInfo, ...]
    nodes: tuple[NodeFacts, ...]
    pods: tuple[PodUsage, ...]


def make_fleet(rng: random.Random, clusters: int, nodes_per_cluster: int) -> Fleet:
    """Clusters with a main and a second GPU product, two CPU nodes, and pods already fragmenting the GPU nodes."""
    infos: list[ClusterInfo] = []
    nodes: list[NodeFacts] = []
    pods: list[PodUsage] = []
    for c in range(clusters):
        name = f"c{c:03d}"
        infos.append(ClusterInfo(name, {"region": REGIONS[c % len(REGIONS)], "tier": "prod" if c % 3 else "dev"}))
        main, second = PRODUCTS[c % len(PRODUCTS)], PRODUCTS[(c + 1) % len(PRODUCTS)]
        gpu_nodes = max(0, nodes_per_cluster - 2)
        for n in range(nodes_per_cluster):
            node = f"n{n:02d}"
            if n >= gpu_nodes:
                nodes.append(NodeFacts(name, node, None, 0, 0, 32_000, 128 * GiB))
                continue
            product, memory = main if n < gpu_nodes * 3 // 4 else second
            nodes.append(NodeFacts(name, node, product, memory, 8, 96_000, 1024 * GiB))
            # Existing pods using 0-3 GPUs: the fragmentation a cluster-sum view cannot see.
            for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
                pods.append(PodUsage(name, node, 1, 4_000, 32 * GiB))
    return Fleet(tuple(infos), tuple(nodes), tuple(pods))


def _weighted(rng: random.Random, options: Sequence[tuple[T, int]]) -> T:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def make_workloads(rng: random.Random, count: int, clusters: Sequence[ClusterInfo]) -> list[Workload]:
    names = [c.name for c in clusters]
    out: list[Workload] = []
    for i in range(count):
        origin = rng.choice(names)
        replicas = _weighted(rng, ((1, 80), (2, 15), (3, 5)))
        gpus = _weighted(rng, ((0, 15), (1, 70), (2, 10), (4, 4), (8, 1)))
        types = _weighted(rng, TYPE_LISTS) if gpus else ()
        demand = Demand(
            deployment_key=f"{origin}/ns/d{i:05d}",
            origin=origin,
            replicas=replicas,
            gpus=gpus,
            gpu_types=types,
            gpu_min_memory_bytes=40 * GiB if gpus and rng.random() < 0.2 else 0,
            cpu_m=rng.choice((1_000, 2_000, 4_000)) * max(1, gpus),
            memory_bytes=rng.choice((4, 8, 16)) * GiB * max(1, gpus),
        )
        kind = rng.random()
        if kind < 0.70:
            policy = Policy(allow_split=rng.random() < 0.85)
        elif kind < 0.85:
            policy = Policy(strategy="Spread", max_clusters=3)
        elif kind < 0.95:
            region = rng.choice(REGIONS)
            policy = Policy(match_expressions=(Requirement("region", "In", (region,)),))
        else:
            policy = Policy(preferred_clusters=tuple(rng.sample(names, 2)), prefer_origin=False)
        out.append(Workload(demand, policy))
    return out


@dataclass(frozen=True)
class Placed:
    """What the planner keeps of a decision (it writes an event and drops the Decision and its capacity)."""

    outcome: str
    placed: int
    shares: tuple[Share, ...]


def place_all(
    workloads: Sequence[Workload], clusters: Sequence[ClusterInfo], capacity: FleetCapacity
) -> tuple[list[Placed], FleetCapacity]:
    """Every deployment in turn, each decision taking the capacity the previous one left, and all of them reading
    one Clusters (as a planner step does, planner/handle.py)."""
    results: list[Placed] = []
    fleet = Clusters(clusters)
    for w in workloads:
        decision = place(w.demand, clusters=fleet, capacity=capacity, policy=w.policy)
        capacity = decision.capacity
        results.append(Placed(decision.outcome, decision.placed, decision.shares))
    return results, capacity


def _by_cluster(items: Sequence[T_Cluster]) -> dict[str, list[T_Cluster]]:
    grouped: dict[str, list[T_Cluster]] = {}
    for item in items:
        grouped.setdefault(item.cluster, []).append(item)
    return grouped


def overcommitted_nodes(capacity: FleetCapacity) -> int:
    return sum(1 for nodes in capacity.clusters.values() for n in nodes if min(n.gpus, n.cpu_m, n.memory_bytes) < 0)


def reservations_of(workloads: Sequence[Workload], decisions: Sequence[Placed]) -> list[Reservation]:
    return [
        Reservation(
            deployment_key=w.demand.deployment_key,
            cluster=s.cluster,
            replicas=s.replicas,
            expected_nodes=s.node_map(),
            gpus=w.demand.gpus,
            cpu_m=w.demand.cpu_m,
            memory_bytes=w.demand.memory_bytes,
        )
        for w, d in zip(workloads, decisions, strict=True)
        for s in d.shares
    ]


def naive_cluster_sum(workloads: Sequence[Workload], fleet: Fleet, capacity: FleetCapacity) -> dict[str, int]:
    """Baseline: Karmada's default estimator model, free = Σ allocatable − Σ requested per cluster (per acceptable
    GPU type here, to be fair), with no node view. Then the clusters' schedulers get its choices: each replica goes
    first-fit onto a real node of an acceptable type, and what fits nowhere stays Pending.

    Returns how many GPU replicas it assigned and how many of those would stay Pending.
    """
    free_sum: dict[tuple[str, str], int] = Counter()
    for cluster, nodes in capacity.clusters.items():
        for n in nodes:
            if n.gpu_product:
                free_sum[(cluster, n.gpu_product)] += n.gpus
    assigned: dict[str, list[Demand]] = {}
    total = 0
    for w in workloads:
        d = w.demand
        if not d.gpus:
            continue
        order, _ = rank_clusters(fleet.clusters, w.policy, d.origin)
        need = d.replicas * d.gpus
        done = False
        for cluster in order:
            for product in sorted({p for c, p in free_sum if c == cluster}):
                if _acceptable(d, product) and free_sum[(cluster, product)] >= need:
                    free_sum[(cluster, product)] -= need
                    assigned.setdefault(cluster, []).append(d)
                    total += d.replicas
                    done = True
                    break
            if done:
                break
    pending = 0
    for cluster, demands in assigned.items():
        gpu_nodes = [n for n in capacity.nodes(cluster) if n.gpu_product]
        free = [n.gpus for n in gpu_nodes]
        for d in demands:
            for _ in range(d.replicas):
                slot = next(
                    (i for i, n in enumerate(gpu_nodes) if free[i] >= d.gpus and _acceptable(d, n.gpu_product)), None
                )
                if slot is None:
                    pending += 1
                else:
                    free[slot] -= d.gpus
    return {"assigned_replicas": total, "pending_replicas": pending}


def _acceptable(demand: Demand, product: str | None) -> bool:
    return product is not None and (not demand.gpu_types or any(gpu_type_matches(t, product) for t in demand.gpu_types))


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_changes(
    changes: Sequence[tuple[Workload, tuple[Share, ...], int]],
    clusters: Sequence[ClusterInfo],
    capacity: FleetCapacity,
) -> list[float]:
    """Milliseconds per `place()` call, each change alone against the same filled fleet."""
    out: list[float] = []
    for w, current, replicas in changes:
        demand = replace(w.demand, replicas=replicas)
        start = time.perf_counter()
        place(demand, clusters=clusters, capacity=capacity, policy=w.policy, current=current)
        out.append((time.perf_counter() - start) * 1000)
    return out


def rss_mb() -> tuple[float, float]:
    """(current VmRSS, peak ru_maxrss) in MB."""
    current = 0.0
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return current, peak


def calibration_us() -> float:
    """Best of 5 for a fixed pure-Python loop, in µs: how fast this interpreter is on this machine right now."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        total = 0
        for i in range(100_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: how much CPU the hypervisor took from this machine."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return 0, 0
    fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before, calibration = load_average(), calibration_us()
    rng = random.Random(args.seed)
    fleet = make_fleet(rng, args.clusters, args.nodes)
    workloads = make_workloads(rng, args.deployments, fleet.clusters)
    start = time.perf_counter()
    capacity = free_capacity(fleet.nodes, fleet.pods)
    build_s = time.perf_counter() - start

    # Full placement, repeated from the same empty fleet; each run starts from a fresh FleetCapacity.
    runs: list[dict[str, float]] = []
    decisions: list[Placed] = []
    filled = capacity
    steal_before, total_before = cpu_ticks()
    for _ in range(args.repeat):
        del decisions, filled  # each run alone: nothing of the previous run left for the collector to walk
        fresh_capacity = free_capacity(fleet.nodes, fleet.pods)
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        decisions, filled = place_all(workloads, fleet.clusters, fresh_capacity)
        runs.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu})
    steal_after, total_after = cpu_ticks()
    steal_share = (steal_after - steal_before) / max(1, total_after - total_before)
    full_s = statistics.median(r["wall_s"] for r in runs)
    outcomes = Counter(d.outcome for d in decisions)
    replicas_wanted = sum(w.demand.replicas for w in workloads)
    replicas_placed = sum(d.placed for d in decisions)
    gpus_free_before = sum(n.gpus for ns in capacity.clusters.values() for n in ns)
    gpus_free_after = sum(n.gpus for ns in filled.clusters.values() for n in ns)

    # One change at a time against the filled fleet.
    pick = random.Random(args.seed + 1)
    placed = [(w, d) for w, d in zip(workloads, decisions, strict=True) if d.placed]
    sample = pick.sample(placed, min(args.changes, len(placed)))
    scale_up = time_changes([(w, d.shares, w.demand.replicas + 1) for w, d in sample], fleet.clusters, filled)
    scale_down = time_changes([(w, d.shares, d.placed - 1) for w, d in sample], fleet.clusters, filled)
    fresh = [
        (replace(w, demand=replace(w.demand, deployment_key=f"{w.demand.deployment_key}-new")), (), w.demand.replicas)
        for w, _ in sample
    ]
    new_deployment = time_changes(fresh, fleet.clusters, filled)
    change_p99 = max(percentile(s, 0.99) for s in (scale_up, scale_down, new_deployment))

    # The planner's step (planner/handle.py, planner/memory.py): capacity is carried from step to step and only
    # the clusters a change touched are read again from their nodes, bound pods and reservations (the database
    # hands them over by cluster), then the change is decided. For comparison, the step as it was before the
    # memory: a rebuild from every node, pod and reservation of the fleet.
    reservations = reservations_of(workloads, decisions)
    nodes_of, pods_of, reserved_in = _by_cluster(fleet.nodes), _by_cluster(fleet.pods), _by_cluster(reservations)
    rebuild_ms: list[float] = []
    full_step_ms: list[float] = []
    refresh_ms: list[float] = []
    step_ms: list[float] = []
    rebuilt = carried = filled
    same = True
    for w, d in sample[: args.rebuilds]:
        demand = replace(w.demand, replicas=w.demand.replicas + 1)
        start = time.perf_counter()
        rebuilt = free_capacity(fleet.nodes, fleet.pods, reservations)
        middle = time.perf_counter()
        place(demand, clusters=fleet.clusters, capacity=rebuilt, policy=w.policy, current=d.shares)
        end = time.perf_counter()
        rebuild_ms.append((middle - start) * 1000)
        full_step_ms.append((end - start) * 1000)

        touched = {s.cluster for s in d.shares}
        start = time.perf_counter()
        refreshed = free_capacity(
            [n for c in touched for n in nodes_of.get(c, ())],
            [p for c in touched for p in pods_of.get(c, ())],
            [r for c in touched for r in reserved_in.get(c, ())],
        )
        carried = filled.with_clusters_from(refreshed, touched)
        middle = time.perf_counter()
        place(demand, clusters=fleet.clusters, capacity=carried, policy=w.policy, current=d.shares)
        end = time.perf_counter()
        refresh_ms.append((middle - start) * 1000)
        step_ms.append((end - start) * 1000)
        same = same and carried.clusters == filled.clusters
    step_p99 = percentile(step_ms, 0.99)

    naive = naive_cluster_sum(workloads, fleet, capacity)
    current_rss, peak_rss = rss_mb()
    overcommitted = overcommitted_nodes(filled)
    return {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": _cpus(),
            "calibration_loop_us": calibration,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "cpu_steal_share_during_full_placement": steal_share,
        },
        "input": {
            "seed": args.seed,
            "clusters": args.clusters,
            "nodes_per_cluster": args.nodes,
            "deployments": args.deployments,
            "replicas_wanted": replicas_wanted,
            "preexisting_pods": len(fleet.pods),
            "reservations_after_fill": len(reservations),
        },
        "full_placement": {
            "seconds_median": full_s,
            "runs": runs,
            "per_deployment_us": full_s / max(1, len(workloads)) * 1e6,
            "outcomes": dict(sorted(outcomes.items())),
            "replicas_placed": replicas_placed,
            "gpus_free_before": gpus_free_before,
            "gpus_free_after": gpus_free_after,
            "overcommitted_nodes": overcommitted,
            "initial_free_capacity_build_ms": build_s * 1000,
        },
        "incremental_ms": {
            name: {"p50": percentile(s, 0.5), "p99": percentile(s, 0.99), "max": max(s), "n": len(s)}
            for name, s in (("scale_up", scale_up), ("scale_down", scale_down), ("new_deployment", new_deployment))
        },
        "planner_step_ms": {
            "refresh_touched_clusters_p50": statistics.median(refresh_ms),
            "refresh_plus_place_p50": statistics.median(step_ms),
            "refresh_plus_place_p99": step_p99,
            "before_memory_full_rebuild_p50": statistics.median(rebuild_ms),
            "before_memory_rebuild_plus_place_p99": percentile(full_step_ms, 0.99),
            "n": len(step_ms),
            "rebuilt_equals_carried": rebuilt.clusters == filled.clusters,
            "refreshed_equals_carried": same,
        },
        "baseline_cluster_sum": naive,
        "rss_mb": {"current": current_rss, "peak": peak_rss},
        "targets": {
            "full placement (median wall, s)": _target(full_s, TARGET_FULL_S),
            "one incremental change: place() p99 (ms)": _target(change_p99, TARGET_CHANGE_MS),
            "planner step: refresh touched clusters + place() p99 (ms)": _target(step_p99, TARGET_CHANGE_MS),
            "peak RSS (MB)": _target(peak_rss, TARGET_RSS_MB),
            "overcommitted nodes": _target(overcommitted, 0),
        },
    }


def _target(value: float, limit: float) -> dict[str, Any]:
    return {"target": limit, "value": value, "pass": value <= limit}


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def render(result: dict[str, Any]) -> str:
    machine, inp, full = result["machine"], result["input"], result["full_placement"]
    inc, step, naive = result["incremental_ms"], result["planner_step_ms"], result["baseline_cluster_sum"]
    runs = ", ".join(f"{r['wall_s']:.3f} s (cpu {r['cpu_s']:.3f})" for r in full["runs"])
    lines = [
        f"placement benchmark: {inp['deployments']} deployments ({inp['replicas_wanted']} replicas) over "
        f"{inp['clusters']} clusters × {inp['nodes_per_cluster']} nodes, seed {inp['seed']}",
        f"machine: {machine['cpus']} CPU(s), Python {machine['python']}, calibration loop "
        f"{machine['calibration_loop_us']:.0f} µs, load average {machine['load_average_before']:.1f} → "
        f"{machine['load_average_after']:.1f}, CPU stolen by the hypervisor during the full placement runs: "
        f"{machine['cpu_steal_share_during_full_placement']:.0%}",
        "",
        f"full placement: median {full['seconds_median']:.3f} s ({full['per_deployment_us']:.0f} µs/deployment); "
        f"runs: {runs}",
        f"  outcomes {full['outcomes']}; {full['replicas_placed']} of {inp['replicas_wanted']} replicas placed; "
        f"free GPUs {full['gpus_free_before']} → {full['gpus_free_after']}",
    ]
    for name, s in inc.items():
        lines.append(
            f"incremental {name:<15} p50 {s['p50']:.3f} ms  p99 {s['p99']:.3f} ms  max {s['max']:.3f} ms  n={s['n']}"
        )
    lines.append(
        f"planner step, capacity carried: refresh of the touched clusters p50 "
        f"{step['refresh_touched_clusters_p50']:.2f} ms, refresh + place p50 {step['refresh_plus_place_p50']:.2f} ms, "
        f"p99 {step['refresh_plus_place_p99']:.2f} ms (n={step['n']}; refreshed equals carried: "
        f"{step['refreshed_equals_carried']})"
    )
    lines.append(
        f"  before the memory, a full rebuild each step: free_capacity p50 "
        f"{step['before_memory_full_rebuild_p50']:.2f} ms, rebuild + place p99 "
        f"{step['before_memory_rebuild_plus_place_p99']:.2f} ms (rebuilt equals carried: "
        f"{step['rebuilt_equals_carried']})"
    )
    share = naive["pending_replicas"] / max(1, naive["assigned_replicas"])
    lines.append(
        f"baseline cluster-sum placer: {naive['assigned_replicas']} GPU replicas assigned, "
        f"{naive['pending_replicas']} ({share:.1%}) fit on no node (fragmentation it cannot see)"
    )
    lines.append(f"RSS: current {result['rss_mb']['current']:.0f} MB, peak {result['rss_mb']['peak']:.0f} MB")
    lines += ["", f"{'target':<58} {'limit':>8} {'measured':>10}  result", "-" * 88]
    for name, t in result["targets"].items():
        value = f"{t['value']:.3f}" if isinstance(t["value"], float) else str(t["value"])
        lines.append(f"{name:<58} {t['target']!s:>8} {value:>10}  {'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="full placement runs (the median is the figure)")
    parser.add_argument("--changes", type=int, default=1_000, help="incremental changes timed per kind")
    parser.add_argument("--rebuilds", type=int, default=50, help="planner steps timed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tune_gc()  # placement runs in the planner process, which tunes its collector so (llm_operator.cli)
    result = run(args)
    print(render(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.output}")
    return 0 if all(t["pass"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
