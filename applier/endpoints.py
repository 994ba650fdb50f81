"""One address in the origin cluster: render and apply an `EndpointsPlan` (see api.plans and api.network).

In the origin cluster the plan keeps a Service named after the LLMDeployment and one EndpointSlice per other
serving cluster (labelled ``kubernetes.io/service-name`` and ``endpointslice.kubernetes.io/managed-by``), so that
``http://<name>.<namespace>:<port>`` reaches the replicas wherever they run. In a serving cluster it exports the
Service (MCS ``ServiceExport``) and admits the origin's clients with a NetworkPolicy of its own.

Guarantees:
- Rendering is pure and deterministic (addresses sorted), so re-applying an unchanged plan is a no-op.
- The Service is written here only while the origin runs no replicas of its own (otherwise the workload's Service,
  which selects them, is the one clients reach, and the slices join it); it carries no selector then, so the
  built-in EndpointSlice controller leaves it alone and only our slices count.
- Only EndpointSlices are written (the legacy Endpoints API is deprecated), IPv4 only, never an address the
  apiserver would refuse (api.network validated them), at most 1000 endpoints per slice.
- Following the replicas never leaves the Service without endpoints: new slices are applied before stale ones
  are deleted, and a slice is deleted only when the plan no longer lists its cluster.
- A plan older than the one that last wrote these objects (by epoch and sequence, recorded on them) is refused as
  `Stale`; the same plan again is applied again, which changes nothing (rendering is deterministic).
- The cluster's tenant policy (api.policy.allows_endpoints) is checked first, as for workload plans: a plan it
  refuses (a reserved namespace such as kube-system or the operator's own, an origin no rule admits, an origin
  plan for another cluster) reads and writes nothing and fails with the policy's reason.
- Everything is server-side applied with the applier's one field manager; deletion touches only objects carrying
  this deployment's endpoint labels.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from api.labels import (
    ANNOTATION_EPOCH,
    ANNOTATION_PLAN,
    ANNOTATION_SEQUENCE,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED_BY,
    LABEL_NAMESPACE,
    LABEL_ORIGIN,
    MANAGED_BY,
)
from api.network import clusterset_name
from api.plans import EndpointsPlan
from api.policy import TenantPolicy, allows_endpoints
from applier.apply import DEFAULT_POLICY, ApplyResult, _all, ensure_namespace
from kubeapi import RESOURCES, Kube, KubeError, NotFound, Resource, TransientKubeError

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "llm-operator.llm.example.com"
LABEL_ENDPOINTS_OF = "llm.example.com/endpoints-of"
"""On every object an EndpointsPlan writes: the LLMDeployment's name (selecting them for pruning)."""
LABEL_SERVING_CLUSTER = "llm.example.com/serving-cluster"
PORT_NAME = "http"
SERVICE_EXPORT = RESOURCES["ServiceExport"]
ENDPOINT_SLICE = RESOURCES["EndpointSlice"]
SERVICE = RESOURCES["Service"]
NETWORK_POLICY = RESOURCES["NetworkPolicy"]
FIELD_MANAGER = "llm-operator"


def labels(plan: EndpointsPlan) -> dict[str, str]:
    ref = plan.deployment
    return {
        "app.kubernetes.io/name": ref.name,
        "app.kubernetes.io/part-of": "llm-operator",
        "app.kubernetes.io/component": "endpoints",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_NAMESPACE: ref.namespace,
        LABEL_ENDPOINTS_OF: ref.name,
    }


def selector_string(plan: EndpointsPlan) -> str:
    return f"{LABEL_ENDPOINTS_OF}={plan.deployment.name},{LABEL_MANAGED_BY}={MANAGED_BY}"


def _meta(plan: EndpointsPlan, name: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": plan.deployment.namespace,
        "labels": {**labels(plan), **(extra or {})},
        "annotations": {
            ANNOTATION_PLAN: plan.plan_id,
            ANNOTATION_EPOCH: str(plan.epoch),
            ANNOTATION_SEQUENCE: str(plan.sequence),
        },
    }


def slice_name(service: str, cluster: str) -> str:
    # Both are DNS labels (<= 63): the name stays a valid DNS subdomain.
    return f"{service}-{cluster}"


