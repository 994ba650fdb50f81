"""The applier against real apiservers: hand-built plans go straight into `applier.apply.execute_workload` and
`applier.status.execute_status` (no planner, no NATS), and what lands in the cluster is read back with kubectl.

Covers: every managed kind is accepted by the apiserver (and pods pass the `restricted` Pod Security level and
get scheduled onto the planned GPU product); hand edits are reverted; duplicate and stale plans are skipped;
pruning removes only what the plan dropped and only this deployment's objects; the workload stays in its
namespace (created when missing); status, finalizer and Events on the LLMDeployment; the RBAC rules of
docs/rbac.md are enough; the applier service (through JetStream) runs each deployment's plans in order across
its workers; and, with the whole operator running, the LLMDeployment shows Placed/Applied Events.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import anyio
import pytest
import yaml
from kubernetes_asyncio import config as k8s_config
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from api.conditions import Condition
from api.events import ApplyReported, decode_event
from api.models import ClusterPlacementStatus, LLMDeploymentSpec, LLMDeploymentStatus, LLMModelSpec
from api.network import ServingEndpoints
from api.plans import DeploymentRef, EndpointsPlan, KubeEvent, ScalePlan, StatusPlan, WorkloadPlan, plan_id
from api.policy import PlacementRule, TenantPolicy
from api.signing import PlanSigner, generate_private_key, load_signer, trusted_keys
from applier.apply import FIELD_MANAGER, EpochGuard, execute_workload
from applier.endpoints import execute_endpoints
from applier.render import MANAGED_KINDS
from applier.scale import execute_scale
from applier.service import ApplierSettings, run_applier
from applier.status import execute_status
from bus.consume import SequenceReader
from bus.publish import MSG_ID, REASON
from kubeapi import RESOURCES, Kube, KubeError
from llm_operator.runtime import Member, connect_kube
from tests.fixtures.fleet import install_mcs_crds
from tests.fixtures.operator import Kubectl, RunningOperator, eventually, signing_key
from tests.fixtures.services import Hub, repo_root

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]

A100_80GB = "NVIDIA-A100-SXM4-80GB"
SEED_MODEL = """
modelName: "GPT-Small"
image: "your-registry/gpt-small:v1"
resources:
  cpu: "2"
  memory: "4Gi"
"""
SEED_DEPLOYMENT = """
modelRef: "gpt-small"
replicas: 2
port: 8080
"""
GPU_MODEL = """
modelName: meta-llama/Llama-3.1-70B-Instruct
image: vllm/vllm-openai:v0.6.3
args: ["--model", "/models", "--tensor-parallel-size", "4"]
resources:
  cpu: "16"
  memory: 160Gi
  sharedMemory: 16Gi
  gpu:
    count: 4
    types: [NVIDIA-A100-SXM4-80GB]
    minMemory: 80Gi
source:
  uri: hf://meta-llama/Llama-3.1-70B-Instruct@main
  secretRef: hf-token
storage:
  size: 200Gi
startup:
  timeoutSeconds: 1800
env:
  - name: HF_TOKEN
    secretKeyRef: {name: hf-token, key: token}
