"""What the test fleet looks like: clusters, their nodes, and the Node objects that stand in for GPU machines.

Guarantees: everything here is pure data and pure functions (no I/O). ``node_manifest`` renders a ``v1.Node``
the way a real GPU node looks once the NVIDIA GPU operator has run on it (``nvidia.com/gpu`` capacity, GPU
feature discovery labels, the ``nvidia.com/gpu=present:NoSchedule`` taint), marked for kwok so that kwok keeps
it Ready and runs the pods the real kube-scheduler binds to it. Specs are frozen and validated when built.

Pod ranges: a cluster may own a private IPv4 range (``ClusterSpec.pod_cidr``, e.g. ``10.244.0.0/16``); its nodes
then get ``spec.podCIDR`` ``10.244.<i>.0/24`` in order (unless a node names its own), and kwok gives each pod an IP
from its node's podCIDR. ``llm_operator.fleet.podnet`` makes those addresses answer on this machine.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from api.labels import (
    GPU_COUNT_LABEL,
    GPU_MEMORY_LABEL,
    GPU_PRESENT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    LABEL_MANAGED_BY,
)

GPU_TAINT_KEY = GPU_RESOURCE  # NVIDIA's GPU operator taints GPU nodes with the resource's name
GPU_TAINT_VALUE = "present"
GPU_TAINT_EFFECT = "NoSchedule"
# kwok's own convention: kwokctl's kwok-controller runs with --manage-all-nodes=true and would manage the
# nodes anyway, but a kwok started with --manage-nodes-with-annotation-selector only picks up annotated nodes.
# Only the annotation: kwok's examples also taint fake nodes (kwok.x-k8s.io/node=fake:NoSchedule) to keep real
# pods off them, but kwok does not need the taint, and our fleet has no real pods to keep off. Without it the
# fleet's nodes carry exactly the taints real GPU nodes carry, and no product code tolerates a test-only taint.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
MANAGED_BY = "llm-operator-fleet"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class NodeSpec:
    """One simulated machine. GPUs are whole devices of one product, as with the NVIDIA device plugin."""

    name: str
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str | None = None
    gpu_memory_mib: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    instance_type: str | None = None
    region: str | None = None
    zone: str | None = None
    pods: int = 110
    ephemeral_storage: str = "1Ti"
    pod_cidr: str | None = None  # spec.podCIDR: kwok takes the node's pods' IPs from it

    def __post_init__(self) -> None:
        if self.pod_cidr is not None:
            _private_ipv4(self.pod_cidr, f"node {self.name}: pod_cidr")
        if len(self.name) > 253 or not _DNS_SUBDOMAIN.match(self.name):
            raise ValueError(f"node name {self.name!r} is not a DNS-1123 subdomain")
        for what, q in (
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("ephemeral_storage", self.ephemeral_storage),
        ):
            if not _QUANTITY.match(q):
                raise ValueError(f"node {self.name}: {what} {q!r} is not a Kubernetes quantity")
        if self.gpus < 0 or self.pods <= 0:
            raise ValueError(f"node {self.name}: gpus must be >= 0 and pods > 0")
        if self.gpus > 0 and (not self.gpu_product or not self.gpu_memory_mib or self.gpu_memory_mib <= 0):
            raise ValueError(f"node {self.name}: a GPU node needs gpu_product and a positive gpu_memory_mib")
        if self.gpus == 0 and (self.gpu_product or self.gpu_memory_mib):
            raise ValueError(f"node {self.name}: gpu_product/gpu_memory_mib given but gpus == 0")
        object.__setattr__(self, "labels", _frozen_mapping(self.labels))


@dataclass(frozen=True)
class ClusterSpec:
    """One member cluster: a kwok control plane and its nodes; ``labels`` describe it to the operator."""

    name: str
    labels: Mapping[str, str] = field(hash=False)
    nodes: tuple[NodeSpec, ...]
    pod_cidr: str | None = None  # the cluster's pod range; node i without its own gets the i-th /24 of it

    def __post_init__(self) -> None:
        if len(self.name) > 40 or not _DNS_LABEL.match(self.name):
            # The name becomes the kubeconfig context "kwok-<name>" and kwokctl's directory name.
            raise ValueError(f"cluster name {self.name!r} must be a DNS label of at most 40 characters")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster {self.name}: duplicate node names in {names}")
        object.__setattr__(self, "labels", _frozen_mapping(self.labels))
        nodes = tuple(self.nodes)
        if self.pod_cidr is not None:
            net = _private_ipv4(self.pod_cidr, f"cluster {self.name}: pod_cidr")
            nodes = tuple(n if n.pod_cidr else replace(n, pod_cidr=node_pod_cidr(net, i)) for i, n in enumerate(nodes))
            for n in nodes:
                assert n.pod_cidr is not None
                if not ipaddress.IPv4Network(n.pod_cidr).subnet_of(net):
                    raise ValueError(f"cluster {self.name}: node {n.name}'s pod_cidr is outside {net}")
        object.__setattr__(self, "nodes", nodes)

    @property
    def context(self) -> str:
        """The kubeconfig context kwokctl writes for this cluster."""
        return f"kwok-{self.name}"

    @property
    def gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)


def _private_ipv4(cidr: str, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise ValueError(f"{what} {cidr!r} is not an IPv4 network ({e})") from e
    # The apiserver refuses loopback and link-local addresses in EndpointSlices; public ranges would shadow
    # real destinations once routed into the pod network namespace.
    if net.is_loopback or net.is_link_local or not net.is_private:
        raise ValueError(f"{what} {cidr} must be a private range (not loopback or link-local)")
    return net


def node_pod_cidr(cluster_range: ipaddress.IPv4Network, index: int) -> str:
    """PURE: the ``index``-th /24 of a cluster's range (``10.244.0.0/16``, 3 -> ``10.244.3.0/24``)."""
    subnets = cluster_range.subnets(new_prefix=24) if cluster_range.prefixlen < 24 else iter([cluster_range])
    for i, sub in enumerate(subnets):
        if i == index:
            return str(sub)
    raise ValueError(f"{cluster_range} has no /24 number {index}")


