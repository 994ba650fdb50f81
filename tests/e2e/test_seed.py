"""The walking skeleton: the seed README's two YAML documents, applied verbatim in a member cluster, become a
Deployment and a Service there; the LLMDeployment reports Ready; deleting it removes both."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.operator import Kubectl, RunningOperator, eventually
from tests.fixtures.services import repo_root

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services]

SEED = repo_root() / "examples" / "seed"


async def test_seed_examples_become_a_deployment_and_service_and_are_cleaned_up(
    operator: RunningOperator, kubectl: Kubectl
) -> None:
    ns, origin = operator.namespace, "cpu"
    await kubectl(origin, "apply", "-n", ns, "-f", str(SEED / "model.yaml"))
    await kubectl(origin, "apply", "-n", ns, "-f", str(SEED / "deployment.yaml"))

    deployment = await eventually(
        lambda: kubectl.get(origin, "deployment", "chat-service", "-n", ns),
        timeout=30,
        what="Deployment chat-service in the origin cluster",
    )
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "your-registry/gpt-small:v1"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}
    assert [p["containerPort"] for p in container["ports"]] == [8080]

    service = await eventually(
        lambda: kubectl.get(origin, "service", "chat-service", "-n", ns), timeout=10, what="Service chat-service"
    )
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, "http")]

    async def ready() -> dict[str, Any] | None:
        llmd = await kubectl.get(origin, "llmdeployment", "chat-service", "-n", ns)
        status = (llmd or {}).get("status", {})
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        if conditions.get("Ready", {}).get("status") == "True" and status.get("readyReplicas") == 2:
            return llmd
        return None

    llmd = await eventually(ready, timeout=60, what="the LLMDeployment to report Ready with 2 ready replicas")
    assert llmd["status"]["placements"] == [{"cluster": operator.cluster(origin), "replicas": 2, "readyReplicas": 2}]
    assert llmd["metadata"]["finalizers"] == ["llm.example.com/cleanup"]
    table = await kubectl(origin, "get", "llmmodels,llmdeployments,deployments,services", "-n", ns)
    assert "gpt-small" in table
    assert "chat-service" in table

    await kubectl(origin, "delete", "-n", ns, "-f", str(SEED / "deployment.yaml"), "--wait=false")

    async def cleaned_up() -> bool:
        leftovers = [
            await kubectl.get(origin, kind, "chat-service", "-n", ns)
            for kind in ("llmdeployment", "deployment", "service")
        ]
        return all(item is None for item in leftovers)

    await eventually(cleaned_up, timeout=60, what="the workload and the LLMDeployment to be gone")
