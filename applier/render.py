"""Render a workload plan into the Kubernetes objects that run it in one cluster. Pure.

Guarantees:
- Deterministic: the same plan renders byte-identical manifests (so re-applying is a no-op for the apiserver).
- Everything rendered carries the standard app.kubernetes.io labels and the deployment's identity labels
  (name, namespace, origin cluster), which is how the applier prunes and the watcher recognises managed objects.
- Objects live in the LLMDeployment's own namespace, named after it; nothing is rendered elsewhere.
- Pods are secure by default (the Kubernetes 'restricted' profile) unless the spec asks for Baseline.
- A plan with no replicas renders nothing. No HorizontalPodAutoscaler is rendered: the planner's fleet autoscaler
  scales through /scale (a HorizontalPodAutoscaler left by an older version is pruned like any object the plan
  no longer holds).
- What is rendered is accepted by the apiserver as is: no duplicate env names or mount paths
  (server-side apply refuses duplicate list keys), and quantities as strings.
- Every object is annotated with the id of the plan that wrote it; the Deployment also records the plan's epoch and
  sequence, the LLMDeployment incarnation (uid) and the objects the plan holds, which is how the applier
  recognises duplicate and stale plans and knows what to prune.
  Nothing about the plan goes into the pod template, so a new plan with the same intent restarts no pod.
"""

from __future__ import annotations

import json
import math
from typing import Any

from api.labels import (
    ANNOTATION_EPOCH,
    ANNOTATION_OBJECTS,
    ANNOTATION_PLAN,
    ANNOTATION_SEQUENCE,
    ANNOTATION_SERVING,
    ANNOTATION_UID,
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_NAMESPACE,
    LABEL_ORIGIN,
    MANAGED_BY,
)
from api.models import LLMDeploymentSpec, LLMModelSpec, NetworkPeer, serving_runtime
from api.plans import WorkloadPlan
from api.quantity import bytes_of
from api.scheduling import GPU_POD_TOLERATIONS

Manifest = dict[str, Any]
CONTAINER = "model-server"
LOADER = "load-weights"
DEFAULT_UID = 1000
WEIGHTS_MARKER = ".llm-operator-complete"
"""Written by the loader into the weights claim once the weights are complete; it holds the source URI, so a
changed source is loaded again and an unchanged one is skipped."""
CACHE_PATH = "/cache"
TMP_PATH = "/tmp"
DEFAULT_WEIGHTS_PATH = "/models"
HF_LOADER_IMAGE = "python:3.12-slim"
S3_LOADER_IMAGE = "amazon/aws-cli:2.17.0"
PROBE_PERIOD_SECONDS = 10


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


def _meta(plan: WorkloadPlan, name: str, *, record: bool = False) -> dict[str, Any]:
    """Name, namespace, labels, and the id of the plan that wrote the object; with `record`, also the plan's
    epoch and sequence and the LLMDeployment's uid (the Deployment carries this record for the applier)."""
    annotations = {ANNOTATION_PLAN: plan.plan_id}
    if record:
        annotations |= {
            ANNOTATION_EPOCH: str(plan.epoch),
            ANNOTATION_SEQUENCE: str(plan.sequence),
            ANNOTATION_UID: plan.deployment.uid,
        }
    return {"name": name, "namespace": plan.deployment.namespace, "labels": labels(plan), "annotations": annotations}


def render(plan: WorkloadPlan, *, exposed: bool = False) -> list[Manifest]:
    """The objects this plan wants in its cluster, in apply order. `exposed`: this cluster declares the
    ``exposed`` network (api.network), so a Service serving another cluster's origin is a LoadBalancer, whose
    ingress addresses the origin's EndpointSlices point at."""
    if plan.spec is None or plan.model is None:
        return []
    spec, model = plan.spec, plan.model
    out: list[Manifest] = []
    if plan.replicas > 0:
        claim = weights_claim(plan, model)
        if claim is not None:
            out.append(claim)
        out.append(service(plan, spec, exposed=exposed))
        if spec.network_policy.enabled:
            out.append(network_policy(plan, spec))
        if plan.replicas > 1:
            out.append(disruption_budget(plan))
        out.append(deployment(plan, spec, model))
    record = ",".join(sorted(object_ref(m) for m in out))
    for manifest in out:
        if manifest["kind"] == "Deployment":
            manifest["metadata"]["annotations"][ANNOTATION_OBJECTS] = record
    return out


