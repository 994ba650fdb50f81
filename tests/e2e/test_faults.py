"""Faults with real processes: planner hand-over under load, and kill -9 of every component during a stream of
changes. The system must converge with every change recorded once, no duplicate or orphaned workload, and no
plan applied twice."""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_operator.identities import BusIdentities
from llm_operator.processes import Process, operator_command
from store import schema
from tests.fixtures.operator import Kubectl, RunningOperator, eventually, signing_key
from tests.fixtures.processes import KillableNats, KillablePostgres

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services, pytest.mark.slow]

SMALL_MODEL = {
    "modelName": "tiny",
    "image": "registry.example/tiny:v1",
    "resources": {"cpu": "100m", "memory": "128Mi"},
}


def docs(*objects: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objects)


def llmd(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "llm.example.com/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {"modelRef": "tiny", "replicas": replicas},
    }


def model() -> dict[str, Any]:
    return {
        "apiVersion": "llm.example.com/v1alpha1",
        "kind": "LLMModel",
        "metadata": {"name": "tiny"},
        "spec": SMALL_MODEL,
    }


def env_for(*, nats_url: str, database_url: str, prefix: str, kubeconfig: Path, identities_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LLMOP_NATS_URL": nats_url,
        "LLMOP_NATS_IDENTITIES_DIR": str(identities_dir),  # each process connects as the planner or its cluster
        "LLMOP_DATABASE_URL": database_url,
        "LLMOP_SUBJECT_PREFIX": prefix,
        "LLMOP_KUBECONFIG": str(kubeconfig),
        # The tests' plan-signing key: planners sign with it, agents (in-process or not) pin it.
        "LLMOP_PLAN_SIGNING_KEY": str(signing_key()[0]),
        "LLMOP_PLAN_PUBLIC_KEYS": json.dumps([signing_key()[1].public_key]),
        "LLMOP_HEARTBEAT_SECONDS": "0.5",
        "LLMOP_HEARTBEAT_TIMEOUT_SECONDS": "8",
        "LLMOP_RECOVERY_HOLD_SECONDS": "2",
        # kwok pods serve no HTTP: scraping their made-up addresses would send packets off this machine.
        "LLMOP_LOAD_INTERVAL_SECONDS": "0",
        "PYTHONUNBUFFERED": "1",
    }


