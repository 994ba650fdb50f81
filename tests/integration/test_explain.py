"""`llm-operator explain` names every cluster a decision passed over and why, from the verdicts recorded with the
decision (real Postgres, the real planner step, the real CLI)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import ClusterHeartbeat, deterministic_id
from planner.handle import StepConfig, step
from store.epochs import campaign
from tests import builders
from tests.builders import Feed
from tests.fixtures.services import Hub
from tests.integration.test_capacity_rule import A100, cli, node

pytestmark = [pytest.mark.anyio, pytest.mark.services]

A100_40 = "NVIDIA-A100-PCIE-40GB"
MODEL = {
    "modelName": "Llama-70B",
    "image": "registry/vllm:1",
    "resources": {
        "cpu": "8",
        "memory": "80Gi",
        "gpu": {"count": 4, "types": [A100, A100_40], "minMemory": "80Gi"},
    },
}


async def test_explain_names_every_cluster_passed_over_and_why(engine: AsyncEngine, hub: Hub) -> None:
    lease = await campaign(engine, holder="test")
    await lease.release()
    feed = Feed(hub.subjects)
    config = StepConfig(
        consumer="planner", subjects=hub.subjects, heartbeat_timeout=timedelta(minutes=10), recovery_hold=timedelta(0)
    )

    def heartbeat(cluster: str, **labels: str) -> ClusterHeartbeat:
        return ClusterHeartbeat(
            event_id=deterministic_id("hb", cluster),
            cluster=cluster,
            labels=labels,
            watcher_id="w1",
            sent_at=feed.clock,
            sequence=0,
        )

    spec: dict[str, Any] = {
        "modelRef": "llama",
        "replicas": 1,
        "placement": {"clusterSelector": {"matchLabels": {"tier": "prod"}}},
    }
    steps: list[list[Any]] = [
        [heartbeat("cpu", tier="prod"), heartbeat("big", tier="prod"), heartbeat("small", tier="prod")],
        [heartbeat("dev", tier="dev")],
        [
            builders.observed("big", "Node", node("big-1")),
            builders.observed("small", "Node", builders.gpu_node("small-1", product=A100_40, memory_mib=40960)),
            builders.observed("dev", "Node", node("dev-1")),
            builders.observed("cpu", "Node", builders.cpu_node("cpu-1")),
            builders.observed("cpu", "LLMModel", builders.llm_model("llama", "team", MODEL)),
        ],
        [builders.observed("cpu", "LLMDeployment", builders.llm_deployment("chat", "team", spec, uid="chat-uid"))],
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

    explained = await cli(hub, "explain", "llmdeployment/team/chat")
    table = await cli(hub, "explain", "llmdeployment/team/chat", json_output=False)

    verdicts = {v["cluster"]: (v["eligible"], v["replicas"], v["reason"]) for v in explained["decision"]["verdicts"]}
    assert verdicts == {
        "big": (True, 1, None),
        "cpu": (True, 0, "no_acceptable_gpu_type"),
        "dev": (False, 0, "selector_mismatch"),
        "small": (True, 0, "gpu_memory_below_floor"),
    }
    assert "clusters considered" in table
    for cluster, why in (
        ("cpu", "no_acceptable_gpu_type"),
        ("dev", "selector_mismatch"),
        ("small", "gpu_memory_below_floor"),
    ):
        line = next(line for line in table.splitlines() if f" {cluster} " in line and why in line)
        assert "no" in line or "yes" in line
    assert "below the minMemory of 80Gi" in table
