"""The tenant policy: which origin clusters and namespaces may place workloads into which clusters.

A workload always lands in the namespace of the same name as its LLMDeployment's, so a placement is (origin
cluster, namespace, target cluster). Whoever may create LLMDeployments in a namespace may run pods there and in
every cluster the policy lets that namespace reach (docs/deploy.md, "Tenant policy and RBAC").

Guarantees:
- Reserved namespaces (`kube-system`, `kube-public`, `kube-node-lease` by default, and the operator's own) are
  refused whatever the rules say.
- A placement is allowed only if a rule matches its origin cluster, namespace and target cluster (shell-style
  patterns); the default policy is one rule matching everything, without namespace creation.
- A missing namespace is created only where the allowing rule says so (`createNamespaces`); it is then labelled
  for the `restricted` Pod Security level (`NAMESPACE_LABELS`).
- Secret and PersistentVolumeClaim references (weights source secret, env secretKeyRefs, existing or pvc://
  claims) are allowed only by a rule with `references: true` (the default rule has it).
- Endpoints (`allows_endpoints`: the origin's Service and EndpointSlices, a serving cluster's export and
  NetworkPolicy) follow the same rules: reserved namespaces never; in a serving cluster exactly what a workload
  there needs; in the origin cluster, only for an origin and namespace some rule lets place anywhere. They never
  create a namespace.
Pure: frozen models and functions, no I/O.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from api.labels import LABEL_MANAGED_BY, MANAGED_BY
from api.models import LLMModelSpec

RESERVED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
NAMESPACE_LABELS = {
    LABEL_MANAGED_BY: MANAGED_BY,
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
"""Labels of a namespace the applier creates."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class PlacementRule(_Model):
    """Origins (clusters and namespaces) that may place workloads into some clusters."""

    origins: tuple[str, ...] = ("*",)
    """Origin cluster names (shell-style patterns: `*`, `team-?`)."""
    namespaces: tuple[str, ...] = ("*",)
    """Namespaces (of the LLMDeployment, and so of its workloads)."""
    clusters: tuple[str, ...] = ("*",)
    """Clusters the workloads may go to."""
    create_namespaces: bool = False
    """Create the namespace in a target cluster that lacks it (labelled Pod Security `restricted`)."""
    references: bool = True
    """The model may reference Secrets and PersistentVolumeClaims in the target namespace."""

    def matches(self, origin_cluster: str, namespace: str, cluster: str) -> bool:
        return _any(self.origins, origin_cluster) and _any(self.namespaces, namespace) and _any(self.clusters, cluster)


class TenantPolicy(_Model):
    rules: tuple[PlacementRule, ...] = (PlacementRule(),)
    reserved_namespaces: tuple[str, ...] = Field(default=RESERVED_NAMESPACES)
    """Namespaces nothing is ever placed into (patterns)."""
    operator_namespace: str | None = None
    """The operator's own namespace: refused too."""


class References(_Model):
    """What a model refers to by name in the namespace it runs in."""

    secrets: frozenset[str] = frozenset()
    claims: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.secrets or self.claims)

    def describe(self) -> str:
        parts = [f"Secret {s}" for s in sorted(self.secrets)] + [
            f"PersistentVolumeClaim {c}" for c in sorted(self.claims)
        ]
        return ", ".join(parts)


class Verdict(_Model):
    allowed: bool
    reason: str = ""
    create_namespace: bool = False


def references_of(model: LLMModelSpec | None) -> References:
    if model is None:
        return References()
    secrets = {e.secret_key_ref.name for e in model.env if e.secret_key_ref is not None}
    claims: set[str] = set()
    if model.source is not None:
        if model.source.secret_ref:
            secrets.add(model.source.secret_ref)
        if model.source.uri.startswith("pvc://"):
            claims.add(model.source.uri.removeprefix("pvc://").split("/", 1)[0])
    if model.storage is not None and model.storage.existing_claim:
        claims.add(model.storage.existing_claim)
    return References(secrets=frozenset(secrets), claims=frozenset(claims))


def allows(
    policy: TenantPolicy,
    *,
    origin_cluster: str,
    namespace: str,
    cluster: str,
    references: References | None = None,
) -> Verdict:
    """May the LLMDeployment `namespace` of `origin_cluster` run its workload in `cluster`?"""
    if _any(policy.reserved_namespaces, namespace) or namespace == policy.operator_namespace:
        return Verdict(allowed=False, reason=f"namespace {namespace} is reserved")
    matching = [r for r in policy.rules if r.matches(origin_cluster, namespace, cluster)]
    if not matching:
        return Verdict(
            allowed=False,
            reason=f"no rule lets namespace {namespace} of cluster {origin_cluster} place workloads in "
            f"cluster {cluster}",
        )
    if references:
        matching = [r for r in matching if r.references]
        if not matching:
            return Verdict(
                allowed=False,
                reason=f"namespace {namespace} of cluster {origin_cluster} may not use {references.describe()} "
                f"in cluster {cluster}",
            )
    return Verdict(allowed=True, create_namespace=any(r.create_namespaces for r in matching))


def allows_endpoints(
    policy: TenantPolicy,
    *,
    role: Literal["origin", "serving"],
    origin_cluster: str,
    namespace: str,
    cluster: str,
) -> Verdict:
    """May an endpoints plan of the LLMDeployment `namespace` of `origin_cluster` write in `cluster`?

    ``serving``: the same question as for its workload there (`allows`). ``origin``: the plan writes the origin's
    own Service, so it must be for this very cluster, and some rule must let that origin and namespace place
    workloads somewhere (a rule naming only GPU clusters as targets still gives the origin its address)."""
    if role != "origin":
        return allows(policy, origin_cluster=origin_cluster, namespace=namespace, cluster=cluster).model_copy(
            update={"create_namespace": False}
        )
    if _any(policy.reserved_namespaces, namespace) or namespace == policy.operator_namespace:
        return Verdict(allowed=False, reason=f"namespace {namespace} is reserved")
    if origin_cluster != cluster:
        return Verdict(
            allowed=False, reason=f"an origin endpoints plan of cluster {origin_cluster} cannot write in {cluster}"
        )
    if not any(_any(r.origins, origin_cluster) and _any(r.namespaces, namespace) for r in policy.rules):
        return Verdict(
            allowed=False,
            reason=f"no rule lets namespace {namespace} of cluster {origin_cluster} place workloads anywhere",
        )
    return Verdict(allowed=True)


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)
