"""Replay benchmark: rebuild every projection from a log of 1,000,000 events, in bounded memory.

The log is realistic for a big fleet: 100 clusters × 20 GPU nodes whose snapshots change over time, 20,000 pods
coming and going, 1,000 deployments with their observations, decisions and plans. It is loaded with COPY (setup,
not measured), then `store.replay.rebuild` runs in one transaction. Printed: events in the log per second of
rebuild, events actually folded (the last snapshot of each object plus every planner event), and peak RSS at two
log sizes to show memory does not grow with the log.

Run: `python -m bench.replay [--events 1000000]`. Target (issue 4): ≥ 100,000 events/s, bounded memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import T0, print_table, servers, write_result
from store import recorder, replay, schema


def _node_payload(cluster: int, node: int, version: int, rng: random.Random) -> dict[str, Any]:
    product = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"][(cluster + node) % 2]
    return {
        "kind": "Node",
        "namespace": None,
        "name": f"gpu-{node:02d}",
        "uid": f"n-{cluster}-{node}",
        "resource_version": str(version),
        "generation": None,
        "observed_at": T0.isoformat(),
        "object": {
            "labels": {
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": "81920",
                "revision": str(rng.randrange(100)),
            },
            "allocatable": {"cpu": "96", "memory": "1Ti", "nvidia.com/gpu": "8"},
            "capacity": {"cpu": "96", "memory": "1Ti", "nvidia.com/gpu": "8"},
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
            "unschedulable": False,
            "ready": True,
        },
    }


def _pod_payload(cluster: int, pod: int, version: int, rng: random.Random) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "namespace": f"team-{pod % 20}",
        "name": f"model-{pod}",
        "uid": f"p-{cluster}-{pod}",
        "resource_version": str(version),
        "generation": None,
        "observed_at": T0.isoformat(),
        "object": {
            "labels": {
                "llm.example.com/deployment": f"model-{pod % 1000}",
                "llm.example.com/origin-cluster": f"c{pod % 100:03d}",
                "llm.example.com/namespace": f"team-{pod % 20}",
            },
            "nodeName": f"gpu-{pod % 20:02d}",
            "phase": rng.choice(["Running", "Pending"]),
            "ready": True,
            "requests": {"cpu": "8", "memory": "80Gi", "nvidia.com/gpu": "4"},
        },
    }


def _deployment_payload(index: int, version: int, generation: int) -> dict[str, Any]:
    return {
        "kind": "LLMDeployment",
        "namespace": f"team-{index % 20}",
        "name": f"model-{index}",
        "uid": f"d-{index}",
        "resource_version": str(version),
        "generation": generation,
        "observed_at": T0.isoformat(),
        "object": {
            "labels": {},
            "generation": generation,
            "creationTimestamp": "2026-11-27T09:00:00Z",
            "spec": {"modelRef": "llama", "replicas": 1 + generation % 3, "port": 8080},
            "status": {},
            "managers": [],
        },
    }


def _decision_payload(index: int, epoch: int, generation: int) -> dict[str, Any]:
    cluster = f"c{(index + generation) % 100:03d}"
    return {
        "origin_cluster": f"c{index % 100:03d}",
        "namespace": f"team-{index % 20}",
        "name": f"model-{index}",
        "generation": generation,
        "desired_replicas": 2,
        "outcome": "Placed",
        "shares": [
            {
                "cluster": cluster,
                "replicas": 2,
                "role": "active",
                "gpu_type": "NVIDIA-A100-SXM4-80GB",
                "nodes": {"gpu-01": 2},
            }
        ],
        "replica_gpus": 4,
        "replica_cpu_m": 8000,
        "replica_memory_bytes": 85899345920,
        "reasons": ["2 replica(s) on NVIDIA-A100-SXM4-80GB (preferred type)"],
        "message": f"placed {cluster}=2",
        "inputs": {},
        "epoch": epoch,
        "decided_at": T0.isoformat(),
    }


def rows(count: int, seed: int = 11) -> list[tuple[Any, ...]]:
    """(event_id, stream_id, stream_version, type, schema_version, cluster, payload, metadata, occurred_at,
    object_key, retention)."""
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    generations: dict[int, int] = {}
    out = []
    for i in range(count):
        at = T0 + timedelta(milliseconds=i)
        roll = rng.random()
        if roll < 0.40:
            cluster, node = rng.randrange(100), rng.randrange(20)
            kind, payload, origin = "ResourceObserved", _node_payload(cluster, node, i, rng), cluster
            stream = f"Node/c{cluster:03d}/gpu-{node:02d}"
        elif roll < 0.93:
            cluster, pod = rng.randrange(100), rng.randrange(200)  # ~8 pods per node, 20,000 in the fleet
            kind, payload, origin = "ResourceObserved", _pod_payload(cluster, pod, i, rng), cluster
            stream = f"Pod/c{cluster:03d}/team-{pod % 20}/model-{pod}"
        elif roll < 0.97:
            index = rng.randrange(1000)
            generations[index] = generations.get(index, 0) + 1
            origin = index % 100
            kind, payload = "ResourceObserved", _deployment_payload(index, i, generations[index])
            stream = f"LLMDeployment/c{origin:03d}/team-{index % 20}/model-{index}"
        else:
            index = rng.randrange(1000)
            origin = index % 100
            kind, payload = "PlacementDecided", _decision_payload(index, 1, generations.get(index, 1))
            stream = f"LLMDeployment/c{origin:03d}/team-{index % 20}/model-{index}"
        versions[stream] = versions.get(stream, 0) + 1
        key = f"c{origin:03d}/{payload['kind']}/{payload['uid']}" if kind == "ResourceObserved" else None
        key = f"c{origin:03d}/{payload['kind']}/{payload['uid']}" if kind == "ResourceObserved" else None
        out.append(
            (
                str(uuid.UUID(int=i + 1)),
                stream,
                versions[stream],
                kind,
                2 if kind == "PlacementDecided" else 1,
                f"c{origin:03d}",
                json.dumps(payload),
                "{}",
                at,
                key,
                "observation" if kind == "ResourceObserved" and payload["kind"] in recorder.OBSERVED_KINDS else "audit",
            )
        )
    return out


async def load(dsn: str, count: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        chunk = 100_000
        for start in range(0, count, chunk):
            batch = rows(min(chunk, count - start), seed=start)
            # Event ids and stream versions must stay unique across chunks.
            batch = [
                (str(uuid.UUID(int=start + i + 1)), s, v + start, *rest) for i, (_, s, v, *rest) in enumerate(batch)
            ]
            await conn.copy_records_to_table(
                "events",
                records=batch,
                columns=[c for c in recorder.EVENT_COLUMNS if c != "position"],  # positions from the sequence
            )
        await conn.execute("VACUUM ANALYZE events")  # what autovacuum does after a bulk load
    finally:
        await conn.close()
    return time.perf_counter() - started


async def rebuild(url: str) -> replay.ReplayStats:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            return await replay.rebuild(conn)
    finally:
        await engine.dispose()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(hub: Any, database: str, count: int) -> tuple[replay.ReplayStats, float, float]:
    hub.postgres.psql(f"CREATE DATABASE {database}")
    url = hub.postgres.url(database)
    engine = create_async_engine(url)
    await schema.upgrade(engine)
    await engine.dispose()
    dsn = f"postgresql://postgres@/{database}?host={hub.postgres.socket_dir}"
    loaded = await load(dsn, count)
    before = peak_rss_mib()
    stats = await rebuild(url)
    return stats, loaded, peak_rss_mib() - before


async def main(count: int) -> None:
    with servers() as hub:
        _, _, small_growth = await measure(hub, "replay_small", count // 4)
        big, loaded, big_growth = await measure(hub, "replay_big", count)
    peak = peak_rss_mib()
    print_table(
        f"replay benchmark: rebuild all projections from {count:,} events (loaded in {loaded:.0f}s)",
        [
            ("events in the log", f"{big.events_in_log:,}", "1,000,000", "-"),
            ("events folded (after superseding)", f"{big.events_folded:,}", "-", "-"),
            ("rebuild time", f"{big.seconds:.2f} s", "-", "-"),
            ("replay rate", f"{big.rate:,.0f} ev/s", "≥ 100,000 ev/s", "PASS" if big.rate >= 100_000 else "FAIL"),
            ("peak RSS of the process", f"{peak:.0f} MiB", "bounded", "-"),
            (f"RSS growth during rebuild ({count // 4:,} ev)", f"{small_growth:.0f} MiB", "-", "-"),
            (
                f"RSS growth during rebuild ({count:,} ev)",
                f"{big_growth:.0f} MiB",
                "≈ the smaller run's",
                "PASS" if big_growth <= max(small_growth * 2, 64) else "FAIL",
            ),
        ],
    )
    path = write_result(
        "replay",
        {
            "events": big.events_in_log,
            "folded": big.events_folded,
            "seconds": big.seconds,
            "events_per_s": big.rate,
            "peak_rss_mib": peak,
            "rss_growth_mib": {"quarter": small_growth, "full": big_growth},
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    asyncio.run(main(args.events))
