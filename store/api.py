"""The user-facing API, ``llm.example.com/v1alpha1``: LLMModel and LLMDeployment, as pydantic models.

These models are the one source of truth for the API: `store.crd` turns them into the CRD manifests in ``crds/``
(OpenAPI schema, CEL rules, printer columns, subresources), and the planner parses observed objects with them.
Field docstrings become the descriptions `kubectl explain` shows.

Guarantees: every example in the seed README parses unchanged; pydantic accepts at least everything the
apiserver's schema accepts (cross-field rules live in CEL, enforced at admission, and are not repeated here);
models are frozen and do no I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic.alias_generators import to_camel

from store.conditions import Condition
from store.quantity import parse_quantity

GROUP = "llm.example.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/cleanup"
CATEGORY = "llm"

# A quantity is written like a Pod's resources ("2", 500m, "4Gi", or a bare integer). CEL `isQuantity` gives a
# readable admission error instead of a regular expression.
Quantity = Annotated[
    str | int,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || isQuantity(self)",
                    "message": "must be a Kubernetes quantity such as 500m, 2, 80Gi",
                }
            ],
        }
    ),
]

# GPU products as GPU-feature-discovery labels them (nvidia.com/gpu.product), e.g. NVIDIA-A100-SXM4-80GB.
# A trailing '*' accepts every product with that prefix, e.g. NVIDIA-A100-*.
GPU_TYPE_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,61}[A-Za-z0-9*]?$"
SOURCE_SCHEMES = ("hf://", "s3://", "pvc://")
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ApiModel(BaseModel):
    """Base for API types: camelCase on the wire, frozen, docstrings as descriptions, unknown fields ignored."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def wire(self) -> dict[str, Any]:
        """The object as it is written in YAML: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    entry: dict[str, JsonValue] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


# --------------------------------------------------------------------------------------------------- LLMModel


class GPURequirements(ApiModel):
    """GPUs each instance (replica) of the model needs, all on one node."""

    count: int = Field(ge=1, le=16)
    """GPUs per instance, 1 to 16. All of them are allocated on the same node."""
    types: list[Annotated[str, Field(pattern=GPU_TYPE_PATTERN)]] = Field(default_factory=list, max_length=16)
    """Acceptable GPU products in order of preference, as GPU feature discovery labels them
    (nvidia.com/gpu.product), e.g. NVIDIA-A100-SXM4-80GB. A trailing '*' matches a prefix (NVIDIA-H100-*).
    The next type is used only when the preferred one has no room. Empty: any GPU."""
    min_memory: Quantity | None = None
    """Minimum memory per GPU (nvidia.com/gpu.memory), e.g. 80Gi. Nodes with smaller GPUs are not used."""


class ModelResources(ApiModel):
    """Compute resources of one instance of the model."""

    cpu: Quantity | None = None
    """CPU requested per instance, e.g. "2" or 500m."""
    memory: Quantity | None = None
    """Memory requested per instance, e.g. 4Gi or 80Gi."""
    gpu: GPURequirements | None = None
    """GPU needs per instance; leave out for CPU-only models."""
    shared_memory: Quantity | None = None
    """Size of /dev/shm (a memory-backed emptyDir), needed by tensor-parallel inference servers, e.g. 16Gi."""


class WeightsSource(ApiModel):
    """Where the model weights come from. Leave out when the weights are baked into the image."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.uri.startsWith('hf://') || self.uri.startsWith('s3://') || self.uri.startsWith('pvc://')",
                    "uri must use a known scheme: hf://org/model[@revision], s3://bucket/path or pvc://claim[/path]",
                    ".uri",
                ),
                cel(
                    "!self.uri.startsWith('hf://') || self.uri.matches('^hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+(@[-A-Za-z0-9_./]+)?$')",
                    "hf:// sources are written hf://org/model or hf://org/model@revision",
                    ".uri",
                ),
                cel(
                    "!self.uri.startsWith('s3://') || self.uri.matches('^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/.*)?$')",
                    "s3:// sources are written s3://bucket/path with a valid bucket name",
                    ".uri",
                ),
                cel(
                    "!self.uri.startsWith('pvc://') || self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')",
                    "pvc:// sources are written pvc://claim-name or pvc://claim-name/path",
                    ".uri",
                ),
            ]
        }
    )

    uri: str = Field(min_length=1, max_length=2048)
    """hf://org/model@revision (Hugging Face), s3://bucket/path, or pvc://claim/path (weights already on a claim)."""
    secret_ref: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret with credentials for the source (HF_TOKEN, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)."""


class WeightsStorage(ApiModel):
    """Persistent storage for the weights, mounted into every instance."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.size) != has(self.existingClaim)",
                    "set exactly one of size (a new claim) or existingClaim",
                ),
                cel(
                    "!has(self.existingClaim) || (!has(self.storageClassName) && !has(self.accessMode))",
                    "storageClassName and accessMode apply only to a new claim (size), not to existingClaim",
                ),
            ]
        }
    )

    size: Quantity | None = None
    """Size of a new PersistentVolumeClaim for the weights, e.g. 60Gi."""
    storage_class_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """StorageClass of the new claim; the cluster default when left out."""
    access_mode: Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"] | None = None
    """Access mode of the new claim; ReadWriteOnce when left out (ReadWriteMany for replicas on many nodes)."""
    existing_claim: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Use this existing PersistentVolumeClaim instead of creating one."""
    mount_path: str = Field(default="/models", pattern=r"^/.*")
    """Where the weights are mounted in the container."""
    read_only: bool = True
    """Mount the weights read-only (recommended)."""


class EnvSecretKeyRef(ApiModel):
    """A key of a Secret in the workload's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret."""


