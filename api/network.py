"""How member clusters reach each other's model replicas: the vocabulary of cross-cluster endpoints. Pure.

Each cluster declares its network (chart value / setting ``network.mode``, reported with its heartbeat):
- ``flat``: pod IPs are routable between clusters (Cilium ClusterMesh, Submariner, VPC-native pods); the origin's
  Service points at the ready replicas' pod IPs.
- ``exposed``: the cluster's Service for the model is a LoadBalancer (or NodePort); the origin points at its
  ingress addresses.
- ``mcs``: the Multi-Cluster Services API (sigs.k8s.io/mcs-api) is installed; the serving cluster exports the
  Service (``ServiceExport``) and the origin's Service names ``<name>.<namespace>.svc.clusterset.local``.
``pod_cidrs`` are the cluster's pod ranges: a serving cluster's NetworkPolicy admits clients from the origin's
ranges, and nothing more.

Guarantees: models are frozen; addresses and ranges are validated (IPv4, never loopback or link-local, which the
apiserver refuses in EndpointSlices), so a hostile heartbeat or observation cannot smuggle them into a plan.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NetworkMode = Literal["flat", "exposed", "mcs"]
NETWORK_MODES: tuple[NetworkMode, ...] = ("flat", "exposed", "mcs")
CLUSTERSET_DOMAIN = "svc.clusterset.local"
MAX_ADDRESSES = 1000  # the apiserver's limit of endpoints per EndpointSlice


def _endpoint_ip(value: str) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an IPv4 address") from e
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{value} cannot be an endpoint (loopback, link-local, unspecified or multicast)")
    return str(ip)


def _cidr(value: str) -> str:
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an IPv4 CIDR") from e
    return str(net)


EndpointIP = Annotated[str, AfterValidator(_endpoint_ip)]
Cidr = Annotated[str, AfterValidator(_cidr)]


class ClusterNetwork(BaseModel):
    """What one cluster declares about its network."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: NetworkMode = "flat"
    pod_cidrs: list[Cidr] = Field(default_factory=list, max_length=16)


class ServingEndpoints(BaseModel):
    """Where the origin reaches the replicas of one serving cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster: str = Field(min_length=1, max_length=63)
    mode: NetworkMode
    addresses: list[EndpointIP] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    """flat: ready pod IPs; exposed: the Service's ingress addresses; mcs: none (the clusterset name is used)."""
    port: int = Field(ge=1, le=65535)
    """The port to dial at those addresses (the pods' port, or the exposed Service's port or node port)."""


def clusterset_name(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.{CLUSTERSET_DOMAIN}"
