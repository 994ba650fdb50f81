"""Scale without apiservers: 100 simulated clusters × 20 GPU nodes feed the real NATS JetStream, the real planner
process and the real Postgres; planner lag, throughput and memory at 10,000 deployments.

The simulated clusters publish exactly what real watchers and appliers publish, built with the same code
(`watcher.translate` snapshots, `api.events` models, the same subjects and `Nats-Msg-Id`s):
- every cluster heartbeats every 2 s (the default), and announces its 20 nodes (8 GPUs each: A100-80GB, H100-80GB
  or A100-40GB, GPU-feature-discovery labels, the GPU taint) and 15 LLMModels (1, 2 or 4 GPUs, in 5 namespaces);
- 10,000 LLMDeployments are created, spread over the clusters (1 replica, 5 % with 2; 80 % of the models need
  1 GPU, 15 % 2, 5 % 4: about 85 % of the fleet's 16,000 GPUs), as fast as the planner decides them: at most
  --window (100) creations wait for their first plan at any time, and at most --rate (100) are made per second.
  `--window 0` creates open loop at --rate instead: a burst the planner cannot keep up with (see the docs);
- the clusters answer the planner's plans as the real agents would (unless --no-echo): a workload plan becomes an
  ApplyReported, the managed Deployment's snapshot and one Pod snapshot per replica, bound by a first-fit
  "scheduler" to a node of the planned GPU type; a status plan becomes an ApplyReported and the LLMDeployment's
  new snapshot (status written, finalizer added), which the planner sees as a watcher would;
- then, at 10,000 deployments, a steady phase: 5 scale changes per second (replicas 1 ↔ 2) and one node change
  per second, for --steady seconds.

Measured: per deployment, creation published → its first plan on NATS (the planner's decision committed and
relayed) and → a status plan saying Ready; time to place all 10,000; in the steady phase, a scale change published
→ the workload plan that carries it; the planner's consumer lag and events/s (its /metrics), its process RSS and
CPU (/proc), and the outcome of every decision (Postgres). `--profile FILE` runs the planner under cProfile and
prints where its time goes.

Run: `python -m bench.scale [--clusters 100] [--nodes 20] [--deployments 10000] [--rate 100] [--steady 60]`;
writes bench/results/scale.json. No fixed target in the issue: it asks for planner lag and RSS at 10,000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import pstats
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import nats
from nats.js import JetStreamContext
from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.events import ApplyReported, ClusterHeartbeat, Event, deterministic_id, encode_event
from api.labels import ANNOTATION_EPOCH, ANNOTATION_PLAN, ANNOTATION_SEQUENCE, ANNOTATION_UID
from api.models import API_VERSION, FINALIZER, gpu_count
from api.plans import AnyPlan, Plan, StatusPlan, WorkloadPlan
from applier.render import labels
from bench.common import _node, print_table, servers, write_result
from bench.fleet import (
    Operator,
    code_version,
    load_average,
    log_dir,
    run_main,
    say,
    standard_meter,
    summary,
    wait_until,
)
from bus.subjects import Subjects
from watcher import translate

PREFIX = "bench"
NAMESPACES = 5
MODELS = {"m1": 1, "m2": 2, "m4": 4}
_PLAN: TypeAdapter[AnyPlan] = TypeAdapter(Plan)


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SimNode:
    name: str
    product: str
    free: int


@dataclass
class SimDeployment:
    origin: str
    namespace: str
    name: str
    uid: str
    model: str
    replicas: int
    generation: int = 1
    finalizers: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    created: str = ""


@dataclass
class SimWorkload:
    uid: str
    generation: int = 0
    pods: list[tuple[str, str | None, int]] = field(default_factory=list)  # (pod name, node, gpus)


class SimFleet:
    """The simulated clusters: their nodes, objects and resourceVersions, and the events they publish."""

    def __init__(self, js: JetStreamContext, clusters: int, nodes: int, seed: int) -> None:
        self.js = js
        self.subjects = Subjects(PREFIX)
        self.rng = random.Random(seed)
        self.names = [f"c{c:03d}" for c in range(clusters)]
        self.node_count = nodes
        self.nodes: dict[str, list[SimNode]] = {}
        self.node_objects: dict[tuple[str, int], dict[str, Any]] = {}
        self.deployments: dict[str, SimDeployment] = {}  # by name (names are unique fleet-wide here)
        self.workloads: dict[tuple[str, str, str], SimWorkload] = {}
        self.rv = itertools.count(1000)
        self.pending: list[Any] = []
        self.published = 0
        self.heartbeat_seq = 0
        self.watcher_ids = {c: str(uuid.uuid5(uuid.NAMESPACE_DNS, c)) for c in self.names}

    def cluster_labels(self, c: str) -> dict[str, str]:
        i = int(c[1:])
        return {"region": ("us-east-1", "us-west-2", "eu-west-1", "ap-south-1")[i % 4], "fleet": "bench"}

    async def emit(self, cluster: str, event: Event) -> None:
        subject = self.subjects.events(cluster)
        self.pending.append(
            await self.js.publish_async(subject, encode_event(event), headers={"Nats-Msg-Id": event.event_id})
        )
        self.published += 1
        if len(self.pending) >= 2000:
            await self.flush()

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)

    def rv_next(self) -> str:
        return str(next(self.rv))

    # ---------------------------------------------------------------------------------------------- set-up

    async def heartbeats(self) -> None:
        now = _now()
        for c in self.names:
            wid = self.watcher_ids[c]
            await self.emit(
                c,
                ClusterHeartbeat(
                    event_id=deterministic_id("heartbeat", wid, str(self.heartbeat_seq)),
                    cluster=c,
                    labels=self.cluster_labels(c),
                    watcher_id=wid,
                    sent_at=now,
                    sequence=self.heartbeat_seq,
                ),
            )
        self.heartbeat_seq += 1
        await self.flush()

    async def announce_nodes(self) -> None:
        now = _now()
        for ci, c in enumerate(self.names):
            self.nodes[c] = []
            for i in range(self.node_count):
                obj = _node(ci, i, self.rng, int(self.rv_next()))
                self.node_objects[(c, i)] = obj
                labels_ = obj["metadata"]["labels"]
                self.nodes[c].append(SimNode(obj["metadata"]["name"], labels_["nvidia.com/gpu.product"], 8))
                await self.emit(c, translate.observed(c, "Node", obj, now))
        await self.flush()

    async def touch_node(self) -> None:
        """A node's snapshot changes in a way that matters to nobody's capacity (a label), as nodes do."""
        c = self.rng.choice(self.names)
        i = self.rng.randrange(self.node_count)
        obj = self.node_objects[(c, i)]
        obj["metadata"]["resourceVersion"] = self.rv_next()
        obj["metadata"]["labels"]["revision"] = str(self.rng.randrange(10**6))
        await self.emit(c, translate.observed(c, "Node", obj, _now()))

    async def announce_models(self) -> None:
        now = _now()
        for c in self.names:
            for ns in range(NAMESPACES):
                for model, gpus in MODELS.items():
                    obj = {
                        "apiVersion": API_VERSION,
                        "kind": "LLMModel",
                        "metadata": {
                            "name": model,
                            "namespace": f"team-{ns}",
                            "uid": f"model-{c}-{ns}-{model}",
                            "resourceVersion": self.rv_next(),
                            "generation": 1,
                            "creationTimestamp": _stamp(now),
                        },
                        "spec": {
                            "modelName": model,
                            "image": f"registry.example/{model}:v1",
                            "resources": {"cpu": "8", "memory": "64Gi", "gpu": {"count": gpus}},
                        },
                    }
                    await self.emit(c, translate.observed(c, "LLMModel", obj, now))
        await self.flush()

    # ------------------------------------------------------------------------------------- LLMDeployments

    def new_deployment(self, index: int) -> SimDeployment:
        c = self.names[index % len(self.names)]
        roll = self.rng.random()
        model = "m1" if roll < 0.80 else ("m2" if roll < 0.95 else "m4")
        replicas = 2 if self.rng.random() < 0.05 else 1
        name = f"llm-{index:05d}"
        d = SimDeployment(c, f"team-{(index // len(self.names)) % NAMESPACES}", name, f"llmd-{index}", model, replicas)
        d.created = _stamp(_now())
        self.deployments[name] = d
        return d

    def llmd_object(self, d: SimDeployment) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": d.name,
            "namespace": d.namespace,
            "uid": d.uid,
            "resourceVersion": self.rv_next(),
            "generation": d.generation,
            "creationTimestamp": d.created,
        }
        if d.finalizers:
            meta["finalizers"] = list(d.finalizers)
        return {
            "apiVersion": API_VERSION,
            "kind": "LLMDeployment",
            "metadata": meta,
            "spec": {"modelRef": d.model, "replicas": d.replicas},
            "status": d.status,
        }

    async def observe_deployment(self, d: SimDeployment) -> None:
        await self.emit(d.origin, translate.observed(d.origin, "LLMDeployment", self.llmd_object(d), _now()))

    # ------------------------------------------------------------------------- answering plans (the agents)

    async def answer(self, plan: AnyPlan) -> None:
        now = _now()
        ref = plan.deployment
        outcome: Literal["Applied", "Deleted"] = "Applied"
        if isinstance(plan, StatusPlan):
            d = self.deployments.get(ref.name)
            if d is not None:
                d.status = plan.status.wire()
                if plan.finalizer == "ensure" and FINALIZER not in d.finalizers:
                    d.finalizers.append(FINALIZER)
                await self.observe_deployment(d)
        elif isinstance(plan, WorkloadPlan):
            outcome = await self._workload(plan, now)
        # Endpoints and model status plans change nothing the simulation models: acknowledged as applied.
        await self.emit(
            plan.cluster,
            ApplyReported(
                event_id=ApplyReported.id_for(plan.plan_id, plan.cluster),
                cluster=plan.cluster,
                plan_id=plan.plan_id,
                origin_cluster=ref.origin_cluster,
                namespace=ref.namespace,
                name=ref.name,
                outcome=outcome,
                epoch=plan.epoch,
                sequence=plan.sequence,
                finished_at=now,
            ),
        )

    async def _workload(self, plan: WorkloadPlan, now: datetime) -> Literal["Applied", "Deleted"]:
        c, ref = plan.cluster, plan.deployment
        key = (c, ref.namespace, ref.name)
        w = self.workloads.get(key)
        if w is None:
            w = self.workloads[key] = SimWorkload(uid=f"dep-{c}-{ref.namespace}-{ref.name}")
        gpus = gpu_count(plan.model) if plan.model is not None else 0
        pod_labels = labels(plan)
        while len(w.pods) > plan.replicas:
            pod_name, node, pod_gpus = w.pods.pop()
            if node is not None:
                self._release(c, node, pod_gpus)
            await self.emit(c, translate.deleted(c, "Pod", self._pod(key, pod_name, node, pod_gpus, pod_labels), now))
        while len(w.pods) < plan.replicas:
            node = self._schedule(c, plan.gpu_type, gpus)
            pod_name = f"{ref.name}-{uuid.uuid4().hex[:10]}"
            w.pods.append((pod_name, node, gpus))
            await self.emit(c, translate.observed(c, "Pod", self._pod(key, pod_name, node, gpus, pod_labels), now))
        w.generation += 1
        ready = sum(1 for _, node, _ in w.pods if node is not None)
        obj = {
            "metadata": {
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": w.uid,
                "resourceVersion": self.rv_next(),
                "generation": w.generation,
                "labels": pod_labels,
                "annotations": {
                    ANNOTATION_PLAN: plan.plan_id,
                    ANNOTATION_EPOCH: str(plan.epoch),
                    ANNOTATION_SEQUENCE: str(plan.sequence),
                    ANNOTATION_UID: ref.uid,
                },
            },
            "spec": {"replicas": plan.replicas},
            "status": {
                "replicas": plan.replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": plan.replicas,
                "observedGeneration": w.generation,
            },
        }
        if plan.replicas == 0:
            del self.workloads[key]
            await self.emit(c, translate.deleted(c, "Deployment", obj, now))
            return "Deleted"
        await self.emit(c, translate.observed(c, "Deployment", obj, now))
        return "Applied"

    def _schedule(self, cluster: str, product: str | None, gpus: int) -> str | None:
        """First fit, as the kube-scheduler's default would bind a k-GPU pod: a node with k free GPUs."""
        for node in self.nodes.get(cluster, []):
            if (product is None or node.product == product) and node.free >= gpus:
                node.free -= gpus
                return node.name
        return None  # Pending: no node fits

    def _release(self, cluster: str, node_name: str, gpus: int) -> None:
        for node in self.nodes.get(cluster, []):
            if node.name == node_name:
                node.free += gpus

    def _pod(
        self, key: tuple[str, str, str], name: str, node: str | None, gpus: int, pod_labels: dict[str, str]
    ) -> dict[str, Any]:
        resources = {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": str(gpus)}
        return {
            "metadata": {
                "name": name,
                "namespace": key[1],
                "uid": f"pod-{key[0]}-{name}",
                "resourceVersion": self.rv_next(),
                "labels": pod_labels,
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "model-server", "resources": {"requests": resources, "limits": resources}}],
            },
            "status": {
                "phase": "Running" if node else "Pending",
                "conditions": [{"type": "Ready", "status": "True" if node else "False"}],
            },
        }


