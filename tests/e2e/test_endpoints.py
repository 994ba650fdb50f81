"""One address in the origin cluster, with real traffic: the origin's Service and EndpointSlices written by the
applier (applier.endpoints) from the endpoints that follow the replicas (planner.endpoints), resolved by a client
the way kube-proxy would (kwok runs none), and requests answered by the emulated replicas of real kwok pods in the
serving clusters (tests.fixtures.podnet).

The planner's part (issuing these plans from watcher observations) is not wired yet: the tests drive the applier
with the plans the planner would issue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from api.labels import LABEL_DEPLOYMENT, LABEL_ORIGIN
from api.network import ClusterNetwork, ServingEndpoints
from api.plans import DeploymentRef, EndpointsPlan, plan_id
from api.policy import PlacementRule, TenantPolicy
from applier import endpoints as endpoints_module
from applier.apply import ApplyResult
from applier.endpoints import LABEL_SERVICE_NAME, execute_endpoints, resolve
from kubeapi import RESOURCES, KubeError, TransientKubeError
from llm_operator.fleet.emulator import SERVED_BY_HEADER, post_json
from llm_operator.fleet.spec import load_balancer_ip
from llm_operator.runtime import Member, connect_kube
from planner.endpoints import ClusterReplicas, follow
from tests.fixtures.fleet import install_mcs_crds

if TYPE_CHECKING:
    from tests.fixtures.fleet import Fleet
    from tests.fixtures.podnet import StartEmulator

pytestmark = pytest.mark.fleet
TIMEOUT_S = 60.0
ROLES = ("cpu", "a100", "mixed")  # origin, serving, serving
PORT = 8000
ROUNDS = 6


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
        self.last_apply_s = 0.0

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

    def apply(self, role: str, plan: EndpointsPlan, *, policy: TenantPolicy | None = None) -> ApplyResult:
        cluster = self.fleet.clusters[role]
        checked = {} if policy is None else {"policy": policy}

        async def run() -> ApplyResult:
            kube = await connect_kube(
                Member(name=cluster.name, context=cluster.context), kubeconfig=self.fleet.kubeconfig
            )
            try:
                # As the applier's service does: transient apiserver errors (e.g. 429 while a new CRD's storage
                # initialises) are retried in place.
                for _ in range(40):
                    try:
                        started = time.monotonic()
                        result = await execute_endpoints(kube, plan, **checked)
                        self.last_apply_s = time.monotonic() - started
                        return result
                    except TransientKubeError:
                        await asyncio.sleep(0.5)
                return await execute_endpoints(kube, plan, **checked)
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


def test_an_endpoints_plan_the_tenant_policy_refuses_touches_nothing(fleet: Fleet, namespace: str) -> None:
    """As for workload plans: a Service or EndpointSlice into a reserved namespace (kube-system, the operator's
    own), for an origin no rule admits, a serving cluster the rules do not reach, or an origin plan sent to
    another cluster is refused before any write; the allowed path of the same policy applies."""
    name = f"chat-{namespace[-8:]}"
    a100 = fleet.clusters["a100"].name
    policy = TenantPolicy(
        rules=(
            PlacementRule(origins=("nobody",)),
            PlacementRule(namespaces=(namespace,), clusters=(fleet.clusters["mixed"].name,)),
        )
    )
    address = ServingEndpoints(cluster=a100, mode="flat", addresses=["10.244.0.10"], port=PORT)
    ours = f"llm.example.com/endpoints-of={name}"

    def written(role: str) -> str:
        out = fleet.kubectl(role, "get", "services,endpointslices,networkpolicies", "-A", "-l", ours, "-o", "name")
        return out.stdout.strip()

    cases: list[tuple[str, Origin, str, dict[str, Any], TenantPolicy, str]] = [
        ("cpu", Origin(fleet, "kube-system", name), "origin", {"serving": [address]}, policy, "is reserved"),
        (
            "cpu",
            Origin(fleet, namespace, name),
            "origin",
            {"serving": [address]},
            policy.model_copy(update={"operator_namespace": namespace}),
            f"namespace {namespace} is reserved",
        ),
        (
            "cpu",
            Origin(fleet, namespace, name),
            "origin",
            {"serving": [address]},
            TenantPolicy(rules=(PlacementRule(origins=("nobody",)),)),
            f"no rule lets namespace {namespace} of cluster {fleet.clusters['cpu'].name} place workloads anywhere",
        ),
        (
            "a100",
            Origin(fleet, namespace, name),
            "serving",
            {"admit_cidrs": ["10.246.0.0/16"]},
            policy,
            f"place workloads in cluster {a100}",
        ),
        ("a100", Origin(fleet, namespace, name), "origin", {"serving": [address]}, policy, "cannot write in"),
        ("a100", Origin(fleet, "kube-system", name), "serving", {"admit_cidrs": ["10.246.0.0/16"]}, policy, "reserved"),
    ]
    try:
        for where, origin, role, fields, refusing, reason in cases:
            result = origin.apply(where, origin.plan(where, role, **fields), policy=refusing)
            assert result.outcome == "Failed", (where, role, result)
            assert result.message.startswith("refused by this cluster's tenant policy:"), result.message
            assert reason in result.message, result.message
            assert written(where) == ""
        origin = Origin(fleet, namespace, name)
        allowed = origin.apply("cpu", origin.plan("cpu", "origin", serving=[address]), policy=policy)
        assert allowed.outcome == "Applied", allowed.message
        serving = origin.apply("mixed", origin.plan("mixed", "serving", admit_cidrs=["10.246.0.0/16"]), policy=policy)
        assert serving.outcome == "Applied", serving.message
        assert written("cpu") and written("mixed")
    finally:
        for role in ("cpu", "a100"):  # should a refusal have failed to refuse, leave kube-system as it was
            fleet.kubectl(
                role, "delete", "services,endpointslices,networkpolicies", "-n", "kube-system", "-l", ours, check=False
            )


def test_with_the_mcs_api_the_serving_cluster_exports_and_the_origin_names_the_clusterset_service(
    fleet: Fleet, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    origin = Origin(fleet, namespace)
    install_mcs_crds(fleet, "a100")

    # Without the MCS API an export cannot be made, and the plan says so. The fleet's CRDs are shared and stay;
    # a cluster without them is one that serves no such API version: the apiserver answers 404, as it does
    # where the CRDs were never installed.
    absent = dataclasses.replace(RESOURCES["ServiceExport"], group="multicluster.absent.llm-operator.test")
    with monkeypatch.context() as patched:
        patched.setattr(endpoints_module, "SERVICE_EXPORT", absent)
        failed = origin.apply("a100", origin.plan("a100", "serving", mode="mcs"))
    assert failed.outcome == "Failed" and "MCS API" in failed.message
    assert fleet.kubectl("a100", "get", "serviceexports", "-n", namespace, "-o", "name").stdout.strip() == ""

    result = origin.apply("a100", origin.plan("a100", "serving", mode="mcs"))
    assert result.outcome == "Applied", result.message
    export = json.loads(fleet.kubectl("a100", "get", "serviceexports", "chat", "-n", namespace, "-o", "json").stdout)
    assert export["metadata"]["labels"]["llm.example.com/endpoints-of"] == "chat"

    mcs = ServingEndpoints(cluster=fleet.clusters["a100"].name, mode="mcs", port=PORT)
    assert origin.apply("cpu", origin.plan("cpu", "origin", serving=[mcs])).outcome == "Applied"
    service = json.loads(fleet.kubectl("cpu", "get", "service", "chat", "-n", namespace, "-o", "json").stdout)
    assert service["spec"]["type"] == "ExternalName"
    assert service["spec"]["externalName"] == f"chat.{namespace}.svc.clusterset.local"


class Stream:
    """A continuous request stream through the origin's Service: each request reads the Service's EndpointSlices
    afresh from the origin's apiserver (as a kube-proxy watching them would route it) and goes to the next
    endpoint in turn."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.results: list[tuple[float, str | None]] = []  # (monotonic time, cluster that answered or None)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        cluster = self.origin.fleet.clusters["cpu"]
        kube = await connect_kube(
            Member(name=cluster.name, context=cluster.context), kubeconfig=self.origin.fleet.kubeconfig
        )
        selector = f"{LABEL_SERVICE_NAME}={self.origin.ref.name}"
        turn = 0
        try:
            async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=2)) as http:
                while not self.stop.is_set():
                    at = time.monotonic()
                    answered: str | None = None
                    try:
                        slices, _ = await kube.list(
                            RESOURCES["EndpointSlice"], namespace=self.origin.namespace, label_selector=selector
                        )
                        targets = resolve(slices)
                        address, port = targets[turn % len(targets)]
                        turn += 1
                        url = f"http://{address}:{port}/v1/completions"
                        async with http.post(url, json={"prompt": "x"}) as r:
                            if r.status == 200:
                                answered = r.headers[SERVED_BY_HEADER].split("/", 1)[0]
                    except (OSError, IndexError, KeyError, aiohttp.ClientError, TimeoutError, KubeError):
                        await asyncio.sleep(0.01)
                    self.results.append((at, answered))
        finally:
            await kube.close()

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def wait_answers(self, fleet: Fleet, cluster: str, *, after: float, count: int) -> None:
        """Wait until ``count`` requests sent after ``after`` were answered by ``cluster``."""

        def enough() -> bool | None:
            return True if sum(1 for t, ok in list(self.results) if t > after and ok == cluster) >= count else None

        fleet.poll_until(enough, timeout=TIMEOUT_S, what=f"{count} requests answered by {cluster}")

    def failed_window(self, since: float) -> float:
        """Seconds from ``since`` to the first success after the last failure after it (0 if none failed)."""
        after = [(t, ok) for t, ok in self.results if t >= since]
        failures = [t for t, ok in after if ok is None]
        if not failures:
            return 0.0
        recovered = next((t for t, ok in after if ok is not None and t > failures[-1]), after[-1][0])
        return recovered - since


