"""One address in the origin cluster, with real traffic: the origin's Service and EndpointSlices written by the
applier (applier.endpoints) from the endpoints that follow the replicas (planner.endpoints), resolved by a client
the way kube-proxy would (kwok runs none), and requests answered by the emulated replicas of real kwok pods in the
serving clusters (tests.fixtures.podnet).

The planner's part (issuing these plans from watcher observations) is not wired yet: the tests drive the applier
with the plans the planner would issue.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from api.labels import LABEL_DEPLOYMENT, LABEL_ORIGIN
from api.network import ClusterNetwork, ServingEndpoints
from api.plans import DeploymentRef, EndpointsPlan, plan_id
from applier.apply import ApplyResult
from applier.endpoints import LABEL_SERVICE_NAME, execute_endpoints, resolve
from llm_operator.fleet.emulator import SERVED_BY_HEADER, post_json
from llm_operator.runtime import Member, connect_kube
from planner.endpoints import ClusterReplicas, follow

if TYPE_CHECKING:
    from tests.fixtures.fleet import Fleet
    from tests.fixtures.podnet import StartEmulator

pytestmark = pytest.mark.fleet
TIMEOUT_S = 60.0
ROLES = ("cpu", "a100", "mixed")  # origin, serving, serving
PORT = 8000
MCS_CRDS = Path(__file__).parent / "manifests" / "mcs-crds.yaml"


@pytest.fixture
def namespace(fleet: Fleet) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    for role in ROLES:
        fleet.kubectl(role, "create", "namespace", name)
    yield name
    for role in ROLES:
        fleet.kubectl(role, "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


class Origin:
    """Plans for one deployment, applied by the real applier code against a fleet cluster."""

    def __init__(self, fleet: Fleet, namespace: str, name: str = "chat") -> None:
        self.fleet = fleet
        self.namespace = namespace
        self.origin = fleet.clusters["cpu"].name
        self.ref = DeploymentRef(origin_cluster=self.origin, namespace=namespace, name=name, uid=str(uuid.uuid4()))
        self.sequence = 0

    def plan(self, where: str, role: str, **fields: Any) -> EndpointsPlan:
        """A plan for the fleet cluster ``where`` (a role: cpu, a100, mixed) in the plan role ``role``."""
        self.sequence += 1
        cluster = self.fleet.clusters[where].name
        return EndpointsPlan(
            plan_id=plan_id(self.ref, cluster, "Endpoints", 1, self.sequence),
            epoch=1,
            sequence=self.sequence,
            cluster=cluster,
            deployment=self.ref,
            generation=1,
            issued_at=datetime.now(UTC),
            port=PORT,
            role=role,
            **fields,
        )

    def apply(self, role: str, plan: EndpointsPlan) -> ApplyResult:
        cluster = self.fleet.clusters[role]

        async def run() -> ApplyResult:
            kube = await connect_kube(
                Member(name=cluster.name, context=cluster.context), kubeconfig=self.fleet.kubeconfig
            )
            try:
                return await execute_endpoints(kube, plan)
            finally:
                await kube.close()

        return asyncio.run(run())

    def targets(self) -> list[tuple[str, int]]:
        """What a client of the origin's Service reaches: its EndpointSlices, resolved as kube-proxy would."""
        out = self.fleet.kubectl(
            "cpu",
            "get",
            "endpointslices",
            "-n",
            self.namespace,
            "-l",
            f"{LABEL_SERVICE_NAME}={self.ref.name}",
            "-o",
            "json",
        )
        return resolve(json.loads(out.stdout)["items"])

    def call(self) -> str:
        """One request through the origin's Service (its first endpoint, then the next ones on failure)."""
        targets = self.targets()
        assert targets, "the origin's Service has no endpoints"
        status, headers, body = post_json(f"http://{targets[0][0]}:{targets[0][1]}/v1/completions", {"prompt": "hi"})
        assert status == 200, body
        return str(headers[SERVED_BY_HEADER]).split("/", 1)[0]


def _workload(origin: str, namespace: str, replicas: int) -> dict[str, Any]:
    labels = {LABEL_DEPLOYMENT: "chat", LABEL_ORIGIN: origin}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai",
                            "ports": [{"name": "http", "containerPort": PORT}],
                        }
                    ],
                },
            },
        },
    }