LOAD_BALANCER_SUBNET = 255
"""The /24 of a cluster's pod range that no node gets: addresses for emulated load balancers."""


def load_balancer_ip(cluster: ClusterSpec, index: int) -> str:
    """PURE: the ``index``-th (from 1) address for a LoadBalancer Service's ingress in ``cluster``: inside its
    pod range, so the pod network serves it, and in the one /24 no node's pods use."""
    if cluster.pod_cidr is None:
        raise ValueError(f"cluster {cluster.name} has no pod range")
    subnet = ipaddress.IPv4Network(node_pod_cidr(ipaddress.IPv4Network(cluster.pod_cidr), LOAD_BALANCER_SUBNET))
    if not 1 <= index < subnet.num_addresses - 1:
        raise ValueError(f"load balancer address {index} is outside 1..{subnet.num_addresses - 2}")
    return str(subnet[index])


def node_manifest(node: NodeSpec) -> dict[str, Any]:
    """A ``v1.Node`` for ``node``: capacity == allocatable, GFD labels and the GPU taint on GPU nodes."""
    labels: dict[str, str] = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if node.instance_type:
        labels["node.kubernetes.io/instance-type"] = node.instance_type
    if node.region:
        labels["topology.kubernetes.io/region"] = node.region
    if node.zone:
        labels["topology.kubernetes.io/zone"] = node.zone
    resources: dict[str, str] = {
        "cpu": node.cpu,
        "memory": node.memory,
        "pods": str(node.pods),
        "ephemeral-storage": node.ephemeral_storage,
    }
    taints: list[dict[str, str]] = []
    if node.gpus > 0:
        # NodeSpec.__post_init__ guarantees both for GPU nodes.
        assert node.gpu_product is not None
        assert node.gpu_memory_mib is not None
        labels.update(
            {
                GPU_PRESENT_LABEL: "true",
                GPU_PRODUCT_LABEL: node.gpu_product,
                GPU_MEMORY_LABEL: str(node.gpu_memory_mib),
                GPU_COUNT_LABEL: str(node.gpus),
            }
        )
        resources[GPU_RESOURCE] = str(node.gpus)
        taints.append({"key": GPU_TAINT_KEY, "value": GPU_TAINT_VALUE, "effect": GPU_TAINT_EFFECT})
    labels.update(node.labels)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
        },
        "spec": {"taints": taints, **({"podCIDR": node.pod_cidr} if node.pod_cidr else {})},
        "status": {
            "capacity": dict(resources),
            # kwok fills conditions, addresses and nodeInfo, and keeps whatever capacity is set here (without
            # one it would advertise 1k cpu / 1Ti / 1M pods).
            "allocatable": dict(resources),
        },
    }