def test_when_the_serving_cluster_is_lost_requests_move_to_the_new_cluster_through_the_same_service(
    fleet: Fleet, namespace: str, emulator: StartEmulator
) -> None:
    """The applier's share of a failover, measured: the serving cluster's replicas stop answering (its loss is
    detected at that instant here; the planner's detection time adds to it), the endpoints the planner would
    issue (``follow`` with the lost cluster unhealthy) are applied, and a continuous stream of requests through the
    origin's Service moves to the new cluster."""
    origin = Origin(fleet, namespace)
    emu = emulator(namespaces=[namespace], clusters=["a100", "mixed"])
    a100 = _run_replicas(fleet, "a100", origin.origin, namespace, 1)
    mixed = _run_replicas(fleet, "mixed", origin.origin, namespace, 1)
    emu.wait_for_replicas(lambda rs: len(rs) == 2, timeout=TIMEOUT_S, what="both replicas served")
    names = {role: fleet.clusters[role].name for role in ("a100", "mixed")}
    serving = follow([], [a100], origin=origin.origin)
    assert origin.apply("cpu", origin.plan("cpu", "origin", serving=serving)).outcome == "Applied"
    applied_s: list[float] = []
    first_s: list[float] = []
    windows: list[float] = []
    lost_role, new_role = "a100", "mixed"
    replicas = {"a100": a100, "mixed": mixed}
    for _ in range(ROUNDS):
        with Stream(origin) as stream:
            stream.wait_answers(fleet, names[lost_role], after=0.0, count=1)
            lost_at = time.monotonic()
            for pod in [r for r in emu.replicas() if r["cluster"] == names[lost_role]]:
                emu.set_behaviour(pod["served_by"], "unavailable")
            lost = dataclasses.replace(replicas[lost_role], healthy=False)
            serving = follow(serving, [lost, replicas[new_role]], origin=origin.origin)
            assert [s.cluster for s in serving] == [names[new_role]]
            assert origin.apply("cpu", origin.plan("cpu", "origin", serving=serving)).outcome == "Applied"
            applied_at = time.monotonic()
            stream.wait_answers(fleet, names[new_role], after=applied_at, count=5)
        after = [ok for t, ok in stream.results if t > applied_at]
        assert after and set(after) <= {names[new_role], None}
        applied_s.append(origin.last_apply_s)
        first_s.append(next(t for t, ok in stream.results if t > lost_at and ok == names[new_role]) - lost_at)
        windows.append(stream.failed_window(lost_at))
        for pod in [r for r in emu.replicas() if r["cluster"] == names[lost_role]]:
            emu.set_behaviour(pod["served_by"], "ok")
        lost_role, new_role = new_role, lost_role

    def figures(values: list[float]) -> str:
        ordered = sorted(values)
        return f"p50 {ordered[len(ordered) // 2]:.2f}s, max {ordered[-1]:.2f}s"

    print(
        f"\nfailover through the origin's Service over {ROUNDS} rounds (loss detected at once): "
        f"endpoints plan applied in {figures(applied_s)}; first request answered by the new cluster "
        f"{figures(first_s)} after the loss; longest window of failed requests {figures(windows)}"
    )
    # The window is the applier's apply plus the client's next resolution: seconds at most on this machine.
    assert max(windows) < 10


