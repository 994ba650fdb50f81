"""Pure parts of the pod network: per-cluster pod ranges on the fleet's nodes, and the ranges the namespace serves."""

from __future__ import annotations

import ipaddress

import pytest

from llm_operator.fleet import DEFAULT_FLEET, ClusterSpec, node_manifest
from llm_operator.fleet.podnet import PodNetwork, pod_ranges, validate_pod_range
from llm_operator.fleet.spec import FLEET_POD_RANGE, cpu_node, load_balancer_ip


def test_every_default_cluster_has_its_own_private_range_and_every_node_a_slice_of_it() -> None:
    ranges = [ipaddress.IPv4Network(c.pod_cidr) for c in DEFAULT_FLEET if c.pod_cidr]
    assert len(ranges) == len(DEFAULT_FLEET)
    for i, a in enumerate(ranges):
        assert a.subnet_of(ipaddress.IPv4Network(FLEET_POD_RANGE))
        assert not any(a.overlaps(b) for b in ranges[i + 1 :])
    for cluster in DEFAULT_FLEET:
        cidrs = [node_manifest(n)["spec"]["podCIDR"] for n in cluster.nodes]
        assert len(set(cidrs)) == len(cidrs)
        assert all(ipaddress.IPv4Network(c).subnet_of(ipaddress.IPv4Network(cluster.pod_cidr or "")) for c in cidrs)


def test_nodes_take_the_ith_slash_24_unless_they_name_their_own() -> None:
    own = cpu_node("own", region="r", zone="z").__class__(name="own", cpu="1", memory="1Gi", pod_cidr="10.250.9.0/24")
    spec = ClusterSpec(
        name="c",
        labels={},
        nodes=(cpu_node("n0", region="r", zone="z"), own, cpu_node("n2", region="r", zone="z")),
        pod_cidr="10.250.0.0/16",
    )
    assert [n.pod_cidr for n in spec.nodes] == ["10.250.0.0/24", "10.250.9.0/24", "10.250.2.0/24"]


def test_a_node_without_a_range_renders_no_pod_cidr() -> None:
    assert "podCIDR" not in node_manifest(cpu_node("n", region="r", zone="z"))["spec"]


@pytest.mark.parametrize("cidr", ["127.64.0.0/16", "169.254.0.0/16", "8.8.8.0/24", "10.244.0.1/16", "nonsense"])
def test_ranges_the_apiserver_or_the_machine_would_suffer_from_are_refused(cidr: str) -> None:
    with pytest.raises(ValueError, match="pod range"):
        validate_pod_range(cidr)
    with pytest.raises(ValueError, match="pod_cidr"):
        ClusterSpec(name="c", labels={}, nodes=(), pod_cidr=cidr)


def test_a_node_range_outside_its_cluster_range_is_refused() -> None:
    node = cpu_node("n", region="r", zone="z").__class__(name="n", cpu="1", memory="1Gi", pod_cidr="10.9.0.0/24")
    with pytest.raises(ValueError, match="outside"):
        ClusterSpec(name="c", labels={}, nodes=(node,), pod_cidr="10.250.0.0/16")


def test_the_pod_network_serves_its_ranges_only() -> None:
    net = PodNetwork(ranges=pod_ranges([c.pod_cidr for c in DEFAULT_FLEET] + [None, DEFAULT_FLEET[0].pod_cidr]))
    assert net.ranges == ("10.244.0.0/16", "10.245.0.0/16", "10.246.0.0/16")
    assert net.contains("10.245.3.7")
    assert not net.contains("10.247.0.1") and not net.contains("127.0.0.1") and not net.contains("garbage")
    assert (net.host_addr, net.ns_addr) == ("169.254.244.1", "169.254.244.2")
    with pytest.raises(ValueError, match="at least one"):
        PodNetwork(ranges=())
    with pytest.raises(ValueError, match="15 characters"):
        PodNetwork(ranges=("10.244.0.0/16",), host_if="a-name-longer-than-15")


def test_load_balancer_addresses_lie_in_the_cluster_range_but_in_no_nodes_slice() -> None:
    a100 = DEFAULT_FLEET[0]
    ip = load_balancer_ip(a100, 1)
    assert ip == "10.244.255.1"
    assert all(ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(n.pod_cidr or "") for n in a100.nodes)
    with pytest.raises(ValueError, match="outside"):
        load_balancer_ip(a100, 255)
