"""The fleet autoscaler in the planner step, on real Postgres: LoadObserved events in → ScaleDecided events and a
scale plan to the origin's applier out; after /scale shows the new count, placement spreads the added replicas,
spilling to another cluster when the preferred one is full. And the scrape shell against a real HTTP server."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import LoadObserved
from api.plans import Plan, ScalePlan, WorkloadPlan
from llm_operator.timeline import timeline
from planner.handle import StepConfig, step
from planner.scaling import AutoscalerMemory
from store import reader, tables
from tests import builders
from tests.builders import Feed
from tests.fixtures.services import Hub
from tests.integration.test_store import GPU_MODEL, config, epoch_of, heartbeat
from tests.metrics_text import vllm_text
from watcher import signal
from watcher.load import LoadSettings, Scraper, Target, targets_of

pytestmark = [pytest.mark.anyio]
_PLAN: TypeAdapter[Any] = TypeAdapter(Plan)
AUTOSCALED = {
    "modelRef": "llama",
    "replicas": 2,
    "port": 8080,
    "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "target": {"queueDepth": 4}},
}


def load(cluster: str, at: datetime, *, replicas: int, waiting: float, problems: list[str] | None = None) -> Any:
    return LoadObserved(
        event_id=LoadObserved.id_for(cluster, "cpu", "team", "big", at),
        cluster=cluster,
        origin_cluster="cpu",
        namespace="team",
        name="big",
        window_seconds=10,
        replicas=replicas,
        reporting=replicas - len(problems or []),
        waiting=waiting if problems is None else None,
        running=replicas if problems is None else None,
        problems=problems or [],
        observed_at=at,
    )


async def outbox(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(tables.outbox.c.payload).order_by(tables.outbox.c.id))).all()
    return [_PLAN.validate_json(r.payload) for r in rows]


@pytest.mark.services
async def test_load_scales_through_the_origin_and_placement_spills(engine: AsyncEngine, hub: Hub) -> None:
    epoch = await epoch_of(engine)
    feed = Feed(hub.subjects)
    memory = AutoscalerMemory()
    cfg: StepConfig = config(hub)

    async def run(*events: Any) -> Any:
        feed.tick(5)
        async with engine.begin() as conn:
            return await step(
                conn,
                deliveries=feed.deliver(*events),
                epoch=epoch,
                now=feed.clock,
                config=cfg,
                health_grace_until=feed.clock,
                autoscaler=memory,
            )

    await run(heartbeat("a100", 0, feed.clock), heartbeat("mixed", 0, feed.clock), heartbeat("cpu", 0, feed.clock))
    # a100 holds 4 replicas of 4 GPUs (two 8-GPU nodes); mixed holds 2 more.
    await run(
        builders.observed("a100", "Node", builders.gpu_node("a-1")),
        builders.observed("a100", "Node", builders.gpu_node("a-2")),
        builders.observed("mixed", "Node", builders.gpu_node("m-1")),
        builders.observed("cpu", "Node", builders.cpu_node("cpu-1")),
        builders.observed("cpu", "LLMModel", builders.llm_model("llama", "team", GPU_MODEL)),
    )
    spec = {**AUTOSCALED, "placement": {"clusters": ["a100", "mixed"]}}
    await run(builders.observed("cpu", "LLMDeployment", builders.llm_deployment("big", "team", spec, uid="big-uid")))
    placed = [p for p in await outbox(engine) if isinstance(p, WorkloadPlan) and p.replicas]
    assert [(p.cluster, p.replicas) for p in placed] == [("a100", 2)]

    # Load from a cluster that runs none of its replicas is not believed.
    await run(load("mixed", feed.clock, replicas=2, waiting=100))
    [unbelieved] = [p for p in await outbox(engine) if isinstance(p, ScalePlan)]
    assert unbelieved.replicas is None and unbelieved.condition is not None
    assert (unbelieved.condition.status, unbelieved.condition.reason) == ("False", "MetricsUnavailable")

    # a100: 2 replicas, 20 waiting = 10 per replica against a target of 4: ratio 2.5 → 5.
    await run(load("a100", feed.clock, replicas=2, waiting=20))
    scale = [p for p in await outbox(engine) if isinstance(p, ScalePlan) and p.replicas is not None]
    assert len(scale) == 1
    assert (scale[0].cluster, scale[0].replicas, scale[0].deployment.uid) == ("cpu", 5, "big-uid")
    assert scale[0].condition is not None and scale[0].condition.reason == "ValidMetricsFound"
    assert [e.reason for e in scale[0].events] == ["SuccessfulRescale"]

    # The same load again before /scale shows 5: no second plan.
    await run(load("a100", feed.clock, replicas=2, waiting=20))
    assert len([p for p in await outbox(engine) if isinstance(p, ScalePlan)]) == 2

    # The applier wrote /scale; the watcher reports spec.replicas 5: placement fills a100 and spills to mixed.
    scaled = {**spec, "replicas": 5}
    await run(
        builders.observed(
            "cpu", "LLMDeployment", builders.llm_deployment("big", "team", scaled, uid="big-uid", generation=2)
        )
    )
    latest: dict[str, int] = {}
    for plan in await outbox(engine):
        if isinstance(plan, WorkloadPlan):
            latest[plan.cluster] = plan.replicas
    assert latest == {"a100": 4, "mixed": 1}

    # Garbage from every replica: no scale-down, and the condition turns False.
    await run(load("a100", feed.clock, replicas=4, waiting=0, problems=["p1: x", "p2: y", "p3: z", "p4: w"]))
    plans = [p for p in await outbox(engine) if isinstance(p, ScalePlan)]
    assert plans[-1].replicas is None
    assert plans[-1].condition is not None
    assert (plans[-1].condition.status, plans[-1].condition.reason) == ("False", "MetricsUnavailable")

    # The history reads like a postmortem.
    async with engine.connect() as conn:
        events = [e async for e in reader.read(conn, stream_ids=["LLMDeployment/cpu/team/big"])]
    lines = [f"{line.kind}: {line.summary}" for line in timeline(events)]
    assert "Scaled: 2 → 5: queue 10 > 4 per replica on a100 over 10 s" in lines, lines
    assert any(line.startswith("ScalePlan: plan #") and "spec.replicas=5 through /scale" in line for line in lines)


# ----------------------------------------------------------------------------------- the scrape shell, real HTTP


async def test_scraper_reads_real_servers_and_computes_the_window() -> None:
    state: dict[str, Any] = {"success": 100, "ttft": [0.05] * 100, "waiting": 1}

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(
            text=vllm_text(waiting=state["waiting"], running=4, kv=0.5, success=state["success"], ttft=state["ttft"])
        )

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="<html>upstream connect error</html>")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500)

    async def chunked(request: web.Request) -> web.StreamResponse:
        # A server with many other series, streamed in small chunks: the whole body must be read.
        text = "".join(f"# TYPE other_{i} gauge\nother_{i} 1\n" for i in range(20_000)) + vllm_text(waiting=5)
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(text), 4096):
            await response.write(text[start : start + 4096].encode())
        await response.write_eof()
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(5 * 16):
            await response.write(b"# " + b"x" * (64 * 1024) + b"\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes(
        [
            web.get("/metrics", healthy),
            web.get("/garbage", garbage),
            web.get("/broken", broken),
            web.get("/chunked", chunked),
            web.get("/huge", huge),
        ]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    target = Target(
        key=("cpu", "team", "big"),
        namespace="team",
        names=signal.names_for("vllm"),
        replicas={"big-0": f"{base}/metrics", "big-1": f"{base}/garbage", "big-2": f"{base}/broken"},
    )
    other = Target(
        key=("cpu", "team", "other"),
        namespace="team",
        names=signal.names_for("vllm"),
        replicas={"other-0": f"{base}/chunked", "other-1": f"{base}/huge"},
    )

    async def resolve() -> list[Target]:
        return [target, other]

    clock = {"now": 0.0}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            scraper = Scraper(
                cluster="a100",
                settings=LoadSettings(interval_seconds=10),
                resolve=resolve,
                http=http,
                monotonic=lambda: clock["now"],
            )
            first, _ = await scraper.round()
            state.update(success=120, ttft=[0.05] * 110 + [2.0] * 10, waiting=6)
            clock["now"] = 10.0
            second, big = await scraper.round()
    finally:
        await runner.cleanup()
    assert (first.replicas, first.reporting, first.waiting, first.ttft_buckets) == (3, 1, 1, [])
    assert (second.reporting, second.waiting, second.kv_cache_usage) == (1, 6, 0.5)
    assert second.requests_per_second == pytest.approx(2.0)
    # 20 new first tokens, 10 of them slow: p90 inside (1.0, 2.5].
    assert second.ttft_p90_seconds == pytest.approx(1.0 + 1.5 * (18 - 10) / 10)
    assert sorted(p.split(":")[0] for p in second.problems) == ["big-1", "big-2"]
    assert any("HTTP 500" in p for p in second.problems)
    assert any("unparsable" in p or "none of the runtime" in p for p in second.problems)
    assert second.origin_cluster == "cpu" and second.cluster == "a100"
    assert (big.name, big.reporting, big.waiting) == ("other", 1, 5)
    assert big.problems == ["other-1: metrics text larger than 4194304 bytes"]


def test_targets_pair_deployments_with_their_ready_pods() -> None:
    labels = {
        "app.kubernetes.io/managed-by": "llm-operator",
        "llm.example.com/deployment": "big",
        "llm.example.com/origin-cluster": "cpu",
        "llm.example.com/namespace": "team",
    }
    serving = json.dumps({"runtime": "sglang", "port": 30000, "path": "/metrics"})
    deployment = {"metadata": {"name": "big", "namespace": "team", "labels": labels,
                               "annotations": {"llm.example.com/serving": serving}}}  # fmt: skip
    broken = {"metadata": {"name": "x", "namespace": "team", "labels": {**labels, "llm.example.com/deployment": "x"},
                           "annotations": {"llm.example.com/serving": "{nope"}}}  # fmt: skip

    def pod(name: str, ip: str | None, ready: bool) -> dict[str, Any]:
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        return {"metadata": {"name": name, "namespace": "team", "labels": labels},
                "status": {"podIP": ip, "conditions": conditions}}  # fmt: skip

    pods = [pod("big-0", "10.244.1.5", True), pod("big-1", "10.244.1.6", False), pod("big-2", None, True)]
    [target] = targets_of([deployment, broken], pods)
    assert target.key == ("cpu", "team", "big")
    assert target.replicas == {"big-0": "http://10.244.1.5:30000/metrics"}
    assert target.names.requests_waiting == "sglang:num_queue_reqs"


async def test_the_prometheus_path_asks_promql_for_the_same_figures() -> None:
    """Against a local HTTP server speaking the Prometheus query API (the real Prometheus comes with the pod
    network harness): the queries name the runtime's metrics and the replicas, and the answers become figures."""
    asked: list[str] = []

    def vector(*rows: tuple[dict[str, str], float]) -> dict[str, Any]:
        result = [{"metric": m, "value": [1.0, str(v)]} for m, v in rows]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}

    async def query(request: web.Request) -> web.Response:
        promql = request.query["query"]
        asked.append(promql)
        if promql.startswith("count(up"):
            body = vector(({}, 2))
        elif "num_requests_waiting" in promql:
            body = vector(({}, 12))
        elif "num_requests_running" in promql:
            body = vector(({}, 6))
        elif "kv_cache_usage_perc" in promql:
            body = vector(({}, 0.4))
        elif "request_success_total" in promql:
            body = vector(({}, 3.5))
        elif "time_to_first_token_seconds_bucket" in promql:
            body = vector(({"le": "0.5"}, 10), ({"le": "1.0"}, 16), ({"le": "2.5"}, 20), ({"le": "+Inf"}, 20))
        else:
            body = {"status": "error", "errorType": "bad_data", "error": "unknown"}
        return web.json_response(body)

    app = web.Application()
    app.add_routes([web.get("/api/v1/query", query)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    target = Target(
        key=("cpu", "team", "big"),
        namespace="team",
        names=signal.names_for("vllm"),
        replicas={"big-0": "http://10.244.1.5:8000/metrics", "big.1": "http://10.244.1.6:8000/metrics"},
    )

    async def resolve() -> list[Target]:
        return [target]

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            settings = LoadSettings(interval_seconds=10, prometheus_url=f"http://127.0.0.1:{port}")
            [event] = await Scraper(cluster="a100", settings=settings, resolve=resolve, http=http).round()
    finally:
        await runner.cleanup()
    assert (event.replicas, event.reporting, event.waiting, event.running) == (2, 2, 12, 6)
    assert (event.kv_cache_usage, event.requests_per_second) == (0.4, 3.5)
    assert event.ttft_p90_seconds == pytest.approx(1.0 + 1.5 * (18 - 16) / 4)
    assert event.problems == []
    selector = '{namespace="team",pod=~"big-0|big\\\\.1"}'
    assert f"sum(vllm:num_requests_waiting{selector})" in asked
    assert f"sum by (le) (increase(vllm:time_to_first_token_seconds_bucket{selector}[10s]))" in asked