def test_an_exposed_serving_cluster_is_reached_through_its_load_balancer(
    fleet: Fleet, namespace: str, emulator: StartEmulator
) -> None:
    """``exposed``: the serving cluster's Service is a LoadBalancer; the origin's slice points at its ingress
    address. kwok has no cloud controller: the test plays it, writing the ingress (an address the pod network
    serves) into the Service's status, and the emulator answers there as the load balancer would."""
    origin = Origin(fleet, namespace)
    emu = emulator(namespaces=[namespace], clusters=["a100"])
    a100 = _run_replicas(fleet, "a100", origin.origin, namespace, 2)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "chat", "namespace": namespace},
        "spec": {
            "type": "LoadBalancer",
            "selector": {LABEL_DEPLOYMENT: "chat", LABEL_ORIGIN: origin.origin},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    fleet.kubectl("a100", "apply", "-f", "-", input=json.dumps(service))
    ingress = load_balancer_ip(fleet.specs["a100"], 1 + uuid.uuid4().int % 250)
    status = {"status": {"loadBalancer": {"ingress": [{"ip": ingress}]}}}
    fleet.kubectl(
        "a100",
        "patch",
        "service",
        "chat",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    emu.wait_for_replicas(lambda rs: len(rs) == 2, timeout=TIMEOUT_S, what="a100's replicas served")

    exposed = dataclasses.replace(a100, network=ClusterNetwork(mode="exposed"), exposed=(ingress,), exposed_port=80)
    serving = follow([], [exposed], origin=origin.origin)
    assert serving == [
        ServingEndpoints(cluster=fleet.clusters["a100"].name, mode="exposed", addresses=[ingress], port=80)
    ]
    assert origin.apply("cpu", origin.plan("cpu", "origin", serving=serving)).outcome == "Applied"
    assert origin.targets() == [(ingress, 80)]

    def through_the_load_balancer() -> set[str] | None:
        served = set()
        for _ in range(4):
            try:
                code, headers, _ = post_json(f"http://{ingress}:80/v1/completions", {"prompt": "hi"}, timeout=5)
            except OSError:
                return None  # the emulator has not bound the frontend yet
            if code != 200:
                return None
            served.add(headers[SERVED_BY_HEADER])
        return served

    served = fleet.poll_until(through_the_load_balancer, timeout=TIMEOUT_S, what="the load balancer to answer")
    assert len(served) == 2 and all(s.startswith(fleet.clusters["a100"].name + "/") for s in served)