def object_ref(manifest: Manifest) -> str:
    """`Kind/name`: how results and the Deployment's record name an object (the namespace is the plan's)."""
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


# ------------------------------------------------------------------------------------------------- the workload


def deployment(plan: WorkloadPlan, spec: LLMDeploymentSpec, model: LLMModelSpec) -> Manifest:
    name = plan.deployment.name
    gpu = model.resources.gpu
    volumes, mounts = _volumes(plan, model)
    probe = {"httpGet": {"path": model.startup.health_path, "port": "http"}}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": model.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": _env(plan, spec, model),
        "resources": _resources(model),
        "securityContext": _container_security(spec),
        "volumeMounts": mounts,
        # Slow model loads: readiness and liveness are held off until the startup probe succeeds, which it may
        # take the model's whole load budget to do.
        "startupProbe": {
            **probe,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": startup_failure_threshold(model),
        },
        "readinessProbe": {**probe, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
    }
    if model.args:
        container["args"] = list(model.args)
    if model.source is not None and model.source.secret_ref:
        container["envFrom"] = [{"secretRef": {"name": model.source.secret_ref}}]

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
        # The GPU operator taints GPU nodes (nvidia.com/gpu=present:NoSchedule); only GPU pods tolerate it, so
        # CPU models never occupy GPU nodes. The planner counts a node usable by the same tolerations.
        pod_spec["tolerations"] = [t.manifest() for t in GPU_POD_TOLERATIONS]
    loader = weights_loader(plan, spec, model)
    if loader is not None:
        pod_spec["initContainers"] = [loader]

    strategy: dict[str, Any] = {"type": "RollingUpdate"}
    if gpu is not None:
        # A surge replica would need GPUs nobody reserved: replace one replica at a time instead.
        strategy["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": 1}
    meta = _meta(plan, name, record=True)
    meta["annotations"][ANNOTATION_SERVING] = serving_annotation(spec, model)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": plan.replicas,
            "selector": {"matchLabels": identity_labels(plan)},
            "strategy": strategy,
            # A replica that is still loading within its budget is progress, not a stalled rollout.
            "progressDeadlineSeconds": max(600, model.startup.timeout_seconds + 300),
            "revisionHistoryLimit": 5,
            "template": {"metadata": {"labels": labels(plan)}, "spec": pod_spec},
        },
    }


def serving_annotation(spec: LLMDeploymentSpec, model: LLMModelSpec) -> str:
    """Where the replicas report load, for the member cluster's agent (watcher/load.py): on the Deployment, not
    the pod template, so changing it restarts no pod."""
    serving = model.serving
    body: dict[str, Any] = {
        "runtime": serving_runtime(model),
        "port": serving.metrics_port or spec.port,
        "path": serving.metrics_path,
    }
    if serving.metrics is not None:
        body["names"] = serving.metrics.model_dump(by_alias=True, exclude_none=True)
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def startup_failure_threshold(model: LLMModelSpec) -> int:
    """Startup probe failures allowed: enough periods to cover the model's load budget."""
    return max(1, math.ceil(model.startup.timeout_seconds / PROBE_PERIOD_SECONDS))


