"""The user-facing API, ``llm.example.com/v1alpha1``: LLMModel and LLMDeployment, as pydantic models.

These models are the one source of truth for the API: `api.crd` turns them into the CRD manifests in ``crds/``
(OpenAPI schema, CEL rules, printer columns, subresources), and the planner parses observed objects with them.
Field docstrings become the descriptions `kubectl explain` shows.

Guarantees: every example in the seed README parses unchanged; pydantic accepts at least everything the
apiserver's schema accepts (cross-field rules live in CEL, enforced at admission, and are not repeated here);
a string rule declared with `Matches` is one regular expression checked by both pydantic and the apiserver;
models are frozen and do no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    JsonValue,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from api.conditions import Condition
from api.quantity import bytes_of, parse_quantity

GROUP = "llm.example.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/cleanup"
CATEGORY = "llm"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# RFC 1035 label: what a Service may be called (an LLMDeployment's name becomes its Service's name).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# GPU products as GPU-feature-discovery labels them (nvidia.com/gpu.product), e.g. NVIDIA-A100-SXM4-80GB.
# A trailing '*' accepts every product with that prefix, e.g. NVIDIA-A100-*.
GPU_TYPE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9*])?$"
# Label keys ([prefix/]name) and values, as the apiserver checks them in label selectors.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# Environment variables the operator sets on the model server itself (applier/render.py); a second definition
# would make the rendered Deployment invalid for server-side apply.
RESERVED_ENV = ("MODEL_NAME", "MODEL_SOURCE", "MODEL_PATH", "PORT")
# Reserved mount paths: the operator mounts its own volumes there (see applier/render.py).
RESERVED_MOUNT_PATHS = ("/", "/tmp", "/tmp/", "/cache", "/cache/", "/dev/shm", "/dev/shm/")

# Bounds that keep CEL rules within the apiserver's cost budget: every list a rule iterates, and every string a
# rule reads, has a maximum size.
MAX_NAME = 253
MAX_PATH = 1024
MAX_URI = 2048
MAX_LIST = 64
MAX_SELECTOR = 16
"""Sources, requirements and values in label selectors: small, because their rules multiply (a NetworkPolicy
source holds two selectors, each with requirements, each with values)."""
MAX_ENV_VALUE = 8192
"""With 256 variables, a longer value would put the rule that reads it over the apiserver's CEL cost budget."""
# Control characters never belong in names, references, paths or arguments: NUL cannot even be stored (Postgres
# refuses it in text and jsonb), and the others garble logs and terminals. Env values may hold tabs and newlines
# (a PEM block, say), nothing else below 0x20.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
NO_CONTROL_MESSAGE = "must not contain control characters (NUL, tab, newline, escape and the like)"
ENV_VALUE_TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    """One ``x-kubernetes-validations`` entry. `field_path` points the error at a child field."""
    entry: dict[str, JsonValue] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def cel_string(text: str) -> str:
    """`text` as a CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def list_map(*keys: str) -> dict[str, JsonValue]:
    """``json_schema_extra`` for a list whose items are identified by `keys` (duplicates are rejected, and
    server-side apply merges items by key)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def validations(*rules: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """``json_schema_extra`` for a model whose CRD schema carries these CEL rules."""
    return {"x-kubernetes-validations": list(rules)}


@dataclass(frozen=True)
class Matches:
    """Annotation: the string must match `pattern` (anchored). Checked by pydantic, and at admission by a CEL rule
    with `message`, which says what is expected where the apiserver's own pattern error would only quote the
    regular expression."""

    pattern: str
    message: str

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        regex = re.compile(self.pattern)
        message = self.message

        def check(value: str) -> str:
            # fullmatch: every pattern here is anchored, and Python's `$` would also match before a final newline,
            # which RE2 (the apiserver's engine) does not.
            if not regex.fullmatch(value):
                raise ValueError(message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out.setdefault("x-kubernetes-validations", []).append(
            cel(f"self.matches({cel_string(self.pattern)})", self.message)
        )
        return out


def _positive_quantity(value: str | int) -> str | int:
    if parse_quantity(value) <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return value


# A quantity is written like a Pod's resources ("2", 500m, "4Gi", or a bare integer). CEL `isQuantity` gives a
# readable admission error instead of a regular expression. Every quantity in this API is a size or an amount,
# so it must be positive.
Quantity = Annotated[
    str | int,
    AfterValidator(_positive_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "maxLength": 64,
            "x-kubernetes-validations": [
                cel(
                    "type(self) == int || isQuantity(self)",
                    "must be a Kubernetes quantity such as 500m, 2, 4Gi or 80Gi (not 4GB or 2 cores)",
                ),
                cel(
                    "type(self) == int ? self > 0 : (!isQuantity(self) || quantity(self).isGreaterThan(quantity('0')))",
                    "must be greater than zero",
                ),
            ],
        }
    ),
]

SubdomainName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME),
    Matches(DNS_SUBDOMAIN, "must be a Kubernetes object name: lowercase letters, digits, '-' and '.' (e.g. my-name)"),
]
ClusterName = Annotated[
    str,
    Field(min_length=1, max_length=63),
    Matches(DNS_LABEL, "must be a member cluster name: lowercase letters, digits and '-' (e.g. gpu-east-1)"),
]
AbsolutePath = Annotated[
    str,
    Field(min_length=1, max_length=MAX_PATH),
    Matches(r"^/[^\x00-\x1f\x7f]*$", "must be an absolute path starting with '/', without control characters"),
]


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


