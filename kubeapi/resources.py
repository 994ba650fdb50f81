"""The Kubernetes resources this operator reads or writes, and their REST paths.

Guarantees: one table for every kind the operator touches; paths are built here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


def _r(group: str, version: str, kind: str, plural: str, namespaced: bool = True) -> Resource:
    return Resource(group, version, kind, plural, namespaced)


RESOURCES: dict[str, Resource] = {
    r.kind: r
    for r in (
        _r("llm.example.com", "v1alpha1", "LLMModel", "llmmodels"),
        _r("llm.example.com", "v1alpha1", "LLMDeployment", "llmdeployments"),
        _r("", "v1", "Node", "nodes", namespaced=False),
        _r("", "v1", "Pod", "pods"),
        _r("", "v1", "Namespace", "namespaces", namespaced=False),
        _r("", "v1", "Service", "services"),
        _r("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        _r("", "v1", "Event", "events"),
        _r("apps", "v1", "Deployment", "deployments"),
        _r("batch", "v1", "Job", "jobs"),
        _r("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
        _r("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        _r("multicluster.x-k8s.io", "v1alpha1", "ServiceExport", "serviceexports"),
        _r("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
        _r("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets"),
        _r("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False),
    )
}