def render(plan: EndpointsPlan) -> list[Manifest]:
    """PURE: the objects this plan wants in its cluster, in apply order (nothing for a removal)."""
    if plan.remove:
        return []
    return render_origin(plan) if plan.role == "origin" else render_serving(plan)


def render_origin(plan: EndpointsPlan) -> list[Manifest]:
    name, namespace = plan.deployment.name, plan.deployment.namespace
    remote = [s for s in plan.serving if s.cluster != plan.deployment.origin_cluster]
    out: list[Manifest] = []
    mcs = [s for s in remote if s.mode == "mcs"]
    if not plan.local_replicas:
        if mcs:
            # The MCS API serves only the clusterset name; an ExternalName Service keeps <name>.<namespace>.
            spec: dict[str, Any] = {"type": "ExternalName", "externalName": clusterset_name(name, namespace)}
            spec["ports"] = [{"name": PORT_NAME, "port": plan.port, "protocol": "TCP"}]
            return [{"apiVersion": "v1", "kind": "Service", "metadata": _meta(plan, name), "spec": spec}]
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(plan, name),
                "spec": {
                    "type": "ClusterIP",
                    "ports": [{"name": PORT_NAME, "port": plan.port, "protocol": "TCP"}],
                },
            }
        )
    for serving in sorted(remote, key=lambda s: s.cluster):
        if serving.mode == "mcs" or not serving.addresses:
            continue
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": _meta(
                    plan,
                    slice_name(name, serving.cluster),
                    {
                        LABEL_SERVICE_NAME: name,
                        LABEL_SLICE_MANAGED_BY: SLICE_MANAGER,
                        LABEL_SERVING_CLUSTER: serving.cluster,
                    },
                ),
                "addressType": "IPv4",
                "endpoints": [
                    {"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False}}
                    for ip in sorted(set(serving.addresses))
                ],
                # kube-proxy dials the slice's port (not the Service's targetPort): the serving side's port.
                "ports": [{"name": PORT_NAME, "port": serving.port, "protocol": "TCP"}],
            }
        )
    return out


def render_serving(plan: EndpointsPlan) -> list[Manifest]:
    ref = plan.deployment
    out: list[Manifest] = []
    if plan.mode == "mcs":
        export = {"apiVersion": SERVICE_EXPORT.api_version, "kind": "ServiceExport", "metadata": _meta(plan, ref.name)}
        out.append(export)
    if plan.admit_cidrs:
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta(plan, f"{ref.name}-from-origin"),
                "spec": {
                    "podSelector": {"matchLabels": {LABEL_DEPLOYMENT: ref.name, LABEL_ORIGIN: ref.origin_cluster}},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [{"ipBlock": {"cidr": c}} for c in sorted(set(plan.admit_cidrs))],
                            "ports": [{"port": plan.port, "protocol": "TCP"}],
                        }
                    ],
                },
            }
        )
    return out


def resolve(slices: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """PURE: the (address, port) pairs a kube-proxy would route to from these EndpointSlices (ready endpoints,
    else serving ones; the first address of each endpoint; named ports only). Tests use it in place of the
    kube-proxy kwok does not run."""
    pairs: list[tuple[str, int, bool]] = []
    for s in slices:
        ports = [p.get("port") for p in s.get("ports") or [] if isinstance(p.get("port"), int)]
        for ep in s.get("endpoints") or []:
            addresses = ep.get("addresses") or []
            conditions = ep.get("conditions") or {}
            if not addresses:
                continue
            ready = conditions.get("ready") is not False
            serving = conditions.get("serving") is not False
            if ready or serving:
                pairs.extend((addresses[0], port, ready) for port in ports)
    chosen = [(a, p) for a, p, r in pairs if r] or [(a, p) for a, p, _ in pairs]
    return sorted(set(chosen))


# --------------------------------------------------------------------------------------------------- applying


def _kind_resource(kind: str) -> Resource:
    return {"Service": SERVICE, "EndpointSlice": ENDPOINT_SLICE, "NetworkPolicy": NETWORK_POLICY}.get(
        kind, SERVICE_EXPORT
    )


def _recorded(obj: dict[str, Any]) -> tuple[int, int, str] | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations[ANNOTATION_EPOCH]), int(annotations[ANNOTATION_SEQUENCE]), annotations[ANNOTATION_PLAN]
    except (KeyError, ValueError, TypeError):
        return None


