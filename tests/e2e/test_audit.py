"""Audit and reporting on a realistic run: the seed deployment is created, scaled, and deleted on the real fleet;
then the real `llm-operator` CLI answers history, explain, report, status, and a rebuild reproduces the live
projections exactly."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Any

import anyio
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from store import replay
from tests.fixtures.operator import Kubectl, RunningOperator, eventually
from tests.fixtures.services import repo_root

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services]

SEED = repo_root() / "examples" / "seed"


async def cli(operator: RunningOperator, *args: str) -> str:
    env = {**os.environ, "LLMOP_DATABASE_URL": operator.hub.database_url}
    result = await anyio.run_process([sys.executable, "-m", "llm_operator", *args], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def ready_replicas(kubectl: Kubectl, ns: str, wanted: int) -> dict[str, Any] | None:
    llmd = await kubectl.get("cpu", "llmdeployment", "chat-service", "-n", ns)
    status = (llmd or {}).get("status", {})
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    if ready == "True" and status.get("readyReplicas") == wanted and status.get("replicas") == wanted:
        return llmd
    return None


async def test_history_explain_reports_and_rebuild_after_a_realistic_run(
    operator: RunningOperator, kubectl: Kubectl
) -> None:
    ns = operator.namespace
    await kubectl("cpu", "apply", "-n", ns, "-f", str(SEED / "model.yaml"), "-f", str(SEED / "deployment.yaml"))
    await eventually(lambda: ready_replicas(kubectl, ns, 2), timeout=60, what="2 ready replicas")
    await kubectl("cpu", "scale", "llmdeployment", "chat-service", "-n", ns, "--replicas", "3")
    await eventually(lambda: ready_replicas(kubectl, ns, 3), timeout=60, what="3 ready replicas after scaling")

    timeline = json.loads(await cli(operator, "history", f"llmdeployment/{ns}/chat-service", "--json"))
    kinds = [line["kind"] for line in timeline]
    summaries = "\n".join(f"{line['kind']}: {line['summary']}" for line in timeline)
    assert kinds[0] == "SpecChanged" and "created (generation 1) by kubectl" in timeline[0]["summary"], summaries
    assert any(k == "SpecChanged" and "replicas: 2→3" in s["summary"] for k, s in zip(kinds, timeline, strict=True)), (
        summaries
    )
    assert "Decision" in kinds and "Plan" in kinds and "Apply" in kinds and "WorkloadProgress" in kinds, summaries
    assert any("Ready=True" in line["summary"] for line in timeline if line["kind"] == "Status"), summaries

    explained = json.loads(await cli(operator, "explain", f"llmdeployment/{ns}/chat-service", "--json"))
    decision = explained["decision"]
    assert decision["outcome"] == "Placed"
    assert [(s["cluster"], s["replicas"]) for s in decision["shares"]] == [(operator.cluster("cpu"), 3)]
    assert set(decision["inputs"]["clusters"]) == {c.name for c in operator.members_list}
    # Every cluster is named with what the decision made of it; the seed model needs no GPU, and mixed has only
    # GPU nodes.
    verdicts = {v["cluster"]: v for v in decision["verdicts"]}
    assert set(verdicts) == {c.name for c in operator.members_list}
    assert (verdicts[operator.cluster("cpu")]["replicas"], verdicts[operator.cluster("cpu")]["reason"]) == (3, None)
    assert all(v["reason"] for name, v in verdicts.items() if name != operator.cluster("cpu")), verdicts
    assert verdicts[operator.cluster("mixed")]["reason"] == "no_acceptable_gpu_type"

    rows = list(csv.DictReader(io.StringIO(await cli(operator, "report", "placements", "--csv"))))
    assert [(r["name"], r["cluster"], r["replicas"], r["ready_replicas"]) for r in rows] == [
        ("chat-service", operator.cluster("cpu"), "3", "3")
    ]
    capacity = list(csv.DictReader(io.StringIO(await cli(operator, "report", "gpu-capacity", "--csv"))))
    assert {(r["cluster"], r["gpu_product"]) for r in capacity} >= {
        (operator.cluster("a100"), "NVIDIA-A100-SXM4-80GB"),
        (operator.cluster("mixed"), "NVIDIA-H100-80GB-HBM3"),
    }
    # The fleet's kwok nodes carry only the taints real GPU nodes carry: every one of them counts.
    assert all(r["unusable_nodes"] == "0" for r in capacity), capacity
    churn = list(csv.DictReader(io.StringIO(await cli(operator, "report", "churn", "--csv"))))
    assert [(r["name"], r["replicas_added"]) for r in churn] == [("chat-service", "3")]

    status = json.loads(await cli(operator, "status", "--json"))
    assert {c["name"] for c in status["clusters"]} == {c.name for c in operator.members_list}
    assert all(c["healthy"] for c in status["clusters"])

    engine = create_async_engine(operator.hub.database_url)
    try:
        async with engine.connect() as conn:
            live = await replay.snapshot(conn)
        await cli(operator, "replay", "--rebuild")
        async with engine.connect() as conn:
            rebuilt = await replay.snapshot(conn)
    finally:
        await engine.dispose()
    # Rows written while we compared (new observations) would differ legitimately; the ones we compare must not.
    for name in ("deployments", "deployment_plans", "placements", "plans", "apply_results", "models", "clusters"):
        assert rebuilt[name] == live[name], name