# ----------------------------------------------------------------------------------------------------
# The default fleet

A100_80GB = "NVIDIA-A100-SXM4-80GB"
A100_40GB = "NVIDIA-A100-SXM4-40GB"
H100_80GB = "NVIDIA-H100-80GB-HBM3"
GPU_MEMORY_MIB: Mapping[str, int] = MappingProxyType({A100_80GB: 81920, A100_40GB: 40960, H100_80GB: 81559})


def gpu_node(name: str, product: str, *, gpus: int = 8, region: str, zone: str) -> NodeSpec:
    """An 8-GPU server (96 cores, 1 TiB) as the big clouds sell them."""
    short = {A100_80GB: "a100-80gb", A100_40GB: "a100-40gb", H100_80GB: "h100-80gb"}.get(product, "gpu")
    return NodeSpec(
        name=name,
        cpu="96",
        memory="1Ti",
        gpus=gpus,
        gpu_product=product,
        gpu_memory_mib=GPU_MEMORY_MIB[product],
        instance_type=f"gpu-{gpus}x-{short}",
        region=region,
        zone=zone,
    )


def cpu_node(name: str, *, region: str, zone: str) -> NodeSpec:
    """A general-purpose node: 32 cores, 128 GiB, no GPU."""
    return NodeSpec(name=name, cpu="32", memory="128Gi", instance_type="cpu-32x128", region=region, zone=zone)


# Each cluster a private pod range of its own (see the module doc and podnet): never 127/8, which the apiserver
# refuses in EndpointSlices.
FLEET_POD_RANGE = "10.244.0.0/14"
DEFAULT_FLEET: tuple[ClusterSpec, ...] = (
    ClusterSpec(
        name="a100",
        labels={"region": "us-east-1", "gpu": "a100"},
        nodes=(
            gpu_node("a100-gpu-0", A100_80GB, region="us-east-1", zone="us-east-1a"),
            gpu_node("a100-gpu-1", A100_80GB, region="us-east-1", zone="us-east-1b"),
            cpu_node("a100-cpu-0", region="us-east-1", zone="us-east-1a"),
        ),
        pod_cidr="10.244.0.0/16",
    ),
    ClusterSpec(
        name="mixed",
        labels={"region": "us-west-2", "gpu": "mixed"},
        nodes=(
            gpu_node("mixed-a100-0", A100_40GB, region="us-west-2", zone="us-west-2a"),
            gpu_node("mixed-h100-0", H100_80GB, region="us-west-2", zone="us-west-2a"),
            gpu_node("mixed-h100-1", H100_80GB, region="us-west-2", zone="us-west-2b"),
        ),
        pod_cidr="10.245.0.0/16",
    ),
    ClusterSpec(
        name="cpu",
        labels={"region": "eu-west-1", "gpu": "none"},
        nodes=(
            cpu_node("cpu-0", region="eu-west-1", zone="eu-west-1a"),
            cpu_node("cpu-1", region="eu-west-1", zone="eu-west-1b"),
        ),
        pod_cidr="10.246.0.0/16",
    ),
)


VOLUME_POOL = 24
VOLUME_SIZE = "1Ti"


def volume_manifest(index: int, *, size: str = VOLUME_SIZE) -> dict[str, Any]:
    """PURE: one pre-provisioned PersistentVolume of the fleet's pool.

    kwok clusters have no storage provisioner, so claims (model weights) would stay Pending forever; a pool of
    static volumes lets the real PV controller bind them and the real scheduler place the pods, as in a cluster
    with a provisioner. The volumes are never mounted (kwok runs no containers); they carry no storage class, so
    claims without one bind to them.
    """
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"fleet-pv-{index:03d}", "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": f"/var/lib/llm-operator-fleet/pv-{index:03d}", "type": "DirectoryOrCreate"},
        },
    }
