"""The tenant policy as the planner applies it: clusters a deployment may not use are not placement candidates,
and a deployment no cluster admits is held with a `PolicyDenied` condition (rather than refused silently by
every member's applier, which enforces its own copy of the policy as the last line of defence).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from api.models import LLMModelSpec
from api.policy import TenantPolicy, allows, references_of
from planner.placement import ClusterInfo


def permitted_clusters(
    policy: TenantPolicy, *, origin: str, namespace: str, model: LLMModelSpec, clusters: Iterable[ClusterInfo]
) -> tuple[frozenset[str], str]:
    """The names of the clusters the policy lets this deployment place into, and the first refusal's reason."""
    references = references_of(model)
    allowed: set[str] = set()
    refusal = ""
    for cluster in clusters:
        verdict = allows(
            policy, origin_cluster=origin, namespace=namespace, cluster=cluster.name, references=references
        )
        if verdict.allowed:
            allowed.add(cluster.name)
        elif not refusal:
            refusal = verdict.reason
    return frozenset(allowed), refusal
