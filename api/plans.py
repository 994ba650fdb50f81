"""Plans: what the planner asks one cluster's applier to make true.

Guarantees:
- A plan is self-contained: it carries the model and deployment specs, so the target cluster needs nothing from
  the origin cluster. Appliers render it with a pure function.
- Every plan carries the issuing leader's ``epoch`` and a per-(deployment, cluster) ``sequence`` that only grows;
  an applier ignores a plan whose (epoch, sequence) is not newer than what it last applied for that deployment.
- ``plan_id`` is unique and deterministic for (deployment, cluster, epoch, sequence): it is the JetStream
  ``Nats-Msg-Id`` and the marker written on applied objects, so a redelivered plan is recognised.
No I/O here.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.conditions import Condition
from api.keys import DeploymentKey
from api.models import LLMDeploymentSpec, LLMDeploymentStatus, LLMModelSpec, LLMModelStatus
from api.network import Cidr, NetworkMode, ServingEndpoints

_PLAN_NAMESPACE = uuid.UUID("9d3f1e22-7c55-4a0e-b7a1-6f2c8e4d0a19")


class DeploymentRef(BaseModel):
    """Identity of an LLMDeployment: where it was applied, and its namespace/name/uid there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    origin_cluster: str
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> DeploymentKey:
        return DeploymentKey(self.origin_cluster, self.namespace, self.name)


class KubeEvent(BaseModel):
    """A Kubernetes Event to record on the origin LLMDeployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def plan_id(deployment: DeploymentRef, cluster: str, kind: str, epoch: int, sequence: int) -> str:
    return str(uuid.uuid5(_PLAN_NAMESPACE, f"{deployment.key!s}|{deployment.uid}|{cluster}|{kind}|{epoch}|{sequence}"))


class _Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: str
    epoch: int = Field(ge=1)
    sequence: int = Field(ge=1)
    cluster: str
    """The cluster whose applier executes this plan."""
    deployment: DeploymentRef
    generation: int = Field(ge=0)
    issued_at: datetime


NOT_IN_PODS = frozenset(
    {"replicas", "service_type", "autoscaling", "network_policy", "suspend", "placement", "model_ref"}
)
"""LLMDeployment spec fields that do not reach the pod template (placement and the model reference reach it
only through the plan's GPU type and model, which `WorkloadPlan.pods_key` holds)."""


class WorkloadPlan(_Plan):
    """Run `replicas` instances of the model in `cluster` (0: remove this deployment's workload there)."""

    kind: Literal["Workload"] = "Workload"
    replicas: int = Field(ge=0)
    model_name: str
    model: LLMModelSpec | None = None
    spec: LLMDeploymentSpec | None = None
    is_origin: bool = False
    """The plan is for the cluster where the LLMDeployment was applied."""
    gpu_type: str | None = None
    """The GPU product the planner expects the replicas to use in this cluster (preferred node affinity)."""

    def pods_key(self) -> tuple[Any, ...]:
        """What this plan's pods are made of. Two plans of one deployment with equal keys render the same pod
        template, so going from one to the other restarts nothing (and the planner keeps `Ready`): everything
        but the plan's identity, its replica count and the spec fields that shape only other objects
        (`NOT_IN_PODS`). tests/unit/test_render.py holds the renderer to this."""
        spec = self.spec.model_dump(exclude=set(NOT_IN_PODS)) if self.spec is not None else None
        return (self.cluster, self.deployment, self.model_name, self.model, self.gpu_type, spec)

    @property
    def removes_everything(self) -> bool:
        return self.spec is None or self.replicas == 0


class StatusPlan(_Plan):
    """Write this status (and events, and the cleanup finalizer) on the origin LLMDeployment."""

    kind: Literal["Status"] = "Status"
    status: LLMDeploymentStatus
    finalizer: Literal["ensure", "remove"] = "ensure"
    events: list[KubeEvent] = Field(default_factory=list)


MODEL_LANE = "LLMModel:"
"""Prefix of the `DeploymentRef.name` of an LLMModel's status plans. Plans are ordered, sequenced and recorded per
`DeploymentRef` key; a ':' cannot occur in an object's name, so a model's plans get a key no LLMDeployment can have
(their own lane in the applier, their own sequence in the planner) with the rest of the plan machinery unchanged."""


def model_ref(origin_cluster: str, namespace: str, model: str, uid: str) -> DeploymentRef:
    """The reference a status plan for the LLMModel `model` carries (see `MODEL_LANE`)."""
    return DeploymentRef(origin_cluster=origin_cluster, namespace=namespace, name=MODEL_LANE + model, uid=uid)


def is_model_lane(name: str) -> bool:
    return name.startswith(MODEL_LANE)


class ModelStatusPlan(_Plan):
    """Write this status (and events) on the origin LLMModel `model`, the incarnation `deployment.uid`.

    `deployment` is `model_ref(...)`: the model's lane, not an LLMDeployment. The operator writes no finalizer on
    models (it cleans up nothing of theirs)."""

    kind: Literal["ModelStatus"] = "ModelStatus"
    model: str = Field(min_length=1, max_length=253)
    status: LLMModelStatus
    events: list[KubeEvent] = Field(default_factory=list, max_length=4)


class EndpointsPlan(_Plan):
    """Where traffic for the deployment goes, as seen from one cluster (see api.network).

    ``role="origin"`` (the origin cluster): keep a Service named after the LLMDeployment on ``port``. With
    ``local_replicas`` the workload's own Service selects the replicas there and this plan adds one EndpointSlice
    per other serving cluster; without, the Service has no selector and only these slices (or, when a serving
    cluster uses the MCS API, it names ``<name>.<namespace>.svc.clusterset.local``).
    ``role="serving"`` (a cluster that runs replicas for another origin): export the Service (``mcs``) and admit
    the origin's clients (``admit_cidrs``) to the model port, and nothing more.
    ``remove``: delete what earlier plans of this kind wrote here.
    """

    kind: Literal["Endpoints"] = "Endpoints"
    role: Literal["origin", "serving"]
    port: int = Field(ge=1, le=65535)
    remove: bool = False
    local_replicas: bool = False
    serving: list[ServingEndpoints] = Field(default_factory=list, max_length=64)
    mode: NetworkMode = "flat"
    admit_cidrs: list[Cidr] = Field(default_factory=list, max_length=16)


class ScalePlan(_Plan):
    """Set spec.replicas of the origin LLMDeployment through its /scale subresource, as a HorizontalPodAutoscaler
    would (`replicas` None: leave it), and record the fleet autoscaler's ScalingActive condition."""

    kind: Literal["Scale"] = "Scale"
    replicas: int | None = Field(default=None, ge=0, le=1000)
    condition: Condition | None = None
    events: list[KubeEvent] = Field(default_factory=list, max_length=4)


AnyPlan = WorkloadPlan | StatusPlan | ScalePlan | EndpointsPlan | ModelStatusPlan
Plan = Annotated[AnyPlan, Field(discriminator="kind")]
