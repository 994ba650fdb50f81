"""Unit tests of applier.render: a workload plan becomes the manifests that run it in one cluster.

Plain tests, no mocks: plans are built from LLMModel / LLMDeployment specs written as users write them (YAML),
and the rendered manifests are inspected as the apiserver would receive them. The loader's shell script is run
for real (with stand-in download tools) to check that it fills the claim once and skips it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.labels import (
    ANNOTATION_EPOCH,
    ANNOTATION_OBJECTS,
    ANNOTATION_PLAN,
    ANNOTATION_SEQUENCE,
    ANNOTATION_UID,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_NAMESPACE,
    LABEL_ORIGIN,
)
from api.models import LLMDeploymentSpec, LLMModelSpec
from api.plans import NOT_IN_PODS, DeploymentRef, WorkloadPlan, plan_id
from applier.render import (
    CONTAINER,
    LOADER,
    MANAGED_KINDS,
    WEIGHTS_MARKER,
    identity_labels,
    labels,
    render,
    selector_string,
)

Manifest = dict[str, Any]

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
LLAMA_MODEL = """
modelName: meta-llama/Llama-3.1-70B-Instruct
image: vllm/vllm-openai:v0.6.3
args: ["--model", "/models", "--tensor-parallel-size", "4"]
resources:
  cpu: "16"
  memory: 160Gi
  sharedMemory: 16Gi
  gpu:
    count: 4
    types: [NVIDIA-A100-SXM4-80GB, NVIDIA-H100-80GB-HBM3]
    minMemory: 80Gi
source:
  uri: hf://meta-llama/Llama-3.1-70B-Instruct@main
  secretRef: hf-token
storage:
  size: 200Gi
startup:
  timeoutSeconds: 1800
  healthPath: /health
env:
  - name: VLLM_LOGGING_LEVEL
    value: INFO
  - name: HF_TOKEN
    secretKeyRef: {name: hf-token, key: token}
"""
LLAMA_DEPLOYMENT = """
modelRef: llama-70b
replicas: 3
port: 8000
"""
AUTOSCALED_DEPLOYMENT = """
modelRef: llama-70b
replicas: 2
port: 8000
autoscaling:
  minReplicas: 1
  maxReplicas: 6
  target:
    timeToFirstTokenP90Ms: 500
    queueDepth: 8
    requestsPerSecond: 20
  scaleUpStabilizationSeconds: 30
  scaleDownStabilizationSeconds: 600