# --------------------------------------------------------------------------------------------------- LLMModel

GPUType = Annotated[
    str,
    Field(min_length=1, max_length=63),
    Matches(
        GPU_TYPE_PATTERN,
        "must be a GPU product as GPU feature discovery labels it (nvidia.com/gpu.product: letters, digits, "
        "'-', '_', '.'), e.g. NVIDIA-A100-SXM4-80GB, optionally ending in '*' to match a prefix, e.g. NVIDIA-H100-*",
    ),
]


class GPURequirements(ApiModel):
    """GPUs each instance (replica) of the model needs. All of an instance's GPUs are on one node, so an
    instance needing 4 GPUs is placed only on a node with 4 free GPUs of an acceptable type."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.types) || self.types.all(t, self.types.indexOf(t) == self.types.lastIndexOf(t))",
                "types must not list the same GPU type twice",
                ".types",
            )
        )
    )

    count: int = Field(ge=1, le=16)
    """GPUs per instance, 1 to 16 (the nvidia.com/gpu request of each pod). Required."""
    types: list[GPUType] = Field(default_factory=list, max_length=16)
    """Acceptable GPU products, most preferred first, as GPU feature discovery labels them (nvidia.com/gpu.product),
    e.g. [NVIDIA-A100-SXM4-80GB, NVIDIA-H100-80GB-HBM3]. A trailing '*' matches a prefix (NVIDIA-H100-*).
    The next type is used only for replicas the preferred ones cannot hold; all of an instance's GPUs are of one
    type. Empty or left out: any GPU product. At most 16 entries, no repeats."""
    min_memory: Quantity | None = None
    """Minimum memory of each GPU, e.g. 80Gi, compared with the node label nvidia.com/gpu.memory. Nodes with
    smaller GPUs are not used. Left out: any GPU memory."""


class ModelResources(ApiModel):
    """Compute resources of one instance of the model. Quantities are written as in a Pod (500m, 2, 4Gi)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.sharedMemory) || !has(self.memory) || !isQuantity(string(self.sharedMemory)) "
                "|| !isQuantity(string(self.memory)) "
                "|| quantity(string(self.sharedMemory)).isLessThan(quantity(string(self.memory)))",
                "sharedMemory is memory-backed and counts against memory, so it must be less than memory",
                ".sharedMemory",
            )
        )
    )

    cpu: Quantity | None = None
    """CPU requested per instance, e.g. "2" or 500m."""
    memory: Quantity | None = None
    """Memory requested (and limited to) per instance, e.g. 4Gi or 80Gi."""
    gpu: GPURequirements | None = None
    """GPU needs per instance; leave out for CPU-only models."""
    shared_memory: Quantity | None = None
    """Size of /dev/shm (a memory-backed emptyDir, counted against the pod's memory), needed by tensor-parallel
    inference servers (NCCL), e.g. 16Gi. Left out: the container runtime's default (usually 64Mi)."""