async def _ours(kube: Kube, plan: EndpointsPlan) -> list[dict[str, Any]]:
    """Every object an endpoints plan of this deployment wrote in this cluster (the kinds listed side by side)."""

    async def of(resource: Resource) -> list[dict[str, Any]]:
        try:
            items, _ = await kube.list(
                resource, namespace=plan.deployment.namespace, label_selector=selector_string(plan)
            )
        except NotFound:
            return []  # e.g. the MCS CRDs are not installed here
        for item in items:
            item.setdefault("kind", resource.kind)
        return items

    found = await _all([partial(of, r) for r in (SERVICE, ENDPOINT_SLICE, NETWORK_POLICY, SERVICE_EXPORT)])
    return [item for items in found for item in items]


async def execute_endpoints(kube: Kube, plan: EndpointsPlan, *, policy: TenantPolicy = DEFAULT_POLICY) -> ApplyResult:
    """Apply the plan here. Outcome Applied, Deleted, Stale, or Failed (a tenant-policy or apiserver refusal, with
    its message); transient apiserver errors are raised for the caller to retry."""
    verdict = allows_endpoints(
        policy,
        role=plan.role,
        origin_cluster=plan.deployment.origin_cluster,
        namespace=plan.deployment.namespace,
        cluster=plan.cluster,
    )
    if not verdict.allowed:
        # The same refusal as a workload plan's (applier.apply.execute_workload): nothing read, nothing written.
        return ApplyResult("Failed", message=f"refused by this cluster's tenant policy: {verdict.reason}")
    try:
        try:
            existing = await _ours(kube, plan)
        except ExceptionGroup as group:
            # The kinds are listed in a task group: hand on the first apiserver error as itself, so a transient
            # one is retried by the caller and a refusal reported.
            raise group.exceptions[0] from None
        records = [r for r in (_recorded(o) for o in existing) if r is not None]
        if records:
            newest = max(records)
            if (plan.epoch, plan.sequence) < newest[:2]:
                return ApplyResult(
                    "Stale", message=f"a newer endpoints plan ({newest[0]}/{newest[1]}) was applied here"
                )
        wanted = render(plan)
        if wanted:
            # The origin's namespace holds the LLMDeployment; a serving cluster's was made (or refused) by the
            # workload plan under the tenant policy: this plan never creates one.
            missing = await ensure_namespace(kube, plan.deployment.namespace, create=False)
            if missing is not None:
                return ApplyResult("Failed", message=missing)
        written: list[str] = []
        for manifest in wanted:  # Service first, then the new slices, before anything is deleted
            kind = manifest["kind"]
            if kind == "ServiceExport" and not await _served(kube, SERVICE_EXPORT, plan.deployment.namespace):
                return ApplyResult(
                    "Failed", written, "the MCS API (ServiceExport, multicluster.x-k8s.io) is not installed here"
                )
            await kube.apply(_kind_resource(kind), manifest, field_manager=FIELD_MANAGER)
            written.append(f"{kind}/{manifest['metadata']['name']}")
        keep = {(m["kind"], m["metadata"]["name"]) for m in wanted}
        deleted: list[str] = []
        for obj in existing:
            kind, name = obj["kind"], obj["metadata"]["name"]
            if (kind, name) not in keep and await kube.delete(
                _kind_resource(kind), name, namespace=plan.deployment.namespace
            ):
                deleted.append(f"{kind}/{name}")
        if plan.remove:
            return ApplyResult("Deleted", deleted)
        return ApplyResult("Applied", written + deleted)
    except TransientKubeError:
        raise
    except KubeError as exc:
        return ApplyResult("Failed", message=str(exc))


async def _served(kube: Kube, resource: Resource, namespace: str) -> bool:
    # Asked in the plan's namespace: an applier whose rights are Roles in some namespaces (the chart's
    # agent.watchNamespaces) may list nowhere else.
    try:
        await kube.list(resource, namespace=namespace)
    except NotFound:
        return False
    return True