def _run_replicas(fleet: Fleet, role: str, origin: str, namespace: str, replicas: int) -> ClusterReplicas:
    """Scale the workload in ``role`` and wait until exactly ``replicas`` pods are ready; what the watcher reports."""
    fleet.kubectl(role, "apply", "-f", "-", input=json.dumps(_workload(origin, namespace, replicas)))

    def check() -> ClusterReplicas | None:
        pods = json.loads(fleet.kubectl(role, "get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        ready = {
            p["status"]["podIP"]
            for p in pods
            if p.get("status", {}).get("podIP")
            and any(c.get("type") == "Ready" and c.get("status") == "True" for c in p["status"].get("conditions", []))
            and not p["metadata"].get("deletionTimestamp")
        }
        if len(ready) != replicas or len(pods) != replicas:
            return None
        return ClusterReplicas(
            cluster=fleet.clusters[role].name,
            network=ClusterNetwork(mode="flat", pod_cidrs=[fleet.specs[role].pod_cidr or ""]),
            healthy=True,
            ready=frozenset(ready),
            live=frozenset(ready),
            pod_port=PORT,
        )

    return fleet.poll_until(check, timeout=TIMEOUT_S, what=f"{replicas} ready replicas in {role}")


def test_requests_to_the_origins_service_reach_the_replicas_wherever_they_run(
    fleet: Fleet, namespace: str, emulator: StartEmulator
) -> None:
    origin = Origin(fleet, namespace)
    emu = emulator(namespaces=[namespace], clusters=["a100", "mixed"])

    # Replicas only in a100: the origin's Service has no selector and one slice, pointing at them.
    a100 = _run_replicas(fleet, "a100", origin.origin, namespace, 2)
    serving = follow([], [a100], origin=origin.origin)
    result = origin.apply("cpu", origin.plan("cpu", "origin", serving=serving))
    assert result.outcome == "Applied", result.message
    service = json.loads(fleet.kubectl("cpu", "get", "service", "chat", "-n", namespace, "-o", "json").stdout)
    assert "selector" not in service["spec"] and service["spec"]["ports"][0]["port"] == PORT
    emu.wait_for_replicas(lambda rs: len(rs) == 2, timeout=TIMEOUT_S, what="a100's replicas served")
    assert {origin.call() for _ in range(3)} == {fleet.clusters["a100"].name}
    assert sorted(a for a, _ in origin.targets()) == sorted(a100.ready)

    # Split: a100 and mixed. Requests through the one Service reach both clusters.
    mixed = _run_replicas(fleet, "mixed", origin.origin, namespace, 1)
    serving = follow(serving, [a100, mixed], origin=origin.origin)
    assert origin.apply("cpu", origin.plan("cpu", "origin", serving=serving)).outcome == "Applied"
    emu.wait_for_replicas(lambda rs: len(rs) == 3, timeout=TIMEOUT_S, what="mixed's replica served")
    reached: Counter[str] = Counter()
    for address, port in origin.targets():
        status, headers, _ = post_json(f"http://{address}:{port}/v1/completions", {"prompt": "hi"})
        assert status == 200
        reached[headers[SERVED_BY_HEADER].split("/", 1)[0]] += 1
    assert set(reached) == {fleet.clusters["a100"].name, fleet.clusters["mixed"].name}

    # Moved: a100 scaled to zero. Its slice goes only after its pods are gone; mixed's stays throughout.
    fleet.kubectl("a100", "scale", "deployment", "chat", "-n", namespace, "--replicas=0")
    gone = _run_replicas(fleet, "a100", origin.origin, namespace, 0)
    serving = follow(serving, [gone, mixed], origin=origin.origin)
    result = origin.apply("cpu", origin.plan("cpu", "origin", serving=serving))
    assert result.outcome == "Applied" and f"EndpointSlice/chat-{fleet.clusters['a100'].name}" in result.objects
    assert sorted(a for a, _ in origin.targets()) == sorted(mixed.ready)
    assert origin.call() == fleet.clusters["mixed"].name

    # A stale plan (an older sequence) changes nothing.
    stale = origin.plan("cpu", "origin", serving=[])
    newer = origin.plan("cpu", "origin", serving=serving)
    assert origin.apply("cpu", newer).outcome == "Applied"
    assert origin.apply("cpu", stale).outcome == "Stale"
    assert origin.targets()

    # Removal deletes the Service and its slices.
    assert origin.apply("cpu", origin.plan("cpu", "origin", remove=True)).outcome == "Deleted"
    assert origin.targets() == []
    left = fleet.kubectl("cpu", "get", "service", "chat", "-n", namespace, check=False)
    assert left.returncode != 0


def test_a_serving_cluster_admits_only_the_origins_pod_range(fleet: Fleet, namespace: str) -> None:
    origin = Origin(fleet, namespace)
    origin_range = fleet.specs["cpu"].pod_cidr or ""
    plan = origin.plan("a100", "serving", mode="flat", admit_cidrs=[origin_range])
    assert origin.apply("a100", plan).outcome == "Applied"
    policy = json.loads(
        fleet.kubectl("a100", "get", "networkpolicy", "chat-from-origin", "-n", namespace, "-o", "json").stdout
    )
    assert policy["spec"]["ingress"][0]["from"] == [{"ipBlock": {"cidr": origin_range}}]
    assert policy["spec"]["podSelector"]["matchLabels"] == {LABEL_DEPLOYMENT: "chat", LABEL_ORIGIN: origin.origin}


def test_with_the_mcs_api_the_serving_cluster_exports_and_the_origin_names_the_clusterset_service(
    fleet: Fleet, namespace: str
) -> None:
    origin = Origin(fleet, namespace)
    # Without the MCS CRDs an export cannot be made, and the plan says so.
    fleet.kubectl("mixed", "delete", "-f", str(MCS_CRDS), "--ignore-not-found", "--wait=true")
    failed = origin.apply("mixed", origin.plan("mixed", "serving", mode="mcs"))
    assert failed.outcome == "Failed" and "MCS API" in failed.message

    fleet.kubectl("a100", "apply", "--server-side", "-f", str(MCS_CRDS))
    fleet.kubectl(
        "a100", "wait", "--for=condition=Established", "crd/serviceexports.multicluster.x-k8s.io", "--timeout=60s"
    )
    result = origin.apply("a100", origin.plan("a100", "serving", mode="mcs"))
    assert result.outcome == "Applied", result.message
    export = json.loads(fleet.kubectl("a100", "get", "serviceexports", "chat", "-n", namespace, "-o", "json").stdout)
    assert export["metadata"]["labels"]["llm.example.com/endpoints-of"] == "chat"

    mcs = ServingEndpoints(cluster=fleet.clusters["a100"].name, mode="mcs", port=PORT)
    assert origin.apply("cpu", origin.plan("cpu", "origin", serving=[mcs])).outcome == "Applied"
    service = json.loads(fleet.kubectl("cpu", "get", "service", "chat", "-n", namespace, "-o", "json").stdout)
    assert service["spec"]["type"] == "ExternalName"
    assert service["spec"]["externalName"] == f"chat.{namespace}.svc.clusterset.local"