class WeightsSource(ApiModel):
    """Where the model weights come from. Leave out the whole source when the weights are baked into the image."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.uri.startsWith('hf://') || self.uri.startsWith('s3://') || self.uri.startsWith('pvc://')",
                "uri must use a known scheme: hf://org/model[@revision], s3://bucket/path or pvc://claim[/path] "
                "(leave source out when the weights are baked into the image)",
                ".uri",
            ),
            cel(
                "!self.uri.startsWith('hf://') || "
                "self.uri.matches('^hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+(@[-A-Za-z0-9_./]+)?$')",
                "hf:// sources are written hf://org/model or hf://org/model@revision",
                ".uri",
            ),
            cel(
                "!self.uri.startsWith('s3://') || "
                "self.uri.matches('^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/[-A-Za-z0-9_.+=@/]*)?$')",
                "s3:// sources are written s3://bucket/path, with a valid bucket name and a path of letters, digits "
                "and - _ . + = @ /",
                ".uri",
            ),
            cel(
                "!self.uri.startsWith('pvc://') || "
                "self.uri.matches('^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^/].*)?$')",
                "pvc:// sources are written pvc://claim-name or pvc://claim-name/path/in/claim",
                ".uri",
            ),
            cel(
                "!self.uri.startsWith('pvc://') || !self.uri.matches('/[.][.](/|$)')",
                "the path of a pvc:// source must stay inside the claim (no '..')",
                ".uri",
            ),
        )
    )

    uri: Annotated[str, Field(min_length=1, max_length=MAX_URI), Matches(NO_CONTROL, NO_CONTROL_MESSAGE)]
    """hf://org/model[@revision] (Hugging Face Hub; pin a revision for reproducible rollouts),
    s3://bucket/path (S3 or an S3-compatible store), or pvc://claim[/path] (weights already on a
    PersistentVolumeClaim in each cluster that runs the model, mounted read-only). Required.
    With storage (a new claim or an existing one), hf:// and s3:// weights are downloaded into the claim once,
    by an init container, and reused by every later instance; without storage, the model server receives the
    URI in MODEL_SOURCE and fetches the weights itself."""
    secret_ref: SubdomainName | None = None
    """Secret in the deployment's namespace whose keys become environment variables of the loader and the model
    server: HF_TOKEN for hf://; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) for s3://."""


class WeightsStorage(ApiModel):
    """Persistent storage for the weights, mounted into every instance: a new claim (size), an existing claim
    (existingClaim), or, with a pvc:// source, neither (the source names the claim; only mountPath and readOnly
    apply)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.size) && has(self.existingClaim))",
                "set size (a new claim) or existingClaim, not both",
            ),
            cel(
                "!has(self.existingClaim) || (!has(self.storageClassName) && !has(self.accessMode))",
                "storageClassName and accessMode apply only to a new claim (size), not to existingClaim",
            ),
            cel(
                f"!has(self.mountPath) || !(self.mountPath in [{', '.join(map(cel_string, RESERVED_MOUNT_PATHS))}])",
                "mountPath must not be /, /tmp, /cache or /dev/shm: the operator mounts its own volumes there",
                ".mountPath",
            ),
        )
    )

    size: Quantity | None = None
    """Size of a new PersistentVolumeClaim for the weights, created in each cluster that runs the model, e.g.
    60Gi for 45 GB of weights. Leave room for the download's temporary files."""
    storage_class_name: SubdomainName | None = None
    """StorageClass of the new claim; the cluster's default StorageClass when left out."""
    access_mode: Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"] | None = None
    """Access mode of the new claim. Left out: ReadWriteOnce for one replica per cluster, ReadWriteMany when a
    cluster runs several (they may be on different nodes)."""
    existing_claim: SubdomainName | None = None
    """Use this existing PersistentVolumeClaim (in the deployment's namespace, in every cluster that runs the
    model) instead of creating one."""
    mount_path: AbsolutePath = "/models"
    """Where the weights are mounted in the model server's container. Default /models (also passed to the
    server as MODEL_PATH)."""
    read_only: bool = True
    """Mount the weights read-only in the model server (recommended; the loader still writes them). Default true."""


