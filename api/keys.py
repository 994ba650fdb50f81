"""The identity of an LLMDeployment across the fleet, in one type.

Guarantees: `DeploymentKey` is the only deployment key there is — a (origin cluster, namespace, name) named tuple,
so it sorts, hashes and unpacks like the tuple it is — with one text form, ``origin/namespace/name`` (`str(key)`,
read back by `DeploymentKey.parse`), which is what the pods projection stores in its `deployment_key` column and
what plan ids and apply lanes are derived from. Pure; no I/O.
"""

from __future__ import annotations

from typing import NamedTuple


class DeploymentKey(NamedTuple):
    origin_cluster: str
    """The member cluster the LLMDeployment was applied in."""
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.origin_cluster}/{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> DeploymentKey:
        """The key whose text form is `text` (a namespace or name never holds a '/'; a cluster name neither)."""
        origin, namespace, name = text.split("/", 2)
        return cls(origin, namespace, name)

    def columns(self) -> dict[str, str]:
        """The key as the projections' (origin_cluster, namespace, name) columns."""
        return {"origin_cluster": self.origin_cluster, "namespace": self.namespace, "name": self.name}