class EnvVar(ApiModel):
    """An environment variable of the model server."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.value) && has(self.secretKeyRef))", "set value or secretKeyRef, not both")
            ]
        }
    )

    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=256)
    """Variable name."""
    value: str | None = None
    """Literal value."""
    secret_key_ref: EnvSecretKeyRef | None = None
    """Take the value from a Secret key instead."""


class Startup(ApiModel):
    """How long a slow model may take to load before the instance is restarted."""

    timeout_seconds: int = Field(default=600, ge=10, le=86400)
    """Load budget in seconds: the startup probe allows this long before liveness checks begin."""
    health_path: str = Field(default="/health", pattern=r"^/.*")
    """HTTP path that answers 200 once the model is loaded and serving."""


class LLMModelSpec(ApiModel):
    """A model: the server image, its resources, and where its weights live."""

    model_name: str = Field(min_length=1, max_length=253)
    """Name of the LLM model, e.g. GPT-Small or meta-llama/Llama-3.1-70B-Instruct."""
    image: str = Field(min_length=1, max_length=1024, pattern=r"^\S+$")
    """Container image of the model server, e.g. your-registry/gpt-small:v1."""
    resources: ModelResources = Field(default_factory=ModelResources)
    """CPU, memory, GPU and shared-memory needs of one instance."""
    source: WeightsSource | None = None
    """Where the weights come from; leave out when they are baked into the image."""
    storage: WeightsStorage | None = None
    """Persistent storage for the weights (a new or an existing claim)."""
    args: list[str] = Field(default_factory=list, max_length=256)
    """Arguments passed to the model server."""
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    """Environment variables of the model server."""
    startup: Startup = Field(default_factory=Startup)
    """Startup budget and health path for slow model loads."""


class LLMModelStatus(ApiModel):
    """What the operator observed about the model."""

    observed_generation: int | None = None
    """The generation the status was computed from."""
    conditions: list[Condition] = Field(default_factory=list)
    """Accepted: the model is valid and can be deployed."""


class LLMModel(ApiModel):
    """An LLM ready to be deployed: image, resources, weights."""

    api_version: Literal["llm.example.com/v1alpha1"] = "llm.example.com/v1alpha1"
    kind: Literal["LLMModel"] = "LLMModel"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LLMModelSpec
    status: LLMModelStatus | None = None


# ---------------------------------------------------------------------------------------------- LLMDeployment


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement: key, operator and values."""

    key: str = Field(min_length=1, max_length=317)
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] = Field(default_factory=list)
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""


class LabelSelector(ApiModel):
    """A standard Kubernetes label selector."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels that must all match exactly."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)
    """Requirements that must all hold."""


class AutoscalingTarget(ApiModel):
    """What to hold steady by adding or removing replicas. Set one or more; the largest demand wins."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.timeToFirstTokenP90Ms) || has(self.queueDepth) || has(self.requestsPerSecond)",
                    "set at least one target: timeToFirstTokenP90Ms, queueDepth or requestsPerSecond",
                )
            ]
        }
    )

    time_to_first_token_p90_ms: int | None = Field(default=None, alias="timeToFirstTokenP90Ms", ge=1)
    """Keep the 90th percentile time to first token at or below this many milliseconds."""
    queue_depth: int | None = Field(default=None, ge=1)
    """Keep waiting requests per replica at or below this."""
    requests_per_second: int | None = Field(default=None, ge=1)
    """Keep requests per second per replica at or below this."""


