"""Render a workload plan into the Kubernetes objects that run it in one cluster. Pure.

Guarantees:
- Deterministic: the same plan renders byte-identical manifests (so re-applying is a no-op for the apiserver).
- Everything rendered carries the standard app.kubernetes.io labels and the deployment's identity labels
  (name, namespace, origin cluster), which is how the applier prunes and the watcher recognises managed objects.
- Objects live in the LLMDeployment's own namespace, named after it; nothing is rendered elsewhere.
- Pods are secure by default (the Kubernetes 'restricted' profile) unless the spec asks for Baseline.
- A plan with no replicas renders nothing (except the fleet autoscaler in the origin cluster, when requested).
"""

from __future__ import annotations

import math
from typing import Any

from store.api import API_VERSION, LLMDeploymentSpec, LLMModelSpec, NetworkPeer
from store.events import (
    ANNOTATION_EPOCH,
    ANNOTATION_PLAN,
    ANNOTATION_SEQUENCE,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_NAMESPACE,
    LABEL_ORIGIN,
    MANAGED_BY,
)
from store.plans import WorkloadPlan
from store.projections import GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GPU_RESOURCE
from store.quantity import bytes_of

Manifest = dict[str, Any]
CONTAINER = "model-server"
DEFAULT_UID = 1000
LABEL_MODEL = "llm.example.com/model"


def identity_labels(plan: WorkloadPlan) -> dict[str, str]:
    ref = plan.deployment
    return {LABEL_DEPLOYMENT: ref.name, LABEL_ORIGIN: ref.origin_cluster}


def selector_string(plan: WorkloadPlan) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(identity_labels(plan).items()))


def labels(plan: WorkloadPlan) -> dict[str, str]:
    ref = plan.deployment
    out = {
        "app.kubernetes.io/name": ref.name,
        "app.kubernetes.io/instance": ref.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "llm-operator",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAMESPACE: ref.namespace,
        **identity_labels(plan),
    }
    if plan.model_name:
        out[LABEL_MODEL] = plan.model_name
    return out


def _meta(plan: WorkloadPlan, name: str, *, annotate: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": plan.deployment.namespace, "labels": labels(plan)}
    if annotate:
        meta["annotations"] = {
            ANNOTATION_PLAN: plan.plan_id,
            ANNOTATION_EPOCH: str(plan.epoch),
            ANNOTATION_SEQUENCE: str(plan.sequence),
        }
    return meta


def render(plan: WorkloadPlan) -> list[Manifest]:
    """The objects this plan wants in its cluster, in apply order."""
    if plan.spec is None or plan.model is None:
        return []
    spec, model = plan.spec, plan.model
    out: list[Manifest] = []
    if plan.replicas > 0:
        claim = weights_claim(plan, model)
        if claim is not None:
            out.append(claim)
        out.append(service(plan, spec))
        if spec.network_policy.enabled:
            out.append(network_policy(plan, spec))
        if plan.replicas > 1:
            out.append(disruption_budget(plan))
        out.append(deployment(plan, spec, model))
    if plan.is_origin and spec.autoscaling is not None:
        out.append(autoscaler(plan, spec))
    return out


# ------------------------------------------------------------------------------------------------- the workload


def deployment(plan: WorkloadPlan, spec: LLMDeploymentSpec, model: LLMModelSpec) -> Manifest:
    name = plan.deployment.name
    gpu = model.resources.gpu
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if model.resources.cpu is not None:
        requests["cpu"] = str(model.resources.cpu)
    if model.resources.memory is not None:
        requests["memory"] = str(model.resources.memory)
        limits["memory"] = str(model.resources.memory)
    if gpu is not None:
        limits[GPU_RESOURCE] = str(gpu.count)
        requests[GPU_RESOURCE] = str(gpu.count)

    volumes, mounts = _volumes(plan, model)
    env: list[dict[str, Any]] = [{"name": "MODEL_NAME", "value": model.model_name}]
    if model.source is not None:
        env.append({"name": "MODEL_SOURCE", "value": model.source.uri})
    if model.storage is not None or (model.source and model.source.uri.startswith("pvc://")):
        env.append({"name": "MODEL_PATH", "value": model.storage.mount_path if model.storage else "/models"})
    env.append({"name": "PORT", "value": str(spec.port)})
    for var in model.env:
        if var.secret_key_ref is not None:
            env.append(
                {
                    "name": var.name,
                    "valueFrom": {"secretKeyRef": {"name": var.secret_key_ref.name, "key": var.secret_key_ref.key}},
                }
            )
        else:
            env.append({"name": var.name, "value": var.value or ""})
    if model.source is not None and model.source.secret_ref:
        env_from: list[dict[str, Any]] = [{"secretRef": {"name": model.source.secret_ref}}]
    else:
        env_from = []

    probe = {"httpGet": {"path": model.startup.health_path, "port": "http"}}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": model.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": env,
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "securityContext": _container_security(spec),
        "volumeMounts": mounts,
        # Slow model loads: liveness is held off until the startup probe succeeds within the load budget.
        "startupProbe": {
            **probe,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, math.ceil(model.startup.timeout_seconds / 10)),
        },
        "readinessProbe": {**probe, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
    }
    if model.args:
        container["args"] = list(model.args)
    if env_from:
        container["envFrom"] = env_from

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": _pod_security(spec),
        "volumes": volumes,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 30,
    }
    affinity = _affinity(plan, model)
    if affinity:
        pod_spec["affinity"] = affinity
    if gpu is not None:
        pod_spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    init = _weights_wait(plan, model)
    if init:
        pod_spec["initContainers"] = init

    strategy: dict[str, Any] = {"type": "RollingUpdate"}
    if gpu is not None:
        # A surge replica would need GPUs nobody reserved: replace one replica at a time instead.
        strategy["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(plan, name, annotate=True),
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": identity_labels(plan)},
            "strategy": strategy,
            "template": {"metadata": {"labels": labels(plan)}, "spec": pod_spec},
        },
    }