"""
A100 = "NVIDIA-A100-SXM4-80GB"
NAMESPACE = "team-a"
NAME = "chat-service"


def model_spec(text: str, **changes: Any) -> LLMModelSpec:
    raw = yaml.safe_load(text)
    raw.update(changes)
    return LLMModelSpec.model_validate(raw)


def deployment_spec(text: str, **changes: Any) -> LLMDeploymentSpec:
    raw = yaml.safe_load(text)
    raw.update(changes)
    return LLMDeploymentSpec.model_validate(raw)


def make_plan(
    model: LLMModelSpec | None = None,
    spec: LLMDeploymentSpec | None = None,
    *,
    replicas: int | None = None,
    cluster: str = "cpu",
    origin: str = "cpu",
    is_origin: bool | None = None,
    gpu_type: str | None = None,
    name: str = NAME,
    namespace: str = NAMESPACE,
    uid: str = "5f1f6a0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
    epoch: int = 3,
    sequence: int = 7,
    removal: bool = False,
) -> WorkloadPlan:
    """A plan as the planner issues it: the seed model and deployment unless told otherwise."""
    ref = DeploymentRef(origin_cluster=origin, namespace=namespace, name=name, uid=uid)
    if removal:
        model_value, spec_value = None, None
    else:
        model_value = model if model is not None else model_spec(SEED_MODEL)
        spec_value = spec if spec is not None else deployment_spec(SEED_DEPLOYMENT)
    return WorkloadPlan(
        plan_id=plan_id(ref, cluster, "Workload", epoch, sequence),
        epoch=epoch,
        sequence=sequence,
        cluster=cluster,
        deployment=ref,
        generation=1,
        issued_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        replicas=(spec_value.replicas if spec_value else 0) if replicas is None else replicas,
        model_name="" if removal else (spec_value.model_ref if spec_value else ""),
        model=model_value,
        spec=spec_value,
        is_origin=(cluster == origin) if is_origin is None else is_origin,
        gpu_type=gpu_type,
    )


def gpu_plan(**kwargs: Any) -> WorkloadPlan:
    kwargs.setdefault("cluster", "a100")
    kwargs.setdefault("origin", "cpu")
    kwargs.setdefault("gpu_type", A100)
    model = kwargs.pop("model", None) or model_spec(LLAMA_MODEL)
    spec = kwargs.pop("spec", None) or deployment_spec(LLAMA_DEPLOYMENT)
    return make_plan(model, spec, **kwargs)


def by_kind(manifests: list[Manifest]) -> dict[str, Manifest]:
    out = {m["kind"]: m for m in manifests}
    assert len(out) == len(manifests), "one object per kind"
    return out


def the(manifests: list[Manifest], kind: str) -> Manifest:
    return by_kind(manifests)[kind]


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = the(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def server(manifests: list[Manifest]) -> dict[str, Any]:
    containers = pod_spec(manifests)["containers"]
    assert [c["name"] for c in containers] == [CONTAINER]
    container: dict[str, Any] = containers[0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def mounts_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    paths = [m["mountPath"] for m in container["volumeMounts"]]
    assert len(paths) == len(set(paths)), f"duplicate mount paths: {paths}"
    return {m["mountPath"]: m for m in container["volumeMounts"]}


def volumes_of(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(manifests)["volumes"]}


# ------------------------------------------------------------------------------------------------ the seed model


def test_seed_model_renders_service_policy_budget_and_deployment_in_apply_order() -> None:
    manifests = render(make_plan())

    assert [m["kind"] for m in manifests] == ["Service", "NetworkPolicy", "PodDisruptionBudget", "Deployment"]
    assert {m["apiVersion"] for m in manifests} == {"v1", "networking.k8s.io/v1", "policy/v1", "apps/v1"}


def test_seed_model_runs_its_image_with_cpu_and_memory_requests_and_limits() -> None:
    manifests = render(make_plan())
    deployment = the(manifests, "Deployment")
    container = server(manifests)

    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "your-registry/gpt-small:v1"
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert "args" not in container
    assert env_of(container) == {"MODEL_NAME": "GPT-Small", "PORT": "8080"}


def test_cpu_model_has_no_gpu_toleration_affinity_or_gpu_resources_and_rolls_with_surge() -> None:
    manifests = render(make_plan())
    spec = pod_spec(manifests)
    container = server(manifests)

    assert "tolerations" not in spec
    assert "affinity" not in spec
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert the(manifests, "Deployment")["spec"]["strategy"] == {"type": "RollingUpdate"}


def test_restricted_pod_security_by_default() -> None:
    manifests = render(make_plan())
    spec = pod_spec(manifests)
    container = server(manifests)

    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False


def test_read_only_root_filesystem_gets_writable_tmp_and_cache_volumes() -> None:
    manifests = render(make_plan())
    mounts = mounts_of(server(manifests))
    volumes = volumes_of(manifests)

    assert mounts["/tmp"] == {"name": "tmp", "mountPath": "/tmp"}
    assert mounts["/cache"] == {"name": "cache", "mountPath": "/cache"}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    assert all(not m.get("readOnly") for m in (mounts["/tmp"], mounts["/cache"]))


# ------------------------------------------------------------------------------------------------ GPU models


def test_gpu_model_requests_and_limits_its_gpus() -> None:
    container = server(render(gpu_plan()))

    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["cpu"] == "16"
    assert container["resources"]["limits"]["memory"] == "160Gi"


def test_gpu_model_is_pinned_to_the_planned_product_and_minimum_memory() -> None:
    spec = pod_spec(render(gpu_plan(gpu_type="NVIDIA-H100-80GB-HBM3")))

    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]},
                # 80Gi = 81920 MiB; GPU feature discovery labels MiB; Gt is strict.
                {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["81919"]},
            ]
        }
    ]
    assert "preferredDuringSchedulingIgnoredDuringExecution" not in spec["affinity"]["nodeAffinity"]


def test_gpu_model_tolerates_the_gpu_taint() -> None:
    spec = pod_spec(render(gpu_plan()))

    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_gpu_rollout_replaces_one_replica_at_a_time_without_surge() -> None:
    deployment = the(render(gpu_plan()), "Deployment")

    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_gpu_affinity_without_a_planned_product_uses_the_exact_types_or_any_gpu() -> None:
    def product_rule(model: LLMModelSpec) -> dict[str, Any]:
        spec = pod_spec(render(gpu_plan(model=model, gpu_type=None)))
        term = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        rule: dict[str, Any] = term["nodeSelectorTerms"][0]["matchExpressions"][0]
        return rule

    exact = model_spec(LLAMA_MODEL)
    assert product_rule(exact) == {
        "key": "nvidia.com/gpu.product",
        "operator": "In",
        "values": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"],
    }
    raw = yaml.safe_load(LLAMA_MODEL)
    raw["resources"]["gpu"]["types"] = ["NVIDIA-A100-*"]
    assert product_rule(LLMModelSpec.model_validate(raw)) == {"key": "nvidia.com/gpu.product", "operator": "Exists"}
    raw["resources"]["gpu"]["types"] = []
    assert product_rule(LLMModelSpec.model_validate(raw)) == {"key": "nvidia.com/gpu.product", "operator": "Exists"}


@pytest.mark.parametrize(
    ("min_memory", "gt"),
    [
        ("80Gi", "81919"),
        ("40Gi", "40959"),
        # 40G = 38146.97 MiB: a node labelled 38146 MiB is too small, so at least 38147 is required.
        ("40G", "38146"),
        (1, "0"),
    ],
)
def test_gpu_min_memory_rounds_up_to_whole_mib(min_memory: str | int, gt: str) -> None:
    raw = yaml.safe_load(LLAMA_MODEL)
    raw["resources"]["gpu"]["minMemory"] = min_memory
    spec = pod_spec(render(gpu_plan(model=LLMModelSpec.model_validate(raw))))
    rules = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    memory = [r for r in rules[0]["matchExpressions"] if r["key"] == "nvidia.com/gpu.memory"]

    assert memory == [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": [gt]}]


def test_gpu_without_min_memory_has_no_memory_rule() -> None:
    raw = yaml.safe_load(LLAMA_MODEL)
    del raw["resources"]["gpu"]["minMemory"]
    spec = pod_spec(render(gpu_plan(model=LLMModelSpec.model_validate(raw))))
    rules = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]

    assert [r["key"] for r in rules[0]["matchExpressions"]] == ["nvidia.com/gpu.product"]


# ---------------------------------------------------------------------------------------------- shm and probes


def test_shared_memory_is_a_memory_backed_empty_dir_on_dev_shm() -> None:
    manifests = render(gpu_plan())

    assert volumes_of(manifests)["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert mounts_of(server(manifests))["/dev/shm"] == {"name": "dshm", "mountPath": "/dev/shm"}


def test_no_shared_memory_volume_unless_asked() -> None:
    manifests = render(make_plan())

    assert "dshm" not in volumes_of(manifests)
    assert "/dev/shm" not in mounts_of(server(manifests))


def test_startup_probe_allows_the_whole_load_budget_before_liveness() -> None:
    manifests = render(gpu_plan())
    container = server(manifests)
    startup = container["startupProbe"]

    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert startup["failureThreshold"] == 180
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # A rollout that is still loading within its budget is not reported as stalled.
    assert the(manifests, "Deployment")["spec"]["progressDeadlineSeconds"] >= 1800


@pytest.mark.parametrize(("timeout", "threshold"), [(10, 1), (600, 60), (605, 61), (86400, 8640)])
def test_startup_failure_threshold_covers_the_budget(timeout: int, threshold: int) -> None:
    model = model_spec(SEED_MODEL, startup={"timeoutSeconds": timeout, "healthPath": "/ready"})
    container = server(render(make_plan(model)))

    assert container["startupProbe"]["failureThreshold"] == threshold
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/ready"


def test_default_probes_use_the_default_health_path_and_budget() -> None:
    container = server(render(make_plan()))

    assert container["startupProbe"]["failureThreshold"] == 60
    assert container["readinessProbe"] == {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


# --------------------------------------------------------------------------------------------------- security


def test_baseline_override_drops_non_root_and_read_only_root() -> None:
    spec = deployment_spec(SEED_DEPLOYMENT, security={"profile": "Baseline"})
    manifests = render(make_plan(spec=spec))
    pod = pod_spec(manifests)
    container = server(manifests)

    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert "runAsNonRoot" not in container["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is False
    # Still no privilege escalation and no capabilities.
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_baseline_keeps_explicit_ids_and_read_only_root_when_asked() -> None:
    spec = deployment_spec(
        SEED_DEPLOYMENT,
        security={"profile": "Baseline", "runAsUser": 0, "fsGroup": 2000, "readOnlyRootFilesystem": True},
    )
    manifests = render(make_plan(spec=spec))

    assert pod_spec(manifests)["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 0,
        "fsGroup": 2000,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    assert server(manifests)["securityContext"]["readOnlyRootFilesystem"] is True


def test_restricted_with_own_ids_and_writable_root() -> None:
    spec = deployment_spec(
        SEED_DEPLOYMENT, security={"runAsUser": 1234, "runAsGroup": 5678, "readOnlyRootFilesystem": False}
    )
    manifests = render(make_plan(spec=spec))
    pod = pod_spec(manifests)

    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (1234, 5678)
    assert pod["securityContext"]["fsGroup"] == 1000
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server(manifests)["securityContext"]["readOnlyRootFilesystem"] is False


# ------------------------------------------------------------------------------------------------ env and args


def test_env_args_and_secret_key_refs_reach_the_server() -> None:
    container = server(render(gpu_plan()))
    env = env_of(container)

    assert container["args"] == ["--model", "/models", "--tensor-parallel-size", "4"]
    assert env["MODEL_NAME"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert env["MODEL_SOURCE"] == "hf://meta-llama/Llama-3.1-70B-Instruct@main"
    assert env["MODEL_PATH"] == "/models"
    assert env["PORT"] == "8000"
    assert env["VLLM_LOGGING_LEVEL"] == "INFO"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    # Operator variables first, then the model's own, in the order written.
    assert [e["name"] for e in container["env"]][-2:] == ["VLLM_LOGGING_LEVEL", "HF_TOKEN"]


def test_a_model_variable_replaces_the_operator_variable_of_the_same_name() -> None:
    model = model_spec(SEED_MODEL, env=[{"name": "PORT", "value": "9999"}, {"name": "EMPTY"}])
    container = server(render(make_plan(model)))

    assert env_of(container) == {"MODEL_NAME": "GPT-Small", "PORT": "9999", "EMPTY": ""}


# ------------------------------------------------------------------------------------------------------ weights


def test_new_claim_is_created_and_mounted_read_only_with_a_loader() -> None:
    plan = gpu_plan()
    manifests = render(plan)
    claim = the(manifests, "PersistentVolumeClaim")

    assert manifests[0]["kind"] == "PersistentVolumeClaim"
    assert claim["metadata"]["name"] == "chat-service-weights"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],  # three replicas may land on three nodes
        "resources": {"requests": {"storage": "200Gi"}},
    }
    assert volumes_of(manifests)["weights"] == {
        "name": "weights",
        "persistentVolumeClaim": {"claimName": "chat-service-weights"},
    }
    assert mounts_of(server(manifests))["/models"] == {"name": "weights", "mountPath": "/models", "readOnly": True}


def test_loader_fills_the_claim_writably_and_checks_the_marker_first() -> None:
    manifests = render(gpu_plan())
    inits = pod_spec(manifests)["initContainers"]

    assert [c["name"] for c in inits] == [LOADER]
    loader = inits[0]
    weights_mount = next(m for m in loader["volumeMounts"] if m["name"] == "weights")
    assert weights_mount == {"name": "weights", "mountPath": "/weights"}  # writable: no readOnly
    assert {m["mountPath"] for m in loader["volumeMounts"]} == {"/weights", "/tmp", "/cache"}
    script = loader["command"][-1]
    assert loader["command"][:2] == ["sh", "-c"]
    assert WEIGHTS_MARKER in script
    assert script.index(WEIGHTS_MARKER) < script.index("snapshot_download")
    env = env_of(loader)
    assert env["SOURCE_URI"] == "hf://meta-llama/Llama-3.1-70B-Instruct@main"
    assert (env["HF_REPO"], env["HF_REVISION"]) == ("meta-llama/Llama-3.1-70B-Instruct", "main")
    # pip installs into the writable cache: the root filesystem is read-only.
    assert env["PYTHONPATH"].startswith("/cache/")
    assert "--target /cache/" in script
    assert loader["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert loader["securityContext"] == server(manifests)["securityContext"]
    assert loader["image"].startswith("python:")


def test_source_values_never_become_shell_text() -> None:
    model = model_spec(
        LLAMA_MODEL, source={"uri": "s3://models-bucket/llama/$(reboot)'; rm -rf / #"}, storage={"size": "10Gi"}
    )
    loader = pod_spec(render(gpu_plan(model=model)))["initContainers"][0]

    assert "reboot" not in loader["command"][-1]
    assert env_of(loader)["SOURCE_URI"] == "s3://models-bucket/llama/$(reboot)'; rm -rf / #"


def test_s3_source_uses_the_aws_cli_loader() -> None:
    model = model_spec(LLAMA_MODEL, source={"uri": "s3://models-bucket/llama-70b", "secretRef": "aws-creds"})
    loader = pod_spec(render(gpu_plan(model=model)))["initContainers"][0]

    assert loader["image"].startswith("amazon/aws-cli:")
    assert 'aws s3 sync --only-show-errors "$SOURCE_URI" "$WEIGHTS_DIR"' in loader["command"][-1]
    assert loader["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
    assert "HF_REPO" not in env_of(loader)


def test_existing_claim_is_mounted_and_filled_but_not_created() -> None:
    model = model_spec(LLAMA_MODEL, storage={"existingClaim": "shared-weights", "mountPath": "/weights-in"})
    manifests = render(gpu_plan(model=model))

    assert "PersistentVolumeClaim" not in by_kind(manifests)
    assert volumes_of(manifests)["weights"]["persistentVolumeClaim"] == {"claimName": "shared-weights"}
    assert mounts_of(server(manifests))["/weights-in"]["readOnly"] is True
    assert env_of(server(manifests))["MODEL_PATH"] == "/weights-in"
    assert [c["name"] for c in pod_spec(manifests)["initContainers"]] == [LOADER]


def test_pvc_source_mounts_the_claim_path_read_only_without_a_loader() -> None:
    model = model_spec(SEED_MODEL, source={"uri": "pvc://model-store/llama/70b"})
    manifests = render(make_plan(model))

    assert "PersistentVolumeClaim" not in by_kind(manifests)
    assert "initContainers" not in pod_spec(manifests)
    assert volumes_of(manifests)["weights"]["persistentVolumeClaim"] == {"claimName": "model-store"}
    assert mounts_of(server(manifests))["/models"] == {
        "name": "weights",
        "mountPath": "/models",
        "readOnly": True,
        "subPath": "llama/70b",
    }
    assert env_of(server(manifests))["MODEL_PATH"] == "/models"


def test_pvc_source_without_a_path_mounts_the_whole_claim() -> None:
    model = model_spec(SEED_MODEL, source={"uri": "pvc://model-store"})
    mount = mounts_of(server(render(make_plan(model))))["/models"]

    assert "subPath" not in mount


def test_baked_in_weights_have_no_volume_loader_or_path() -> None:
    manifests = render(make_plan())

    assert set(volumes_of(manifests)) == {"tmp", "cache"}
    assert "initContainers" not in pod_spec(manifests)
    assert "MODEL_PATH" not in env_of(server(manifests))
    assert "MODEL_SOURCE" not in env_of(server(manifests))


def test_hf_source_without_storage_is_left_to_the_server() -> None:
    model = model_spec(SEED_MODEL, source={"uri": "hf://org/model"})
    manifests = render(make_plan(model))

    assert "initContainers" not in pod_spec(manifests)
    assert "weights" not in volumes_of(manifests)
    assert env_of(server(manifests))["MODEL_SOURCE"] == "hf://org/model"


@pytest.mark.parametrize(
    ("replicas", "deployment_replicas", "storage", "mode"),
    [
        (1, 1, {"size": "10Gi"}, "ReadWriteOnce"),
        (2, 2, {"size": "10Gi"}, "ReadWriteMany"),
        # This cluster's share is one replica, but the deployment has three: the mode must not change when
        # the planner moves replicas (a claim's access modes are immutable).
        (1, 3, {"size": "10Gi"}, "ReadWriteMany"),
        (3, 3, {"size": "10Gi", "accessMode": "ReadWriteOnce", "storageClassName": "fast"}, "ReadWriteOnce"),
    ],
)
def test_claim_access_mode(replicas: int, deployment_replicas: int, storage: dict[str, Any], mode: str) -> None:
    model = model_spec(SEED_MODEL, source={"uri": "s3://bucket-a/m"}, storage=storage)
    spec = deployment_spec(SEED_DEPLOYMENT, replicas=deployment_replicas)
    claim = the(render(make_plan(model, spec, replicas=replicas)), "PersistentVolumeClaim")

    assert claim["spec"]["accessModes"] == [mode]
    assert claim["spec"].get("storageClassName") == storage.get("storageClassName")


def test_autoscaling_maximum_counts_for_the_claim_access_mode() -> None:
    model = model_spec(SEED_MODEL, source={"uri": "s3://bucket-a/m"}, storage={"size": "10Gi"})
    spec = deployment_spec(AUTOSCALED_DEPLOYMENT, replicas=1)
    claim = the(render(make_plan(model, spec, replicas=1)), "PersistentVolumeClaim")

    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_writable_weights_when_the_model_asks() -> None:
    model = model_spec(SEED_MODEL, storage={"size": "10Gi", "readOnly": False})
    manifests = render(make_plan(model))

    assert mounts_of(server(manifests))["/models"]["readOnly"] is False
    assert "initContainers" not in pod_spec(manifests)  # no source: nothing to load


def test_weights_mounted_over_a_scratch_path_replace_that_scratch_mount() -> None:
    model = model_spec(SEED_MODEL, storage={"size": "10Gi", "mountPath": "/cache"})
    manifests = render(make_plan(model))
    mounts = mounts_of(server(manifests))

    assert mounts["/cache"]["name"] == "weights"
    assert mounts["/tmp"]["name"] == "tmp"


# The loader's script, run for real: stand-in download tools on PATH record what they were asked to do.
_FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0")" in
  aws) echo weights > "$WEIGHTS_DIR/model.safetensors" ;;
  python) echo weights > "$WEIGHTS_DIR/model.safetensors" ;;
esac
"""