def _resources(model: LLMModelSpec) -> dict[str, dict[str, str]]:
    """Requests equal limits for every resource given (Guaranteed QoS when CPU and memory are both set);
    GPUs are whole devices, requested and limited alike."""
    amounts: dict[str, str] = {}
    if model.resources.cpu is not None:
        amounts["cpu"] = str(model.resources.cpu)
    if model.resources.memory is not None:
        amounts["memory"] = str(model.resources.memory)
    if model.resources.gpu is not None:
        amounts[GPU_RESOURCE] = str(model.resources.gpu.count)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _env(plan: WorkloadPlan, spec: LLMDeploymentSpec, model: LLMModelSpec) -> list[dict[str, Any]]:
    """What the operator tells the model server, then the model's own variables; a model variable of the same
    name replaces the operator's (server-side apply refuses two entries with one name)."""
    own: list[dict[str, Any]] = []
    for var in model.env:
        if var.secret_key_ref is not None:
            ref = var.secret_key_ref
            own.append({"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
        else:
            own.append({"name": var.name, "value": var.value or ""})
    builtin: list[dict[str, Any]] = [{"name": "MODEL_NAME", "value": model.model_name}]
    if model.source is not None:
        builtin.append({"name": "MODEL_SOURCE", "value": model.source.uri})
    if _claim_of(plan, model)[0] is not None:
        builtin.append({"name": "MODEL_PATH", "value": _weights_path(model)})
    builtin.append({"name": "PORT", "value": str(spec.port)})
    out: dict[str, dict[str, Any]] = {}
    for entry in [*builtin, *own]:
        out.pop(entry["name"], None)  # the later definition wins, at its own position
        out[entry["name"]] = entry
    return list(out.values())


def _affinity(plan: WorkloadPlan, model: LLMModelSpec) -> dict[str, Any] | None:
    """GPU pods are pinned to the product the planner chose for this cluster (else to the model's exact types,
    else to any GPU node), and to GPUs with at least the model's minimum memory."""
    gpu = model.resources.gpu
    if gpu is None:
        return None
    expressions: list[dict[str, Any]] = []
    exact = [t for t in gpu.types if not t.endswith("*")]
    if plan.gpu_type:
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [plan.gpu_type]})
    elif exact and len(exact) == len(gpu.types):
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": exact})
    else:  # no preference, or prefix patterns node affinity cannot express
        expressions.append({"key": GPU_PRODUCT_LABEL, "operator": "Exists"})
    if gpu.min_memory is not None:
        # GPU feature discovery labels memory in MiB; "at least N MiB" is "greater than N-1".
        mib = math.ceil(bytes_of(gpu.min_memory) / 2**20)
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
    if "fsGroup" in out:
        # Weights volumes are large: change their ownership once, not on every pod start.
        out["fsGroupChangePolicy"] = "OnRootMismatch"
    return out


def _container_security(spec: LLMDeploymentSpec) -> dict[str, Any]:
    sec = spec.security
    read_only = sec.read_only_root_filesystem
    if read_only is None:
        read_only = sec.profile == "Restricted"
    out: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": read_only,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if sec.profile == "Restricted":
        out["runAsNonRoot"] = True
    return out


def _weights_path(model: LLMModelSpec) -> str:
    return model.storage.mount_path if model.storage else DEFAULT_WEIGHTS_PATH


def _volumes(plan: WorkloadPlan, model: LLMModelSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # A read-only root filesystem still needs somewhere to write: /tmp and a cache directory.
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": TMP_PATH},
        {"name": "cache", "mountPath": CACHE_PATH},
    ]
    if model.resources.shared_memory is not None:
        volumes.append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(model.resources.shared_memory)}}
        )
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    claim, sub_path = _claim_of(plan, model)
    if claim is not None:
        # The volume is writable so the loader (an init container) can fill it; the model server mounts it
        # read-only unless the model says otherwise.
        volumes.append({"name": "weights", "persistentVolumeClaim": {"claimName": claim}})
        mount: dict[str, Any] = {
            "name": "weights",
            "mountPath": _weights_path(model),
            "readOnly": model.storage.read_only if model.storage else True,
        }
        if sub_path:
            mount["subPath"] = sub_path
        # Mount paths are unique in a container: the weights win over a scratch directory at the same path.
        # (The scratch volume stays: the loader mounts it.)
        mounts = [m for m in mounts if m["mountPath"] != mount["mountPath"]]
        mounts.append(mount)
    return volumes, mounts


def _claim_of(plan: WorkloadPlan, model: LLMModelSpec) -> tuple[str | None, str | None]:
    """(claim name, sub path) holding the weights, if any. Claims are names in the workload's own namespace."""
    if model.storage is not None and model.storage.existing_claim:
        return model.storage.existing_claim, None
    if model.storage is not None and model.storage.size is not None:
        return weights_claim_name(plan), None
    if model.source is not None and model.source.uri.startswith("pvc://"):
        rest = model.source.uri.removeprefix("pvc://")
        claim, _, path = rest.partition("/")
        return claim, path.strip("/") or None
    return None, None


def weights_claim_name(plan: WorkloadPlan) -> str:
    return f"{plan.deployment.name}-weights"


def weights_claim(plan: WorkloadPlan, model: LLMModelSpec) -> Manifest | None:
    """A new claim for the weights, when the model asks for storage by size."""
    storage = model.storage
    if storage is None or storage.size is None or storage.existing_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": [storage.access_mode or default_access_mode(plan)],
        "resources": {"requests": {"storage": str(storage.size)}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(plan, weights_claim_name(plan)),
        "spec": spec,
    }