def _affinity(plan: WorkloadPlan, model: LLMModelSpec) -> dict[str, Any] | None:
    gpu = model.resources.gpu
    if gpu is None:
        return None
    expressions: list[dict[str, Any]] = []
    if plan.gpu_type:
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [plan.gpu_type]})
    else:
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "Exists"})
    if gpu.min_memory is not None:
        mib = bytes_of(gpu.min_memory) // 2**20
        expressions.append({"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(max(0, mib - 1))]})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
        }
    }


def _pod_security(spec: LLMDeploymentSpec) -> dict[str, Any]:
    sec = spec.security
    out: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if sec.profile == "Restricted":
        out["runAsNonRoot"] = True
        out["runAsUser"] = sec.run_as_user if sec.run_as_user is not None else DEFAULT_UID
        out["runAsGroup"] = sec.run_as_group if sec.run_as_group is not None else DEFAULT_UID
        out["fsGroup"] = sec.fs_group if sec.fs_group is not None else DEFAULT_UID
    else:
        for key, value in (("runAsUser", sec.run_as_user), ("runAsGroup", sec.run_as_group), ("fsGroup", sec.fs_group)):
            if value is not None:
                out[key] = value
    return out


def _container_security(spec: LLMDeploymentSpec) -> dict[str, Any]:
    sec = spec.security
    read_only = sec.read_only_root_filesystem
    if read_only is None:
        read_only = sec.profile == "Restricted"
    out: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if sec.profile == "Restricted":
        out["runAsNonRoot"] = True
    return out


def _volumes(plan: WorkloadPlan, model: LLMModelSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # A read-only root filesystem still needs somewhere to write: /tmp and a cache directory.
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    if model.resources.shared_memory is not None:
        volumes.append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(model.resources.shared_memory)}}
        )
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    claim, sub_path = _claim_of(plan, model)
    if claim is not None:
        read_only = model.storage.read_only if model.storage else True
        # The claim is writable at volume level so the loader (an init container) can fill it; the model server
        # mounts it read-only.
        volumes.append({"name": "weights", "persistentVolumeClaim": {"claimName": claim}})
        mount = {
            "name": "weights",
            "mountPath": model.storage.mount_path if model.storage else "/models",
            "readOnly": read_only,
        }
        if sub_path:
            mount["subPath"] = sub_path
        mounts.append(mount)
    return volumes, mounts


def _claim_of(plan: WorkloadPlan, model: LLMModelSpec) -> tuple[str | None, str | None]:
    """(claim name, sub path) holding the weights, if any."""
    if model.storage is not None and model.storage.existing_claim:
        return model.storage.existing_claim, None
    if model.storage is not None and model.storage.size is not None:
        return f"{plan.deployment.name}-weights", None
    if model.source is not None and model.source.uri.startswith("pvc://"):
        rest = model.source.uri.removeprefix("pvc://")
        claim, _, path = rest.partition("/")
        return claim, path or None
    return None, None


def weights_claim(plan: WorkloadPlan, model: LLMModelSpec) -> Manifest | None:
    storage = model.storage
    if storage is None or storage.size is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode or ("ReadWriteMany" if plan.replicas > 1 else "ReadWriteOnce")],
        "resources": {"requests": {"storage": str(storage.size)}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(plan, f"{plan.deployment.name}-weights"),
        "spec": spec,
    }