# -------------------------------------------------------------------------------------------- measuring


@dataclass
class Stamps:
    created: dict[str, float] = field(default_factory=dict)
    first_plan: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    placed: set[str] = field(default_factory=set)
    scale_sent: dict[str, tuple[float, int]] = field(default_factory=dict)
    scale_lag: list[float] = field(default_factory=list)
    plans: Counter[str] = field(default_factory=Counter)


def _rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with servers() as hub, log_dir(args.logs) as logs:
        db = hub.postgres.url("bench")
        operator = Operator(None, hub.nats.url, db, logs, prefix=PREFIX)
        wrap = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        planner = await operator.start_planner(wrap=wrap)
        nc = await nats.connect(hub.nats.url)
        js = nc.jetstream()
        sim = SimFleet(js, args.clusters, args.nodes, args.seed)
        stamps = Stamps()
        queue: asyncio.Queue[AnyPlan] = asyncio.Queue()
        samples: list[dict[str, float]] = []
        meter = standard_meter(None, operator, hub)
        result: dict[str, Any] = {}
        try:

            async def on_plan(msg: Any) -> None:
                at = time.time()
                plan = _PLAN.validate_json(msg.data)
                name = plan.deployment.name
                stamps.plans[plan.kind] += 1
                stamps.first_plan.setdefault(name, at)
                if isinstance(plan, StatusPlan) and plan.status.ready == "Ready":
                    stamps.ready.setdefault(name, at)
                if isinstance(plan, WorkloadPlan) and plan.replicas > 0:
                    stamps.placed.add(name)
                if isinstance(plan, WorkloadPlan) and name in stamps.scale_sent:
                    sent, replicas = stamps.scale_sent[name]
                    if plan.replicas == replicas:
                        stamps.scale_lag.append(at - sent)
                        del stamps.scale_sent[name]
                if not args.no_echo:
                    queue.put_nowait(plan)

            await nc.subscribe(f"{PREFIX}.plans.>", cb=on_plan)

            async def echo() -> None:
                while True:
                    plan = await queue.get()
                    await sim.answer(plan)
                    while not queue.empty():
                        await sim.answer(queue.get_nowait())
                    await sim.flush()

            async def heartbeat() -> None:
                while True:
                    await sim.heartbeats()
                    await anyio.sleep(2.0)

            async def sample() -> None:
                assert planner.pid is not None
                while True:
                    try:
                        m = await planner.metrics()
                        samples.append(
                            {
                                "t": time.time(),
                                "rss_mib": _rss_mib(planner.pid),
                                "lag": m.value("llmop_planner_consumer_lag"),
                                "recorded": m.value("llmop_planner_events_total", result="recorded"),
                                "steps": m.value("llmop_planner_step_seconds_count"),
                                "step_seconds": m.value("llmop_planner_step_seconds_sum"),
                                "decisions": m.value("llmop_planner_decisions_total"),
                            }
                        )
                    except Exception:  # a missed sample is not a result
                        pass
                    await anyio.sleep(1.0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(echo)
                tg.start_soon(heartbeat)
                tg.start_soon(sample)
                await sim.announce_nodes()
                await sim.announce_models()
                await anyio.sleep(3)
                say(f"{args.clusters} clusters × {args.nodes} nodes and their models announced; creating")
                cpu0, t0 = meter.sample(), time.time()
                rss_start = _rss_mib(planner.pid)
                for i in range(args.deployments):
                    delay = t0 + i / args.rate - time.time()
                    if delay > 0:
                        await sim.flush()
                        await anyio.sleep(delay)
                    if args.window and len(stamps.created) - len(stamps.first_plan) >= args.window:
                        await sim.flush()
                        await wait_until(
                            lambda: len(stamps.created) - len(stamps.first_plan) < args.window,
                            deadline=time.time() + args.timeout,
                            interval=0.05,
                        )
                    d = sim.new_deployment(i)
                    stamps.created[d.name] = time.time()
                    await sim.observe_deployment(d)
                    if (i + 1) % 1000 == 0:
                        placed = len(stamps.first_plan)
                        say(f"  {i + 1} created, {placed} decided, planner RSS {_rss_mib(planner.pid):.0f} MiB")
                await sim.flush()
                t_created = time.time()
                wanted = set(stamps.created)
                deadline = time.time() + args.timeout
                await wait_until(lambda: wanted <= stamps.first_plan.keys(), deadline=deadline, interval=0.5)
                t_decided = time.time()
                if not args.no_echo:
                    await wait_until(lambda: len(stamps.ready) >= len(wanted) * 0.95, deadline=deadline)
                    idle = 0
                    while time.time() < deadline and idle < 5:  # no plan for 5 s: settled
                        before = sum(stamps.plans.values())
                        await anyio.sleep(1.0)
                        idle = idle + 1 if sum(stamps.plans.values()) == before else 0
                t_settled = time.time()
                cpu_create = meter.delta(cpu0, meter.sample(), t_settled - t0)
                say(f"  all decided {t_decided - t0:.0f}s after the first creation; settled at {t_settled - t0:.0f}s")

                say(f"steady phase: {args.steady:.0f}s of 5 scale changes/s and 1 node change/s")
                hooks = getattr(args, "growth_hooks", None)  # bench.growth measures the log over this phase
                if hooks is not None:
                    await hooks[0](db)
                cpu1, t1 = meter.sample(), time.time()
                placed_names = sorted(stamps.placed)
                tick = 0
                while time.time() < t1 + args.steady:
                    for _ in range(5):
                        d = sim.deployments[sim.rng.choice(placed_names)]
                        d.replicas = 1 if d.replicas == 2 else 2
                        d.generation += 1
                        stamps.scale_sent[d.name] = (time.time(), d.replicas)
                        await sim.observe_deployment(d)
                        await sim.flush()
                        await anyio.sleep(0.2)
                    await sim.touch_node()
                    await sim.flush()
                    tick += 1
                await anyio.sleep(5)
                if hooks is not None:
                    await hooks[1](db, len(stamps.placed), tick)
                cpu_steady = meter.delta(cpu1, meter.sample(), time.time() - t1)
                result = await summarise(
                    args, db, stamps, samples, t0, t_created, t_decided, t_settled, t1, rss_start, sim
                )
                result["cpu_cores"] = {"creation": cpu_create, "steady": cpu_steady}
                tg.cancel_scope.cancel()
        finally:
            await nc.close()
            operator.stop()
    if args.profile:
        result["profile_top"] = profile_top(args.profile)
    result["load_average_after"] = load_average()
    return result


async def summarise(
    args: argparse.Namespace,
    db: str,
    stamps: Stamps,
    samples: list[dict[str, float]],
    t0: float,
    t_created: float,
    t_decided: float,
    t_settled: float,
    t_steady: float,
    rss_start: float,
    sim: SimFleet,
) -> dict[str, Any]:
    decided = [stamps.first_plan[n] - t for n, t in stamps.created.items() if n in stamps.first_plan]
    ready = [stamps.ready[n] - t for n, t in stamps.created.items() if n in stamps.ready]
    engine = create_async_engine(db)
    try:
        async with engine.connect() as conn:
            outcomes = {
                str(o): int(n)
                for o, n in await conn.execute(
                    text("SELECT last_outcome, count(*) FROM deployment_plans GROUP BY 1 ORDER BY 2 DESC")
                )
            }
            counts = {
                t: int((await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one())
                for t in ("events", "deployments", "placements", "pods", "nodes", "workloads", "plans")
            }
            size = int((await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar_one())
            event_sizes = {
                str(t): {"count": int(n), "mean_payload_bytes": int(b), "total_mib": round(float(tb) / 2**20, 1)}
                for t, n, b, tb in await conn.execute(
                    text(
                        "SELECT type, count(*), avg(pg_column_size(payload)), sum(pg_column_size(payload)) "
                        "FROM events GROUP BY type ORDER BY 4 DESC"
                    )
                )
            }
            # Every cluster heartbeats every 2 s throughout: any cluster marked Unhealthy was a false alarm.
            unhealthy = [
                (str(c), str(at))
                for c, at in await conn.execute(
                    text(
                        "SELECT cluster, payload->>'at' FROM events WHERE type = 'ClusterHealthChanged' "
                        "AND payload->>'healthy' = 'false' ORDER BY position"
                    )
                )
            ]
    finally:
        await engine.dispose()

    def window(start: float, end: float) -> dict[str, float]:
        inside = [s for s in samples if start <= s["t"] <= end]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        seconds = b["t"] - a["t"]
        steps = b["steps"] - a["steps"]
        return {
            "events_recorded_per_s": (b["recorded"] - a["recorded"]) / seconds,
            "decisions_per_s": (b["decisions"] - a["decisions"]) / seconds,
            "steps_per_s": steps / seconds,
            "mean_step_ms": 1000 * (b["step_seconds"] - a["step_seconds"]) / steps if steps else 0.0,
            "busy": (b["step_seconds"] - a["step_seconds"]) / seconds,
            "consumer_lag_max": max(s["lag"] for s in inside),
        }

    return {
        "input": {
            "clusters": args.clusters,
            "nodes_per_cluster": args.nodes,
            "gpus": args.clusters * args.nodes * 8,
            "deployments": args.deployments,
            "replicas_wanted": sum(d.replicas for d in sim.deployments.values()),
            "creation_rate_per_s": args.rate,
            "window": args.window,
            "echo": not args.no_echo,
        },
        "events_published_by_the_simulated_clusters": sim.published,
        "creation_seconds": t_created - t0,
        "creations_per_s": args.deployments / (t_created - t0),
        "all_decided_after_s": t_decided - t0,
        "settled_after_s": t_settled - t0,
        "decided_count": len(decided),
        "ready_count": len(ready),
        "created_to_first_plan_ms": summary(decided),
        "created_to_ready_plan_ms": summary(ready),
        "steady_scale_change_to_plan_ms": summary(stamps.scale_lag),
        "steady_scale_changes_unanswered": len(stamps.scale_sent),
        "planner_creation_phase": window(t0, t_settled),
        "planner_steady_phase": window(t_steady, time.time()),
        "planner_rss_mib": {
            "start": rss_start,
            "peak": max((s["rss_mib"] for s in samples), default=0.0),
            "end": samples[-1]["rss_mib"] if samples else 0.0,
        },
        "outcomes": outcomes,
        "false_unhealthy": {
            "events": len(unhealthy),
            "clusters": len({c for c, _ in unhealthy}),
            "first_at": unhealthy[0][1] if unhealthy else None,
        },
        "rows": counts,
        "database_mib": size / 2**20,
        "event_payloads": event_sizes,
        "plans": dict(stamps.plans),
        "lag_timeline": [(round(s["t"] - t0, 1), s["lag"], round(s["rss_mib"], 1)) for s in samples if s["t"] >= t0][
            ::5
        ],
    }


def profile_top(path: Path, count: int = 25) -> list[str]:
    stats = pstats.Stats(str(path))
    rows = []
    for func, (_cc, nc, tt, ct, _callers) in sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[:count]:  # type: ignore[attr-defined]
        filename, line, name = func
        rows.append(f"{ct:8.1f}s cum {tt:7.1f}s own {nc:9d} calls  {Path(filename).name}:{line} {name}")
    return rows


def report(result: dict[str, Any]) -> None:
    c, r, s = (
        result["created_to_first_plan_ms"],
        result["created_to_ready_plan_ms"],
        result["steady_scale_change_to_plan_ms"],
    )
    pc, ps = result["planner_creation_phase"], result["planner_steady_phase"]
    rss = result["planner_rss_mib"]
    inp = result["input"]

    def ms(f: dict[str, float]) -> str:
        if not f.get("n"):
            return "n/a"
        return f"{f['p50']:.0f} / {f['p95']:.0f} / {f['p99']:.0f} ms (max {f['max']:.0f})"

    rows = [
        ("created → first plan (p50/p95/p99)", ms(c), "-", "-"),
        ("created → Ready status plan", ms(r), "-", "-"),
        (f"all {inp['deployments']:,} decided after", f"{result['all_decided_after_s']:.0f} s", "-", "-"),
        ("creation phase: planner events/s, mean step", f"{pc.get('events_recorded_per_s', 0):,.0f}, "
         f"{pc.get('mean_step_ms', 0):.0f} ms (busy {pc.get('busy', 0):.0%})", "-", "-"),
        ("creation phase: consumer lag max", f"{pc.get('consumer_lag_max', 0):,.0f} events", "-", "-"),
        ("steady: scale change → plan (p50/p95/p99)", ms(s), "-", "-"),
        ("steady: planner mean step, busy", f"{ps.get('mean_step_ms', 0):.0f} ms, {ps.get('busy', 0):.0%}", "-", "-"),
        ("planner RSS start / peak / end", f"{rss['start']:.0f} / {rss['peak']:.0f} / {rss['end']:.0f} MiB", "-", "-"),
        ("outcomes", ", ".join(f"{k} {v:,}" for k, v in result["outcomes"].items()), "-", "-"),
        ("clusters falsely marked Unhealthy (all kept heartbeating)",
         f"{result['false_unhealthy']['clusters']} ({result['false_unhealthy']['events']} times)", "0",
         "PASS" if not result["false_unhealthy"]["events"] else "FAIL"),
        ("events in the store / database size",
         f"{result['rows']['events']:,} / {result['database_mib']:.0f} MiB", "-", "-"),
    ]  # fmt: skip
    print_table(
        f"scale benchmark: {inp['clusters']} simulated clusters × {inp['nodes_per_cluster']} nodes, "
        f"{inp['deployments']:,} deployments at {inp['creation_rate_per_s']:g}/s",
        rows,
    )
    for line in result.get("profile_top", []):
        print(line)


async def main(args: argparse.Namespace) -> int:
    code = code_version()
    result = await run(args)
    report(result)
    path = write_result(args.result, {**result, "code": code})
    print(f"written {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0, help="at most this many creations per second")
    parser.add_argument(
        "--window",
        type=int,
        default=100,
        help="at most this many creations waiting for their first plan (0: open loop at --rate)",
    )
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady load at full size")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up waiting for decisions after this")
    parser.add_argument("--no-echo", action="store_true", help="the simulated clusters do not answer plans")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="run the planner under cProfile, writing this file")
    parser.add_argument("--logs", type=Path, help="keep the planner's log in this directory")
    parser.add_argument("--result", default="scale", help="write bench/results/<this>.json")
    return parser


if __name__ == "__main__":
    arguments = parser().parse_args()
    run_main(lambda: main(arguments))
