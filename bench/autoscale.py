"""Autoscaler benchmark: the planner's cost of 1,000 autoscaled LLMDeployments reporting load every 10 s.

The real planner step on real (embedded) Postgres: each `LoadObserved` is appended to the log in the step's
transaction, the fleet autoscaler decides for its deployment (reading the deployment rows and placements once
per batch), and the decisions that change something write `ScaleDecided` events and scale plans. Every round,
5 % of the deployments see a burst (a scale-up), the rest steady load with noise (no change).

Figures: observations per second the planner sustains (against the 100/s that 1,000 deployments every 10 s
produce), the planner process's CPU per observation, and the wall time of one round.
Run: `python -m bench.autoscale [--deployments 1000 --rounds 12]`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from api.events import ClusterHeartbeat, Event, LoadObserved, deterministic_id, encode_event
from bench.common import T0, print_table, servers, write_result
from bus.subjects import Subjects
from llm_operator.gc_tuning import tune_gc
from planner.handle import Delivery, StepConfig, step
from planner.memory import CapacityMemory
from planner.scaling import AutoscalerMemory
from planner.service import BATCH_SIZE
from store import schema
from store.epochs import campaign
from watcher import translate

MODEL = {
    "modelName": "Llama-8B",
    "image": "vllm/vllm-openai:v0.11.0",
    "resources": {"cpu": "4", "memory": "32Gi", "gpu": {"count": 1}},
}


def _node(index: int) -> dict[str, Any]:
    allocatable = {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"}
    return {
        "metadata": {
            "name": f"gpu-{index:04d}",
            "uid": f"node-{index}",
            "resourceVersion": "1",
            "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/gpu.memory": "81920"},
        },
        "spec": {},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _deployment(index: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"model-{index:04d}",
            "namespace": "team",
            "uid": f"dep-{index}",
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": "2026-11-27T09:00:00Z",
        },
        "spec": {
            "modelRef": "llama",
            "replicas": 2,
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 16,
                "target": {"queueDepth": 8, "timeToFirstTokenP90Ms": 800},
                "scaleDownStabilizationSeconds": 300,
            },
        },
    }


_BOUNDS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, float("inf"))


def _load(index: int, at: Any, rng: random.Random, burst: bool) -> LoadObserved:
    per_replica = 30.0 if burst else 8 * (1 + rng.uniform(-0.08, 0.08))
    # 200 first tokens in the window: steady, 90 % within 250 ms and the rest within 750 ms (p90 ≈ 250 ms);
    # a burst, 60 % between 1 and 2.5 s (p90 ≈ 2.2 s).
    fast = 80.0 if burst else 180.0
    counts = []
    for bound in _BOUNDS:
        if bound < 0.25:
            count = 0.0
        elif bound < 0.75:
            count = fast
        elif bound < 2.5:
            count = fast + (0.0 if burst else 20.0)
        else:
            count = 200.0
        counts.append((bound, count))
    return LoadObserved(
        event_id=LoadObserved.id_for("a100", "cpu", "team", f"model-{index:04d}", at),
        cluster="a100",
        origin_cluster="cpu",
        namespace="team",
        name=f"model-{index:04d}",
        window_seconds=10,
        replicas=2,
        reporting=2,
        waiting=2 * per_replica,
        running=16,
        requests_per_second=20,
        kv_cache_usage=0.5,
        ttft_buckets=counts,
        observed_at=at,
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    subjects = Subjects("bench")
    rng = random.Random(args.seed)
    with servers() as srv:
        engine = create_async_engine(srv.postgres.url(), pool_size=2)
        await schema.upgrade(engine)
        lease = await campaign(engine, holder="bench")
        config = StepConfig(
            consumer="planner",
            subjects=subjects,
            heartbeat_timeout=timedelta(days=1),
            recovery_hold=timedelta(seconds=1),
        )
        capacity, autoscaler = CapacityMemory(), AutoscalerMemory()
        sequence = 0
        clock = T0

        async def deliver(events: list[Event], now: Any) -> Any:
            nonlocal sequence
            deliveries = []
            for event in events:
                sequence += 1
                deliveries.append(Delivery(subjects.events(event.cluster), sequence, encode_event(event), now))
            async with engine.begin() as conn:
                return await step(
                    conn,
                    deliveries=deliveries,
                    epoch=lease.epoch,
                    now=now,
                    config=config,
                    health_grace_until=now,
                    memory=capacity,
                    autoscaler=autoscaler,
                )

        beats: list[Event] = [
            ClusterHeartbeat(
                event_id=deterministic_id("hb", c), cluster=c, labels={}, watcher_id="w", sent_at=clock, sequence=0
            )
            for c in ("a100", "cpu")
        ]
        await deliver(beats, clock)
        nodes = args.deployments * 16 // 8 + 8  # room for every deployment at maxReplicas... and then some
        setup: list[Event] = [translate.observed("a100", "Node", _node(i), clock) for i in range(nodes)]
        setup.append(translate.observed("cpu", "LLMModel", _model(), clock))
        for start in range(0, len(setup), BATCH_SIZE):
            await deliver(setup[start : start + BATCH_SIZE], clock)
        deployments = [
            translate.observed("cpu", "LLMDeployment", _deployment(i), clock) for i in range(args.deployments)
        ]
        for start in range(0, len(deployments), BATCH_SIZE):
            await deliver(list(deployments[start : start + BATCH_SIZE]), clock)

        rounds: list[dict[str, float]] = []
        scaled = 0
        for round_ in range(args.rounds):
            clock += timedelta(seconds=10)
            bursting = set(rng.sample(range(args.deployments), max(1, args.deployments // 20)))
            loads: list[Event] = [_load(i, clock, rng, i in bursting) for i in range(args.deployments)]
            rng.shuffle(loads)
            wall, cpu = time.perf_counter(), time.process_time()
            plans = 0
            for start in range(0, len(loads), BATCH_SIZE):
                result = await deliver(loads[start : start + BATCH_SIZE], clock)
                plans += result.plans
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            scaled += plans
            rounds.append({"round": round_, "wall_s": wall, "cpu_s": cpu, "plans": plans})
        await engine.dispose()

    steady = rounds[1:] if len(rounds) > 1 else rounds  # the first round meets every deployment for the first time
    observations = args.deployments * len(steady)
    wall = sum(r["wall_s"] for r in steady)
    cpu = sum(r["cpu_s"] for r in steady)
    rate = observations / wall
    needed = args.deployments / 10
    return {
        "deployments": args.deployments,
        "rounds": args.rounds,
        "observations_per_second": rate,
        "needed_per_second": needed,
        "headroom": rate / needed,
        "planner_cpu_ms_per_observation": 1000 * cpu / observations,
        "round_wall_seconds_p50": sorted(r["wall_s"] for r in steady)[len(steady) // 2],
        "planner_cpu_share_of_one_core": cpu / (len(steady) * 10),
        "scale_plans": scaled,
        "per_round": rounds,
    }


def _model() -> dict[str, Any]:
    return {
        "metadata": {"name": "llama", "namespace": "team", "uid": "model", "resourceVersion": "1", "generation": 1},
        "spec": MODEL,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=12, help="10-second rounds of load (one observation each)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    tune_gc()
    result = asyncio.run(run(args))
    print_table(
        f"autoscaler: {args.deployments} deployments reporting every 10 s",
        [
            (
                "observations/s sustained",
                f"{result['observations_per_second']:.0f}",
                f">= {result['needed_per_second']:.0f}",
                "pass" if result["headroom"] >= 1 else "FAIL",
            ),
            ("headroom", f"{result['headroom']:.1f}x", "", ""),
            ("planner CPU per observation", f"{result['planner_cpu_ms_per_observation']:.2f} ms", "", ""),
            ("planner CPU, share of one core", f"{100 * result['planner_cpu_share_of_one_core']:.1f} %", "", ""),
            ("one round (wall, p50)", f"{result['round_wall_seconds_p50']:.2f} s", "< 10 s", ""),
            ("scale plans issued", str(result["scale_plans"]), "", ""),
        ],
    )
    print(f"wrote {write_result('autoscale', result)}")
    return 0 if result["headroom"] >= 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
