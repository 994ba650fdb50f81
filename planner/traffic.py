"""Where one deployment's traffic goes: from the store's view to the endpoints plans of its clusters. Pure.

The origin cluster (where the LLMDeployment was applied) keeps a Service named after it; the replicas in other
clusters are reached through the endpoints `planner.endpoints.follow` chooses from what the watchers observed
(ready and live pod addresses, the load balancer addresses of the deployment's Service where a cluster is
``exposed``, each cluster's declared network and health). This module decides which
`EndpointsPlan`s that calls for:

- ``origin`` (role "origin"): while the deployment exists, a Service on its port in the origin, pointing at the
  serving clusters (``local_replicas`` when the origin runs replicas of its own: the workload's Service selects
  them, and the plan adds the other clusters' slices). Not needed at all while only the origin serves and no
  earlier plan wrote anything there.
- each cluster that holds replicas for another origin, or is listed as serving (role "serving"): export the
  Service (MCS) and admit the origin's declared pod ranges, and nothing more.
- ``remove`` for a cluster that stops serving (once its placement is gone) and for every cluster when the
  deployment is deleted or gone.

Guarantees: a plan is issued only when what a cluster should hold differs from the last endpoints plan sent
there (level-based: the same state twice issues nothing the second time); plans of one step take consecutive
sequences after the caller's; addresses come only from observations (`follow` keeps a listed replica until its
pod is gone and never leaves the Service empty while a ready replica exists). No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from api.network import ClusterNetwork, NetworkMode, ServingEndpoints
from api.plans import DeploymentRef, EndpointsPlan, plan_id
from planner.endpoints import ClusterReplicas, admitted_cidrs, follow, traffic_summary


@dataclass(frozen=True)
class Replica:
    """A live pod of the deployment, as a watcher last saw it."""

    cluster: str
    ip: str | None
    ready: bool


@dataclass(frozen=True)
class ClusterView:
    healthy: bool
    network: ClusterNetwork | None
    """None: the cluster declared nothing (taken as a flat network with no ranges)."""


@dataclass(frozen=True)
class TrafficInputs:
    ref: DeploymentRef
    generation: int
    port: int | None
    """The deployment's port; None when it is being deleted or is gone (then every endpoints object goes)."""
    clusters: Mapping[str, ClusterView]
    replicas: Sequence[Replica]
    placed: Collection[str]
    """Clusters holding a share of replicas (active or retiring, not being removed)."""
    last: Mapping[str, EndpointsPlan] = field(default_factory=dict)
    """The newest endpoints plan sent to each cluster."""
    exposed: Mapping[str, Exposed] = field(default_factory=dict)
    """The deployment's Service in each cluster, as its watcher last saw it (used where the cluster declares the
    ``exposed`` network)."""


@dataclass(frozen=True)
class Exposed:
    """How a cluster's Service for the deployment is reachable from outside: its load balancer's addresses and the
    Service port there."""

    addresses: tuple[str, ...]
    port: int | None


@dataclass(frozen=True)
class _Want:
    cluster: str
    role: Literal["origin", "serving"]
    port: int
    remove: bool = False
    local_replicas: bool = False
    serving: tuple[ServingEndpoints, ...] = ()
    mode: NetworkMode = "flat"
    admit_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Traffic:
    origin: str
    serving: tuple[ServingEndpoints, ...]
    """Where the origin's Service points (other clusters; the origin's own replicas are selected by its Service)."""
    local_ready: int
    """Ready replicas in the origin itself."""
    wanted: tuple[_Want, ...]
    """What changed: the content of the plans to issue."""

    @property
    def summary(self) -> str | None:
        """The TRAFFIC column (None while nothing serves)."""
        if not self.serving and not self.local_ready:
            return None
        return traffic_summary(self.origin, self.local_ready, self.serving)

    def plans(
        self, ref: DeploymentRef, *, generation: int, epoch: int, sequence: int, now: datetime
    ) -> list[EndpointsPlan]:
        """The plans, numbered from ``sequence + 1``."""
        out = []
        for want in self.wanted:
            sequence += 1
            out.append(
                EndpointsPlan(
                    plan_id=plan_id(ref, want.cluster, "Endpoints", epoch, sequence),
                    epoch=epoch,
                    sequence=sequence,
                    cluster=want.cluster,
                    deployment=ref,
                    generation=generation,
                    issued_at=now,
                    role=want.role,
                    port=want.port,
                    remove=want.remove,
                    local_replicas=want.local_replicas,
                    serving=list(want.serving),
                    mode=want.mode,
                    admit_cidrs=list(want.admit_cidrs),
                )
            )
        return out


