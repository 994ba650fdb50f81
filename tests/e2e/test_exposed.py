"""The ``exposed`` network mode with the whole operator: the serving cluster (a100) declares that other clusters
reach its replicas through its Services' load balancers. An LLMDeployment applied in the CPU-only cluster runs
on a100; the applier there makes the model's Service a LoadBalancer, the test plays the cloud controller (kwok
has none) by writing the Service's ``status.loadBalancer.ingress``, the watcher reports that address, and the
planner points the origin's EndpointSlice at it: requests through the origin's Service (resolved from its slices
as kube-proxy would) reach the replica through the load balancer, which the emulator serves.

Nothing here hands the operator a plan or an address: only the ingress status, as a cloud controller would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from api.network import ClusterNetwork
from applier.endpoints import LABEL_SERVICE_NAME, resolve
from llm_operator.fleet.spec import load_balancer_ip
from tests.e2e.test_placement import deployment, model
from tests.e2e.test_traffic import NAME, PORT, Stream
from tests.fixtures.operator import Kubectl, RunningOperator, eventually, running_operator
from tests.fixtures.services import Hub

if TYPE_CHECKING:
    from tests.fixtures.podnet import StartEmulator

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services]


@pytest.fixture
async def exposed_operator(hub: Hub, kubectl: Kubectl, namespace: str) -> AsyncIterator[RunningOperator]:
    """The operator with a100 declaring the ``exposed`` network (the other clusters declare nothing: flat)."""
    async with running_operator(hub, kubectl, namespace, networks={"a100": ClusterNetwork(mode="exposed")}) as op:
        yield op


async def test_an_exposed_serving_cluster_is_reached_from_the_origin_through_its_load_balancer(
    exposed_operator: RunningOperator, kubectl: Kubectl, emulator: StartEmulator
) -> None:
    operator = exposed_operator
    ns = operator.namespace
    emulator(namespaces=[ns], clusters=["a100"])
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("lb", gpus=2, types=["NVIDIA-A100-SXM4-80GB"]))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment(NAME, "lb", 1))
    a100 = operator.cluster("a100")

    async def load_balancer() -> dict[str, Any] | None:
        service = await kubectl.get("a100", "service", NAME, "-n", ns)
        return service if service is not None and service["spec"]["type"] == "LoadBalancer" else None

    service = await eventually(load_balancer, timeout=60, what="the model's Service in a100 made a LoadBalancer")
    assert service["spec"]["ports"][0]["port"] == PORT

    async def origin_targets() -> list[tuple[str, int]]:
        slices = await kubectl.json("cpu", "get", "endpointslices", "-n", ns, "-l", f"{LABEL_SERVICE_NAME}={NAME}")
        return resolve(slices["items"])

    # The replica's pod address is not reachable from the origin in this mode: no slice points at it.
    pods = await kubectl.json("a100", "get", "pods", "-n", ns, "-l", f"llm.example.com/deployment={NAME}")
    pod_ips = {p["status"].get("podIP") for p in pods["items"]}
    assert not {a for a, _ in await origin_targets()} & pod_ips

    # The test plays the cloud controller: the load balancer gets an address the pod network serves.
    ingress = load_balancer_ip(kubectl.fleet.specs["a100"], 1 + uuid.uuid4().int % 250)
    status = {"status": {"loadBalancer": {"ingress": [{"ip": ingress}]}}}
    await kubectl(
        "a100", "patch", "service", NAME, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )

    async def through_the_load_balancer() -> list[tuple[str, int]] | None:
        targets = await origin_targets()
        return targets if targets == [(ingress, PORT)] else None

    await eventually(through_the_load_balancer, timeout=60, what="the origin's slice pointing at the load balancer")
    stream = Stream(operator)
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.run)
        await stream.answers(
            a100, after=0, count=3, what="requests through the origin's Service answered in a100 via its load balancer"
        )
        stream.stopped = True
    llmd = await kubectl.json("cpu", "get", "llmdeployment", NAME, "-n", ns)
    assert f"{a100} (exposed: 1)" in (llmd["status"].get("traffic") or "")

    # Deleted: the origin's Service and slice go with the deployment, and so does the load balancer in a100.
    await kubectl("cpu", "delete", "llmdeployment", NAME, "-n", ns, "--wait=false")

    async def gone() -> bool:
        return (
            not await origin_targets()
            and await kubectl.get("cpu", "service", NAME, "-n", ns) is None
            and await kubectl.get("a100", "service", NAME, "-n", ns) is None
        )

    await eventually(gone, timeout=60, what="the origin's endpoints and a100's load balancer removed")