class EnvSecretKeyRef(ApiModel):
    """A key of a Secret in the deployment's namespace."""

    name: SubdomainName
    """Name of the Secret. Required."""
    key: Annotated[
        str,
        Field(min_length=1, max_length=MAX_NAME),
        Matches(r"^[-._a-zA-Z0-9]+$", "must be a Secret key: letters, digits, '-', '_' and '.'"),
    ]
    """Key in the Secret. Required."""


class EnvVar(ApiModel):
    """An environment variable of the model server: a literal value or a Secret key."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!(has(self.value) && has(self.secretKeyRef))", "set value or secretKeyRef, not both"),
            cel(
                f"!(self.name in [{', '.join(map(cel_string, RESERVED_ENV))}])",
                "MODEL_NAME, MODEL_SOURCE, MODEL_PATH and PORT are set by the operator (from modelName, source, "
                "storage.mountPath and the deployment's port)",
                ".name",
            ),
        )
    )

    name: Annotated[
        str,
        Field(min_length=1, max_length=MAX_NAME),
        Matches(
            r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
            "must be an environment variable name: letters, digits, '_', '-' and '.', not starting with a digit",
        ),
    ]
    """Variable name, unique in the list. Required. Not MODEL_NAME, MODEL_SOURCE, MODEL_PATH or PORT: the operator
    sets those itself."""
    value: (
        Annotated[
            str,
            Field(max_length=MAX_ENV_VALUE),
            Matches(ENV_VALUE_TEXT, "must not contain control characters other than tab and newline"),
        ]
        | None
    ) = None
    """Literal value, at most 8192 characters (larger values belong in a Secret: use secretKeyRef)."""
    secret_key_ref: EnvSecretKeyRef | None = None
    """Take the value from a Secret key instead."""


class Startup(ApiModel):
    """How long a slow model may take to load before the instance is restarted, and how readiness is checked."""

    timeout_seconds: int = Field(default=600, ge=10, le=86400)
    """Load budget in seconds, 10 to 86400 (default 600): the startup probe allows this long for the server to
    answer on healthPath before liveness checks begin and the container would be restarted. Size it for the
    weights: 45 GB from network storage can take several minutes."""
    health_path: AbsolutePath = "/health"
    """HTTP path on the model port that answers 200 once the model is loaded and serving. Default /health."""


MetricName = Annotated[
    str,
    Field(min_length=1, max_length=200),
    Matches(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", "must be a Prometheus metric name, e.g. vllm:num_requests_waiting"),
]


class ServingMetrics(ApiModel):
    """Which Prometheus metrics of a custom server carry the load signal. For a histogram give its base name
    (without _bucket); for a counter its full name (with _total, if the server adds it)."""

    time_to_first_token_seconds: MetricName | None = None
    """Histogram of the time to the first token, in seconds (e.g. vllm:time_to_first_token_seconds)."""
    requests_waiting: MetricName | None = None
    """Gauge of the requests queued, waiting for a batch slot (e.g. vllm:num_requests_waiting)."""
    requests_running: MetricName | None = None
    """Gauge of the requests being served (e.g. vllm:num_requests_running)."""
    kv_cache_usage: MetricName | None = None
    """Gauge of the KV-cache fill, as a fraction from 0 to 1 (e.g. vllm:kv_cache_usage_perc)."""
    requests_total: MetricName | None = None
    """Counter of the requests finished (e.g. vllm:request_success_total); it gives requests per second."""


class Serving(ApiModel):
    """How the model server reports its load: the serving runtime (which fixes the metric names) and where its
    Prometheus metrics are served. The fleet autoscaler reads them (see LLMDeployment spec.autoscaling)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.runtime) || self.runtime != 'custom' || has(self.metrics)",
                "runtime custom needs metrics: name the server's metrics",
                ".metrics",
            )
        )
    )

    runtime: Literal["vllm", "sglang", "tgi", "custom"] | None = None
    """The serving runtime: vllm (vLLM's metric names, e.g. vllm:time_to_first_token_seconds), sglang, tgi (text
    generation inference: no time-to-first-token histogram, so queue and request targets only) or custom (the
    names in metrics). Left out: taken from the image name (sglang, text-generation-inference, otherwise vllm)."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Port that serves the metrics, 1 to 65535. Left out: the LLMDeployment's port (vLLM, SGLang and TGI serve
    /metrics on their API port)."""
    metrics_path: AbsolutePath = "/metrics"
    """HTTP path of the Prometheus metrics. Default /metrics."""
    metrics: ServingMetrics | None = None
    """Metric names for runtime custom; with another runtime, each name given here replaces that runtime's."""


