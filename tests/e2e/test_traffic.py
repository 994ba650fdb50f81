"""One address in the origin cluster, with the whole operator: an LLMDeployment applied in the CPU-only cluster runs
on a GPU cluster, and a client of the origin's Service (``http://<name>.<namespace>:<port>``, resolved from its
EndpointSlices as kube-proxy would: kwok runs none) reaches the emulated replica there with real HTTP requests.
When that cluster is lost (its agent stopped: no heartbeats; its replicas stop answering), requests fail for about
the detection time and then reach the replacement in the other GPU cluster through the same Service.

Nothing here hands the operator a plan: the planner issues the endpoints plans from the watchers' observations
(planner.traffic), the appliers write them.

A split deployment (one replica in each GPU cluster) is reached in both through the one Service.

``LLMOP_TRAFFIC_ROUNDS`` (default 1) repeats the failover, alternating clusters; the figures are printed and, with
``LLMOP_TRAFFIC_RESULT=<path>``, written as JSON (bench/endpoints.py runs it that way).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from applier.endpoints import LABEL_SERVICE_NAME, resolve
from kubeapi import RESOURCES, KubeError
from llm_operator.fleet import NodeSpec
from llm_operator.fleet.emulator import SERVED_BY_HEADER
from llm_operator.fleet.spec import node_pod_cidr
from llm_operator.runtime import connect_kube
from tests.e2e.test_placement import deployment, model
from tests.fixtures.operator import Kubectl, RunningOperator, eventually

if TYPE_CHECKING:
    from tests.fixtures.podnet import StartEmulator

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services]
GPU_TYPES = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"]
NAME = "ha-chat"
PORT = 8080


@dataclass
class Stream:
    """A continuous stream of requests through the origin's Service: before each request its EndpointSlices are
    read afresh from the origin's apiserver (as a kube-proxy watching them would route) and the next endpoint in
    turn is called. Records (wall time, the clusters the slices pointed at, the cluster that answered or None)."""

    operator: RunningOperator
    results: list[tuple[float, frozenset[str], str | None]] = field(default_factory=list)
    stopped: bool = False

    async def run(self) -> None:
        kube = await connect_kube(self.operator.members["cpu"], kubeconfig=self.operator.settings.kubeconfig)
        ranges = {
            role: ipaddress.ip_network(spec.pod_cidr or "0.0.0.0/32")
            for role, spec in self.operator.kubectl.fleet.specs.items()
        }
        turn = 0
        try:
            async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=2)) as http:
                while not self.stopped:
                    at = time.time()
                    answered: str | None = None
                    pointed: frozenset[str] = frozenset()
                    try:
                        slices, _ = await kube.list(
                            RESOURCES["EndpointSlice"],
                            namespace=self.operator.namespace,
                            label_selector=f"{LABEL_SERVICE_NAME}={NAME}",
                        )
                        targets = resolve(slices)
                        pointed = frozenset(
                            self.operator.cluster(role)
                            for role, net in ranges.items()
                            for address, _ in targets
                            if ipaddress.ip_address(address) in net
                        )
                        address, port = targets[turn % len(targets)]
                        turn += 1
                        async with http.post(f"http://{address}:{port}/v1/completions", json={"prompt": "x"}) as r:
                            if r.status == 200:
                                answered = r.headers[SERVED_BY_HEADER].split("/", 1)[0]
                    except (OSError, IndexError, KeyError, ZeroDivisionError, aiohttp.ClientError, TimeoutError):
                        pass
                    except KubeError:
                        pass
                    self.results.append((at, pointed, answered))
                    if answered is None:
                        await anyio.sleep(0.02)
        finally:
            await kube.close()

    def answered_by(self, cluster: str, *, after: float) -> int:
        return sum(1 for t, _, ok in self.results if t > after and ok == cluster)

    async def answers(self, cluster: str, *, after: float, count: int, what: str) -> None:
        async def enough() -> bool:
            return self.answered_by(cluster, after=after) >= count

        await eventually(enough, timeout=90, what=what)

    def switched_at(self, cluster: str, *, after: float) -> float | None:
        """When the slices first pointed at ``cluster`` alone."""
        return next((t for t, p, _ in self.results if t > after and p == frozenset({cluster})), None)

    def longest_failure(self, *, after: float) -> float:
        """The longest time from a failed request to the next answered one."""
        longest, started = 0.0, None
        for t, _, ok in self.results:
            if t <= after:
                continue
            if ok is None and started is None:
                started = t
            elif ok is not None and started is not None:
                longest, started = max(longest, t - started), None
        return longest


async def _unhealthy_at(database_url: str, cluster: str, *, after: float) -> float | None:
    """When the planner recorded the cluster Unhealthy (its ClusterHealthChanged event), after ``after``."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT extract(epoch FROM recorded_at) FROM events WHERE type = 'ClusterHealthChanged' "
                    "AND cluster = :cluster AND payload->>'healthy' = 'false' "
                    "AND recorded_at > to_timestamp(:after) ORDER BY position LIMIT 1"
                ),
                {"cluster": cluster, "after": after},
            )
            value = found.scalar()
            return float(value) if value is not None else None
    finally:
        await engine.dispose()


