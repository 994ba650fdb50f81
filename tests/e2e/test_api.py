"""The API against the real apiserver of the fleet (the CRDs in crds/, installed as a user would install them):
valid samples are accepted, invalid ones are rejected at `kubectl apply` with a message naming the field,
`kubectl explain` / `kubectl scale` / `kubectl get` work, and a missing model is a condition, not an error."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.fixtures.operator import Kubectl, RunningOperator, eventually
from tests.fixtures.services import repo_root

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]

EXAMPLES = repo_root() / "examples"
ROLE = "cpu"  # every cluster has the CRDs; admission tests need only one apiserver
# Server-side dry run: full admission (schema, CEL, defaulting) without storing anything, so validity tests need
# no namespace of their own.
DRY_RUN = ("apply", "--dry-run=server", "-n", "default", "-f", "-")
DELETE = object()
"""In a `changes` mapping: remove this key from the base document."""


def load(relative: str) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLES / relative).read_text())
    assert isinstance(document, dict)
    return document


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


SEED_MODEL = load("seed/model.yaml")
SEED_DEPLOYMENT = load("seed/deployment.yaml")
FULL_MODEL = load("full/model.yaml")
FULL_DEPLOYMENT = load("full/deployment.yaml")
GPU = {"count": 4}


@dataclass(frozen=True)
class Invalid:
    """A sample the apiserver must reject, the field path its message must name, and words it must contain."""

    id: str
    base: dict[str, Any]
    changes: dict[str, Any]
    path: str
    says: str
    document: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "document", merged(self.base, self.changes))


def spec(changes: dict[str, Any]) -> dict[str, Any]:
    return {"spec": changes}


M, D, FD = SEED_MODEL, SEED_DEPLOYMENT, FULL_DEPLOYMENT
INVALID = [
    # ------------------------------------------------------------------------------------------------ LLMModel
    Invalid("model-name-missing", M, spec({"modelName": DELETE}), "spec.modelName", "Required value"),
    Invalid("model-name-empty", M, spec({"modelName": ""}), "spec.modelName", "at least 1 chars long"),
    Invalid("image-missing", M, spec({"image": DELETE}), "spec.image", "Required value"),
    Invalid("image-with-spaces", M, spec({"image": "my registry/gpt:v1"}), "spec.image", "without spaces"),
    # Control characters (issue 15: a NUL in modelName stopped the planner): refused at the door, with a message.
    Invalid("model-name-nul", M, spec({"modelName": "a\x00b"}), "spec.modelName", "must not contain control"),
    Invalid("model-name-escape", M, spec({"modelName": "a\x1b[2Jb"}), "spec.modelName", "control characters"),
    Invalid("image-nul", M, spec({"image": "r/x:v1\x00"}), "spec.image", "control characters"),
    Invalid("args-newline", M, spec({"args": ["--a", "x\ny"]}), "spec.args[1]", "control characters"),
    Invalid(
        "env-value-nul", M, spec({"env": [{"name": "A", "value": "x\x00"}]}), "spec.env[0].value", "control characters"
    ),
    Invalid(
        "env-secret-key-slash",
        M,
        spec({"env": [{"name": "A", "secretKeyRef": {"name": "s", "key": "a/b"}}]}),
        "spec.env[0].secretKeyRef.key",
        "Secret key",
    ),
    Invalid("model-name-too-long", M, spec({"modelName": "m" * 254}), "spec.modelName", "253"),
    Invalid(
        "cpu-not-a-quantity",
        M,
        spec({"resources": {"cpu": "two cores"}}),
        "spec.resources.cpu",
        "must be a Kubernetes quantity",
    ),
    Invalid(
        "memory-4GB",
        M,
        spec({"resources": {"memory": "4GB"}}),
        "spec.resources.memory",
        "must be a Kubernetes quantity",
    ),
    Invalid("memory-zero", M, spec({"resources": {"memory": "0"}}), "spec.resources.memory", "greater than zero"),
    Invalid(
        "shared-memory-negative",
        M,
        spec({"resources": {"sharedMemory": "-1Gi"}}),
        "spec.resources.sharedMemory",
        "greater than zero",
    ),
    Invalid(
        "shared-memory-not-below-memory",
        M,
        spec({"resources": {"memory": "4Gi", "sharedMemory": "8Gi"}}),
        "spec.resources.sharedMemory",
        "must be less than memory",
    ),
    Invalid(
        "gpu-count-zero",
        M,
        spec({"resources": {"gpu": {"count": 0}}}),
        "spec.resources.gpu.count",
        "greater than or equal to 1",
    ),
    Invalid(
        "gpu-count-17",
        M,
        spec({"resources": {"gpu": {"count": 17}}}),
        "spec.resources.gpu.count",
        "less than or equal to 16",
    ),
    Invalid(
        "gpu-count-missing",
        M,
        spec({"resources": {"gpu": {"types": ["NVIDIA-A100-SXM4-80GB"]}}}),
        "spec.resources.gpu.count",
        "Required value",
    ),
    Invalid(
        "gpu-type-with-space",
        M,
        spec({"resources": {"gpu": {**GPU, "types": ["A100 80GB"]}}}),
        "spec.resources.gpu.types[0]",
        "must be a GPU product",
    ),
    Invalid(
        "gpu-type-star-inside",
        M,
        spec({"resources": {"gpu": {**GPU, "types": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-*-80GB"]}}}),
        "spec.resources.gpu.types[1]",
        "optionally ending in '*'",
    ),
    Invalid(
        "gpu-type-repeated",
        M,
        spec({"resources": {"gpu": {**GPU, "types": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB"]}}}),
        "spec.resources.gpu.types",
        "twice",
    ),
    Invalid(
        "gpu-min-memory-malformed",
        M,
        spec({"resources": {"gpu": {**GPU, "minMemory": "eighty gigs"}}}),
        "spec.resources.gpu.minMemory",
        "must be a Kubernetes quantity",
    ),
    Invalid(
        "source-unknown-scheme",
        M,
        spec({"source": {"uri": "gs://bucket/llama"}}),
        "spec.source.uri",
        "known scheme: hf://",
    ),
    Invalid("source-hf-without-org", M, spec({"source": {"uri": "hf://llama"}}), "spec.source.uri", "hf://org/model"),
    Invalid(
        "source-s3-bad-bucket",
        M,
        spec({"source": {"uri": "s3://Bad_Bucket/llama"}}),
        "spec.source.uri",
        "valid bucket name",
    ),
    Invalid(
        "source-s3-path-with-shell-characters",
        M,
        spec({"source": {"uri": "s3://models/llama;rm -rf /"}}),
        "spec.source.uri",
        "a path of letters, digits",
    ),
    Invalid(
        "source-pvc-path-escapes-the-claim",
        M,
        spec({"source": {"uri": "pvc://weights/../etc"}}),
        "spec.source.uri",
        "must stay inside the claim",
    ),
    Invalid(
        "source-secret-not-a-name",
        M,
        spec({"source": {"uri": "hf://org/model", "secretRef": "HF Token"}}),
        "spec.source.secretRef",
        "must be a Kubernetes object name",
    ),
    Invalid(
        "storage-size-and-existing-claim",
        M,
        spec({"storage": {"size": "60Gi", "existingClaim": "weights"}}),
        "spec.storage",
        "not both",
    ),
    Invalid(
        "storage-existing-claim-with-class",
        M,
        spec({"storage": {"existingClaim": "weights", "storageClassName": "fast"}}),
        "spec.storage",
        "only to a new claim",
    ),
    Invalid(
        "storage-without-any-claim",
        M,
        spec({"source": {"uri": "hf://org/model"}, "storage": {"mountPath": "/weights"}}),
        "spec.storage",
        "storage needs size",
    ),
    Invalid(
        "storage-pvc-source-and-new-claim",
        M,
        spec({"source": {"uri": "pvc://weights/llama"}, "storage": {"size": "60Gi"}}),
        "spec.storage",
        "already names the claim",
    ),
    Invalid(
        "storage-size-malformed",
        M,
        spec({"storage": {"size": "60 GB"}}),
        "spec.storage.size",
        "must be a Kubernetes quantity",
    ),
    Invalid(
        "storage-mount-path-relative",
        M,
        spec({"storage": {"size": "60Gi", "mountPath": "models"}}),
        "spec.storage.mountPath",
        "absolute path",
    ),
    Invalid(
        "storage-mount-path-over-tmp",
        M,
        spec({"storage": {"size": "60Gi", "mountPath": "/tmp"}}),
        "spec.storage.mountPath",
        "mounts its own volumes there",
    ),
    Invalid(
        "storage-access-mode-unknown",
        M,
        spec({"storage": {"size": "60Gi", "accessMode": "ReadWriteAll"}}),
        "spec.storage.accessMode",
        "Unsupported value",
    ),
    Invalid(
        "env-value-and-secret",
        M,
        spec({"env": [{"name": "TOKEN", "value": "x", "secretKeyRef": {"name": "s", "key": "k"}}]}),
        "spec.env[0]",
        "set value or secretKeyRef, not both",
    ),
    Invalid(
        "env-name-repeated",
        M,
        spec({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}),
        "spec.env[1]",
        "Duplicate value",
    ),
    Invalid(
        "env-name-reserved-by-the-operator",
        M,
        spec({"env": [{"name": "PORT", "value": "9000"}]}),
        "spec.env[0].name",
        "set by the operator",
    ),
    Invalid(
        "env-name-starts-with-digit",
        M,
        spec({"env": [{"name": "1A", "value": "1"}]}),
        "spec.env[0].name",
        "environment variable name",
    ),
    Invalid(
        "startup-budget-too-short",
        M,
        spec({"startup": {"timeoutSeconds": 5}}),
        "spec.startup.timeoutSeconds",
        "greater than or equal to 10",
    ),
    Invalid(
        "startup-health-path-relative",
        M,
        spec({"startup": {"healthPath": "health"}}),
        "spec.startup.healthPath",
        "absolute path",
    ),
    Invalid(
        "model-object-name-too-long",
        M,
        {"metadata": {"name": "m" * 64}},
        "metadata.name",
        "63",
    ),
    Invalid("model-unknown-field", M, spec({"resource": {"cpu": "2"}}), "spec.resource", "unknown field"),
    # ------------------------------------------------------------------------------------------- LLMDeployment
    Invalid("model-ref-missing", D, spec({"modelRef": DELETE}), "spec.modelRef", "Required value"),
    Invalid("model-ref-empty", D, spec({"modelRef": ""}), "spec.modelRef", "at least 1 chars long"),
    Invalid("model-ref-not-a-name", D, spec({"modelRef": "GPT_Small"}), "spec.modelRef", "must name an LLMModel"),
    Invalid("replicas-missing", D, spec({"replicas": DELETE}), "spec.replicas", "Required value"),
    Invalid("replicas-negative", D, spec({"replicas": -1}), "spec.replicas", "greater than or equal to 0"),
    Invalid("replicas-not-a-number", D, spec({"replicas": "two"}), "spec.replicas", "must be of type integer"),
    Invalid("port-zero", D, spec({"port": 0}), "spec.port", "greater than or equal to 1"),
    Invalid("port-above-65535", D, spec({"port": 70000}), "spec.port", "less than or equal to 65535"),
    Invalid("suspend-not-a-boolean", D, spec({"suspend": "yes"}), "spec.suspend", "must be of type boolean"),
    Invalid("service-type-ingress", D, spec({"serviceType": "Ingress"}), "spec.serviceType", "Unsupported value"),
    Invalid(
        "deployment-name-with-dot",
        D,
        {"metadata": {"name": "chat.service"}},
        "metadata.name",
        "names the Service",
    ),
    Invalid(
        "autoscaling-min-above-max",
        FD,
        spec({"replicas": 3, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
        "spec.autoscaling.minReplicas",
        "must not exceed maxReplicas",
    ),
    Invalid(
        "autoscaling-without-target",
        D,
        spec({"autoscaling": {"maxReplicas": 4, "target": {}}}),
        "spec.autoscaling.target",
        "set at least one target",
    ),
    Invalid(
        "autoscaling-replicas-out-of-range",
        FD,
        spec({"replicas": 20}),
        "spec.replicas",
        "must lie within autoscaling.minReplicas and autoscaling.maxReplicas",
    ),
    Invalid(
        "autoscaling-ttft-zero",
        FD,
        spec({"autoscaling": {"target": {"timeToFirstTokenP90Ms": 0}}}),
        "spec.autoscaling.target.timeToFirstTokenP90Ms",
        "greater than or equal to 1",
    ),
    Invalid(
        "autoscaling-window-above-an-hour",
        FD,
        spec({"autoscaling": {"scaleDownStabilizationSeconds": 7200}}),
        "spec.autoscaling.scaleDownStabilizationSeconds",
        "less than or equal to 3600",
    ),
    Invalid(
        "placement-strategy-unknown",
        D,
        spec({"placement": {"strategy": "Random"}}),
        "spec.placement.strategy",
        'supported values: "Pack", "Spread"',
    ),
    Invalid(
        "placement-max-clusters-zero",
        D,
        spec({"placement": {"maxClusters": 0}}),
        "spec.placement.maxClusters",
        "greater than or equal to 1",
    ),
    Invalid(
        "placement-cluster-repeated",
        D,
        spec({"placement": {"clusters": ["east", "west", "east"]}}),
        "spec.placement.clusters",
        "twice",
    ),
    Invalid(
        "placement-cluster-not-a-name",
        D,
        spec({"placement": {"clusters": ["GPU East"]}}),
        "spec.placement.clusters[0]",
        "member cluster name",
    ),
    Invalid(
        "placement-no-split-with-max-clusters",
        D,
        spec({"placement": {"allowSplit": False, "maxClusters": 3}}),
        "spec.placement.maxClusters",
        "needs allowSplit: true",
    ),
    Invalid(
        "placement-no-split-with-spread",
        D,
        spec({"placement": {"allowSplit": False, "strategy": "Spread"}}),
        "spec.placement.strategy",
        "needs allowSplit: true",
    ),
    Invalid(
        "placement-selector-in-without-values",
        D,
        spec({"placement": {"clusterSelector": {"matchExpressions": [{"key": "gpu", "operator": "In"}]}}}),
        "spec.placement.clusterSelector.matchExpressions[0].values",
        "non-empty for In and NotIn",
    ),
    Invalid(
        "placement-selector-key-not-a-label-key",
        D,
        spec({"placement": {"clusterSelector": {"matchExpressions": [{"key": "gpu type", "operator": "Exists"}]}}}),
        "spec.placement.clusterSelector.matchExpressions[0].key",
        "must be a label key",
    ),
    Invalid(
        "placement-selector-label-value-malformed",
        D,
        spec({"placement": {"clusterSelector": {"matchLabels": {"gpu": "a100!"}}}}),
        "spec.placement.clusterSelector.matchLabels",
        "label values",
    ),
    Invalid(
        "placement-selector-unknown-operator",
        D,
        spec({"placement": {"clusterSelector": {"matchExpressions": [{"key": "gpu", "operator": "Equals"}]}}}),
        "spec.placement.clusterSelector.matchExpressions[0].operator",
        "Unsupported value",
    ),
    Invalid(
        "security-profile-privileged",
        D,
        spec({"security": {"profile": "Privileged"}}),
        "spec.security.profile",
        'supported values: "Restricted", "Baseline"',
    ),
    Invalid(
        "security-root-under-restricted",
        D,
        spec({"security": {"runAsUser": 0}}),
        "spec.security.runAsUser",
        "not allowed under profile Restricted",
    ),
    Invalid(
        "network-source-cidr-malformed",
        D,
        spec({"networkPolicy": {"allowedSources": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}}),
        "spec.networkPolicy.allowedSources[0].ipBlock.cidr",
        "IP range",
    ),
    Invalid(
        "network-source-cidr-host-bits",
        D,
        spec({"networkPolicy": {"allowedSources": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}}),
        "spec.networkPolicy.allowedSources[0].ipBlock.cidr",
        "bits set beyond the prefix length",
    ),
    Invalid(
        "network-source-except-outside-cidr",
        D,
        spec({"networkPolicy": {"allowedSources": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}}),
        "spec.networkPolicy.allowedSources[0].ipBlock.except",
        "strictly inside cidr",
    ),
    Invalid(
        "network-source-ipblock-and-selector",
        D,
        spec({"networkPolicy": {"allowedSources": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}}),
        "spec.networkPolicy.allowedSources[0]",
        "ipBlock alone",
    ),
    Invalid(
        "network-source-empty",
        D,
        spec({"networkPolicy": {"allowedSources": [{}]}}),
        "spec.networkPolicy.allowedSources[0]",
        "ipBlock alone, or namespaceSelector and/or podSelector",
    ),
    Invalid("deployment-unknown-field", D, spec({"replica": 3}), "spec.replica", "unknown field"),
]

VALID = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml"))


def test_the_invalid_table_is_large_and_unambiguous() -> None:
    assert len(INVALID) >= 20
    assert len({case.id for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize("sample", VALID)
async def test_valid_sample_is_accepted(kubectl: Kubectl, sample: str) -> None:
    out = await kubectl(ROLE, *DRY_RUN, input=(EXAMPLES / sample).read_text())
    assert "created (server dry run)" in out


@pytest.mark.parametrize("case", INVALID, ids=lambda case: case.id)
async def test_invalid_sample_is_rejected_naming_the_field(kubectl: Kubectl, case: Invalid) -> None:
    with pytest.raises(AssertionError) as rejected:
        await kubectl(ROLE, *DRY_RUN, input=yaml.safe_dump(case.document))
    message = str(rejected.value)
    assert case.path in message, message
    assert case.says in message, message
    # The field path is what the message is about: `<path>: <problem>`, or the unknown field quoted.
    assert f"{case.path}:" in message or f'"{case.path}"' in message, message


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (
            "llmdeployment.spec.placement",
            ["Which clusters may run the replicas", "clusterSelector", "Ordered cluster preference", "Spread"],
        ),
        ("llmdeployment.spec.autoscaling.target", ["time to first token", "queueDepth", "requestsPerSecond"]),
        ("llmd.status.conditions", ["Ready", "Placed", "Progressing", "Available", "Degraded"]),
        ("llmmodel.spec.resources.gpu", ["GPUs per instance", "minMemory", "nvidia.com/gpu.product"]),
        ("llmm.spec.source", ["hf://org/model", "s3://bucket/path", "pvc://claim", "baked into the image"]),
    ],
)
async def test_kubectl_explain_shows_descriptions(kubectl: Kubectl, path: str, words: list[str]) -> None:
    async def explained() -> str | None:
        # The apiserver publishes a CRD's OpenAPI a moment after the CRD changes.
        out = await kubectl(ROLE, "explain", path)
        return out if all(word in out for word in words) else None

    out = await eventually(explained, timeout=30, what=f"`kubectl explain {path}` to show the descriptions")
    assert "DESCRIPTION:" in out


async def test_kubectl_scale_changes_spec_replicas_and_scale_reports_the_selector(
    kubectl: Kubectl, namespace: str
) -> None:
    await kubectl(ROLE, "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(SEED_DEPLOYMENT))
    await kubectl(ROLE, "scale", "llmd", "chat-service", "--replicas", "3", "-n", namespace)
    llmd = await kubectl.get(ROLE, "llmd", "chat-service", "-n", namespace)
    assert llmd is not None
    assert llmd["spec"]["replicas"] == 3

    # The operator writes status.selector and status.replicas; /scale serves them to HPA, KEDA and kubectl.
    status = {"status": {"replicas": 3, "selector": "llm.example.com/deployment=chat-service"}}
    await kubectl(
        ROLE,
        "patch",
        "llmd",
        "chat-service",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    scale = json.loads(
        await kubectl(
            ROLE,
            "get",
            "--raw",
            f"/apis/llm.example.com/v1alpha1/namespaces/{namespace}/llmdeployments/chat-service/scale",
        )
    )
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 3, "selector": "llm.example.com/deployment=chat-service"}


async def test_kubectl_scale_outside_the_autoscaling_range_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    await kubectl(ROLE, "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(FULL_DEPLOYMENT))
    with pytest.raises(AssertionError) as rejected:
        await kubectl(ROLE, "scale", "llmd", "support-chat", "--replicas", "20", "-n", namespace)
    assert "spec.replicas: Invalid value" in str(rejected.value)
    assert "must lie within autoscaling.minReplicas and autoscaling.maxReplicas" in str(rejected.value)


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


async def test_printer_columns_and_the_llm_category(kubectl: Kubectl, namespace: str) -> None:
    for document in (SEED_MODEL, FULL_MODEL, SEED_DEPLOYMENT):
        await kubectl(ROLE, "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(document))
    status = {
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "readyReplicas": 1,
            "selector": "llm.example.com/deployment=chat-service",
            "clusters": "t-a100,t-cpu",
            "placements": [
                {"cluster": "t-a100", "replicas": 1, "readyReplicas": 1},
                {"cluster": "t-cpu", "replicas": 1, "readyReplicas": 0},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "WaitingForReplicas",
                    "message": "1 of 2 replica(s) ready",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-11-27T09:00:00Z",
                },
                {
                    "type": "Placed",
                    "status": "True",
                    "reason": "Placed",
                    "message": "",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-11-27T09:00:00Z",
                },
            ],
        }
    }
    await kubectl(
        ROLE,
        "patch",
        "llmd",
        "chat-service",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )

    rows = table(await kubectl(ROLE, "get", "llmd", "-n", namespace))
    assert rows[0] == ["NAME", "MODEL", "REPLICAS", "READY", "CLUSTERS", "STATUS", "AGE"]
    # STATUS is the Ready condition's reason, read through a JSONPath filter on status.conditions.
    assert rows[1][:6] == ["chat-service", "gpt-small", "2", "1", "t-a100,t-cpu", "WaitingForReplicas"]

    rows = table(await kubectl(ROLE, "get", "llmm", "-n", namespace))
    assert rows[0] == ["NAME", "MODEL", "IMAGE", "GPUS", "AGE"]
    by_name = {row[0]: row for row in rows[1:]}
    assert by_name["gpt-small"][1:3] == ["GPT-Small", "your-registry/gpt-small:v1"]
    assert by_name["support-llm"][1:4] == ["acme/support-llm-70b", "vllm/vllm-openai:v0.6.3", "4"]

    wide = await kubectl(ROLE, "get", "llmm", "support-llm", "-n", namespace, "-o", "wide")
    assert "GPU-TYPES" in wide
    assert "hf://acme/support-llm-70b@v1.2.0" in wide

    everything = await kubectl(ROLE, "get", "llm", "-n", namespace, "-o", "name")
    assert sorted(everything.split()) == [
        "llmdeployment.llm.example.com/chat-service",
        "llmmodel.llm.example.com/gpt-small",
        "llmmodel.llm.example.com/support-llm",
    ]


def conditions_of(llmd: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in ((llmd or {}).get("status") or {}).get("conditions", [])}


@pytest.mark.services
async def test_missing_model_is_a_condition_and_the_deployment_is_placed_once_the_model_exists(
    operator: RunningOperator, kubectl: Kubectl
) -> None:
    ns, origin = operator.namespace, "cpu"
    # Admission accepts a deployment of a model that does not exist (yet): that is not the apiserver's business.
    await kubectl(origin, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(FULL_DEPLOYMENT))

    async def model_not_found() -> dict[str, Any] | None:
        llmd = await kubectl.get(origin, "llmd", "support-chat", "-n", ns)
        ready = conditions_of(llmd).get("Ready", {})
        return llmd if (ready.get("status"), ready.get("reason")) == ("False", "ModelNotFound") else None

    llmd = await eventually(model_not_found, timeout=60, what="Ready=False reason=ModelNotFound")
    assert "support-llm" in conditions_of(llmd)["Ready"]["message"]
    assert llmd["status"]["observedGeneration"] == llmd["metadata"]["generation"]
    assert "phase" not in llmd["status"]

    await kubectl(origin, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(FULL_MODEL))

    async def placed() -> dict[str, Any] | None:
        llmd = await kubectl.get(origin, "llmd", "support-chat", "-n", ns)
        conditions = conditions_of(llmd)
        # Wait for the status to settle (Ready), so the printer columns read below show the same state.
        settled = conditions.get("Ready", {}).get("status") == "True"
        return llmd if conditions.get("Placed", {}).get("status") == "True" and settled else None

    llmd = await eventually(placed, timeout=90, what="Placed=True and Ready once the model exists")
    conditions = conditions_of(llmd)
    assert conditions["Ready"]["reason"] != "ModelNotFound"
    placements = llmd["status"]["placements"]
    # 2 replicas of 4 GPUs each, only on clusters labelled gpu in (a100, mixed), on 80 GB GPUs.
    assert sum(p["replicas"] for p in placements) == 2
    gpu_clusters = {operator.cluster("a100"), operator.cluster("mixed")}
    assert {p["cluster"] for p in placements} <= gpu_clusters
    assert all(p["gpuType"] in ("NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3") for p in placements)
    assert llmd["status"]["clusters"]
    rows = table(await kubectl(origin, "get", "llmd", "support-chat", "-n", ns))
    assert rows[1][4] == llmd["status"]["clusters"]
    assert rows[1][5] == conditions["Ready"]["reason"]