def serving_runtime(spec: LLMModelSpec) -> Literal["vllm", "sglang", "tgi", "custom"]:
    """The runtime the model declares, or the one its image name suggests."""
    if spec.serving.runtime is not None:
        return spec.serving.runtime
    image = spec.image.lower()
    if "sglang" in image:
        return "sglang"
    if "text-generation-inference" in image or "/tgi" in image:
        return "tgi"
    return "vllm"


class LLMModelSpec(ApiModel):
    """A model: the server image, its resources, and where its weights live."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.storage) || has(self.storage.size) || has(self.storage.existingClaim) || "
                "(has(self.source) && self.source.uri.startsWith('pvc://'))",
                "storage needs size (a new claim) or existingClaim, unless source is a pvc:// claim",
                ".storage",
            ),
            cel(
                "!(has(self.source) && self.source.uri.startsWith('pvc://') && has(self.storage) && "
                "(has(self.storage.size) || has(self.storage.existingClaim)))",
                "a pvc:// source already names the claim: leave out storage.size and storage.existingClaim",
                ".storage",
            ),
        )
    )

    model_name: Annotated[str, Field(min_length=1, max_length=MAX_NAME), Matches(NO_CONTROL, NO_CONTROL_MESSAGE)]
    """Name of the LLM model, e.g. GPT-Small or meta-llama/Llama-3.1-70B-Instruct (passed to the server as
    MODEL_NAME). Required."""
    image: Annotated[
        str,
        Field(min_length=1, max_length=MAX_PATH),
        Matches(
            r"^[^\x00-\x20\x7f]+$",
            "must be a container image reference without spaces or control characters, e.g. your-registry/gpt-small:v1",
        ),
    ]
    """Container image of the model server, e.g. your-registry/gpt-small:v1 or vllm/vllm-openai:v0.6.3.
    Required."""
    resources: ModelResources = Field(default_factory=ModelResources)
    """CPU, memory, GPU and shared-memory needs of one instance."""
    source: WeightsSource | None = None
    """Where the weights come from; leave out when they are baked into the image."""
    storage: WeightsStorage | None = None
    """Persistent storage for the weights (a new or an existing claim); leave out to keep no copy."""
    args: list[Annotated[str, Field(max_length=MAX_PATH), Matches(NO_CONTROL, NO_CONTROL_MESSAGE)]] = Field(
        default_factory=list, max_length=256
    )
    """Arguments passed to the model server (the container's args), e.g. [--tensor-parallel-size=4]."""
    env: list[EnvVar] = Field(default_factory=list, max_length=256, json_schema_extra=list_map("name"))
    """Environment variables of the model server; names must be unique."""
    startup: Startup = Field(default_factory=Startup)
    """Startup budget and health path for slow model loads (default: 600 s on /health)."""
    serving: Serving = Field(default_factory=Serving)
    """The serving runtime and where it reports its load (default: taken from the image, /metrics on the
    deployment's port)."""


class LLMModelStatus(ApiModel):
    """What the operator observed about the model."""

    observed_generation: int | None = None
    """The .metadata.generation the status was computed from."""
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    """Conditions about the model, in the standard Kubernetes shape."""


class LLMModel(ApiModel):
    """An LLM ready to be deployed: the server image, the resources of one instance (CPU, memory, GPUs), and where
    its weights come from and are kept. LLMDeployments in the same namespace run it."""

    api_version: Literal["llm.example.com/v1alpha1"] = "llm.example.com/v1alpha1"
    kind: Literal["LLMModel"] = "LLMModel"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LLMModelSpec
    status: LLMModelStatus | None = None


# ---------------------------------------------------------------------------------------------- LLMDeployment

LabelKey = Annotated[
    str,
    Field(min_length=1, max_length=317),
    Matches(LABEL_KEY, "must be a label key such as gpu or topology.kubernetes.io/region"),
]
LabelValue = Annotated[
    str,
    Field(max_length=63),
    Matches(
        LABEL_VALUE,
        "must be a label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter "
        "or digit",
    ),
]


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement: key, operator and values."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
                ": (!has(self.values) || size(self.values) == 0)",
                "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                ".values",
            )
        )
    )

    key: LabelKey
    """The label key, e.g. gpu or topology.kubernetes.io/region. Required."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values: In, NotIn, Exists or DoesNotExist. Required."""
    values: list[LabelValue] = Field(default_factory=list, max_length=MAX_SELECTOR)
    """Values for In/NotIn; must be empty for Exists/DoesNotExist."""


