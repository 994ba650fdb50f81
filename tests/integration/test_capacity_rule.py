"""One rule for free GPUs, on real Postgres: the planner, the report_gpu_capacity view, `llm-operator status` and
`llm-operator history fleet --as-of` give the same numbers on a fleet with cordoned, NotReady and tainted nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import ClusterHeartbeat, deterministic_id
from api.labels import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_NAMESPACE, LABEL_ORIGIN
from planner.capacity import gpu_capacity
from planner.handle import StepConfig, step
from planner.memory import facts_of, read_capacity
from store import queries
from store.epochs import campaign
from tests import builders
from tests.builders import Feed
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"
MODEL = {
    "modelName": "Llama-70B",
    "image": "registry/vllm:1",
    "resources": {"cpu": "8", "memory": "80Gi", "gpu": {"count": 4, "types": [A100]}},
}
NUMBERS = ("nodes", "total", "allocated", "reserved", "free", "unusable_nodes", "unusable_gpus")


def node(
    name: str, *, product: str = A100, cordoned: bool = False, ready: bool = True, taint: str | None = None
) -> Any:
    """A GPU node as the apiserver returns it (fresh resourceVersion each call), as it is now."""
    obj = builders.gpu_node(name, product=product, uid=f"{name}-uid")
    if cordoned:
        obj["spec"]["unschedulable"] = True
    if not ready:
        obj["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    if taint:
        obj["spec"]["taints"].append({"key": taint, "value": "x", "effect": "NoSchedule"})
    return obj


def pod(name: str, node_name: str, gpus: int, *, ours: bool) -> Any:
    labels = (
        {LABEL_ORIGIN: "cpu", LABEL_NAMESPACE: "team", LABEL_DEPLOYMENT: "big", LABEL_MANAGED_BY: "llm-operator"}
        if ours
        else {"app": "someone-elses-job"}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": builders.meta(name, "team", uid=f"{name}-uid", labels=labels),
        "spec": {
            "nodeName": node_name,
            "containers": [{"name": "main", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


async def fleet_history(engine: AsyncEngine, hub: Hub) -> None:
    """`big` (3 × 4 GPUs) is placed while every node is fine (2 replicas expected on gpu-1, 1 on gpu-2); then gpu-1
    is cordoned, gpu-3 goes NotReady, gpu-4 gets a taint our pods do not tolerate and gpu-5 the kwok marker
    taint; one replica binds on gpu-2 next to someone else's 2-GPU job, and another job runs on the cordoned node."""
    lease = await campaign(engine, holder="test")
    await lease.release()
    feed = Feed(hub.subjects)
    config = StepConfig(
        consumer="planner",
        subjects=hub.subjects,
        heartbeat_timeout=timedelta(minutes=10),
        recovery_hold=timedelta(seconds=2),
    )

    def heartbeat(cluster: str) -> ClusterHeartbeat:
        return ClusterHeartbeat(
            event_id=deterministic_id("hb", cluster),
            cluster=cluster,
            watcher_id="w1",
            sent_at=feed.clock,
            sequence=0,
        )

    spec = {"modelRef": "llama", "replicas": 3, "port": 8080}
    steps: list[list[Any]] = [
        [heartbeat("a100"), heartbeat("h100"), heartbeat("cpu")],
        [
            *(builders.observed("a100", "Node", node(f"gpu-{i}")) for i in range(1, 6)),
            builders.observed("h100", "Node", node("h-1", product=H100)),
            builders.observed("cpu", "Node", builders.cpu_node("cpu-1")),
            builders.observed("cpu", "LLMModel", builders.llm_model("llama", "team", MODEL)),
        ],
        [builders.observed("cpu", "LLMDeployment", builders.llm_deployment("big", "team", spec, uid="big-uid"))],
        [
            builders.observed("a100", "Node", node("gpu-1", cordoned=True)),
            builders.observed("a100", "Node", node("gpu-3", ready=False)),
            builders.observed("a100", "Node", node("gpu-4", taint="dedicated")),
            builders.observed("a100", "Node", node("gpu-5", taint="kwok.x-k8s.io/node")),
            builders.observed("a100", "Pod", pod("big-0", "gpu-2", 4, ours=True)),
            builders.observed("a100", "Pod", pod("other-job", "gpu-2", 2, ours=False)),
            builders.observed("a100", "Pod", pod("cordoned-job", "gpu-1", 4, ours=False)),
        ],
    ]
    for events in steps:
        feed.tick(5)
        async with engine.begin() as conn:
            await step(
                conn,
                deliveries=feed.deliver(*events),
                epoch=lease.epoch,
                now=feed.clock,
                config=config,
                health_grace_until=feed.clock,
            )


async def cli(hub: Hub, *args: str, json_output: bool = True) -> Any:
    """Run the real CLI against the test's database: its JSON (or, with json_output False, its text)."""
    result = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "llm_operator",
                *args,
                *(["--json"] if json_output else []),
                "--database-url",
                hub.database_url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if json_output else result.stdout


def numbers(rows: Any) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {(r["cluster"], r["gpu_product"]): (float(r["gpu_memory_gib"]), *(int(r[k]) for k in NUMBERS)) for r in rows}


async def test_planner_view_status_and_as_of_give_the_same_free_gpus(engine: AsyncEngine, hub: Hub) -> None:
    await fleet_history(engine, hub)
    async with engine.connect() as conn:
        placements = await queries.all_placements(conn)
        planner = await read_capacity(conn)
        rule = gpu_capacity(
            *facts_of(await queries.nodes(conn), await queries.bound_pods(conn), await queries.all_placements(conn))
        )
        view = (await conn.execute(text("SELECT * FROM report_gpu_capacity"))).mappings().all()
    status = await cli(hub, "status")
    as_of = await cli(hub, "history", "fleet", "--as-of", (datetime.now(UTC) + timedelta(minutes=1)).isoformat())

    assert [(p.cluster, p.nodes) for p in placements] == [("a100", {"gpu-1": 2, "gpu-2": 1})]
    expected = {
        # Only gpu-2 counts: 6 GPUs requested there (4 ours, 2 someone else's), nothing reserved (the replica
        # expected there is bound); the 2 replicas still outstanding are held on cordoned gpu-1, which does not
        # count, nor do NotReady gpu-3 and tainted gpu-4 and gpu-5. (The view of migration 0002 said 5 nodes, 40 GPUs,
        # 10 allocated, 22 free.)
        ("a100", A100): (80.0, 1, 8, 6, 0, 2, 4, 32),
        ("h100", H100): (80.0, 1, 8, 0, 0, 8, 0, 0),
    }
    assert numbers(view) == expected
    assert numbers(r.__dict__ | {"gpu_memory_gib": r.gpu_memory_bytes / 2**30} for r in rule) == expected
    assert numbers(status["capacity"]) == expected
    assert numbers(as_of["capacity"]) == expected
    # The planner: the same usable nodes, GPUs and free GPUs, node by node.
    seen = {}
    for cluster, nodes in planner.clusters.items():
        for n in nodes:
            if n.gpu_product:
                total = seen.setdefault((cluster, n.gpu_product), [0, 0, 0])
                total[0] += 1
                total[1] += n.gpu_allocatable
                total[2] += n.gpus
    assert {key: tuple(v) for key, v in seen.items()} == {key: (v[1], v[2], v[5]) for key, v in expected.items()}