async def _set_cluster(emu: Any, cluster: str, behaviour: str) -> None:
    for pod in [r for r in emu.replicas() if r["cluster"] == cluster]:
        await anyio.to_thread.run_sync(emu.set_behaviour, pod["served_by"], behaviour)


async def test_the_origins_service_reaches_the_model_wherever_it_runs_before_and_after_a_failover(
    operator: RunningOperator, kubectl: Kubectl, emulator: StartEmulator
) -> None:
    ns = operator.namespace
    rounds = int(os.environ.get("LLMOP_TRAFFIC_ROUNDS", "1"))
    emu = emulator(namespaces=[ns], clusters=["a100", "mixed"])
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("ha", gpus=2, types=GPU_TYPES))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment(NAME, "ha", 1))
    origin, a100, mixed = operator.cluster("cpu"), operator.cluster("a100"), operator.cluster("mixed")

    stream = Stream(operator)
    figures: list[dict[str, float]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.run)
        await stream.answers(
            a100, after=0, count=3, what="requests through the origin's Service answered by the replica in a100"
        )
        service = await kubectl.json("cpu", "get", "service", NAME, "-n", ns)
        assert "selector" not in service["spec"] and service["spec"]["ports"][0]["port"] == PORT
        assert await kubectl.get("cpu", "deployment", NAME, "-n", ns) is None  # nothing runs in the origin

        async def status_names_the_origin() -> dict[str, Any] | None:
            llmd = await kubectl.get("cpu", "llmdeployment", NAME, "-n", ns)
            status = (llmd or {}).get("status", {})
            return status if a100 in (status.get("traffic") or "") and status.get("endpoints") else None

        status = await eventually(status_names_the_origin, timeout=30, what="status.traffic naming a100")
        assert status["endpoints"][0] == {"cluster": origin, "url": f"http://{NAME}.{ns}:{PORT}"}
        assert [e["cluster"] for e in status["endpoints"][1:]] == [a100]
        wide = await kubectl("cpu", "get", "llmd", NAME, "-n", ns, "-o", "wide")
        assert "TRAFFIC" in wide and f"{a100} (flat: 1)" in wide

        lost_role, new_role = "a100", "mixed"
        for _ in range(rounds):
            lost, new = operator.cluster(lost_role), operator.cluster(new_role)
            await stream.answers(lost, after=time.time(), count=1, what=f"requests answered by {lost}")
            killed_at = time.time()
            await operator.stop(lost_role)  # no heartbeats from the lost cluster any more
            await _set_cluster(emu, lost, "unavailable")  # and its replicas stop answering
            await stream.answers(
                new, after=killed_at, count=5, what=f"requests through the same Service answered by {new}"
            )
            assert stream.answered_by(lost, after=time.time()) == 0
            detected = await _unhealthy_at(operator.hub.database_url, lost, after=killed_at)
            switched = stream.switched_at(new, after=killed_at)
            assert detected is not None and switched is not None
            window = stream.longest_failure(after=killed_at - 1)
            figures.append(
                {
                    "detected_s": detected - killed_at,
                    "endpoints_after_detection_s": switched - detected,
                    "failed_window_s": window,
                }
            )
            # The window is the detection (5 s heartbeat timeout here), the replacement becoming ready, one plan
            # and its apply: bounded well below the minute a user would notice as an outage.
            assert window < 45, figures[-1]
            # The lost cluster comes back (its old copy is then removed) and answers again for the next round.
            await _set_cluster(emu, lost, "ok")
            await operator.start_agent(lost_role)
            await eventually(
                _gone(kubectl, lost_role, ns), timeout=90, what=f"the old copy removed from {lost} once it is back"
            )
            lost_role, new_role = new_role, lost_role
        stream.stopped = True

    # Deleted: the origin's Service and its slices go with the deployment, and so does everything in the serving
    # clusters.
    await kubectl("cpu", "delete", "llmdeployment", NAME, "-n", ns, "--wait=false")

    async def endpoints_gone() -> bool:
        slices = await kubectl.json("cpu", "get", "endpointslices", "-n", ns, "-l", f"{LABEL_SERVICE_NAME}={NAME}")
        return not slices["items"] and await kubectl.get("cpu", "service", NAME, "-n", ns) is None

    await eventually(endpoints_gone, timeout=60, what="the origin's Service and slices removed with the deployment")

    print(f"\nfailover through the origin's Service, {rounds} round(s): {json.dumps(figures)}")
    if path := os.environ.get("LLMOP_TRAFFIC_RESULT"):
        await anyio.Path(path).write_text(json.dumps({"rounds": figures}, indent=2))
    assert mixed in {ok for _, _, ok in stream.results}