class LabelSelector(ApiModel):
    """A standard Kubernetes label selector; all of matchLabels and matchExpressions must hold. Empty: everything."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                f"!has(self.matchLabels) || self.matchLabels.all(k, k.matches({cel_string(LABEL_KEY)}) "
                f"&& self.matchLabels[k].matches({cel_string(LABEL_VALUE)}))",
                "matchLabels must map label keys (e.g. app.kubernetes.io/name) to label values (at most 63 letters, "
                "digits, '-', '_' and '.', starting and ending with a letter or digit)",
                ".matchLabels",
            )
        )
    )

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict, max_length=MAX_LIST)
    """Labels that must all match exactly (label key to label value)."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=MAX_SELECTOR)
    """Requirements that must all hold."""


class AutoscalingTarget(ApiModel):
    """What to hold steady by adding or removing replicas. Set one or more; the largest demand wins. Each member
    cluster's agent reads its replicas' metrics (the names follow the LLMModel's serving runtime) and the
    planner's fleet autoscaler combines them across the fleet."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.timeToFirstTokenP90Ms) || has(self.queueDepth) || has(self.requestsPerSecond)",
                "set at least one target: timeToFirstTokenP90Ms, queueDepth or requestsPerSecond",
            )
        )
    )

    time_to_first_token_p90_ms: int | None = Field(default=None, alias="timeToFirstTokenP90Ms", ge=1, le=600000)
    """Keep the 90th percentile time to first token at or below this many milliseconds (1 to 600000), e.g. 800.
    Scales on inference latency, not CPU."""
    queue_depth: int | None = Field(default=None, ge=1, le=100000)
    """Keep the requests waiting (queued, not yet in a batch) per replica at or below this."""
    requests_per_second: int | None = Field(default=None, ge=1, le=100000)
    """Keep the requests finished per second per replica at or below this."""


class Autoscaling(ApiModel):
    """Scale replicas on inference metrics, the way a HorizontalPodAutoscaler would (10 % tolerance,
    stabilisation windows, at most doubling or +4 replicas per 15 s, missing metrics never scale down). The
    planner's fleet autoscaler changes spec.replicas through the origin's /scale subresource and places the
    added replicas wherever GPUs are free, spilling to other clusters. Leave this out to scale with your own
    HorizontalPodAutoscaler or KEDA through /scale instead."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                "minReplicas must not exceed maxReplicas",
                ".minReplicas",
            )
        )
    )

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas, 0 to 1000 (default 1). With 0 no replica reports load, so the autoscaler never scales
    up from zero by itself: set replicas to start again."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas, 1 to 1000; at least minReplicas. Required."""
    target: AutoscalingTarget
    """The metric targets to hold. Required."""
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """Look-back window before scaling up, 0 to 3600 seconds (default 0: scale up at once)."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """Look-back window before scaling down, 0 to 3600 seconds (default 300: avoids releasing GPUs after a burst
    only to ask for them again)."""


class Placement(ApiModel):
    """Which member clusters may run the replicas, and how replicas are divided among them. Within a cluster,
    every replica goes on one node with all the GPUs it needs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.clusters) || self.clusters.all(c, self.clusters.indexOf(c) == self.clusters.lastIndexOf(c))",
                "clusters must not list the same cluster twice",
                ".clusters",
            ),
            cel(
                "!has(self.maxClusters) || self.maxClusters == 1 || !has(self.allowSplit) || self.allowSplit",
                "maxClusters above 1 needs allowSplit: true (allowSplit: false keeps every replica in one cluster)",
                ".maxClusters",
            ),
            cel(
                "!has(self.strategy) || self.strategy != 'Spread' || !has(self.allowSplit) || self.allowSplit",
                "strategy Spread needs allowSplit: true (allowSplit: false keeps every replica in one cluster)",
                ".strategy",
            ),
        )
    )

    cluster_selector: LabelSelector | None = None
    """Only member clusters whose labels match may run replicas. Left out: every healthy member cluster."""
    clusters: list[ClusterName] = Field(default_factory=list, max_length=MAX_LIST)
    """Ordered cluster preference: earlier clusters are filled first. Clusters not listed are still used (after
    the listed ones) when the selector allows them and they are needed; use clusterSelector to exclude clusters."""
    prefer_origin: bool = True
    """Prefer the cluster where the LLMDeployment was applied, right after the listed clusters, when it has room.
    Default true."""
    strategy: Literal["Pack", "Spread"] = "Pack"
    """Pack (default): fill as few clusters as possible, in preference order. Spread: balance replicas across the
    eligible clusters (for availability)."""
    allow_split: bool = True
    """Allow the replicas to be divided among clusters when no single cluster holds them all. Default true.
    false: the deployment lives in one cluster (what does not fit there stays unplaced)."""
    max_clusters: int | None = Field(default=None, ge=1, le=MAX_LIST)
    """At most this many clusters run replicas, 1 to 64. Left out: no limit."""


