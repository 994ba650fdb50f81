"""One address in the origin cluster: which endpoints follow the replicas (planner.endpoints), what the origin and
the serving clusters get (applier.endpoints), and the network vocabulary's validation (api.network)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from api.events import ClusterHeartbeat, decode_event, encode_event
from api.network import ClusterNetwork, ServingEndpoints
from api.plans import DeploymentRef, EndpointsPlan, plan_id
from applier.endpoints import (
    LABEL_SERVICE_NAME,
    LABEL_SLICE_MANAGED_BY,
    SLICE_MANAGER,
    render,
    resolve,
)
from planner.endpoints import ClusterReplicas, admitted_cidrs, follow, traffic_summary

REF = DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="u1")
FLAT = ClusterNetwork(mode="flat", pod_cidrs=["10.246.0.0/16"])


def _plan(**fields: Any) -> EndpointsPlan:
    cluster = fields.pop("cluster", "cpu")
    return EndpointsPlan(
        plan_id=plan_id(REF, cluster, "Endpoints", 1, 1),
        epoch=1,
        sequence=fields.pop("sequence", 1),
        cluster=cluster,
        deployment=REF,
        generation=1,
        issued_at=datetime(2026, 1, 1, tzinfo=UTC),
        port=8080,
        **fields,
    )


def _flat(cluster: str, *ips: str, port: int = 8000) -> ServingEndpoints:
    return ServingEndpoints(cluster=cluster, mode="flat", addresses=list(ips), port=port)


# ------------------------------------------------------------------------------------------------- rendering


def test_without_local_replicas_the_origin_gets_a_selectorless_service_and_one_slice_per_serving_cluster() -> None:
    plan = _plan(role="origin", serving=[_flat("mixed", "10.245.0.3"), _flat("a100", "10.244.1.9", "10.244.0.2")])
    service, *slices = render(plan)
    assert service["kind"] == "Service" and "selector" not in service["spec"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert [s["metadata"]["name"] for s in slices] == ["chat-a100", "chat-mixed"]
    a100 = slices[0]
    assert a100["metadata"]["labels"][LABEL_SERVICE_NAME] == "chat"
    assert a100["metadata"]["labels"][LABEL_SLICE_MANAGED_BY] == SLICE_MANAGER
    assert a100["addressType"] == "IPv4"
    assert [e["addresses"] for e in a100["endpoints"]] == [["10.244.0.2"], ["10.244.1.9"]]
    # kube-proxy dials the slice's port: the pods' port in the serving cluster, not the Service's.
    assert a100["ports"] == [{"name": "http", "port": 8000, "protocol": "TCP"}]
    assert resolve(slices) == [("10.244.0.2", 8000), ("10.244.1.9", 8000), ("10.245.0.3", 8000)]
    assert render(plan) == render(plan)


def test_with_local_replicas_the_workloads_service_stays_and_only_remote_slices_are_added() -> None:
    plan = _plan(role="origin", local_replicas=True, serving=[_flat("a100", "10.244.0.2"), _flat("cpu", "10.246.0.9")])
    assert [m["kind"] for m in render(plan)] == ["EndpointSlice"]
    assert render(plan)[0]["metadata"]["name"] == "chat-a100"


def test_mcs_without_local_replicas_names_the_clusterset_service() -> None:
    plan = _plan(role="origin", serving=[ServingEndpoints(cluster="a100", mode="mcs", port=8080)])
    (service,) = render(plan)
    assert service["spec"]["type"] == "ExternalName"
    assert service["spec"]["externalName"] == "chat.team.svc.clusterset.local"


def test_a_serving_cluster_exports_for_mcs_and_admits_only_the_origins_pod_range() -> None:
    export, policy = render(_plan(cluster="a100", role="serving", mode="mcs", admit_cidrs=["10.246.0.0/16"]))
    assert export["kind"] == "ServiceExport" and export["metadata"]["name"] == "chat"
    assert export["apiVersion"] == "multicluster.x-k8s.io/v1alpha1"
    ingress = policy["spec"]["ingress"]
    assert ingress == [{"from": [{"ipBlock": {"cidr": "10.246.0.0/16"}}], "ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "llm.example.com/deployment": "chat",
        "llm.example.com/origin-cluster": "cpu",
    }
    assert render(_plan(cluster="a100", role="serving", mode="flat")) == []
    assert render(_plan(role="origin", remove=True, serving=[_flat("a100", "10.244.0.2")])) == []


def test_resolve_prefers_ready_endpoints_and_falls_back_to_serving_ones() -> None:
    def ep(ip: str, **conditions: bool) -> dict[str, Any]:
        return {"addresses": [ip], "conditions": conditions}

    slices = [{"ports": [{"name": "http", "port": 1}], "endpoints": [ep("10.0.0.1", ready=False), ep("10.0.0.2")]}]
    assert resolve(slices) == [("10.0.0.2", 1)]
    slices = [{"ports": [{"port": 1}], "endpoints": [ep("10.0.0.1", ready=False, serving=True, terminating=True)]}]
    assert resolve(slices) == [("10.0.0.1", 1)]
    assert resolve([{"ports": [{"port": 1}], "endpoints": [{"addresses": []}]}]) == []


# ------------------------------------------------------------------------------------------ the vocabulary


@pytest.mark.parametrize("ip", ["127.0.0.1", "169.254.1.1", "0.0.0.0", "224.0.0.1", "::1", "nonsense"])
def test_addresses_the_apiserver_would_refuse_never_reach_a_plan(ip: str) -> None:
    with pytest.raises(ValidationError, match=r"endpoint|IPv4"):
        ServingEndpoints(cluster="a", mode="flat", addresses=[ip], port=80)


def test_the_heartbeat_carries_the_network_and_old_heartbeats_still_decode() -> None:
    beat = ClusterHeartbeat(
        event_id="e", cluster="a100", watcher_id="w", sent_at=datetime(2026, 1, 1, tzinfo=UTC), sequence=1, network=FLAT
    )
    decoded = decode_event(encode_event(beat))
    assert isinstance(decoded, ClusterHeartbeat) and decoded.network == FLAT
    old = (
        b'{"type":"ClusterHeartbeat","event_id":"e","cluster":"a","watcher_id":"w",'
        b'"sent_at":"2026-01-01T00:00:00Z","sequence":0}'
    )
    legacy = decode_event(old)
    assert isinstance(legacy, ClusterHeartbeat) and legacy.network is None


# ------------------------------------------------------------------------------------ following the replicas


def _c(
    cluster: str, *, ready: frozenset[str] = frozenset(), live: set[str] | None = None, healthy: bool = True, **kw: Any
) -> ClusterReplicas:
    net = kw.pop("network", FLAT)
    return ClusterReplicas(
        cluster=cluster,
        network=net,
        healthy=healthy,
        ready=frozenset(ready),
        live=frozenset(ready if live is None else live),
        **kw,
    )


def test_new_ready_replicas_are_added_and_old_ones_stay_until_their_pods_are_gone() -> None:
    previous = [_flat("a100", "10.244.0.1")]
    # 10.244.0.1 is no longer ready but its pod still exists; 10.244.0.2 became ready.
    now = follow(previous, [_c("a100", ready={"10.244.0.2"}, live={"10.244.0.1", "10.244.0.2"})], origin="cpu")
    assert now == [_flat("a100", "10.244.0.1", "10.244.0.2")]
    # Once the pod is gone, so is its address.
    now = follow(now, [_c("a100", ready={"10.244.0.2"})], origin="cpu")
    assert now == [_flat("a100", "10.244.0.2")]
    # A replica that was never ready is not added.
    assert follow([], [_c("a100", ready=set(), live={"10.244.0.3"})], origin="cpu") == []


def test_failover_moves_to_the_new_cluster_once_it_is_ready_and_never_through_zero() -> None:
    before = [_flat("a100", "10.244.0.1")]
    # The agent of a100 went silent, mixed is not ready yet: keep a100 (never zero).
    silent = _c("a100", healthy=False)
    assert follow(before, [silent, _c("mixed", live={"10.245.0.1"})], origin="cpu") == before
    # mixed is ready: traffic goes there only.
    assert follow(before, [silent, _c("mixed", ready={"10.245.0.1"})], origin="cpu") == [_flat("mixed", "10.245.0.1")]


def test_nothing_ready_anywhere_keeps_the_last_endpoints() -> None:
    before = [_flat("a100", "10.244.0.1")]
    assert follow(before, [_c("a100", ready=set(), live=set())], origin="cpu") == before


def test_a_split_deployment_points_at_every_serving_cluster_and_leaves_the_origin_to_its_selector() -> None:
    clusters = [_c("cpu", ready={"10.246.0.4"}), _c("a100", ready={"10.244.0.1"}), _c("mixed", ready={"10.245.0.1"})]
    assert follow([], clusters, origin="cpu") == [_flat("a100", "10.244.0.1"), _flat("mixed", "10.245.0.1")]
    # The origin's own ready replicas count: a remote cluster that went away is dropped, not kept.
    assert (
        follow(
            [_flat("a100", "10.244.0.1")], [_c("cpu", ready={"10.246.0.4"}), _c("a100", healthy=False)], origin="cpu"
        )
        == []
    )


def test_exposed_and_mcs_clusters_are_reached_through_their_service() -> None:
    exposed = ClusterNetwork(mode="exposed")
    clusters = [
        _c("a100", ready={"10.244.0.1"}, network=exposed, exposed=("203.0.113.7",), exposed_port=8080),
        _c("mixed", ready={"10.245.0.1"}, network=ClusterNetwork(mode="mcs")),
    ]
    assert follow([], clusters, origin="cpu") == [
        ServingEndpoints(cluster="a100", mode="exposed", addresses=["203.0.113.7"], port=8080),
        ServingEndpoints(cluster="mixed", mode="mcs", addresses=[], port=8000),
    ]
    # Exposed without an ingress address yet: nothing to point at.
    assert follow([], [_c("a100", ready={"10.244.0.1"}, network=exposed)], origin="cpu") == []


def test_the_serving_clusters_admit_the_origins_declared_ranges_and_the_summary_says_where_traffic_goes() -> None:
    assert admitted_cidrs("cpu", {"cpu": FLAT}) == ["10.246.0.0/16"]
    assert admitted_cidrs("cpu", {}) == []
    summary = traffic_summary("cpu", 1, [_flat("a100", "10.244.0.1", "10.244.0.2")])
    assert summary == "cpu (local: 1), a100 (flat: 2)"
    assert traffic_summary("cpu", 0, []) == "none"