def _run_loader(loader: dict[str, Any], tmp_path: Path, *, source: str | None = None) -> list[str]:
    bin_dir, weights = tmp_path / "bin", tmp_path / "weights"
    bin_dir.mkdir(exist_ok=True)
    weights.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    calls.write_text("")
    for tool in ("aws", "pip", "python"):
        path = bin_dir / tool
        path.write_text(_FAKE_TOOL)
        path.chmod(0o755)
    env = {e["name"]: e["value"] for e in loader["env"]}
    if source is not None:
        env["SOURCE_URI"] = source
    env.update({"WEIGHTS_DIR": str(weights), "CALLS": str(calls), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    env["HOME"] = env["TMPDIR"] = str(tmp_path)
    subprocess.run(loader["command"], env=env, check=True, capture_output=True, timeout=30)
    return [line.split()[0] for line in calls.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_loader_script_downloads_once_and_then_skips(tmp_path: Path) -> None:
    model = model_spec(LLAMA_MODEL, source={"uri": "s3://models-bucket/llama"})
    loader = pod_spec(render(gpu_plan(model=model)))["initContainers"][0]

    assert _run_loader(loader, tmp_path) == ["aws"]
    assert (tmp_path / "weights" / WEIGHTS_MARKER).read_text() == "s3://models-bucket/llama"
    assert _run_loader(loader, tmp_path) == []  # already there: skipped
    # Another source (e.g. a new revision) is loaded again.
    assert _run_loader(loader, tmp_path, source="s3://models-bucket/llama-v2") == ["aws"]
    assert (tmp_path / "weights" / WEIGHTS_MARKER).read_text() == "s3://models-bucket/llama-v2"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_hf_loader_script_installs_the_client_then_downloads(tmp_path: Path) -> None:
    loader = pod_spec(render(gpu_plan()))["initContainers"][0]

    assert _run_loader(loader, tmp_path) == ["pip", "python"]
    assert (tmp_path / "weights" / WEIGHTS_MARKER).exists()
    assert _run_loader(loader, tmp_path) == []


# ---------------------------------------------------------------------------------------------------- service


def test_service_exposes_the_model_port_by_name() -> None:
    service = the(render(make_plan()), "Service")

    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": identity_labels(make_plan()),
        "ports": [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}],
    }


def test_service_type_and_port_follow_the_spec() -> None:
    spec = deployment_spec(SEED_DEPLOYMENT, port=9000, serviceType="LoadBalancer")
    manifests = render(make_plan(spec=spec))
    service = the(manifests, "Service")

    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == 9000
    assert server(manifests)["ports"][0]["containerPort"] == 9000
    assert env_of(server(manifests))["PORT"] == "9000"


# ------------------------------------------------------------------------------------------- network policy


def test_network_policy_by_default_admits_the_same_namespace_to_the_model_port_only() -> None:
    policy = the(render(make_plan()), "NetworkPolicy")

    assert policy["spec"] == {
        "podSelector": {"matchLabels": identity_labels(make_plan())},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]}],
    }