async def managed_deployments(kubectl: Kubectl, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for role in kubectl.fleet.clusters:
        items = await kubectl.json(
            role, "get", "deployments", "-n", ns, "-l", "app.kubernetes.io/managed-by=llm-operator"
        )
        for item in items["items"]:
            found[(role, item["metadata"]["name"])] = item
    return found


# ------------------------------------------------------------------------------------------------ planner HA


async def test_killing_the_leading_planner_mid_stream_hands_over_without_lost_or_duplicate_plans(
    operator: RunningOperator, kubectl: Kubectl, tmp_path: Path
) -> None:
    ns, hub = operator.namespace, operator.hub
    await operator.stop("planner")  # the agents stay in-process; the planners become real processes
    env = env_for(
        nats_url=hub.nats_url,
        database_url=hub.database_url,
        prefix=hub.subjects.prefix,
        kubeconfig=kubectl.fleet.kubeconfig,
        identities_dir=hub.identities_dir,
    )
    planners = [
        Process(f"planner-{i}", operator_command("planner"), tmp_path / f"planner-{i}.log", env=env) for i in range(2)
    ]
    engine = create_async_engine(hub.database_url)
    try:
        for planner in planners:
            planner.start()

        async def leader() -> Process | None:
            async with engine.connect() as conn:
                holder = await conn.scalar(text("SELECT holder FROM planner_epochs ORDER BY epoch DESC LIMIT 1"))
            return next((p for p in planners if holder and holder.endswith(f"-{p.pid}")), None)

        first = await eventually(leader, timeout=30, what="a leading planner")
        names = [f"m{i:02d}" for i in range(30)]
        await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=docs(model(), *(llmd(n, 1) for n in names)))

        async def some_plans() -> int | None:
            async with engine.connect() as conn:
                count = int(await conn.scalar(text("SELECT count(*) FROM plans WHERE kind = 'Workload'")) or 0)
            return count if count >= 5 else None

        await eventually(some_plans, timeout=60, interval=0.05, what="the leader to issue its first plans")
        first.kill()
        second = await eventually(
            lambda: _other_leader(engine, planners, first), timeout=60, what="the standby to take over"
        )
        assert second is not first

        async def all_ready() -> bool:
            items = (await kubectl.json("cpu", "get", "llmdeployments", "-n", ns))["items"]
            ready = [
                i
                for i in items
                if i.get("status", {}).get("readyReplicas") == 1 and i["status"].get("ready") == "Ready"
            ]
            return len(ready) == len(names)

        await eventually(all_ready, timeout=120, what="all 30 deployments Ready after the hand-over")
        async with engine.connect() as conn:
            epochs = await conn.scalar(text("SELECT count(*) FROM planner_epochs"))
            per_deployment = (
                await conn.execute(text("SELECT name, count(*) FROM plans WHERE kind = 'Workload' GROUP BY name"))
            ).all()
            outcomes = dict(
                (await conn.execute(text("SELECT outcome, count(*) FROM apply_results GROUP BY outcome"))).all()
            )
            applied_per_plan = (
                await conn.execute(
                    text(
                        "SELECT plan_id FROM apply_results WHERE outcome = 'Applied' GROUP BY plan_id, cluster "
                        "HAVING count(*) > 1"
                    )
                )
            ).all()
        workloads = await managed_deployments(kubectl, ns)
        print(
            f"\nhand-over: epochs={epochs} workload-plans={sum(c for _, c in per_deployment)} "
            f"apply outcomes={outcomes} workloads={len(workloads)}"
        )
        assert epochs >= 2
        assert dict(per_deployment) == dict.fromkeys(names, 1), "a deployment got a duplicate (or no) workload plan"
        assert applied_per_plan == []
        assert "Stale" not in outcomes
        assert sorted(name for _, name in workloads) == names
    finally:
        for planner in planners:
            planner.stop()
        await engine.dispose()


async def _other_leader(engine: AsyncEngine, planners: list[Process], old: Process) -> Process | None:
    async with engine.connect() as conn:
        holder = await conn.scalar(text("SELECT holder FROM planner_epochs ORDER BY epoch DESC LIMIT 1"))
    return next((p for p in planners if p is not old and p.running and holder and holder.endswith(f"-{p.pid}")), None)


# ------------------------------------------------------------------------------------------------------ chaos


class Chaos:
    """Every component as a killable process: 2 planners, a watcher and an applier per cluster, NATS, Postgres."""

    def __init__(self, *, root: Path, kubectl: Kubectl, namespace: str) -> None:
        self.identities = BusIdentities(root / "bus")
        self.nats = KillableNats(root / "nats", auth_config=self.identities.server_config_path)
        self.postgres = KillablePostgres(root / "pg" / "data")
        self.kubectl = kubectl
        self.namespace = namespace
        self.procs: dict[str, Process] = {}
        self.root = root
        self.prefix = "chaos"
        self.log: list[str] = []

    @property
    def database_url(self) -> str:
        return self.postgres.url("llm_operator")

    async def start(self) -> None:
        self.identities.ensure(self.prefix, [c.name for c in self.kubectl.fleet.clusters.values()])
        self.nats.start()
        self.postgres.start()
        self.postgres.psql("CREATE DATABASE llm_operator")
        engine = create_async_engine(self.database_url)
        await schema.upgrade(engine)
        await engine.dispose()
        fleet = self.kubectl.fleet
        env = env_for(
            nats_url=self.nats.url,
            database_url=self.database_url,
            prefix=self.prefix,
            kubeconfig=fleet.kubeconfig,
            identities_dir=self.identities.seeds_dir(self.prefix),
        )
        for i in range(2):
            self.procs[f"planner-{i}"] = Process(
                f"planner-{i}", operator_command("planner"), self.root / f"planner-{i}.log", env=env
            )
        for role, cluster in fleet.clusters.items():
            labels = ",".join(f"{k}={v}" for k, v in cluster.labels.items())
            for part in ("watcher", "applier"):
                argv = [
                    "agent",
                    "--cluster",
                    cluster.name,
                    "--context",
                    cluster.context,
                    "--labels",
                    labels,
                    "--only",
                    part,
                    "-n",
                    self.namespace,
                ]
                self.procs[f"{part}-{role}"] = Process(
                    f"{part}-{role}", operator_command(*argv), self.root / f"{part}-{role}.log", env=env
                )
        for proc in self.procs.values():
            proc.start()

    def kill_one(self, rng: random.Random) -> str:
        victim = rng.choice([*self.procs, "nats", "postgres"])
        if victim == "nats":
            self.nats.kill()
        elif victim == "postgres":
            self.postgres.kill()
        else:
            self.procs[victim].kill()
        self.log.append(victim)
        return victim

    def restart(self, victim: str) -> None:
        if victim == "nats":
            self.nats.start()
        elif victim == "postgres":
            self.postgres.start()
        else:
            self.procs[victim].start()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        self.nats.stop()
        self.postgres.stop()


