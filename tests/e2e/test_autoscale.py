"""The fleet autoscaler against real apiservers.

- The applier's scale plan writes spec.replicas through /scale (as an HPA would: its own field manager, the
  subresource), and the ScalingActive condition beside the planner's own conditions; admission rules still hold.
- With the whole operator running, load observations published on the bus (as the agents publish them; pods of
  the kwok fleet do not answer HTTP until the pod-network harness lands) make the planner scale the
  LLMDeployment through /scale, `kubectl get llmd` shows it, and placement follows with the replicas.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from nats.js import JetStreamContext

from api.conditions import Condition
from api.events import LoadObserved, encode_event
from api.plans import DeploymentRef, ScalePlan, plan_id
from applier.scale import AUTOSCALER_FIELD_MANAGER, execute_scale
from applier.status import execute_status
from bus.publish import publish
from kubeapi import KubeError
from tests.e2e import test_applier
from tests.e2e.test_applier import SEED_DIR, KubeOpener, get, status_plan
from tests.fixtures.operator import Kubectl, RunningOperator, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]
open_kube = test_applier.open_kube  # the fixture, shared

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def autoscaled(name: str) -> dict[str, Any]:
    deployment: dict[str, Any] = yaml.safe_load((SEED_DIR / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = name
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4, "target": {"queueDepth": 4}}
    return deployment


def scale_plan(kubectl: Kubectl, llmd: dict[str, Any], *, sequence: int, replicas: int | None, uid: str = "") -> Any:
    meta = llmd["metadata"]
    cluster = kubectl.fleet.clusters["cpu"].name
    ref = DeploymentRef(origin_cluster=cluster, namespace=meta["namespace"], name=meta["name"], uid=uid or meta["uid"])
    return ScalePlan(
        plan_id=plan_id(ref, cluster, "Scale", 1, sequence),
        epoch=1,
        sequence=sequence,
        cluster=cluster,
        deployment=ref,
        generation=meta.get("generation", 1),
        issued_at=NOW,
        replicas=replicas,
        condition=Condition(
            type="ScalingActive",
            status="True",
            reason="ValidMetricsFound",
            message="queueDepth",
            observed_generation=meta.get("generation", 1),
            last_transition_time=NOW,
        ),
    )


async def test_a_scale_plan_writes_replicas_through_scale_and_its_condition_beside_the_planners(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    kube = await open_kube("cpu")
    await kubectl("cpu", "apply", "-n", namespace, "-f", str(SEED_DIR / "model.yaml"))
    await kubectl("cpu", "apply", "-n", namespace, "-f", "-", input=json.dumps(autoscaled("chat")))
    llmd = await get(kubectl, "cpu", "llmdeployment", "chat", namespace)

    result = await execute_scale(kube, scale_plan(kubectl, llmd, sequence=1, replicas=3), reporting_component="t")
    assert result.outcome == "Applied", result.message
    scaled = await get(kubectl, "cpu", "llmdeployment", "chat", namespace)
    assert scaled["spec"]["replicas"] == 3
    assert any(
        m["manager"] == AUTOSCALER_FIELD_MANAGER and m.get("subresource") == "scale"
        for m in scaled["metadata"]["managedFields"]
    )
    # The planner's status (another field manager, the whole list) keeps the autoscaler's condition.
    llmd_now = {**llmd, "metadata": {**llmd["metadata"], "generation": scaled["metadata"]["generation"]}}
    assert (
        await execute_status(kube, status_plan(kubectl, llmd_now, sequence=2), reporting_component="t")
    ).outcome == ("Applied")
    types = {c["type"] for c in (await get(kubectl, "cpu", "llmdeployment", "chat", namespace))["status"]["conditions"]}
    assert {"Ready", "ScalingActive"} <= types

    # Admission still holds: beyond maxReplicas the apiserver refuses (the applier reports Failed).
    with pytest.raises(KubeError):
        await execute_scale(kube, scale_plan(kubectl, llmd, sequence=3, replicas=9), reporting_component="t")
    # Another incarnation: nothing written.
    other = scale_plan(kubectl, llmd, sequence=4, replicas=1, uid="00000000-0000-0000-0000-000000000000")
    assert (await execute_scale(kube, other, reporting_component="t")).outcome == "Stale"
    assert (await get(kubectl, "cpu", "llmdeployment", "chat", namespace))["spec"]["replicas"] == 3


@pytest.mark.services
async def test_load_on_the_bus_scales_the_llm_deployment_and_placement_follows(
    operator: RunningOperator, kubectl: Kubectl, js: JetStreamContext
) -> None:
    ns, origin = operator.namespace, operator.cluster("cpu")
    await kubectl("cpu", "apply", "-n", ns, "-f", str(SEED_DIR / "model.yaml"))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=json.dumps(autoscaled("busy")))

    async def placed() -> str | None:
        found = await kubectl.get("cpu", "llmdeployment", "busy", "-n", ns)
        clusters = ((found or {}).get("status") or {}).get("clusters")
        return clusters if clusters else None

    where = (await eventually(placed, timeout=60, what="the deployment to be placed")).split(",")[0]

    async def loaded() -> int | None:
        # As the agent of the cluster running it would: 20 requests waiting on one replica (target 4).
        at = datetime.now(UTC)
        event = LoadObserved(
            event_id=LoadObserved.id_for(where, origin, ns, "busy", at),
            cluster=where,
            origin_cluster=origin,
            namespace=ns,
            name="busy",
            window_seconds=10,
            replicas=1,
            reporting=1,
            waiting=20,
            running=4,
            observed_at=at,
        )
        await publish(js, operator.hub.subjects.events(where), encode_event(event), msg_id=event.event_id)
        found = await kubectl.get("cpu", "llmdeployment", "busy", "-n", ns)
        replicas = (found or {}).get("spec", {}).get("replicas")
        return replicas if replicas and replicas > 1 else None

    replicas = await eventually(loaded, timeout=60, what="the autoscaler to write spec.replicas through /scale")
    assert replicas == 4  # 20 / 4 = 5 per the ratio, capped by maxReplicas 4

    async def followed() -> int | None:
        found = await kubectl.get("cpu", "llmdeployment", "busy", "-n", ns)
        status = (found or {}).get("status") or {}
        return status["replicas"] if status.get("replicas") == 4 else None

    await eventually(followed, timeout=60, what="placement to follow the new replica count")
    events = await kubectl.json("cpu", "get", "events", "-n", ns, "--field-selector", "involvedObject.name=busy")
    assert "SuccessfulRescale" in {e["reason"] for e in events["items"]}