"""
GPU_DEPLOYMENT = """
modelRef: llama-70b
replicas: 2
port: 8000
serviceType: ClusterIP
networkPolicy:
  allowedSources:
    - namespaceSelector: {matchLabels: {team: ml}}
      podSelector: {matchLabels: {app: chat-ui}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
autoscaling:
  minReplicas: 1
  maxReplicas: 4
  target:
    timeToFirstTokenP90Ms: 500
    queueDepth: 8
"""

KubeOpener = Callable[..., Awaitable[Kube]]
CREATING = TenantPolicy(rules=(PlacementRule(create_namespaces=True),))
"""A policy that lets the applier create missing namespaces (the default does not)."""


# ----------------------------------------------------------------------------------------------------- helpers


def plan_for(
    kubectl: Kubectl,
    namespace: str,
    name: str,
    *,
    role: str = "cpu",
    origin_role: str | None = None,
    model: str | None = SEED_MODEL,
    spec: str | None = SEED_DEPLOYMENT,
    replicas: int | None = None,
    epoch: int = 1,
    sequence: int = 1,
    uid: str = "00000000-0000-4000-8000-000000000001",
    gpu_type: str | None = None,
    spec_changes: dict[str, Any] | None = None,
    model_changes: dict[str, Any] | None = None,
) -> WorkloadPlan:
    """A workload plan as the planner would issue it, for cluster `role` (the origin unless told otherwise).
    `model=None` / `spec=None` gives a removal plan."""
    cluster = kubectl.fleet.clusters[role].name
    origin = kubectl.fleet.clusters[origin_role or role].name
    ref = DeploymentRef(origin_cluster=origin, namespace=namespace, name=name, uid=uid)
    model_spec = spec_value = None
    if model is not None and spec is not None:
        model_spec = LLMModelSpec.model_validate({**yaml.safe_load(model), **(model_changes or {})})
        spec_value = LLMDeploymentSpec.model_validate({**yaml.safe_load(spec), **(spec_changes or {})})
    return WorkloadPlan(
        plan_id=plan_id(ref, cluster, "Workload", epoch, sequence),
        epoch=epoch,
        sequence=sequence,
        cluster=cluster,
        deployment=ref,
        generation=1,
        issued_at=datetime.now(UTC),
        replicas=(spec_value.replicas if spec_value else 0) if replicas is None else replicas,
        model_name=spec_value.model_ref if spec_value else "",
        model=model_spec,
        spec=spec_value,
        is_origin=cluster == origin,
        gpu_type=gpu_type,
    )


SIGNER = signing_key()[1]
TRUSTED = trusted_keys([SIGNER.public_key])


async def publish_signed(
    js: JetStreamContext,
    hub: Hub,
    plan: WorkloadPlan | StatusPlan | ScalePlan,
    *,
    signer: PlanSigner | None = SIGNER,
    body: bytes | None = None,
    signed_body: bytes | None = None,
    msg_id: str | None = None,
) -> None:
    """Publish a plan on its cluster's subject as the planner's relay does: `body` (the plan's JSON unless given),
    with the signature `signer` makes over `signed_body` (the body unless given; None: unsigned)."""
    subject = hub.subjects.plans(plan.cluster)
    data = body if body is not None else plan.model_dump_json().encode()
    headers = {MSG_ID: msg_id or plan.plan_id}
    if signer is not None:
        headers.update(signer.headers(subject, signed_body if signed_body is not None else data))
    await js.publish(subject, data, headers=headers)


def next_plan(plan: WorkloadPlan, **changes: Any) -> WorkloadPlan:
    """The same intent (or `changes`), issued again with the next sequence."""
    sequence = changes.pop("sequence", plan.sequence + 1)
    epoch = changes.pop("epoch", plan.epoch)
    return plan.model_copy(
        update={
            "sequence": sequence,
            "epoch": epoch,
            "plan_id": plan_id(plan.deployment, plan.cluster, "Workload", epoch, sequence),
            **changes,
        }
    )


@pytest.fixture
async def open_kube(kubectl: Kubectl) -> AsyncIterator[KubeOpener]:
    """Open a `Kube` for a fleet cluster (closed after the test), optionally impersonating a user."""
    opened: list[Kube] = []
    fleet = kubectl.fleet

    async def open_(role: str, *, as_user: str | None = None) -> Kube:
        cluster = fleet.clusters[role]
        if as_user is None:
            kube = await connect_kube(Member(name=cluster.name, context=cluster.context), kubeconfig=fleet.kubeconfig)
        else:
            api = await k8s_config.new_client_from_config(config_file=str(fleet.kubeconfig), context=cluster.context)
            api.set_default_header("Impersonate-User", as_user)
            kube = Kube(api, name=cluster.name)
        opened.append(kube)
        return kube

    yield open_
    for kube in opened:
        await kube.close()


async def objects_of(kubectl: Kubectl, role: str, name: str, *, namespace: str | None) -> set[str]:
    """`Kind/namespace/name` of every managed object carrying this deployment's label, in `namespace` (None: in
    every namespace). Objects already being deleted do not count (a claim stays Terminating, with the
    pvc-protection finalizer, until the pods that mount it are gone)."""
    kinds = "deployments.apps,services,networkpolicies,poddisruptionbudgets,horizontalpodautoscalers,pvc"
    where = ["-n", namespace] if namespace else ["-A"]
    items = (await kubectl.json(role, "get", kinds, *where, "-l", f"llm.example.com/deployment={name}"))["items"]
    return {
        f"{i['kind']}/{i['metadata']['namespace']}/{i['metadata']['name']}"
        for i in items
        if not i["metadata"].get("deletionTimestamp")
    }


async def get(kubectl: Kubectl, role: str, kind: str, name: str, namespace: str) -> dict[str, Any]:
    obj = await kubectl.get(role, kind, name, "-n", namespace, "--show-managed-fields")
    assert obj is not None, f"{kind} {namespace}/{name} does not exist"
    result: dict[str, Any] = obj
    return result


async def delete_namespace(kubectl: Kubectl, role: str, name: str) -> None:
    await kubectl(role, "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


# ---------------------------------------------------------------------------------------- (a) every kind


async def test_a_full_plan_applies_every_kind_and_its_pods_run_on_the_planned_gpus(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role, name = "a100", "llama"
    kube = await open_kube(role)
    # Pods must pass the strictest Pod Security level, enforced by the apiserver's admission.
    await kubectl(role, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # kwok has no storage provisioner: a pre-bound volume lets the weights claim bind, so the pods can run.
    pv = f"weights-{namespace}"
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv},
        "spec": {
            "capacity": {"storage": "200Gi"},
            "accessModes": ["ReadWriteMany"],
            "hostPath": {"path": f"/tmp/{pv}"},
            "claimRef": {"namespace": namespace, "name": f"{name}-weights"},
            "persistentVolumeReclaimPolicy": "Delete",
        },
    }
    await kubectl(role, "apply", "-f", "-", input=json.dumps(volume))
    try:
        plan = plan_for(kubectl, namespace, name, role=role, model=GPU_MODEL, spec=GPU_DEPLOYMENT, gpu_type=A100_80GB)
        result = await execute_workload(kube, plan, EpochGuard())

        assert result.outcome == "Applied", result.message
        # The Deployment carries the record of the plan, so it is written last.
        assert result.objects == [
            f"PersistentVolumeClaim/{name}-weights",
            f"Service/{name}",
            f"NetworkPolicy/{name}",
            f"PodDisruptionBudget/{name}",
            f"Deployment/{name}",
        ]
        assert await objects_of(kubectl, role, name, namespace=namespace) == {
            f"PersistentVolumeClaim/{namespace}/{name}-weights",
            f"Service/{namespace}/{name}",
            f"NetworkPolicy/{namespace}/{name}",
            f"PodDisruptionBudget/{namespace}/{name}",
            f"Deployment/{namespace}/{name}",
        }

        deployment = await get(kubectl, role, "deployment", name, namespace)
        assert deployment["metadata"]["annotations"]["llm.example.com/plan-id"] == plan.plan_id
        assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llm-operator"
        pod = deployment["spec"]["template"]["spec"]
        assert pod["initContainers"][0]["name"] == "load-weights"
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert {m["manager"] for m in deployment["metadata"]["managedFields"]} >= {FIELD_MANAGER}

        # No HorizontalPodAutoscaler: the planner's fleet autoscaler scales the LLMDeployment through /scale.
        assert await kubectl.get(role, "hpa", name, "-n", namespace) is None
        policy = await get(kubectl, role, "networkpolicy", name, namespace)
        assert policy["spec"]["ingress"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}]
        assert policy["spec"]["ingress"][0]["from"][1]["ipBlock"] == {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}
        budget = await get(kubectl, role, "pdb", name, namespace)
        assert budget["spec"]["maxUnavailable"] == 1
        service = await get(kubectl, role, "service", name, namespace)
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]

        async def running() -> list[dict[str, Any]] | None:
            pods = await kubectl.json(role, "get", "pods", "-n", namespace, "-l", "llm.example.com/deployment=llama")
            items: list[dict[str, Any]] = pods["items"]
            if len(items) == 2 and all(p["status"].get("phase") == "Running" for p in items):
                return items
            return None

        pods = await eventually(running, timeout=60, what="both replicas Running on A100 nodes")
        assert all(p["spec"]["nodeName"].startswith("a100-gpu-") for p in pods)
        claim = await get(kubectl, role, "pvc", f"{name}-weights", namespace)
        assert claim["status"]["phase"] == "Bound"

        # The same intent issued again changes only the plan record: no new rollout, the same pods.
        again = await execute_workload(kube, next_plan(plan), EpochGuard())
        assert again.outcome == "Applied", again.message
        await anyio.sleep(1)
        after = await running()
        assert after is not None
        assert {p["metadata"]["uid"] for p in after} == {p["metadata"]["uid"] for p in pods}
        sets = await kubectl.json(role, "get", "replicasets", "-n", namespace, "-l", "llm.example.com/deployment=llama")
        assert len(sets["items"]) == 1
    finally:
        await kubectl(role, "delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


async def test_restricted_pods_are_admitted_and_cpu_models_stay_off_gpu_nodes(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role = "a100"  # two GPU nodes and one CPU node
    await kubectl(role, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    result = await execute_workload(
        await open_kube(role), plan_for(kubectl, namespace, "chat", role=role), EpochGuard()
    )
    assert result.outcome == "Applied", result.message

    async def running() -> list[dict[str, Any]] | None:
        pods = (await kubectl.json(role, "get", "pods", "-n", namespace))["items"]
        ok = len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    pods = await eventually(running, timeout=60, what="two Running pods admitted under Pod Security 'restricted'")
    # The GPU taint keeps CPU models on CPU nodes.
    assert {p["spec"]["nodeName"] for p in pods} == {"a100-cpu-0"}


EXAMPLES = sorted(p for p in (repo_root() / "examples").iterdir() if (p / "model.yaml").exists())


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
async def test_every_example_is_accepted_by_the_apiserver(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener, example: Any
) -> None:
    role = "a100"
    model = (example / "model.yaml").read_text()
    deployment = yaml.safe_load((example / "deployment.yaml").read_text())
    name = deployment["metadata"]["name"]
    plan = plan_for(
        kubectl,
        namespace,
        name,
        role=role,
        model=yaml.safe_dump(yaml.safe_load(model)["spec"]),
        spec=yaml.safe_dump(deployment["spec"]),
        gpu_type=A100_80GB if "gpu:" in model else None,
    )
    await kubectl(role, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")

    result = await execute_workload(await open_kube(role), plan, EpochGuard())

    assert result.outcome == "Applied", result.message
    assert len(await objects_of(kubectl, role, name, namespace=namespace)) == len(result.objects)


# -------------------------------------------------------------------------------- (b) hand edits, ordering


async def test_hand_edits_to_managed_fields_are_reverted_by_the_next_plan(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role, name = "cpu", "chat"
    kube = await open_kube(role)
    plan = plan_for(kubectl, namespace, name)
    assert (await execute_workload(kube, plan, EpochGuard())).outcome == "Applied"

    await kubectl(role, "scale", "deployment", name, "-n", namespace, "--replicas", "7")
    await kubectl(role, "set", "image", f"deployment/{name}", "model-server=evil/image:v2", "-n", namespace)
    await kubectl(role, "label", "deployment", name, "-n", namespace, "llm.example.com/deployment-")
    await kubectl(
        role,
        "patch",
        "deployment",
        name,
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/template/spec/containers/0/ports/0/containerPort","value":9999}]',
    )
    await kubectl(
        role,
        "patch",
        "service",
        name,
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/ports/0/port","value":9999}]',
    )
    await kubectl(role, "patch", "pdb", name, "-n", namespace, "--type=merge", "-p", '{"spec":{"maxUnavailable":2}}')
    edited = await get(kubectl, role, "deployment", name, namespace)
    assert edited["spec"]["replicas"] == 7
    assert edited["spec"]["template"]["spec"]["containers"][0]["image"] == "evil/image:v2"

    result = await execute_workload(kube, next_plan(plan), EpochGuard())

    assert result.outcome == "Applied", result.message
    deployment = await get(kubectl, role, "deployment", name, namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "your-registry/gpt-small:v1"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert deployment["metadata"]["labels"]["llm.example.com/deployment"] == name
    service = await get(kubectl, role, "service", name, namespace)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8080)]
    assert (await get(kubectl, role, "pdb", name, namespace))["spec"]["maxUnavailable"] == 1


async def test_duplicate_and_stale_plans_are_skipped(kubectl: Kubectl, namespace: str, open_kube: KubeOpener) -> None:
    role, name = "cpu", "chat"
    kube = await open_kube(role)
    guard = EpochGuard()
    current = plan_for(kubectl, namespace, name, epoch=2, sequence=5)
    assert (await execute_workload(kube, current, guard)).outcome == "Applied"

    redelivered = await execute_workload(kube, current, guard)
    older = await execute_workload(kube, next_plan(current, sequence=4, replicas=5), guard)
    old_epoch = await execute_workload(kube, next_plan(current, epoch=1, sequence=9, replicas=5), guard)
    # After a restart (a fresh guard) the record on the Deployment still says epoch 2 was applied.
    after_restart = await execute_workload(kube, next_plan(current, epoch=1, sequence=9, replicas=5), EpochGuard())

    assert redelivered.outcome == "Duplicate"
    assert older.outcome == "Stale"
    assert old_epoch.outcome == "Stale"
    assert after_restart.outcome == "Stale"
    assert (await get(kubectl, role, "deployment", name, namespace))["spec"]["replicas"] == 2

    newer = await execute_workload(kube, next_plan(current, epoch=3, sequence=6, replicas=3), guard)
    assert newer.outcome == "Applied", newer.message
    assert (await get(kubectl, role, "deployment", name, namespace))["spec"]["replicas"] == 3

    # A removal deletes the record; an older plan arriving afterwards must not bring the workload back.
    removal = next_plan(current, epoch=3, sequence=7, model=None, spec=None, replicas=0, model_name="")
    assert (await execute_workload(kube, removal, guard)).outcome == "Deleted"
    late = await execute_workload(kube, next_plan(current, epoch=3, sequence=6, replicas=3), guard)
    assert late.outcome == "Stale"
    assert await objects_of(kubectl, role, name, namespace=namespace) == set()


async def test_a_recreated_llm_deployment_is_not_compared_with_the_old_ones_record(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    kube = await open_kube("cpu")
    old = plan_for(kubectl, namespace, "chat", uid="00000000-0000-4000-8000-0000000000aa", sequence=9)
    assert (await execute_workload(kube, old, EpochGuard())).outcome == "Applied"
    new = plan_for(kubectl, namespace, "chat", uid="00000000-0000-4000-8000-0000000000bb", sequence=1, replicas=1)

    result = await execute_workload(kube, new, EpochGuard())

    assert result.outcome == "Applied", result.message
    assert (await get(kubectl, "cpu", "deployment", "chat", namespace))["spec"]["replicas"] == 1


# ------------------------------------------------------------------------------------------------ (c) prune


async def test_prune_removes_what_the_plan_no_longer_holds(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role, name = "cpu", "chat"
    kube = await open_kube(role)
    plan = plan_for(kubectl, namespace, name)
    assert (await execute_workload(kube, plan, EpochGuard())).outcome == "Applied"
    assert {o.split("/")[0] for o in await objects_of(kubectl, role, name, namespace=namespace)} == {
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Deployment",
    }

    smaller = next_plan(
        plan,
        replicas=1,
        spec=plan.spec.model_copy(
            update={"replicas": 1, "network_policy": plan.spec.network_policy.model_copy(update={"enabled": False})}
        )
        if plan.spec
        else None,
    )
    result = await execute_workload(kube, smaller, EpochGuard())

    assert result.outcome == "Applied", result.message
    assert f"NetworkPolicy/{name}" in result.message
    assert f"PodDisruptionBudget/{name}" in result.message
    assert await objects_of(kubectl, role, name, namespace=namespace) == {
        f"Service/{namespace}/{name}",
        f"Deployment/{namespace}/{name}",
    }


async def test_with_no_record_a_new_applier_prunes_what_it_finds_at_the_deployments_names(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    """The record (the Deployment) was deleted by hand and the applier restarted: what the next plan no longer
    holds is found at the names this deployment's objects have, and removed; someone else's object is kept."""
    role, name = "cpu", "chat"
    kube = await open_kube(role)
    plan = plan_for(kubectl, namespace, name)
    assert (await execute_workload(kube, plan, EpochGuard())).outcome == "Applied"
    await kubectl(role, "delete", "deployment", name, "-n", namespace, "--wait=true")
    # Someone else's autoscaler at the name ours would have (this plan renders none): not ours, so kept.
    await kubectl(role, "create", "deployment", "unrelated", "--image=nginx", "-n", namespace)
    await kubectl(role, "autoscale", "deployment", "unrelated", f"--name={name}", "--max=2", "-n", namespace)

    without_policy = next_plan(
        plan,
        spec=plan.spec.model_copy(
            update={"network_policy": plan.spec.network_policy.model_copy(update={"enabled": False})}
        )
        if plan.spec
        else None,
    )
    result = await execute_workload(kube, without_policy, EpochGuard())

    assert result.outcome == "Applied", result.message
    assert f"NetworkPolicy/{name}" in result.message
    assert await objects_of(kubectl, role, name, namespace=namespace) == {
        f"Service/{namespace}/{name}",
        f"PodDisruptionBudget/{namespace}/{name}",
        f"Deployment/{namespace}/{name}",
    }
    assert await kubectl.get(role, "horizontalpodautoscaler", name, "-n", namespace) is not None


@pytest.mark.parametrize("how", ["spec None", "replicas 0"])
async def test_removal_deletes_everything_of_that_deployment_and_nothing_else(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener, how: str
) -> None:
    role = "cpu"
    kube = await open_kube(role)
    weights = {"source": {"uri": "s3://models-bucket/gpt-small"}, "storage": {"size": "1Gi"}}
    plan = plan_for(kubectl, namespace, "chat", model_changes=weights)
    other = plan_for(kubectl, namespace, "chat-2", uid="00000000-0000-4000-8000-000000000002", model_changes=weights)
    # Same name, same namespace, another origin: another LLMDeployment, in another cluster's namespace.
    elsewhere = plan_for(kubectl, namespace, "chat", role="cpu", origin_role="mixed", replicas=1)
    for p in (plan, other):
        assert (await execute_workload(kube, p, EpochGuard())).outcome == "Applied"
    await kubectl(role, "create", "deployment", "unrelated", "--image=nginx", "-n", namespace)
    await kubectl(role, "label", "deployment", "unrelated", "-n", namespace, "app.kubernetes.io/managed-by=someone")
    before_other = await objects_of(kubectl, role, "chat-2", namespace=namespace)
    assert len(before_other) == 5

    removal = (
        next_plan(plan, model=None, spec=None, replicas=0, model_name="")
        if how == "spec None"
        else next_plan(plan, replicas=0)
    )
    result = await execute_workload(kube, removal, EpochGuard())

    assert result.outcome == "Deleted", result.message
    assert sorted(result.objects) == sorted(
        [
            "Deployment/chat",
            "Service/chat",
            "NetworkPolicy/chat",
            "PodDisruptionBudget/chat",
            "PersistentVolumeClaim/chat-weights",
        ]
    )

    async def all_gone() -> bool:
        # Deletion was asked for; the weights claim stays Terminating (pvc-protection) until the pods using it
        # are gone, which Kubernetes' garbage collector finishes on its own time.
        return await objects_of(kubectl, role, "chat", namespace=namespace) == set()

    await eventually(all_gone, timeout=30, what="every object of chat to be gone")
    assert await objects_of(kubectl, role, "chat-2", namespace=namespace) == before_other
    assert await kubectl.get(role, "deployment", "unrelated", "-n", namespace) is not None
    # Removing again (a redelivery) succeeds and removes nothing.
    assert (await execute_workload(kube, next_plan(removal), EpochGuard())).outcome == "Deleted"
    # The other origin's LLMDeployment of the same name can now use the name here.
    assert (await execute_workload(kube, elsewhere, EpochGuard())).outcome == "Applied"


async def test_objects_that_are_not_ours_are_never_overwritten(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role = "cpu"
    kube = await open_kube(role)
    await kubectl(role, "create", "deployment", "chat", "--image=nginx", "-n", namespace)
    mine = plan_for(kubectl, namespace, "chat")

    result = await execute_workload(kube, mine, EpochGuard())

    assert result.outcome == "Failed"
    assert f"Deployment/{namespace}/chat exists and is not managed by llm-operator" in result.message
    untouched = await get(kubectl, role, "deployment", "chat", namespace)
    assert untouched["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx"
    assert await kubectl.get(role, "service", "chat", "-n", namespace) is None  # nothing written at all

    # Another LLMDeployment of the same name (from another origin cluster) is refused the same way.
    ours = plan_for(kubectl, namespace, "chat-b")
    assert (await execute_workload(kube, ours, EpochGuard())).outcome == "Applied"
    theirs = plan_for(kubectl, namespace, "chat-b", origin_role="mixed", uid="00000000-0000-4000-8000-00000000000b")
    clash = await execute_workload(kube, theirs, EpochGuard())
    assert clash.outcome == "Failed"
    assert "belongs to another LLMDeployment" in clash.message
    kept = await get(kubectl, role, "deployment", "chat-b", namespace)
    assert kept["metadata"]["labels"]["llm.example.com/origin-cluster"] == kubectl.fleet.clusters[role].name


async def test_a_weights_claim_keeps_its_immutable_fields(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role = "cpu"
    kube = await open_kube(role)
    weights = {"source": {"uri": "s3://models-bucket/gpt-small"}, "storage": {"size": "1Gi"}}
    single = plan_for(kubectl, namespace, "chat", spec_changes={"replicas": 1}, model_changes=weights)
    assert (await execute_workload(kube, single, EpochGuard())).outcome == "Applied"
    assert (await get(kubectl, role, "pvc", "chat-weights", namespace))["spec"]["accessModes"] == ["ReadWriteOnce"]

    # Scaled to three: a new claim would be ReadWriteMany, but access modes cannot change on an existing one.
    scaled = next_plan(single, replicas=3, spec=single.spec.model_copy(update={"replicas": 3}) if single.spec else None)
    result = await execute_workload(kube, scaled, EpochGuard())

    assert result.outcome == "Applied", result.message
    assert (await get(kubectl, role, "pvc", "chat-weights", namespace))["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert (await get(kubectl, role, "deployment", "chat", namespace))["spec"]["replicas"] == 3


# -------------------------------------------------------------------------------------------- (d) namespaces


async def test_the_workload_goes_into_the_plans_namespace_created_only_where_the_policy_says(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    role, name = "mixed", f"chat-{namespace[-8:]}"  # unique: looked for in every namespace
    missing = f"{namespace}-new"
    assert await kubectl.get(role, "namespace", missing) is None
    kube = await open_kube(role)
    try:
        plan = plan_for(kubectl, missing, name, role=role, origin_role="cpu")
        # The default policy creates no namespace: the plan fails and writes nothing.
        refused = await execute_workload(kube, plan, EpochGuard())
        assert refused.outcome == "Failed"
        assert f"namespace {missing} does not exist" in refused.message
        assert await kubectl.get(role, "namespace", missing) is None
        assert await objects_of(kubectl, role, name, namespace=None) == set()

        result = await execute_workload(kube, plan, EpochGuard(), policy=CREATING)

        assert result.outcome == "Applied", result.message
        created = await kubectl.get(role, "namespace", missing)
        assert created is not None
        assert created["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llm-operator"
        assert created["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        everywhere = await objects_of(kubectl, role, name, namespace=None)
        assert everywhere == {
            f"{kind}/{missing}/{name}" for kind in ("Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget")
        }
        # Nothing in the other clusters either.
        for other in ("cpu", "a100"):
            assert await objects_of(kubectl, other, name, namespace=None) == set()

        # An existing namespace is used as it is, never relabelled.
        in_existing = plan_for(kubectl, namespace, name, role=role, origin_role="cpu")
        assert (await execute_workload(kube, in_existing, EpochGuard())).outcome == "Applied"
        existing = await get(kubectl, role, "namespace", namespace, namespace)
        assert "app.kubernetes.io/managed-by" not in (existing["metadata"].get("labels") or {})
    finally:
        await delete_namespace(kubectl, role, missing)


# ----------------------------------------------------------------------------------------------- (e) status


SEED_DIR = repo_root() / "examples" / "seed"


def status_plan(
    kubectl: Kubectl,
    llmd: dict[str, Any],
    *,
    sequence: int,
    finalizer: str = "ensure",
    uid: str | None = None,
    ready: str = "Available",
    events: list[KubeEvent] | None = None,
) -> StatusPlan:
    meta = llmd["metadata"]
    cluster = kubectl.fleet.clusters["cpu"].name
    ref = DeploymentRef(origin_cluster=cluster, namespace=meta["namespace"], name=meta["name"], uid=uid or meta["uid"])
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return StatusPlan(
        plan_id=plan_id(ref, cluster, "Status", 1, sequence),
        epoch=1,
        sequence=sequence,
        cluster=cluster,
        deployment=ref,
        generation=meta.get("generation", 1),
        issued_at=now,
        status=LLMDeploymentStatus(
            observed_generation=meta.get("generation", 1),
            conditions=[
                Condition(
                    type="Ready",
                    status="True",
                    reason=ready,
                    message="2/2 replicas ready",
                    observed_generation=meta.get("generation", 1),
                    last_transition_time=now,
                )
            ],
            replicas=2,
            ready_replicas=2,
            selector=f"llm.example.com/deployment={meta['name']},llm.example.com/origin-cluster={cluster}",
            placements=[ClusterPlacementStatus(cluster=cluster, replicas=2, ready_replicas=2)],
            clusters=cluster,
            ready=ready,
        ),
        finalizer=finalizer,  # type: ignore[arg-type]
        events=events if events is not None else [],
    )


async def our_events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    events = await kubectl.json(
        "cpu", "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    items: list[dict[str, Any]] = events["items"]
    return items


async def test_status_finalizer_and_events_on_the_llm_deployment(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    await status_flow(kubectl, namespace, await open_kube("cpu"))


async def status_flow(kubectl: Kubectl, namespace: str, kube: Kube) -> None:
    await kubectl("cpu", "apply", "-n", namespace, "-f", str(SEED_DIR / "model.yaml"))
    await kubectl("cpu", "apply", "-n", namespace, "-f", str(SEED_DIR / "deployment.yaml"))
    llmd = await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace)
    events = [
        KubeEvent(type="Normal", reason="Placed", message="2 replicas in t-cpu"),
        KubeEvent(type="Normal", reason="Applied", message="applied in cluster t-cpu"),
    ]
    first = status_plan(kubectl, llmd, sequence=1, events=events)

    result = await execute_status(kube, first, reporting_component="llm-operator-test")
    again = await execute_status(kube, first, reporting_component="llm-operator-test")

    assert result.outcome == "Applied", result.message
    assert again.outcome == "Applied", again.message
    current = await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace)
    assert current["status"]["readyReplicas"] == 2
    assert current["status"]["ready"] == "Available"
    assert [c["type"] for c in current["status"]["conditions"]] == ["Ready"]
    assert current["metadata"]["finalizers"] == ["llm.example.com/cleanup"]
    # Status went through the subresource, with our field manager.
    assert any(
        m["manager"] == FIELD_MANAGER and m.get("subresource") == "status" for m in current["metadata"]["managedFields"]
    )
    recorded = await our_events(kubectl, namespace, "chat-service")
    assert sorted(e["reason"] for e in recorded) == ["Applied", "Placed"]  # once, though executed twice
    assert all(e["involvedObject"]["uid"] == llmd["metadata"]["uid"] for e in recorded)
    assert all(e["count"] == 1 and e["source"]["component"] == "llm-operator-test" for e in recorded)

    # The fleet autoscaler's replica count goes through /scale (the documented RBAC allows it).
    scale = ScalePlan(
        plan_id=plan_id(first.deployment, first.cluster, "Scale", 1, 9),
        epoch=1,
        sequence=9,
        cluster=first.cluster,
        deployment=first.deployment,
        generation=first.generation,
        issued_at=first.issued_at,
        replicas=3,
    )
    assert (await execute_scale(kube, scale, reporting_component="t")).outcome == "Applied"
    assert (await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace))["spec"]["replicas"] == 3

    # A plan for another incarnation of the object writes nothing.
    other = status_plan(kubectl, llmd, sequence=2, uid=str(uuid.uuid4()), ready="Wrong")
    assert (await execute_status(kube, other, reporting_component="t")).outcome == "Stale"
    assert (await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace))["status"]["ready"] == "Available"

    # Deleting: the finalizer holds the object; an "ensure" plan neither writes status nor re-adds anything.
    await kubectl("cpu", "delete", "llmdeployment", "chat-service", "-n", namespace, "--wait=false")
    held = await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace)
    assert held["metadata"].get("deletionTimestamp")
    during = status_plan(kubectl, llmd, sequence=3, ready="Deleting")
    assert (await execute_status(kube, during, reporting_component="t")).outcome == "Applied"
    assert (await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace))["status"]["ready"] == "Available"

    release = status_plan(
        kubectl,
        llmd,
        sequence=4,
        finalizer="remove",
        ready="Deleting",
        events=[KubeEvent(type="Normal", reason="Cleaned", message="workloads removed")],
    )
    assert (await execute_status(kube, release, reporting_component="t")).outcome == "Applied"

    async def gone() -> bool:
        return await kubectl.get("cpu", "llmdeployment", "chat-service", "-n", namespace) is None

    await eventually(gone, timeout=20, what="the LLMDeployment to be deleted once the finalizer is released")
    late = status_plan(kubectl, llmd, sequence=5)
    assert (await execute_status(kube, late, reporting_component="t")).outcome == "Stale"
    assert "Cleaned" in {e["reason"] for e in await our_events(kubectl, namespace, "chat-service")}


async def test_a_finalizer_set_by_someone_else_is_released_too(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    kube = await open_kube("cpu")
    deployment = yaml.safe_load((SEED_DIR / "deployment.yaml").read_text())
    deployment["metadata"]["finalizers"] = ["llm.example.com/cleanup", "example.com/keep"]
    await kubectl("cpu", "apply", "-n", namespace, "-f", "-", input=json.dumps(deployment))
    llmd = await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace)
    await kubectl("cpu", "delete", "llmdeployment", "chat-service", "-n", namespace, "--wait=false")

    release = status_plan(kubectl, llmd, sequence=1, finalizer="remove", ready="Deleting")
    result = await execute_status(kube, release, reporting_component="t")

    assert result.outcome == "Applied", result.message
    held = await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace)
    assert held["metadata"]["finalizers"] == ["example.com/keep"]  # ours released, theirs kept


# --------------------------------------------------------------------------------------------------- RBAC


def reference_roles() -> list[dict[str, Any]]:
    """The ClusterRoles of docs/rbac.md (the YAML block between the rbac-reference markers)."""
    text = (repo_root() / "docs" / "rbac.md").read_text()
    block = re.search(r"<!-- rbac-reference: begin -->\s*```yaml\n(.*?)```\s*<!-- rbac-reference: end -->", text, re.S)
    assert block is not None, "docs/rbac.md lost its reference manifests"
    return [doc for doc in yaml.safe_load_all(block.group(1)) if doc]


def endpoints_plan(
    kubectl: Kubectl,
    namespace: str,
    role: Literal["origin", "serving"],
    *,
    sequence: int,
    where: str = "cpu",
    origin_role: str = "cpu",
    **fields: Any,
) -> EndpointsPlan:
    ref = DeploymentRef(
        origin_cluster=kubectl.fleet.clusters[origin_role].name, namespace=namespace, name="chat", uid=str(uuid.uuid4())
    )
    cluster = kubectl.fleet.clusters[where].name
    return EndpointsPlan(
        plan_id=plan_id(ref, cluster, "Endpoints", 1, sequence),
        epoch=1,
        sequence=sequence,
        cluster=cluster,
        deployment=ref,
        generation=1,
        issued_at=datetime.now(UTC),
        port=8000,
        role=role,
        **fields,
    )


async def test_the_documented_rbac_rules_are_enough(kubectl: Kubectl, namespace: str, open_kube: KubeOpener) -> None:
    role = "cpu"
    roles = reference_roles()
    assert [r["metadata"]["name"] for r in roles] == ["llm-operator-watcher", "llm-operator-applier"]
    # The applier's rules name exactly the kinds it manages (plus namespaces, its CR, and events).
    applier_resources = {res for rule in roles[1]["rules"] for res in rule["resources"]}
    plurals = {RESOURCES[kind].plural for kind in MANAGED_KINDS}
    assert applier_resources == plurals | {
        "endpointslices",  # endpoints plans (applier/endpoints.py)
        "serviceexports",
        "namespaces",
        "llmdeployments",
        "llmdeployments/status",
        "llmdeployments/scale",
        "llmmodels",  # model status plans (applier/status.py execute_model_status)
        "llmmodels/status",
        "events",
    }

    # The applier creates the missing namespace below: docs/rbac.md adds `create` on namespaces exactly when the
    # tenant policy creates namespaces (the chart does the same).
    roles[1]["rules"].append({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create"]})
    account = "llm-operator"
    await kubectl(role, "create", "serviceaccount", account, "-n", namespace)
    user = f"system:serviceaccount:{namespace}:{account}"
    names = []
    for cluster_role in roles:
        unique = f"{cluster_role['metadata']['name']}-{namespace}"
        names.append(unique)
        body = {**cluster_role, "metadata": {"name": unique}}
        await kubectl(role, "apply", "-f", "-", input=json.dumps(body))
        await kubectl(
            role,
            "create",
            "clusterrolebinding",
            unique,
            f"--clusterrole={unique}",
            f"--serviceaccount={namespace}:{account}",
        )
    missing = f"{namespace}-rbac"
    try:
        denied = await kubectl(role, "auth", "can-i", "delete", "namespaces", f"--as={user}", check=False)
        assert denied.strip().startswith("no")
        kube = await open_kube(role, as_user=user)
        with pytest.raises(KubeError) as refused:  # the account really is the restricted one
            await kube.list(RESOURCES["Job"], namespace=namespace)
        assert refused.value.status == 403

        # Watcher: list and watch everything it observes.
        for kind, where in (
            ("Node", None),
            ("Pod", None),
            ("LLMModel", namespace),
            ("LLMDeployment", namespace),
            ("Deployment", namespace),
        ):
            _, version = await kube.list(RESOURCES[kind], namespace=where)
            async for _ in kube.watch(RESOURCES[kind], resource_version=version, namespace=where, timeout_seconds=1):
                pass

        # Applier: every kind, in a namespace it must create, then a hand edit, a prune and a removal.
        weights = {"source": {"uri": "s3://models-bucket/gpt-small"}, "storage": {"size": "1Gi"}}
        spec = {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "target": {"queueDepth": 4}}}
        plan = plan_for(kubectl, missing, "chat", model_changes=weights, spec_changes=spec)
        result = await execute_workload(kube, plan, EpochGuard(), policy=CREATING)
        assert result.outcome == "Applied", result.message
        assert len(result.objects) == 5
        await kubectl(
            role, "patch", "service", "chat", "-n", missing, "--type=json",
            "-p", '[{"op":"replace","path":"/spec/ports/0/port","value":9999}]',
        )  # fmt: skip
        assert (await execute_workload(kube, next_plan(plan), EpochGuard())).outcome == "Applied"
        assert (
            await execute_workload(kube, next_plan(plan, sequence=3, replicas=1), EpochGuard())
        ).outcome == "Applied"
        removal = next_plan(plan, sequence=4, model=None, spec=None, replicas=0, model_name="")
        assert (await execute_workload(kube, removal, EpochGuard())).outcome == "Deleted"
        assert await objects_of(kubectl, role, "chat", namespace=missing) == set()

        # Status writer: status, finalizer, events, finalizer release.
        await status_flow(kubectl, namespace, kube)

        # Endpoints: the origin's Service and EndpointSlice, a serving cluster's NetworkPolicy and ServiceExport
        # (the MCS CRDs installed here, idempotently), then their removal.
        await anyio.to_thread.run_sync(install_mcs_crds, kubectl.fleet, role)
        remote = ServingEndpoints(
            cluster=kubectl.fleet.clusters["a100"].name, mode="flat", addresses=["10.244.0.10"], port=8000
        )
        origin_plan = endpoints_plan(kubectl, namespace, "origin", sequence=1, serving=[remote])
        serving_plan = endpoints_plan(
            kubectl, namespace, "serving", sequence=1, origin_role="a100", mode="mcs", admit_cidrs=["10.244.0.0/16"]
        )
        for endpoints in (origin_plan, serving_plan):
            result = await execute_endpoints(kube, endpoints)
            assert result.outcome == "Applied", result.message
            again = endpoints.model_copy(update={"sequence": 2, "plan_id": f"{endpoints.plan_id}-2"})
            assert (await execute_endpoints(kube, again)).outcome == "Applied"
            gone = endpoints.model_copy(update={"sequence": 3, "plan_id": f"{endpoints.plan_id}-3", "remove": True})
            assert (await execute_endpoints(kube, gone)).outcome == "Deleted"
        kinds = "services,endpointslices,networkpolicies,serviceexports"
        ours = "llm.example.com/endpoints-of=chat"
        assert await kubectl(role, "get", kinds, "-n", namespace, "-l", ours, "-o", "name") == ""
    finally:
        for unique in names:
            await kubectl(role, "delete", "clusterrolebinding,clusterrole", unique, "--ignore-not-found", check=False)
        await delete_namespace(kubectl, role, missing)


# ----------------------------------------------------------------------------------------- the whole operator


@pytest.mark.services
async def test_the_applier_service_keeps_each_deployments_plans_in_order_across_workers(
    kubectl: Kubectl,
    namespace: str,
    open_kube: KubeOpener,
    js: JetStreamContext,
    hub: Hub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through JetStream and `run_applier` with several workers: 12 deployments get 3 workload plans each
    (replicas 1, then 3, then 2), published interleaved. Every plan must run, in its deployment's order (an
    out-of-order one would be reported `Stale`), and be reported exactly once; the log line of each names its
    plan in the structured fields (what JSON logs carry)."""
    caplog.set_level(logging.INFO, logger="applier.service")
    cluster = kubectl.fleet.clusters["cpu"].name
    kube = await open_kube("cpu")
    chains = []
    for i in range(12):
        first = plan_for(kubectl, namespace, f"chat-{i}", uid=f"00000000-0000-4000-8000-{i:012d}", replicas=1)
        chains.append([first, next_plan(first, replicas=3), next_plan(first, sequence=3, replicas=2)])
    plans = [chain[step] for step in range(3) for chain in chains]
    for plan in plans:
        await publish_signed(js, hub, plan)

    settings = ApplierSettings(cluster=cluster, workers=4, trusted_keys=TRUSTED)
    reports, _ = await applied_reports(kube, js, hub, settings, done=reported(len(plans)), timeout=120, each_once=True)

    assert {p.plan_id for p in plans} == set(reports)
    # A plan still waiting when a newer one of its deployment arrives is reported Superseded, not run; the last
    # plan of every chain runs. An out-of-order plan would be reported Stale. (Duplicate: applied, but the answer
    # was lost on the way back, e.g. the apiserver restarting, and the retry found it done: the planner reads it
    # as Applied.)
    done = {"Applied", "Duplicate"}
    assert {r.outcome for r in reports.values()} <= done | {"Superseded"}, [
        (r.name, r.sequence, r.outcome, r.message)
        for r in reports.values()
        if r.outcome not in ("Applied", "Superseded")
    ]
    assert all(reports[chain[-1].plan_id].outcome == "Applied" for chain in chains)
    for i in range(12):
        assert (await get(kubectl, "cpu", "deployment", f"chat-{i}", namespace))["spec"]["replicas"] == 2
    logged = {
        getattr(r, "plan_id", None): (
            getattr(r, "cluster", None),
            getattr(r, "object", None),
            getattr(r, "epoch", None),
        )
        for r in caplog.records
        if r.name == "applier.service" and r.getMessage().startswith("plan ")
    }
    for plan in plans:
        assert logged.get(plan.plan_id) == (cluster, f"{namespace}/{plan.deployment.name}", plan.epoch), plan.plan_id


def _failing_webhook(name: str, namespace: str, deployment: str) -> dict[str, Any]:
    """An admission webhook nobody serves, for one deployment's objects only: the apiserver answers 500 to every
    write of them (a transient failure as the applier sees it), and to nothing else."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "stuck.h15b.example.com",
                "clientConfig": {"url": "https://127.0.0.1:1/never"},
                "rules": [
                    {
                        "operations": ["CREATE", "UPDATE"],
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "resources": ["*"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"llm.example.com/deployment": deployment}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 1,
            }
        ],
    }


@pytest.mark.services
async def test_a_plan_that_keeps_failing_is_reported_failed_and_never_holds_back_other_deployments(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener, js: JetStreamContext, hub: Hub
) -> None:
    """One deployment's writes are refused with 500 by the apiserver (a webhook nobody serves). Its plan is retried
    `max_attempts` times with backoff and then reported Failed with the reason; the other deployments' plans,
    published after it, are applied meanwhile — whatever lane or worker the stuck one would share with them."""
    cluster = kubectl.fleet.clusters["cpu"].name
    webhook = f"stuck-{namespace}"
    await kubectl("cpu", "apply", "-f", "-", input=json.dumps(_failing_webhook(webhook, namespace, "stuck")))
    kube = await open_kube("cpu")
    stuck = plan_for(kubectl, namespace, "stuck", uid="00000000-0000-4000-8000-0000000000aa", replicas=1)
    others = [
        plan_for(kubectl, namespace, f"fine-{i}", uid=f"00000000-0000-4000-8000-{i:012d}", replicas=1) for i in range(6)
    ]
    for plan in [stuck, *others]:
        await publish_signed(js, hub, plan)

    settings = ApplierSettings(
        cluster=cluster, workers=2, max_attempts=5, retry_seconds=1.0, max_retry_seconds=3.0, trusted_keys=TRUSTED
    )
    try:
        reports, arrived = await applied_reports(kube, js, hub, settings, done=reported(1 + len(others)), timeout=120)
    finally:
        await kubectl("cpu", "delete", "validatingwebhookconfiguration", webhook, "--ignore-not-found", check=False)

    failed_at, failed = arrived[stuck.plan_id], reports[stuck.plan_id]
    assert failed.outcome == "Failed"
    assert "gave up after 5 attempts" in failed.message and "webhook" in failed.message, failed.message
    for plan in others:
        at, report = arrived[plan.plan_id], reports[plan.plan_id]
        assert report.outcome == "Applied", report.message
        assert at < failed_at, f"{plan.deployment.name} waited for the stuck deployment"


async def applied_reports(
    kube: Kube,
    js: JetStreamContext,
    hub: Hub,
    settings: ApplierSettings,
    *,
    done: Callable[[dict[str, ApplyReported]], Awaitable[bool]],
    timeout: float,
    fetch_timeout: float = 1.0,
    each_once: bool = False,
) -> tuple[dict[str, ApplyReported], dict[str, float]]:
    """Run an applier on the plans already published until `done(reports)`: its ApplyReported events by plan id,
    and when each arrived (anyio's clock). `each_once`: a plan reported twice fails the test."""
    reports: dict[str, ApplyReported] = {}
    arrived: dict[str, float] = {}
    reader = SequenceReader(
        js, stream=hub.subjects.events_stream, subject=hub.subjects.events(settings.cluster), start_sequence=1
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_applier, kube=kube, js=js, subjects=hub.subjects, settings=settings))
            with anyio.fail_after(timeout):
                while not await done(reports):
                    for received in await reader.fetch(64, timeout=fetch_timeout):
                        event = decode_event(received.data)
                        assert isinstance(event, ApplyReported)
                        assert not (each_once and event.plan_id in reports), f"plan {event.plan_id} reported twice"
                        reports[event.plan_id] = event
                        arrived[event.plan_id] = anyio.current_time()
            tg.cancel_scope.cancel()
    finally:
        await reader.close()
    return reports, arrived


def reported(count: int) -> Callable[[dict[str, ApplyReported]], Awaitable[bool]]:
    async def enough(reports: dict[str, ApplyReported]) -> bool:
        return len(reports) >= count

    return enough


async def dead_letters(js: JetStreamContext, hub: Hub) -> list[tuple[str, bytes]]:
    """(reason, data) of every dead letter so far, in order."""
    stream = hub.subjects.dead_letters_stream
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        found.append(((msg.headers or {}).get(REASON, ""), msg.data or b""))
    return found


@pytest.mark.services
async def test_unsigned_forged_replayed_and_far_future_plans_are_dead_lettered_and_fence_out_nothing(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener, js: JetStreamContext, hub: Hub
) -> None:
    """Through JetStream and `run_applier`: between the planner's plans for one deployment (sequence 1, 2, 3),
    an attacker who can publish on the cluster's plan subject tries a removal unsigned, signed with its own key,
    and with a real signature taken from other bytes; a far-future epoch unsigned and (a broken hub) signed; and
    the planner's first plan again after its second. Each is dead-lettered with its reason, nothing of them
    reaches the cluster, and the planner's plans all apply, the last one included."""
    cluster = kubectl.fleet.clusters["cpu"].name
    kube = await open_kube("cpu")
    first = plan_for(kubectl, namespace, "chat", replicas=1)
    second = next_plan(first, replicas=2)
    third = next_plan(first, sequence=3, replicas=3)
    removal: dict[str, Any] = {"model": None, "spec": None, "replicas": 0, "model_name": ""}
    evil = next_plan(first, sequence=50, **removal)
    far = next_plan(first, epoch=10**18, sequence=1, **removal)
    attacker = load_signer(generate_private_key())

    await publish_signed(js, hub, first)
    await publish_signed(js, hub, evil, signer=None, msg_id="unsigned")
    await publish_signed(js, hub, evil, signer=attacker, msg_id="unknown-key")
    await publish_signed(js, hub, evil, signed_body=second.model_dump_json().encode(), msg_id="borrowed")
    await publish_signed(js, hub, far, signer=None, msg_id="far-unsigned")
    await publish_signed(js, hub, far, msg_id="far-signed")
    await publish_signed(js, hub, second)
    await publish_signed(js, hub, first, msg_id="replayed")
    await publish_signed(js, hub, third)

    def applied(outcome: str, kind: str) -> float:
        labels = {"cluster": cluster, "kind": kind, "outcome": outcome}
        return REGISTRY.get_sample_value("llmop_applier_plans_total", labels) or 0.0

    dead_before, applied_before = applied("DeadLetter", "unknown"), applied("Applied", "Workload")
    settings = ApplierSettings(cluster=cluster, workers=2, trusted_keys=TRUSTED)

    async def three_reports_and_six_dead_letters(reports: dict[str, ApplyReported]) -> bool:
        return len(reports) >= 3 and len(await dead_letters(js, hub)) >= 6

    reports, _ = await applied_reports(
        kube, js, hub, settings, done=three_reports_and_six_dead_letters, timeout=60, fetch_timeout=0.5
    )

    outcomes = {r.plan_id: r.outcome for r in reports.values()}
    assert set(outcomes) == {p.plan_id for p in (first, second, third)}
    # A plan still waiting in its deployment's lane when a newer one of its kind arrives is superseded (not run);
    # the newest always runs.
    assert outcomes[third.plan_id] == "Applied", outcomes
    assert {outcomes[first.plan_id], outcomes[second.plan_id]} <= {"Applied", "Superseded"}, outcomes
    reasons = [reason for reason, _ in await dead_letters(js, hub)]
    assert len(reasons) == 6, reasons
    assert reasons[0] == "unsigned: the plan carries no signature"
    assert reasons[1] == f"forged: signed with unknown key {attacker.kid!r}"
    assert reasons[2].startswith("forged: the signature does not match key")
    assert reasons[3] == "unsigned: the plan carries no signature"
    assert reasons[4].startswith(f"far-future epoch: plan epoch {10**18} is more than 10000 above the highest seen (1)")
    assert reasons[5].startswith("replayed: epoch 1 sequence 1 arrived after epoch 1 sequence 2")
    # Counted per cluster, as the hub's LLMOperatorApplierDeadLetters alert and dashboard read them.
    assert applied("DeadLetter", "unknown") - dead_before == 6
    assert applied("Applied", "Workload") - applied_before >= 1
    deployment = await get(kubectl, "cpu", "deployment", "chat", namespace)
    assert deployment["spec"]["replicas"] == 3
    annotations = deployment["metadata"]["annotations"]
    assert (annotations["llm.example.com/planner-epoch"], annotations["llm.example.com/plan-sequence"]) == ("1", "3")


@pytest.mark.services
async def test_superseded_status_plans_hand_their_events_to_the_plan_that_runs(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener, js: JetStreamContext, hub: Hub
) -> None:
    """The planner sends an Event once, with the status plan of the decision that caused it. Three status plans
    wait in one lane (published before the applier starts, fetched in one batch): the first is superseded (the
    second, too, unless it started before the third arrived), and the Events they carried (Placed, FailedOver)
    are still recorded, with the last one's (Applied)."""
    kube = await open_kube("cpu")
    cluster = kubectl.fleet.clusters["cpu"].name
    await kubectl("cpu", "apply", "-n", namespace, "-f", str(SEED_DIR / "model.yaml"))
    await kubectl("cpu", "apply", "-n", namespace, "-f", str(SEED_DIR / "deployment.yaml"))
    llmd = await get(kubectl, "cpu", "llmdeployment", "chat-service", namespace)
    said = {
        1: [KubeEvent(type="Normal", reason="Placed", message="2 replicas in t-cpu")],
        2: [KubeEvent(type="Warning", reason="FailedOver", message="cluster t-a100 is unhealthy")],
        3: [KubeEvent(type="Normal", reason="Applied", message="applied in cluster t-cpu")],
    }
    plans = [status_plan(kubectl, llmd, sequence=n, events=e) for n, e in said.items()]
    for plan in plans:
        await publish_signed(js, hub, plan)

    settings = ApplierSettings(cluster=cluster, workers=3, trusted_keys=TRUSTED)
    reports, _ = await applied_reports(kube, js, hub, settings, done=reported(3), timeout=60, fetch_timeout=0.5)

    outcomes = [reports[p.plan_id].outcome for p in plans]
    # The second may have started before the third arrived; the first waited behind the second in one batch.
    assert outcomes[0] == "Superseded" and outcomes[2] == "Applied", outcomes
    recorded = await our_events(kubectl, namespace, "chat-service")
    assert sorted(e["reason"] for e in recorded) == ["Applied", "FailedOver", "Placed"], recorded


async def test_a_plan_the_tenant_policy_refuses_touches_nothing(
    kubectl: Kubectl, namespace: str, open_kube: KubeOpener
) -> None:
    """Reserved namespaces, origins no rule admits and Secret references a rule does not allow are refused
    before any write; the allowed path of the same policy applies."""
    kube = await open_kube("mixed")
    name = f"chat-{namespace[-8:]}"
    policy = TenantPolicy(
        rules=(
            PlacementRule(origins=("nobody",)),
            PlacementRule(namespaces=(namespace,), clusters=(kubectl.fleet.clusters["mixed"].name,), references=False),
        )
    )
    token = {"env": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf-token", "key": "token"}}]}
    for target, changes, reason in (
        ("kube-system", None, "namespace kube-system is reserved"),
        (f"{namespace}-other", None, f"no rule lets namespace {namespace}-other of cluster"),
        (namespace, token, "may not use Secret hf-token"),
    ):
        plan = plan_for(kubectl, target, name, role="mixed", origin_role="cpu", model_changes=changes)
        result = await execute_workload(kube, plan, EpochGuard(), policy=policy)
        assert result.outcome == "Failed"
        assert result.message.startswith("refused by this cluster's tenant policy:")
        assert reason in result.message
        assert await objects_of(kubectl, "mixed", name, namespace=None) == set()
    allowed = plan_for(kubectl, namespace, name, role="mixed", origin_role="cpu")
    assert (await execute_workload(kube, allowed, EpochGuard(), policy=policy)).outcome == "Applied"


@pytest.mark.services
async def test_forged_plans_cannot_fence_out_the_real_planner(
    operator: RunningOperator, kubectl: Kubectl, js: JetStreamContext
) -> None:
    """With the whole operator running: a removal with epoch 10^18, unsigned or signed with another key, lands
    on the cluster's plan subject; the workload stays, and the planner's next plan (a scale change) applies."""
    ns, origin = operator.namespace, "cpu"
    model = yaml.safe_load((SEED_DIR / "model.yaml").read_text())
    deployment = yaml.safe_load((SEED_DIR / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = "chat-fenced"
    deployment["spec"]["replicas"] = 1
    await kubectl(origin, "apply", "-n", ns, "-f", "-", input=json.dumps(model))
    await kubectl(origin, "apply", "-n", ns, "-f", "-", input=json.dumps(deployment))

    async def replicas() -> int | None:
        found = await kubectl.get(origin, "deployment", "chat-fenced", "-n", ns)
        return found["spec"]["replicas"] if found else None

    async def running(count: int) -> bool:
        return await replicas() == count

    await eventually(partial(running, 1), timeout=60, what="the planner's first plan to apply")
    cr = await kubectl.json(origin, "get", "llmdeployment", "chat-fenced", "-n", ns)
    forged = plan_for(
        kubectl, ns, "chat-fenced", uid=cr["metadata"]["uid"], epoch=10**18, sequence=1, model=None, spec=None
    )
    attacker = load_signer(generate_private_key())
    await publish_signed(js, operator.hub, forged, signer=None, msg_id="forged-unsigned")
    await publish_signed(js, operator.hub, forged, signer=attacker, msg_id="forged-signed")

    async def refused() -> list[str] | None:
        reasons = [r for r, _ in await dead_letters(js, operator.hub)]
        return reasons if len(reasons) >= 2 else None

    reasons = await eventually(refused, timeout=30, what="both forged plans to be dead-lettered")
    assert reasons[0].startswith("unsigned")
    assert reasons[1].startswith("forged: signed with unknown key")
    assert await replicas() == 1
    await kubectl(
        origin, "patch", "llmdeployment", "chat-fenced", "-n", ns, "--type=merge", "-p", '{"spec":{"replicas":2}}'
    )
    await eventually(partial(running, 2), timeout=60, what="the planner's next plan to apply")


@pytest.mark.services
async def test_the_operator_records_placed_and_applied_events(operator: RunningOperator, kubectl: Kubectl) -> None:
    ns, origin = operator.namespace, "cpu"
    model = yaml.safe_load((SEED_DIR / "model.yaml").read_text())
    deployment = yaml.safe_load((SEED_DIR / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = "chat-events"
    deployment["spec"]["replicas"] = 1
    await kubectl(origin, "apply", "-n", ns, "-f", "-", input=json.dumps(model))
    await kubectl(origin, "apply", "-n", ns, "-f", "-", input=json.dumps(deployment))

    async def reasons() -> set[str] | None:
        events = await kubectl.json(
            origin, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=chat-events"
        )
        found = {e["reason"] for e in events["items"] if e["involvedObject"]["kind"] == "LLMDeployment"}
        return found if {"Placed", "Applied"} <= found else None

    found = await eventually(reasons, timeout=60, what="Placed and Applied events on the LLMDeployment")
    assert "ApplyFailed" not in found
    described = await kubectl(origin, "describe", "llmdeployment", "chat-events", "-n", ns)
    assert "Placed" in described
    assert "Applied" in described
