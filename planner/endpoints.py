"""Where the origin's Service should point: the endpoints that follow a deployment's replicas. Pure.

Inputs are what the watchers observed in each serving cluster (ready and live replica addresses, the cluster's
declared network and health) and the endpoints last planned; the output is the next `EndpointsPlan` content for
the origin cluster, and one for each serving cluster (export, NetworkPolicy admitting the origin's pod ranges).

Rules (issue 18, "it follows the replicas"):
- A replica is added as soon as it is observed ready.
- A replica already listed stays listed while its pod still exists (ready or not): it is removed only once gone.
- A cluster whose agent went silent (unhealthy) keeps its endpoints only while no healthy cluster has a ready
  replica: requests then go to the new cluster, never round-robin into the silent one.
- Never zero endpoints while a ready replica exists anywhere; and when none is ready anywhere, the last
  endpoints stay (better a stale address than none at all).
No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from api.network import ClusterNetwork, ServingEndpoints


@dataclass(frozen=True)
class ClusterReplicas:
    """What one serving cluster's watcher last reported about the deployment's replicas there."""

    cluster: str
    network: ClusterNetwork
    healthy: bool
    ready: frozenset[str] = field(default_factory=frozenset)
    """Pod IPs of replicas observed ready."""
    live: frozenset[str] = field(default_factory=frozenset)
    """Pod IPs of replicas whose pods still exist (a superset of ``ready``)."""
    pod_port: int = 8000
    exposed: tuple[str, ...] = ()
    """``exposed`` mode: the cluster's Service ingress addresses (LoadBalancer IPs or node addresses)."""
    exposed_port: int | None = None
    """``exposed`` mode: the port at those addresses (the Service port, or its node port)."""


def follow(
    previous: Sequence[ServingEndpoints], clusters: Sequence[ClusterReplicas], *, origin: str
) -> list[ServingEndpoints]:
    """The serving endpoints the origin should use now (clusters sorted by name; the origin itself left out)."""
    before = {s.cluster: s for s in previous}
    healthy_ready = any(c.healthy and c.ready for c in clusters)
    out: list[ServingEndpoints] = []
    for c in sorted(clusters, key=lambda c: c.cluster):
        if c.cluster == origin:
            continue  # the origin's own Service selects its replicas
        prior = before.get(c.cluster)
        if not c.healthy:
            # Unknown state: keep what we had only while nothing healthy can serve.
            if prior is not None and not healthy_ready:
                out.append(prior)
            continue
        mode = c.network.mode
        if mode == "mcs":
            if c.ready or (prior is not None and c.live):
                out.append(ServingEndpoints(cluster=c.cluster, mode="mcs", addresses=[], port=c.pod_port))
            continue
        if mode == "exposed":
            if c.ready and c.exposed and c.exposed_port:
                addresses = sorted(set(c.exposed))
                out.append(ServingEndpoints(cluster=c.cluster, mode=mode, addresses=addresses, port=c.exposed_port))
            elif prior is not None and c.live:
                out.append(prior)
            continue
        kept = set(prior.addresses) & c.live if prior is not None and prior.mode == "flat" else set()
        addresses = sorted(c.ready | kept)
        if addresses:
            out.append(ServingEndpoints(cluster=c.cluster, mode="flat", addresses=addresses, port=c.pod_port))
    if not _any_address(out) and not any(c.ready and c.cluster == origin for c in clusters):
        # Never zero: nothing healthy is ready anywhere, so the last endpoints stay.
        return sorted(previous, key=lambda s: s.cluster) if _any_address(previous) else out
    return out


def _any_address(serving: Sequence[ServingEndpoints]) -> bool:
    return any(s.addresses or s.mode == "mcs" for s in serving)


def admitted_cidrs(origin: str, networks: Mapping[str, ClusterNetwork]) -> list[str]:
    """What a serving cluster's NetworkPolicy admits for this deployment: the origin's declared pod ranges."""
    net = networks.get(origin)
    return sorted(set(net.pod_cidrs)) if net is not None else []


def traffic_summary(origin: str, local_ready: int, serving: Sequence[ServingEndpoints]) -> str:
    """The one-line answer to "where does traffic go" (the Traffic column of ``kubectl get llmd -o wide``)."""
    parts = [f"{origin} (local: {local_ready})"] if local_ready else []
    for s in serving:
        parts.append(f"{s.cluster} ({s.mode}: {len(s.addresses)})" if s.mode != "mcs" else f"{s.cluster} (mcs)")
    return ", ".join(parts) or "none"
