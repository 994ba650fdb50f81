"""A thin async Kubernetes API shell on raw JSON, shared by the watcher and the applier.

Guarantees:
- Objects are plain dicts in and out (no generated model classes: they are slow and lossy for custom resources).
- Every driver error leaves this package as `KubeError` with the HTTP status and the apiserver's message, split
  into `TransientKubeError` (retry: network, 429, 5xx) and the rest (a caller's problem: 4xx).
- Writes are server-side apply with one field manager and forced ownership, as the applier requires.
"""

from kubeapi.client import (
    ApiGone,
    Kube,
    KubeError,
    NotFound,
    TransientKubeError,
    WatchEvent,
)
from kubeapi.resources import RESOURCES, Resource

__all__ = [
    "RESOURCES",
    "ApiGone",
    "Kube",
    "KubeError",
    "NotFound",
    "Resource",
    "TransientKubeError",
    "WatchEvent",
]