class SecurityOverride(ApiModel):
    """Pod security for the model server. The default is the Kubernetes 'restricted' Pod Security Standard."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.runAsUser) && self.runAsUser == 0 && (!has(self.profile) || self.profile == 'Restricted'))",
                "runAsUser 0 (root) is not allowed under profile Restricted; set profile: Baseline to run as root",
                ".runAsUser",
            )
        )
    )

    profile: Literal["Restricted", "Baseline"] = "Restricted"
    """Restricted (default): non-root (UID 1000 unless runAsUser says otherwise), no privilege escalation, all
    capabilities dropped, RuntimeDefault seccomp, read-only root filesystem (with writable /tmp and /cache).
    Baseline: the same minus the non-root and read-only-root requirements, for images that must run as root."""
    run_as_user: int | None = Field(default=None, ge=0, le=2147483647)
    """UID to run as (default 1000 under Restricted, the image's user under Baseline); 0 only under Baseline."""
    run_as_group: int | None = Field(default=None, ge=0, le=2147483647)
    """GID to run as (default 1000 under Restricted)."""
    fs_group: int | None = Field(default=None, ge=0, le=2147483647)
    """Group that owns mounted volumes, such as the weights claim (default 1000 under Restricted)."""
    read_only_root_filesystem: bool | None = None
    """Override the read-only root filesystem (default: true under Restricted, false under Baseline)."""


CIDR = Annotated[str, Field(min_length=1, max_length=64)]


class IPBlock(ApiModel):
    """An IP range."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("isCIDR(self.cidr)", "cidr must be an IP range such as 10.0.0.0/8 or fd00::/8", ".cidr"),
            cel(
                "!isCIDR(self.cidr) || cidr(self.cidr) == cidr(self.cidr).masked()",
                "cidr must not have bits set beyond the prefix length (10.0.0.0/8, not 10.0.0.1/8)",
                ".cidr",
            ),
            cel(
                "!has(self.except) || self.except.all(e, isCIDR(e))",
                "except must hold IP ranges such as 10.1.0.0/16",
                ".except",
            ),
            cel(
                "!has(self.except) || !isCIDR(self.cidr) || self.except.all(e, !isCIDR(e) || "
                "(cidr(self.cidr).containsCIDR(e) && cidr(e).prefixLength() > cidr(self.cidr).prefixLength()))",
                "except must hold ranges strictly inside cidr",
                ".except",
            ),
        )
    )

    cidr: CIDR
    """CIDR, e.g. 10.0.0.0/8. Required."""
    except_: list[CIDR] = Field(default_factory=list, alias="except", max_length=MAX_LIST)
    """CIDRs inside cidr to exclude."""


class NetworkPeer(ApiModel):
    """A source allowed to reach the model port, in the Kubernetes NetworkPolicyPeer shape: ipBlock alone, or
    namespaceSelector and/or podSelector."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.ipBlock) ? !(has(self.namespaceSelector) || has(self.podSelector)) "
                ": (has(self.namespaceSelector) || has(self.podSelector))",
                "a source is ipBlock alone, or namespaceSelector and/or podSelector",
            )
        )
    )

    namespace_selector: LabelSelector | None = None
    """Pods in namespaces matching this selector ({} for every namespace)."""
    pod_selector: LabelSelector | None = None
    """Pods matching this selector (in the deployment's namespace unless namespaceSelector is set)."""
    ip_block: IPBlock | None = None
    """Clients from this IP range."""