def traffic(inputs: TrafficInputs) -> Traffic:
    origin = inputs.ref.origin_cluster
    last = inputs.last
    if inputs.port is None:
        removals = tuple(
            _Want(cluster=c, role=p.role, port=p.port, remove=True) for c, p in sorted(last.items()) if not p.remove
        )
        return Traffic(origin=origin, serving=(), local_ready=0, wanted=removals)
    port = inputs.port
    views = [
        ClusterReplicas(
            cluster=cluster,
            network=_network(inputs.clusters.get(cluster)),
            healthy=_healthy(inputs.clusters.get(cluster)),
            ready=frozenset(r.ip for r in pods if r.ready and r.ip),
            live=frozenset(r.ip for r in pods if r.ip),
            pod_port=port,
            exposed=exposed.addresses if (exposed := inputs.exposed.get(cluster)) is not None else (),
            exposed_port=exposed.port if exposed is not None else None,
        )
        for cluster, pods in _by_cluster(inputs).items()
    ]
    prior = last.get(origin)
    previous = list(prior.serving) if prior is not None and not prior.remove else []
    serving = follow(previous, views, origin=origin)
    local = origin in inputs.placed
    local_ready = sum(1 for r in inputs.replicas if r.cluster == origin and r.ready)
    wanted: list[_Want] = []

    origin_plan = _Want(cluster=origin, role="origin", port=port, local_replicas=local, serving=tuple(serving))
    # The origin's Service, whatever runs where (only a purely local deployment needs nothing of ours).
    purely_local = local and not serving and (prior is None or prior.remove)
    if not purely_local and not _same(prior, origin_plan):
        wanted.append(origin_plan)

    admit = tuple(admitted_cidrs(origin, {c: v.network for c, v in inputs.clusters.items() if v.network}))
    serving_clusters = (set(inputs.placed) | {s.cluster for s in serving}) - {origin}
    for cluster in sorted(serving_clusters):
        want = _Want(
            cluster=cluster,
            role="serving",
            port=port,
            mode=_network(inputs.clusters.get(cluster)).mode,
            admit_cidrs=admit,
        )
        if not _same(last.get(cluster), want):
            wanted.append(want)
    for cluster, plan in sorted(last.items()):
        if cluster == origin or cluster in serving_clusters or plan.remove:
            continue
        wanted.append(_Want(cluster=cluster, role=plan.role, port=plan.port, remove=True))
    return Traffic(origin=origin, serving=tuple(serving), local_ready=local_ready, wanted=tuple(wanted))


def _by_cluster(inputs: TrafficInputs) -> dict[str, list[Replica]]:
    out: dict[str, list[Replica]] = {c: [] for c in inputs.placed}
    last = inputs.last.get(inputs.ref.origin_cluster)
    for s in last.serving if last is not None else ():
        out.setdefault(s.cluster, [])
    for r in inputs.replicas:
        out.setdefault(r.cluster, []).append(r)
    return out


def _network(view: ClusterView | None) -> ClusterNetwork:
    return view.network if view is not None and view.network is not None else ClusterNetwork()


def _healthy(view: ClusterView | None) -> bool:
    return view is not None and view.healthy


def _same(plan: EndpointsPlan | None, want: _Want) -> bool:
    if plan is None:
        return False
    return (
        plan.role == want.role
        and plan.port == want.port
        and plan.remove == want.remove
        and plan.local_replicas == want.local_replicas
        and tuple(plan.serving) == want.serving
        and plan.mode == want.mode
        and tuple(plan.admit_cidrs) == want.admit_cidrs
    )
