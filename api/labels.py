"""Well-known label, annotation and resource names, each written once.

Two families: the identity the applier stamps on every object it manages (read back by the watcher and the
planner), and the GPU names that NVIDIA's device plugin and GPU feature discovery put on nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

# Identity of the objects the operator manages.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "llm-operator"
LABEL_DEPLOYMENT = "llm.example.com/deployment"
LABEL_NAMESPACE = "llm.example.com/namespace"
LABEL_ORIGIN = "llm.example.com/origin-cluster"
ANNOTATION_PLAN = "llm.example.com/plan-id"
ANNOTATION_EPOCH = "llm.example.com/planner-epoch"
ANNOTATION_SEQUENCE = "llm.example.com/plan-sequence"
ANNOTATION_SERVING = "llm.example.com/serving"
"""On a model's Deployment: where its replicas report load (JSON: runtime, port, path, metric names); the
member cluster's agent reads it to scrape them."""
LABEL_MODEL = "llm.example.com/model"
ANNOTATION_UID = "llm.example.com/deployment-uid"
"""The uid of the LLMDeployment a workload was applied for: plans of another incarnation are not compared by
sequence with it."""
ANNOTATION_OBJECTS = "llm.example.com/objects"
"""On the Deployment: every object its plan applied (`Kind/name`, comma-separated). The next plan deletes exactly
those it no longer holds and need not look up the others again."""


def deployment_identity(labels: Mapping[str, str], namespace: str | None) -> tuple[str, str, str] | None:
    """(origin cluster, namespace, name) of the LLMDeployment an object's identity labels name, or None.

    Trusted only on an object in the namespace the labels name (the applier puts every object there): anyone
    who may create a Deployment in their own namespace could otherwise label it as another tenant's copy."""
    origin = labels.get(LABEL_ORIGIN)
    name = labels.get(LABEL_DEPLOYMENT)
    if not origin or not name or not namespace or labels.get(LABEL_NAMESPACE, namespace) != namespace:
        return None
    return origin, namespace, name


# GPUs as the NVIDIA device plugin and GPU feature discovery name them.
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, as GPU feature discovery writes it
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