class Autoscaling(ApiModel):
    """Scale replicas on inference metrics across the fleet (the planner places added replicas where GPUs are)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must not exceed maxReplicas",
                    ".minReplicas",
                )
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas; 0 allows scaling to zero."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas."""
    target: AutoscalingTarget
    """The metric targets to hold."""
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """Look-back window before scaling up (0: scale up at once)."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """Look-back window before scaling down (avoids flapping after bursts)."""


class Placement(ApiModel):
    """Which member clusters may run the replicas, and how to spread them."""

    cluster_selector: LabelSelector | None = None
    """Only clusters whose labels match."""
    clusters: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list, max_length=100
    )
    """Ordered cluster preference: earlier clusters are filled first. Clusters not listed are used only if
    allowed by the selector and needed."""
    prefer_origin: bool = True
    """Prefer the cluster where the LLMDeployment was applied, when it has room."""
    strategy: Literal["Pack", "Spread"] = "Pack"
    """Pack: fill as few clusters and nodes as possible. Spread: balance replicas across eligible clusters."""
    allow_split: bool = True
    """Allow replicas to be divided among clusters when no single cluster holds them all."""
    max_clusters: int | None = Field(default=None, ge=1, le=100)
    """At most this many clusters run replicas."""


class SecurityOverride(ApiModel):
    """Pod security for the model server. The default is the Kubernetes 'restricted' profile."""

    profile: Literal["Restricted", "Baseline"] = "Restricted"
    """Restricted: non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
    read-only root filesystem. Baseline: the same minus the non-root and read-only-root requirements."""
    run_as_user: int | None = Field(default=None, ge=0)
    """UID to run as (must be non-zero under Restricted)."""
    run_as_group: int | None = Field(default=None, ge=0)
    """GID to run as."""
    fs_group: int | None = Field(default=None, ge=0)
    """Group that owns mounted volumes."""
    read_only_root_filesystem: bool | None = None
    """Override the read-only root filesystem (true under Restricted)."""


class IPBlock(ApiModel):
    """An IP range."""

    cidr: str = Field(min_length=1)
    """CIDR, e.g. 10.0.0.0/8."""
    except_: list[str] = Field(default_factory=list, alias="except")
    """CIDRs inside cidr to exclude."""


class NetworkPeer(ApiModel):
    """Sources allowed to reach the model port (the Kubernetes NetworkPolicyPeer shape)."""

    namespace_selector: LabelSelector | None = None
    """Pods in namespaces matching this selector."""
    pod_selector: LabelSelector | None = None
    """Pods matching this selector (in the workload's namespace unless namespaceSelector is set)."""
    ip_block: IPBlock | None = None
    """Clients from this IP range."""


class NetworkPolicySpec(ApiModel):
    """The NetworkPolicy guarding the model port."""

    enabled: bool = True
    """Create a NetworkPolicy that admits traffic only to the model port and only from allowedSources."""
    allowed_sources: list[NetworkPeer] = Field(default_factory=list)
    """Who may connect. Empty: pods in the same namespace."""


class LLMDeploymentSpec(ApiModel):
    """How many instances of a model to run, where, and how they are exposed and scaled."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.autoscaling) || "
                    "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
                    "replicas must lie within autoscaling.minReplicas and autoscaling.maxReplicas",
                    ".replicas",
                ),
            ]
        }
    )

    model_ref: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the LLMModel (in the same namespace) to deploy."""
    replicas: int = Field(ge=0, le=1000)
    """Number of model instances across the fleet. Changed by `kubectl scale` and by autoscaling."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the model server listens on and the Service exposes."""
    suspend: bool = False
    """Stop all instances (replicas become 0 everywhere) while keeping the deployment and its history."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the Service in each cluster that runs replicas."""
    autoscaling: Autoscaling | None = None
    """Scale on inference latency, queue depth or request rate."""
    placement: Placement = Field(default_factory=Placement)
    """Which clusters may run the replicas and how they are divided."""
    security: SecurityOverride = Field(default_factory=SecurityOverride)
    """Pod security; restricted by default."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Network policy for the model port; on by default."""


class ClusterPlacementStatus(ApiModel):
    """Replicas of this deployment in one member cluster."""

    cluster: str
    """Member cluster name."""
    replicas: int = 0
    """Replicas placed in this cluster."""
    ready_replicas: int = 0
    """Replicas ready in this cluster."""
    gpu_type: str | None = None
    """GPU product the replicas run on."""


class Endpoint(ApiModel):
    """Where clients reach the model in one cluster."""

    cluster: str
    """Member cluster name."""
    url: str
    """In-cluster URL of the Service."""


class LLMDeploymentStatus(ApiModel):
    """Where and how the deployment runs, as observed across the fleet."""

    observed_generation: int | None = None
    """The .metadata.generation the status was computed from."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready (summary), Placed, Progressing, Available, Degraded."""
    replicas: int = 0
    """Replicas placed across the fleet."""
    ready_replicas: int = 0
    """Replicas ready across the fleet."""
    selector: str | None = None
    """Label selector of the instances (for /scale and autoscalers)."""
    placements: list[ClusterPlacementStatus] = Field(default_factory=list)
    """Per-cluster replicas."""
    clusters: str | None = None
    """Comma-separated clusters that run replicas (shown by kubectl get)."""
    endpoints: list[Endpoint] = Field(default_factory=list)
    """Service URL in each cluster that runs replicas."""
    ready: str | None = None
    """Ready condition's reason, for kubectl get."""


class LLMDeployment(ApiModel):
    """A running deployment of an LLMModel across the fleet."""

    api_version: Literal["llm.example.com/v1alpha1"] = "llm.example.com/v1alpha1"
    kind: Literal["LLMDeployment"] = "LLMDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus | None = None


# ------------------------------------------------------------------------------------------- derived figures


def gpu_count(spec: LLMModelSpec) -> int:
    return spec.resources.gpu.count if spec.resources.gpu else 0


def gpu_min_memory_bytes(spec: LLMModelSpec) -> int:
    gpu = spec.resources.gpu
    if gpu is None or gpu.min_memory is None:
        return 0
    return int(parse_quantity(gpu.min_memory))