@pytest.fixture
def chaos(kubectl: Kubectl, namespace: str, tmp_path: Path, postgres: Any) -> Iterator[Chaos]:
    # `postgres` (the session server) is requested so pgserver's system user exists before ours starts.
    harness = Chaos(root=tmp_path, kubectl=kubectl, namespace=namespace)
    yield harness
    harness.stop()


async def test_kill_minus_nine_anything_during_a_stream_of_changes_and_converge(
    chaos: Chaos, kubectl: Kubectl, namespace: str
) -> None:
    # Separate generators: the workload is the same every run, whatever the timing of the kills.
    ns, rng, chaos_rng = namespace, random.Random(20261127), random.Random(1127)
    await chaos.start()
    origins = ["a100", "mixed", "cpu"]
    for role in origins:
        await kubectl(role, "apply", "-n", ns, "-f", "-", input=docs(model()))

    # The desired end state, per origin cluster: name -> replicas (absent: deleted).
    desired: dict[str, dict[str, int]] = {role: {} for role in origins}
    changes = 0
    generation_done = anyio.Event()

    async def generate() -> None:
        nonlocal changes
        gone: set[str] = set()  # a deleted name is not reused: its finalizer may still be pending
        for round_ in range(32):
            for role in origins:
                batch: dict[str, dict[str, Any]] = {}
                deletions: list[str] = []
                for _ in range(6):
                    name = f"{role}-d{rng.randrange(24):02d}"
                    if name in gone or name in deletions:
                        continue
                    if name in desired[role] and name not in batch and rng.random() < 0.2:
                        deletions.append(name)
                        desired[role].pop(name)
                        gone.add(name)
                    else:
                        desired[role][name] = rng.randint(1, 3)
                        batch[name] = llmd(name, desired[role][name])
                if batch:
                    await kubectl(role, "apply", "-n", ns, "-f", "-", input=docs(*batch.values()))
                    changes += len(batch)
                if deletions:
                    await kubectl(role, "delete", "llmdeployment", "-n", ns, "--wait=false", *deletions)
                    changes += len(deletions)
            await anyio.sleep(0.2 if round_ % 5 else 1.0)  # pacing of the workload, not synchronisation
        generation_done.set()

    async def break_things() -> None:
        while not generation_done.is_set():
            await anyio.sleep(chaos_rng.uniform(1.5, 3.0))
            victim = chaos.kill_one(chaos_rng)
            await anyio.sleep(chaos_rng.uniform(0.5, 2.0))
            chaos.restart(victim)

    async with anyio.create_task_group() as tg:
        tg.start_soon(generate)
        tg.start_soon(break_things)

    async def converged() -> bool:
        workloads = await managed_deployments(kubectl, ns)
        expected = {name: replicas for role in origins for name, replicas in desired[role].items()}
        seen = {name: w["spec"]["replicas"] for (_, name), w in workloads.items()}
        ready = {name: w.get("status", {}).get("readyReplicas", 0) for (_, name), w in workloads.items()}
        if seen != expected or ready != expected or len(workloads) != len(expected):
            differ = sorted(
                n for n in set(seen) | set(expected) if (seen.get(n), ready.get(n)) != (expected.get(n),) * 2
            )
            details = [f"{n}: want {expected.get(n)}, have {seen.get(n)} ({ready.get(n)} ready)" for n in differ]
            raise AssertionError(f"workloads: {'; '.join(details)}")
        for role in origins:
            items = (await kubectl.json(role, "get", "llmdeployments", "-n", ns))["items"]
            names = {i["metadata"]["name"] for i in items}
            if names != set(desired[role]):  # a deleted one still waits for its finalizer
                raise AssertionError(f"{role}: LLMDeployments {sorted(names ^ set(desired[role]))} differ")
            waiting = {i["metadata"]["name"]: i.get("status", {}).get("ready") for i in items}
            if any(ready != "Ready" for ready in waiting.values()):
                raise AssertionError(f"{role}: not Ready: {sorted(n for n, r in waiting.items() if r != 'Ready')}")
        return True

    await eventually(converged, timeout=240, interval=1.0, what="the fleet to converge after the chaos")

    engine = create_async_engine(chaos.database_url)
    try:
        async with engine.connect() as conn:
            duplicates = await conn.scalar(
                text(
                    "SELECT count(*) FROM (SELECT cluster, payload->>'uid', payload->>'resource_version', type "
                    "FROM events WHERE type IN ('ResourceObserved','ResourceDeleted') "
                    "GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d"
                )
            )
            observations = await conn.scalar(
                text(
                    "SELECT count(*) FROM events WHERE type IN ('ResourceObserved', 'ResourceDeleted') "
                    "AND payload->>'kind' = 'LLMDeployment'"
                )
            )
            outcomes = dict(
                (await conn.execute(text("SELECT outcome, count(*) FROM apply_results GROUP BY outcome"))).all()
            )
            last_sequences = {
                (row[0], row[1]): row[2]
                for row in (
                    await conn.execute(
                        text("SELECT name, cluster, max(sequence) FROM plans WHERE kind = 'Workload' GROUP BY 1, 2")
                    )
                ).all()
            }
            dead = await conn.scalar(text("SELECT count(*) FROM dead_letters"))
        final_recorded = 0
        async with engine.connect() as conn:
            for role in origins:
                items = (await kubectl.json(role, "get", "llmdeployments", "-n", ns))["items"]
                for item in items:
                    count = await conn.scalar(
                        text(
                            "SELECT count(*) FROM events WHERE type = 'ResourceObserved' AND cluster = :c "
                            "AND payload->>'uid' = :u AND payload->>'resource_version' = :rv"
                        ),
                        {
                            "c": kubectl.fleet.clusters[role].name,
                            "u": item["metadata"]["uid"],
                            "rv": item["metadata"]["resourceVersion"],
                        },
                    )
                    assert count == 1, f"{item['metadata']['name']}: its final state is recorded {count} times"
                    final_recorded += 1
    finally:
        await engine.dispose()
    workloads = await managed_deployments(kubectl, ns)
    stale_workloads = []
    for (role, name), workload in workloads.items():
        applied = int(workload["metadata"]["annotations"]["llm.example.com/plan-sequence"])
        if applied != last_sequences[(name, kubectl.fleet.clusters[role].name)]:
            stale_workloads.append((role, name, applied))
    kills = Counter(chaos.log)
    print(
        f"\nchaos: {changes} CR changes, {sum(kills.values())} kill -9 ({dict(kills)}); "
        f"{observations} LLMDeployment observations recorded, {duplicates} duplicated; "
        f"final states recorded once: {final_recorded}; workloads {len(workloads)} (orphans 0); "
        f"apply outcomes {outcomes}; dead letters {dead}"
    )
    assert changes >= 300
    assert sum(kills.values()) >= 10
    assert duplicates == 0
    assert stale_workloads == [], "a workload carries an older plan than the last one issued"
    assert dead == 0
    print(json.dumps({"changes": changes, "kills": dict(kills), "apply_outcomes": outcomes}), file=sys.stderr)
