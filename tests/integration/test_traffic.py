"""The planner's endpoints wiring on real Postgres (through the planner's step): declared networks recorded from
heartbeats, replica addresses folded from pod observations, and the EndpointsPlans a deployment running outside
its origin gets — then follows when a pod's readiness changes — written to the outbox with its other plans."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import ClusterHeartbeat, deterministic_id
from api.keys import DeploymentKey
from api.labels import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_NAMESPACE, LABEL_ORIGIN, MANAGED_BY
from api.network import ClusterNetwork
from api.plans import EndpointsPlan
from planner.handle import StepConfig, step
from store import queries, replay, tables
from store.epochs import campaign
from tests import builders
from tests.builders import Feed
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]

NETWORKS = {
    "cpu": ClusterNetwork(mode="flat", pod_cidrs=["10.246.0.0/16"]),
    "a100": ClusterNetwork(mode="flat", pod_cidrs=["10.244.0.0/16"]),
}
GPU_MODEL = {
    "modelName": "Llama-70B",
    "image": "registry/vllm:1",
    "resources": {"cpu": "8", "memory": "80Gi", "gpu": {"count": 4, "types": ["NVIDIA-A100-SXM4-80GB"]}},
}


def beat(cluster: str, seq: int, feed: Feed, network: ClusterNetwork | None) -> ClusterHeartbeat:
    return ClusterHeartbeat(
        event_id=deterministic_id("hb", cluster, str(seq)),
        cluster=cluster,
        labels={"gpu": cluster},
        watcher_id="w1",
        sent_at=feed.clock,
        sequence=seq,
        network=network,
    )


def pod(name: str, ip: str, *, ready: bool) -> dict[str, Any]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_DEPLOYMENT: "chat", LABEL_ORIGIN: "cpu", LABEL_NAMESPACE: "team"}
    return {
        "metadata": builders.meta(name, "team", labels=labels),
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "vllm"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


async def run(engine: AsyncEngine, hub: Hub, feed: Feed, epoch: int, *events: Any) -> Any:
    config = StepConfig(
        consumer="planner",
        subjects=hub.subjects,
        heartbeat_timeout=timedelta(seconds=10),
        recovery_hold=timedelta(seconds=2),
    )
    async with engine.begin() as conn:
        return await step(
            conn,
            deliveries=feed.deliver(*events),
            epoch=epoch,
            now=feed.clock,
            config=config,
            health_grace_until=feed.clock,
        )


async def place_chat(engine: AsyncEngine, hub: Hub, feed: Feed, epoch: int) -> None:
    """A GPU node in a100 and an LLMDeployment `team/chat` applied in cpu: it is placed in a100."""
    await run(
        engine,
        hub,
        feed,
        epoch,
        builders.observed("a100", "Node", builders.gpu_node("gpu-1")),
        builders.observed("cpu", "LLMModel", builders.llm_model("llama", "team", GPU_MODEL)),
        builders.observed(
            "cpu", "LLMDeployment", builders.llm_deployment("chat", "team", {"modelRef": "llama", "replicas": 1})
        ),
    )


async def endpoints_plans(engine: AsyncEngine) -> list[EndpointsPlan]:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(tables.plans.c.payload).where(tables.plans.c.kind == "Endpoints").order_by(tables.plans.c.sequence)
        )
        return [EndpointsPlan.model_validate(p) for (p,) in found]


async def test_a_deployment_running_outside_its_origin_gets_endpoints_plans_that_follow_its_pods(
    engine: AsyncEngine, hub: Hub
) -> None:
    lease = await campaign(engine, holder="test")
    await lease.release()
    epoch = lease.epoch
    feed = Feed(hub.subjects)
    await run(engine, hub, feed, epoch, *(beat(c, 0, feed, n) for c, n in NETWORKS.items()))
    async with engine.connect() as conn:
        clusters = {c.name: c for c in await queries.clusters(conn)}
    assert {c: ClusterNetwork.model_validate(r.network) for c, r in clusters.items()} == NETWORKS

    await place_chat(engine, hub, feed, epoch)
    first = await endpoints_plans(engine)
    origin = next(p for p in first if p.cluster == "cpu")
    assert origin.role == "origin" and origin.serving == [] and origin.port == 8080  # the Service, before any pod
    serving = next(p for p in first if p.cluster == "a100")
    assert serving.role == "serving" and serving.admit_cidrs == ["10.246.0.0/16"]

    # The replica's pod is observed with its address, not ready yet: nothing to point at; then ready: the origin
    # points at it.
    feed.tick()
    await run(engine, hub, feed, epoch, builders.observed("a100", "Pod", pod("chat-1", "10.244.3.7", ready=False)))
    async with engine.connect() as conn:
        (replica,) = (await queries.replicas_many(conn, [DeploymentKey("cpu", "team", "chat")]))[
            DeploymentKey("cpu", "team", "chat")
        ]
    assert (replica.cluster, replica.pod_ip, replica.ready) == ("a100", "10.244.3.7", False)
    assert len(await endpoints_plans(engine)) == len(first)
    feed.tick()
    await run(engine, hub, feed, epoch, builders.observed("a100", "Pod", pod("chat-1", "10.244.3.7", ready=True)))
    latest = (await endpoints_plans(engine))[-1]
    assert latest.cluster == "cpu" and [(s.cluster, s.addresses) for s in latest.serving] == [("a100", ["10.244.3.7"])]

    # a100 now declares the MCS API: recorded, and the serving cluster's plan says so.
    feed.tick()
    await run(engine, hub, feed, epoch, beat("a100", 1, feed, ClusterNetwork(mode="mcs")))
    async with engine.connect() as conn:
        a100 = next(c for c in await queries.clusters(conn) if c.name == "a100")
        assert a100.network == {"mode": "mcs", "pod_cidrs": []}
        live = await replay.snapshot(conn)
    assert (await endpoints_plans(engine))[-1].mode == "mcs"
    # The projections the endpoints need are rebuilt from the log like every other.
    async with engine.begin() as conn:
        await replay.rebuild(conn)
    async with engine.connect() as conn:
        rebuilt = await replay.snapshot(conn)
    assert rebuilt["pods"] == live["pods"]
    assert [c["network"] for c in rebuilt["clusters"]] == [c["network"] for c in live["clusters"]]


def service(ingress: list[str]) -> dict[str, Any]:
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_DEPLOYMENT: "chat", LABEL_ORIGIN: "cpu", LABEL_NAMESPACE: "team"}
    return {
        "metadata": builders.meta("chat", "team", labels=labels),
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 8080, "nodePort": 31000}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ingress]}},
    }


async def test_an_exposed_clusters_load_balancer_address_becomes_the_origins_endpoint(
    engine: AsyncEngine, hub: Hub
) -> None:
    lease = await campaign(engine, holder="test")
    await lease.release()
    epoch = lease.epoch
    feed = Feed(hub.subjects)
    networks = {**NETWORKS, "a100": ClusterNetwork(mode="exposed", pod_cidrs=["10.244.0.0/16"])}
    await run(engine, hub, feed, epoch, *(beat(c, 0, feed, n) for c, n in networks.items()))
    await place_chat(engine, hub, feed, epoch)
    assert next(p for p in await endpoints_plans(engine) if p.cluster == "a100").mode == "exposed"

    # The replica is ready, its Service has no load balancer address yet: its pod address is not reachable from
    # the origin in this mode, so nothing is pointed at.
    feed.tick()
    await run(
        engine,
        hub,
        feed,
        epoch,
        builders.observed("a100", "Pod", pod("chat-1", "10.244.3.7", ready=True)),
        builders.observed("a100", "Service", service([])),
    )
    assert all(p.serving == [] for p in await endpoints_plans(engine) if p.cluster == "cpu")

    # The cloud controller answers (a hostile extra address is left out): the origin points at the load balancer.
    feed.tick()
    await run(engine, hub, feed, epoch, builders.observed("a100", "Service", service(["10.244.255.9", "127.0.0.1"])))
    key = DeploymentKey("cpu", "team", "chat")
    async with engine.connect() as conn:
        (row,) = (await queries.services_many(conn, [key]))[key]
        live = await replay.snapshot(conn)
    assert (row.cluster, row.ingress, row.port, row.service_type) == ("a100", ["10.244.255.9"], 8080, "LoadBalancer")
    latest = (await endpoints_plans(engine))[-1]
    assert latest.cluster == "cpu"
    assert [(s.cluster, s.mode, s.addresses, s.port) for s in latest.serving] == [
        ("a100", "exposed", ["10.244.255.9"], 8080)
    ]
    async with engine.begin() as conn:
        await replay.rebuild(conn)
    async with engine.connect() as conn:
        rebuilt = await replay.snapshot(conn)
    assert rebuilt["services"] == live["services"] and live["services"]