def _gone(kubectl: Kubectl, role: str, ns: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await kubectl.get(role, "deployment", NAME, "-n", ns) is None

    return check


@pytest.fixture
async def split_gpus(operator: RunningOperator) -> AsyncIterator[str]:
    """One 8-GPU node of a GPU product nobody else uses in each GPU cluster: a 2-replica deployment of an 8-GPU
    model must split across them."""
    token = uuid.uuid4().hex[:6]
    product = f"TEST-GPU-{token}"
    fleet = operator.kubectl.fleet
    # Pods take their IPs from their node's range: one /24 of the cluster's range (which the pod network serves)
    # that the fleet's own nodes do not use.
    subnet = 100 + int(token, 16) % 100
    node = NodeSpec(name=f"split-{token}", cpu="64", memory="512Gi", gpus=8, gpu_product=product, gpu_memory_mib=81920)
    for role in ("a100", "mixed"):
        cluster_range = ipaddress.IPv4Network(fleet.specs[role].pod_cidr or "")
        fleet.apply_nodes(role, [replace(node, pod_cidr=node_pod_cidr(cluster_range, subnet))])
    yield product
    for role in ("a100", "mixed"):
        fleet.delete_nodes(role, [node.name])


async def test_a_split_deployments_requests_through_the_origins_service_reach_both_clusters(
    operator: RunningOperator, kubectl: Kubectl, emulator: StartEmulator, split_gpus: str
) -> None:
    ns = operator.namespace
    emulator(namespaces=[ns], clusters=["a100", "mixed"])
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=model("split", gpus=8, types=[split_gpus]))
    await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=deployment(NAME, "split", 2))
    a100, mixed = operator.cluster("a100"), operator.cluster("mixed")
    stream = Stream(operator)
    async with anyio.create_task_group() as tg:
        tg.start_soon(stream.run)
        await stream.answers(a100, after=0, count=3, what="requests through the origin's Service answered in a100")
        await stream.answers(mixed, after=0, count=3, what="requests through the origin's Service answered in mixed")
        stream.stopped = True
    slices = await kubectl.json("cpu", "get", "endpointslices", "-n", ns, "-l", f"{LABEL_SERVICE_NAME}={NAME}")
    assert sorted(s["metadata"]["name"] for s in slices["items"]) == sorted([f"{NAME}-{a100}", f"{NAME}-{mixed}"])
    llmd = await kubectl.json("cpu", "get", "llmdeployment", NAME, "-n", ns)
    assert [e["cluster"] for e in llmd["status"]["endpoints"]] == [operator.cluster("cpu"), a100, mixed]