def default_access_mode(plan: WorkloadPlan) -> str:
    """ReadWriteOnce, or ReadWriteMany when the deployment may run several replicas (they may land on several
    nodes). Decided from the LLMDeployment's spec, not this cluster's share, so it does not change when the
    planner moves replicas: a claim's access modes cannot change once it exists."""
    spec = plan.spec
    most = max(
        plan.replicas, spec.replicas if spec else 0, spec.autoscaling.max_replicas if spec and spec.autoscaling else 0
    )
    return "ReadWriteMany" if most > 1 else "ReadWriteOnce"


def weights_loader(plan: WorkloadPlan, spec: LLMDeploymentSpec, model: LLMModelSpec) -> dict[str, Any] | None:
    """Weights fetched from hf:// or s3:// into a claim are loaded by an init container of the model's pods: the
    first pod that finds them missing downloads them, and every later pod sees the marker and skips the download.

    The loader runs under the same security context as the server (a read-only root filesystem included): it
    writes only to the claim, /tmp and /cache. Source values reach the script as environment variables, never
    spliced into shell text."""
    source = model.source
    if source is None or model.storage is None or not source.uri.startswith(("hf://", "s3://")):
        return None
    if _claim_of(plan, model)[0] is None:
        return None
    weights = "/weights"
    env: list[dict[str, Any]] = [
        {"name": "SOURCE_URI", "value": source.uri},
        {"name": "WEIGHTS_DIR", "value": weights},
        {"name": "HOME", "value": CACHE_PATH},
        {"name": "TMPDIR", "value": TMP_PATH},
    ]
    if source.uri.startswith("hf://"):
        repo, _, revision = source.uri.removeprefix("hf://").partition("@")
        env += [
            {"name": "HF_REPO", "value": repo},
            {"name": "HF_REVISION", "value": revision},
            {"name": "HF_HOME", "value": f"{CACHE_PATH}/huggingface"},
            {"name": "PYTHONPATH", "value": f"{CACHE_PATH}/python"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ]
        fetch = (
            f"pip install --quiet --no-cache-dir --disable-pip-version-check --target {CACHE_PATH}/python "
            "huggingface_hub && "
            'python -c "import os, huggingface_hub as h; '
            "h.snapshot_download(os.environ['HF_REPO'], revision=os.environ['HF_REVISION'] or None, "
            "local_dir=os.environ['WEIGHTS_DIR'])\""
        )
        image = HF_LOADER_IMAGE
    else:
        fetch = 'aws s3 sync --only-show-errors "$SOURCE_URI" "$WEIGHTS_DIR"'
        image = S3_LOADER_IMAGE
    marker = f'"$WEIGHTS_DIR/{WEIGHTS_MARKER}"'
    script = (
        "set -eu; "
        f'if [ -f {marker} ] && [ "$(cat {marker})" = "$SOURCE_URI" ]; then '
        'echo "weights from $SOURCE_URI already present"; exit 0; fi; '
        f"{fetch}; "
        f'printf %s "$SOURCE_URI" > {marker}.tmp && mv {marker}.tmp {marker}'
    )
    container: dict[str, Any] = {
        "name": LOADER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "env": env,
        "volumeMounts": [
            {"name": "weights", "mountPath": weights},
            {"name": "tmp", "mountPath": TMP_PATH},
            {"name": "cache", "mountPath": CACHE_PATH},
        ],
        "securityContext": _container_security(spec),
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
    }
    if source.secret_ref:
        container["envFrom"] = [{"secretRef": {"name": source.secret_ref}}]
    return container


# ------------------------------------------------------------------------------------------- the surroundings


def service(plan: WorkloadPlan, spec: LLMDeploymentSpec, *, exposed: bool = False) -> Manifest:
    # This render is the one writer of the Service's fields (the endpoints plans of a serving cluster never touch
    # it): in an exposed cluster, replicas serving another origin are reached from there through a load balancer.
    service_type = "LoadBalancer" if exposed and not plan.is_origin else spec.service_type
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, plan.deployment.name),
        "spec": {
            "type": service_type,
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


def object_name(plan: WorkloadPlan, kind: str) -> str:
    """The name an object of `kind` of this deployment has whenever a plan renders one (names never depend on
    the spec, so these are every name the deployment's objects can have here)."""
    return weights_claim_name(plan) if kind == "PersistentVolumeClaim" else plan.deployment.name


MANAGED_KINDS = (
    "Deployment",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "PersistentVolumeClaim",
)