def test_network_policy_with_explicit_sources() -> None:
    spec = deployment_spec(
        SEED_DEPLOYMENT,
        networkPolicy={
            "allowedSources": [
                {"namespaceSelector": {"matchLabels": {"team": "ml"}}, "podSelector": {"matchLabels": {"app": "ui"}}},
                {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
            ]
        },
    )
    policy = the(render(make_plan(spec=spec)), "NetworkPolicy")
    sources = policy["spec"]["ingress"][0]["from"]

    assert sources[0]["namespaceSelector"]["matchLabels"] == {"team": "ml"}
    assert sources[0]["podSelector"]["matchLabels"] == {"app": "ui"}
    assert sources[1] == {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_network_policy_can_be_turned_off() -> None:
    spec = deployment_spec(SEED_DEPLOYMENT, networkPolicy={"enabled": False})

    assert "NetworkPolicy" not in by_kind(render(make_plan(spec=spec)))


# ------------------------------------------------------------------------------------------ disruption budget


@pytest.mark.parametrize(("replicas", "has_budget"), [(1, False), (2, True), (5, True)])
def test_disruption_budget_only_with_more_than_one_replica(replicas: int, has_budget: bool) -> None:
    manifests = by_kind(render(make_plan(replicas=replicas)))

    assert ("PodDisruptionBudget" in manifests) is has_budget
    if has_budget:
        assert manifests["PodDisruptionBudget"]["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": identity_labels(make_plan())},
        }


# ------------------------------------------------------------------------------------------------- autoscaler


def test_no_horizontal_pod_autoscaler_is_rendered_the_planner_scales_through_scale() -> None:
    # The HPA used to point at External metrics no adapter served; the fleet autoscaler (planner/autoscale.py)
    # writes /scale itself. An HPA an older version left is pruned: the kind stays managed.
    origin = gpu_plan(spec=deployment_spec(AUTOSCALED_DEPLOYMENT), cluster="cpu", origin="cpu")
    assert "HorizontalPodAutoscaler" not in by_kind(render(origin))
    assert "HorizontalPodAutoscaler" in MANAGED_KINDS


@pytest.mark.parametrize(
    ("image", "serving", "expected"),
    [
        ("vllm/vllm-openai:v0.11.0", None, {"runtime": "vllm", "port": 8080, "path": "/metrics"}),
        ("lmsysorg/sglang:v0.5", None, {"runtime": "sglang", "port": 8080, "path": "/metrics"}),
        ("ghcr.io/huggingface/text-generation-inference:3", {"metricsPort": 9000},
         {"runtime": "tgi", "port": 9000, "path": "/metrics"}),
        ("mine:1", {"runtime": "custom", "metricsPath": "/stats", "metrics": {"requestsWaiting": "q"}},
         {"runtime": "custom", "port": 8080, "path": "/stats", "names": {"requestsWaiting": "q"}}),
    ],
)  # fmt: skip
def test_the_deployment_says_where_replicas_report_load(
    image: str, serving: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    extra: dict[str, Any] = {"image": image} | ({"serving": serving} if serving else {})
    plan = make_plan(model_spec(SEED_MODEL, **extra))
    deployment = the(render(plan), "Deployment")
    assert json.loads(deployment["metadata"]["annotations"]["llm.example.com/serving"]) == expected
    assert "annotations" not in deployment["spec"]["template"]["metadata"]  # no restart when it changes


def test_no_autoscaler_outside_the_origin_or_without_autoscaling() -> None:
    elsewhere = gpu_plan(spec=deployment_spec(AUTOSCALED_DEPLOYMENT), cluster="a100", origin="cpu")
    not_asked = gpu_plan(cluster="cpu", origin="cpu")

    assert "HorizontalPodAutoscaler" not in by_kind(render(elsewhere))
    assert "HorizontalPodAutoscaler" not in by_kind(render(not_asked))


# -------------------------------------------------------------------------------------------- nothing to run


def test_zero_replicas_renders_nothing() -> None:
    assert render(make_plan(replicas=0, cluster="a100")) == []
    assert render(make_plan(replicas=0, cluster="cpu")) == []


def test_zero_replicas_in_the_origin_removes_everything_even_with_autoscaling() -> None:
    plan = make_plan(spec=deployment_spec(AUTOSCALED_DEPLOYMENT), replicas=0, cluster="cpu", origin="cpu")

    assert render(plan) == []
    assert plan.removes_everything


def test_removal_plan_renders_nothing() -> None:
    plan = make_plan(removal=True)

    assert render(plan) == []
    assert plan.removes_everything


# ------------------------------------------------------------------------------------- labels, names, places


def _everything() -> list[tuple[WorkloadPlan, list[Manifest]]]:
    """Plans that together render every kind, with every weights variant."""
    plans = [
        make_plan(),
        gpu_plan(),
        gpu_plan(spec=deployment_spec(AUTOSCALED_DEPLOYMENT), cluster="cpu", origin="cpu"),
        make_plan(model_spec(SEED_MODEL, source={"uri": "pvc://store/x"})),
        make_plan(model_spec(SEED_MODEL, storage={"existingClaim": "mine"}), namespace="other-ns", name="b"),
    ]
    return [(p, render(p)) for p in plans]


def test_every_kind_rendered_is_a_managed_kind_and_all_are_covered() -> None:
    kinds = {m["kind"] for _, manifests in _everything() for m in manifests}

    # HorizontalPodAutoscaler: no longer rendered, still managed so that old ones are pruned.
    assert kinds == set(MANAGED_KINDS) - {"HorizontalPodAutoscaler"}


def test_every_object_carries_the_standard_and_identity_labels() -> None:
    for plan, manifests in _everything():
        expected = {
            "app.kubernetes.io/name": plan.deployment.name,
            "app.kubernetes.io/instance": plan.deployment.name,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": "llm-operator",
            LABEL_MANAGED_BY: "llm-operator",
            LABEL_DEPLOYMENT: plan.deployment.name,
            LABEL_NAMESPACE: plan.deployment.namespace,
            LABEL_ORIGIN: plan.deployment.origin_cluster,
            "llm.example.com/model": plan.model_name,
        }
        for manifest in manifests:
            assert manifest["metadata"]["labels"] == expected, manifest["kind"]
        assert labels(plan) == expected


def test_the_deployment_records_the_plan_and_the_pods_carry_the_labels() -> None:
    plan = gpu_plan(epoch=4, sequence=12)
    deployment = the(render(plan), "Deployment")

    assert deployment["metadata"]["annotations"] == {
        ANNOTATION_PLAN: plan.plan_id,
        ANNOTATION_EPOCH: "4",
        ANNOTATION_SEQUENCE: "12",
        ANNOTATION_UID: plan.deployment.uid,
        "llm.example.com/serving": '{"path":"/metrics","port":8000,"runtime":"vllm"}',
        ANNOTATION_OBJECTS: ",".join(sorted(f"{m['kind']}/{m['metadata']['name']}" for m in render(plan))),
    }
    assert "Deployment/" in deployment["metadata"]["annotations"][ANNOTATION_OBJECTS]
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"] == labels(plan)
    # The plan is not in the pod template: a new plan with the same intent must not restart the pods.
    assert "annotations" not in template
    assert deployment["spec"]["selector"] == {"matchLabels": identity_labels(plan)}


def test_every_object_names_the_plan_that_wrote_it_and_only_the_deployment_holds_the_record() -> None:
    plan = gpu_plan(spec=deployment_spec(AUTOSCALED_DEPLOYMENT), cluster="cpu", origin="cpu")
    for manifest in render(plan):
        if manifest["kind"] != "Deployment":
            assert manifest["metadata"]["annotations"] == {ANNOTATION_PLAN: plan.plan_id}, manifest["kind"]


def test_a_new_plan_with_the_same_intent_changes_only_the_plan_annotations() -> None:
    first = render(gpu_plan(epoch=1, sequence=1))
    second = render(gpu_plan(epoch=2, sequence=9))

    for a, b in zip(first, second, strict=True):
        assert a["metadata"]["annotations"] != b["metadata"]["annotations"]
        assert {**a, "metadata": {}} == {**b, "metadata": {}}
        assert a["metadata"]["labels"] == b["metadata"]["labels"]


def test_selectors_match_the_pods_and_only_the_identity_labels() -> None:
    plan = gpu_plan()
    manifests = by_kind(render(plan))
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        manifests["Deployment"]["spec"]["selector"]["matchLabels"],
        manifests["Service"]["spec"]["selector"],
        manifests["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
        manifests["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]

    for selector in selectors:
        assert selector == identity_labels(plan)
        assert selector.items() <= pod_labels.items()
    assert identity_labels(plan) == {LABEL_DEPLOYMENT: NAME, LABEL_ORIGIN: "cpu"}


def test_selector_string_selects_by_identity() -> None:
    assert selector_string(make_plan(origin="eu-1")) == (
        "llm.example.com/deployment=chat-service,llm.example.com/origin-cluster=eu-1"
    )


def test_objects_live_in_the_deployments_namespace_named_after_it() -> None:
    for plan, manifests in _everything():
        for manifest in manifests:
            assert manifest["metadata"]["namespace"] == plan.deployment.namespace
            expected = f"{plan.deployment.name}-weights" if manifest["kind"] == "PersistentVolumeClaim" else None
            assert manifest["metadata"]["name"] == (expected or plan.deployment.name)
            assert manifest["kind"] != "Namespace"


def test_nothing_refers_to_another_namespace() -> None:
    for _, manifests in _everything():
        for manifest in manifests:
            text = json.dumps(manifest)
            # Claims, secrets and peers are plain names (their namespace is the object's own).
            assert '"namespace"' not in text.replace(f'"namespace": "{manifest["metadata"]["namespace"]}"', "")


def test_rendering_is_deterministic() -> None:
    for plan, manifests in _everything():
        again = render(plan)
        assert again == manifests
        assert json.dumps(again) == json.dumps(manifests)
        # A plan that travelled as JSON (as plans do, over NATS) renders the same bytes.
        travelled = WorkloadPlan.model_validate_json(plan.model_dump_json())
        assert json.dumps(render(travelled)) == json.dumps(manifests)


def test_rendering_does_not_share_mutable_state_between_calls() -> None:
    plan = gpu_plan()
    first = render(plan)
    the(first, "Deployment")["metadata"]["labels"]["x"] = "y"
    the(first, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"].clear()

    assert render(plan) == render(gpu_plan())
    assert "x" not in the(render(plan), "Deployment")["metadata"]["labels"]


# ------------------------------------------------------------------------------------------------- the examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_plan(directory: Path, **kwargs: Any) -> WorkloadPlan:
    model = yaml.safe_load((directory / "model.yaml").read_text())
    deployment = yaml.safe_load((directory / "deployment.yaml").read_text())
    model_value = LLMModelSpec.model_validate(model["spec"])
    kwargs.setdefault("gpu_type", A100 if model_value.resources.gpu else None)
    return make_plan(
        model_value, LLMDeploymentSpec.model_validate(deployment["spec"]), name=deployment["metadata"]["name"], **kwargs
    )


@pytest.mark.parametrize("directory", sorted(p for p in EXAMPLES.iterdir() if (p / "model.yaml").exists()), ids=str)
def test_every_example_renders_well_formed_manifests(directory: Path) -> None:
    plan = example_plan(directory)
    manifests = render(plan)

    assert manifests == render(plan)
    assert {m["kind"] for m in manifests} <= set(MANAGED_KINDS)
    assert by_kind(manifests)["Deployment"]["spec"]["replicas"] == plan.replicas
    for container in pod_spec(manifests)["containers"] + pod_spec(manifests).get("initContainers", []):
        env_of(container)
        mounts_of(container)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_full_example_loads_hf_weights_into_a_new_claim_and_accepts_h100s_of_80g() -> None:
    manifests = render(example_plan(EXAMPLES / "full"))
    claim = the(manifests, "PersistentVolumeClaim")
    rules = pod_spec(manifests)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]

    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "60Gi"
    assert pod_spec(manifests)["initContainers"][0]["name"] == LOADER
    # 80G = 76293.95 MiB: nodes labelled 76294 MiB or more; the H100 80GB (81559 MiB) qualifies.
    memory = rules["nodeSelectorTerms"][0]["matchExpressions"][1]
    assert memory == {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["76293"]}
    assert int(memory["values"][0]) < 81559


def test_pvc_weights_example_mounts_the_staged_claim_path() -> None:
    manifests = render(example_plan(EXAMPLES / "pvc-weights"))

    assert "PersistentVolumeClaim" not in by_kind(manifests)
    assert "initContainers" not in pod_spec(manifests)
    assert volumes_of(manifests)["weights"]["persistentVolumeClaim"] == {"claimName": "model-weights"}
    assert mounts_of(server(manifests))["/weights"] == {
        "name": "weights",
        "mountPath": "/weights",
        "readOnly": True,
        "subPath": "llama-3.1-8b-instruct",
    }
    assert the(manifests, "Service")["spec"]["type"] == "LoadBalancer"


# ------------------------------------------------------------------------------------------- the pods' key


def _template(plan: WorkloadPlan) -> Any:
    return the(render(plan), "Deployment")["spec"]["template"]


@pytest.mark.parametrize(
    "changes",
    [
        {"replicas": 5},
        {"serviceType": "LoadBalancer"},
        {"autoscaling": None},
        {"networkPolicy": {"enabled": False}},
        {"networkPolicy": {"allowedSources": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}},
        {"suspend": True},
        {"placement": {"clusters": ["a100"], "preferOrigin": False, "clusterSelector": {"matchLabels": {"x": "y"}}}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_spec_fields_kept_out_of_the_pods_key_do_not_reach_the_pod_template(changes: dict[str, Any]) -> None:
    """WorkloadPlan.pods_key leaves these out so a change to them does not make Ready flip; the renderer must
    agree: the pod template stays the same, only the other objects (or the replica count) change."""
    assert {"replicas", "service_type", "autoscaling", "network_policy", "suspend", "placement"} <= NOT_IN_PODS
    base = gpu_plan(spec=deployment_spec(AUTOSCALED_DEPLOYMENT), cluster="cpu", origin="cpu", replicas=2)
    changed_spec = deployment_spec(AUTOSCALED_DEPLOYMENT, **changes)
    changed = gpu_plan(spec=changed_spec, cluster="cpu", origin="cpu", replicas=changed_spec.replicas, sequence=8)
    assert changed.pods_key() == base.pods_key()
    assert _template(changed) == _template(base)


def test_a_pod_affecting_change_changes_the_pods_key_and_the_template() -> None:
    base = gpu_plan()
    for changed in (
        gpu_plan(spec=deployment_spec(LLAMA_DEPLOYMENT, port=9000), sequence=8),
        gpu_plan(model=model_spec(LLAMA_MODEL, image="vllm/vllm-openai:v0.7.0"), sequence=8),
        gpu_plan(gpu_type="NVIDIA-H100-80GB-HBM3", sequence=8),
    ):
        assert changed.pods_key() != base.pods_key()
        assert _template(changed) != _template(base)