def _weights_wait(plan: WorkloadPlan, model: LLMModelSpec) -> list[dict[str, Any]]:
    """Weights fetched from hf:// or s3:// into a claim are loaded once, by the first pod that finds them
    missing, and skipped by every later pod (a marker file records completion)."""
    if model.source is None or model.storage is None or model.source.uri.startswith("pvc://"):
        return []
    claim, _ = _claim_of(plan, model)
    if claim is None:
        return []
    path = "/weights"
    marker = f"{path}/.llm-operator-complete"
    if model.source.uri.startswith("hf://"):
        repo, _, revision = model.source.uri.removeprefix("hf://").partition("@")
        fetch = (
            f'pip install --quiet --no-cache-dir huggingface_hub && python -c "import huggingface_hub as h; '
            f"h.snapshot_download('{repo}', revision={revision!r} or None, local_dir='{path}')\""
        )
        image = "python:3.12-slim"
    else:
        fetch = f"aws s3 sync {model.source.uri} {path}"
        image = "amazon/aws-cli:2.17.0"
    script = f"if [ -f {marker} ]; then echo weights present; exit 0; fi; {fetch} && touch {marker}"
    container: dict[str, Any] = {
        "name": "load-weights",
        "image": image,
        "command": ["sh", "-c", script],
        "volumeMounts": [
            {"name": "weights", "mountPath": path},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": "/cache"},
        ],
        "env": [{"name": "HOME", "value": "/cache"}, {"name": "HF_HOME", "value": "/cache/hf"}],
        "securityContext": _container_security(plan.spec) if plan.spec else {},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
    }
    if model.source.secret_ref:
        container["envFrom"] = [{"secretRef": {"name": model.source.secret_ref}}]
    return [container]


# ------------------------------------------------------------------------------------------- the surroundings


def service(plan: WorkloadPlan, spec: LLMDeploymentSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, plan.deployment.name),
        "spec": {
            "type": spec.service_type,
            "selector": identity_labels(plan),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _peer(peer: NetworkPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, selector in (("namespaceSelector", peer.namespace_selector), ("podSelector", peer.pod_selector)):
        if selector is not None:
            out[key] = selector.wire()
    if peer.ip_block is not None:
        out["ipBlock"] = peer.ip_block.wire()
    return out


def network_policy(plan: WorkloadPlan, spec: LLMDeploymentSpec) -> Manifest:
    sources = [_peer(p) for p in spec.network_policy.allowed_sources] or [{"podSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(plan, plan.deployment.name),
        "spec": {
            "podSelector": {"matchLabels": identity_labels(plan)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources, "ports": [{"port": spec.port, "protocol": "TCP"}]}],
        },
    }


def disruption_budget(plan: WorkloadPlan) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(plan, plan.deployment.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": identity_labels(plan)}},
    }


def autoscaler(plan: WorkloadPlan, spec: LLMDeploymentSpec) -> Manifest:
    """A fleet-level HPA in the origin cluster: it scales the LLMDeployment (through /scale), and the planner
    places the added replicas wherever GPUs are free. Metrics come from the fleet's metrics adapter as External
    metrics selected by the deployment's identity labels."""
    scaling = spec.autoscaling
    assert scaling is not None
    selector = {"matchLabels": identity_labels(plan)}
    metrics: list[dict[str, Any]] = []
    target = scaling.target
    if target.time_to_first_token_p90_ms is not None:
        metrics.append(
            {
                "type": "External",
                "external": {
                    "metric": {"name": "llm_time_to_first_token_p90_milliseconds", "selector": selector},
                    "target": {"type": "Value", "value": str(target.time_to_first_token_p90_ms)},
                },
            }
        )
    if target.queue_depth is not None:
        metrics.append(
            {
                "type": "External",
                "external": {
                    "metric": {"name": "llm_queue_depth", "selector": selector},
                    "target": {"type": "AverageValue", "averageValue": str(target.queue_depth)},
                },
            }
        )
    if target.requests_per_second is not None:
        metrics.append(
            {
                "type": "External",
                "external": {
                    "metric": {"name": "llm_requests_per_second", "selector": selector},
                    "target": {"type": "AverageValue", "averageValue": str(target.requests_per_second)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(plan, plan.deployment.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": "LLMDeployment", "name": plan.deployment.name},
            # The HPA API needs minReplicas >= 1 unless the HPAScaleToZero gate is on.
            "minReplicas": max(1, scaling.min_replicas),
            "maxReplicas": scaling.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": scaling.scale_up_stabilization_seconds},
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds},
            },
        },
    }


MANAGED_KINDS = (
    "Deployment",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "PersistentVolumeClaim",
)