class NetworkPolicySpec(ApiModel):
    """The NetworkPolicy guarding the model port."""

    enabled: bool = True
    """Create a NetworkPolicy that admits traffic only to the model port and only from allowedSources. Default
    true."""
    allowed_sources: list[NetworkPeer] = Field(default_factory=list, max_length=MAX_SELECTOR)
    """Who may connect. Empty or left out: only pods in the deployment's namespace."""


class LLMDeploymentSpec(ApiModel):
    """How many instances of a model to run, where, and how they are exposed and scaled."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.autoscaling) || "
                "((!has(self.autoscaling.minReplicas) || self.replicas >= self.autoscaling.minReplicas) "
                "&& self.replicas <= self.autoscaling.maxReplicas)",
                "replicas must lie within autoscaling.minReplicas and autoscaling.maxReplicas",
                ".replicas",
            ),
        )
    )

    model_ref: Annotated[
        str,
        Field(min_length=1, max_length=63),
        Matches(
            DNS_SUBDOMAIN,
            "must name an LLMModel in the same namespace: lowercase letters, digits, '-' and '.' (e.g. gpt-small)",
        ),
    ]
    """Name of the LLMModel (in the same namespace) to deploy, at most 63 characters. Required. A model that does
    not exist yet is not an error: the deployment waits with Ready=False, reason ModelNotFound."""
    replicas: int = Field(ge=0, le=1000)
    """Number of model instances across the fleet, 0 to 1000. Required. Changed by `kubectl scale` and by
    autoscaling (then it stays within minReplicas and maxReplicas)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the model server listens on and the Service exposes, 1 to 65535. Default 8080."""
    suspend: bool = False
    """Stop all instances (no replicas run anywhere and their GPUs are released) while keeping the deployment and
    its history; set back to false to resume. Default false."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the Service in each cluster that runs replicas: ClusterIP (default), NodePort or LoadBalancer."""
    autoscaling: Autoscaling | None = None
    """Scale on inference latency, queue depth or request rate. Left out: replicas stay as written."""
    placement: Placement = Field(default_factory=Placement)
    """Which clusters may run the replicas and how they are divided (default: prefer the origin cluster, Pack,
    split across clusters when one cannot hold them all)."""
    security: SecurityOverride = Field(default_factory=SecurityOverride)
    """Pod security; the Kubernetes 'restricted' profile by default."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Network policy for the model port; on by default, admitting only pods of the same namespace."""


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
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=list_map("type"))
    """Ready (the summary), Placed, Progressing, Available and Degraded, each with a CamelCase reason, e.g.
    Ready=False reason=ModelNotFound, Placed=False reason=InsufficientGPU. See docs/api.md for every reason."""
    replicas: int = 0
    """Replicas placed across the fleet (the /scale subresource's status.replicas)."""
    ready_replicas: int = 0
    """Replicas ready across the fleet."""
    selector: str | None = None
    """Label selector of the instances, for the /scale subresource and autoscalers."""
    placements: list[ClusterPlacementStatus] = Field(default_factory=list, json_schema_extra=list_map("cluster"))
    """Per-cluster replicas: cluster, replicas, readyReplicas, gpuType."""
    clusters: str | None = None
    """Comma-separated clusters that run replicas (the CLUSTERS column of kubectl get)."""
    endpoints: list[Endpoint] = Field(default_factory=list, json_schema_extra=list_map("cluster"))
    """Service URL in each cluster that runs replicas."""
    traffic: str | None = None
    """Where requests to the origin's Service go, e.g. "cpu (local: 1), a100 (flat: 2)" (the TRAFFIC column of
    kubectl get -o wide)."""
    ready: str | None = None
    """The Ready condition's reason (kept for older clients; kubectl get reads the condition itself)."""


class LLMDeployment(ApiModel):
    """A running deployment of an LLMModel across the fleet of member clusters: how many replicas, where they may
    run, how they scale, and how they are secured and exposed."""

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
    return bytes_of(gpu.min_memory)
