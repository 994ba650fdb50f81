"""The ``exposed`` network mode, end to end through the pure parts: the render makes a serving cluster's model
Service a LoadBalancer (applier.render), the watcher reports its ingress addresses (watcher.translate, hostile
input refused), the store folds them (store.projections, api.snapshots), and the planner points the origin's
endpoints at them (planner.traffic, planner.endpoints)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.labels import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_NAMESPACE, LABEL_ORIGIN, MANAGED_BY
from api.network import ClusterNetwork, ServingEndpoints
from api.plans import DeploymentRef
from api.snapshots import MAX_INGRESS, check_snapshot
from applier.render import render
from planner.traffic import ClusterView, Exposed, Replica, TrafficInputs, traffic
from store.projections import Upsert, fold, service_row
from tests.unit.test_render import make_plan
from watcher import translate

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REF = DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="u1")
IDENTITY = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_DEPLOYMENT: "chat", LABEL_ORIGIN: "cpu", LABEL_NAMESPACE: "team"}


def _service(ingress: list[Any], *, kind: str = "LoadBalancer", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "chat",
            "namespace": "team",
            "uid": "s1",
            "resourceVersion": "7",
            "labels": labels or IDENTITY,
        },
        "spec": {
            "type": kind,
            "ports": [{"name": "http", "port": 8080, "nodePort": 31000, "targetPort": "http", "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {"ingress": ingress}},
    }


def _service_type(manifests: list[dict[str, Any]]) -> str:
    return next(m for m in manifests if m["kind"] == "Service")["spec"]["type"]


def test_an_exposed_clusters_service_serving_another_origin_is_a_load_balancer() -> None:
    away = make_plan(cluster="a100", origin="cpu")
    assert _service_type(render(away)) == "ClusterIP"
    assert _service_type(render(away, exposed=True)) == "LoadBalancer"
    # In the origin itself the Service only selects local replicas: nothing to expose.
    assert _service_type(render(make_plan(cluster="cpu", origin="cpu"), exposed=True)) == "ClusterIP"
    # Only the Service's type changes: the pods are the same (no restart when a cluster becomes exposed).
    plain = {m["kind"]: m for m in render(away)}
    exposed = {m["kind"]: m for m in render(away, exposed=True)}
    assert plain["Deployment"] == exposed["Deployment"]


def test_the_watcher_reports_a_services_valid_ingress_addresses_only() -> None:
    hostile = [
        {"ip": "10.244.255.9"},
        {"ip": "127.0.0.1"},  # loopback
        {"ip": "169.254.169.254"},  # link-local: the cloud metadata service
        {"ip": "not-an-ip"},
        {"ip": "fd00::1"},  # IPv6: the slices are IPv4
        {"hostname": "lb.example.com"},
        "junk",
        {"ip": 42},
    ]
    snap = translate.snapshot("Service", _service(hostile))
    assert snap["ingress"] == ["10.244.255.9"]
    assert snap["type"] == "LoadBalancer" and snap["port"] == 8080 and snap["nodePort"] == 31000
    assert snap["labels"] == IDENTITY
    assert check_snapshot("Service", snap) is None
    # Bounded: a Service listing thousands of addresses yields at most MAX_INGRESS.
    many = translate.snapshot("Service", _service([{"ip": f"10.244.255.{i}"} for i in range(1, 200)]))
    assert len(many["ingress"]) == MAX_INGRESS


def test_a_hostile_service_snapshot_is_refused_or_folded_without_bad_addresses() -> None:
    assert check_snapshot("Service", {"ingress": ["10.0.0.1"] * (MAX_INGRESS + 1)}) is not None
    assert check_snapshot("Service", {"port": "8080"}) is not None
    assert check_snapshot("Service", {"port": 70000}) is not None
    row = service_row(
        "s1", {"labels": IDENTITY, "ingress": ["127.0.0.1", "10.244.255.9", 5], "port": 8080}, NOW, namespace="team"
    )
    assert row["ingress"] == ["10.244.255.9"] and row["port"] == 8080 and row["deployment_key"] is not None
    # Identity labels count only in the namespace they name.
    elsewhere = service_row("s1", {"labels": IDENTITY, "ingress": ["10.244.255.9"]}, NOW, namespace="other")
    assert elsewhere["deployment_key"] is None


def test_a_service_observation_folds_into_the_services_projection() -> None:
    event = translate.observed("a100", "Service", _service([{"ip": "10.244.255.9"}]), NOW)
    [op] = fold(event)
    assert isinstance(op, Upsert) and op.table == "services"
    assert op.key == {"cluster": "a100", "namespace": "team", "name": "chat"}
    assert op.values["ingress"] == ["10.244.255.9"] and op.values["service_type"] == "LoadBalancer"


def _inputs(exposed: dict[str, Exposed], *, ready: bool = True) -> TrafficInputs:
    networks = {
        "cpu": ClusterNetwork(mode="flat", pod_cidrs=["10.246.0.0/16"]),
        "a100": ClusterNetwork(mode="exposed", pod_cidrs=["10.244.0.0/16"]),
    }
    return TrafficInputs(
        ref=REF,
        generation=1,
        port=8080,
        clusters={c: ClusterView(healthy=True, network=n) for c, n in networks.items()},
        replicas=[Replica("a100", "10.244.0.5", ready)],
        placed={"a100"},
        exposed=exposed,
    )


def test_the_origin_points_at_an_exposed_clusters_load_balancer_once_it_has_an_address() -> None:
    # No ingress yet (the cloud controller has not answered): the pod address is not reachable from the origin,
    # so nothing is listed; the serving cluster's plan says it is exposed.
    waiting = traffic(_inputs({"a100": Exposed(addresses=(), port=8080)}))
    assert waiting.serving == ()
    assert {w.cluster: w.mode for w in waiting.wanted if w.role == "serving"} == {"a100": "exposed"}

    routed = traffic(_inputs({"a100": Exposed(addresses=("10.244.255.9",), port=8080)}))
    assert routed.serving == (ServingEndpoints(cluster="a100", mode="exposed", addresses=["10.244.255.9"], port=8080),)
    plans = routed.plans(REF, generation=1, epoch=1, sequence=0, now=NOW)
    origin = next(p for p in plans if p.cluster == "cpu")
    assert origin.role == "origin" and [s.addresses for s in origin.serving] == [["10.244.255.9"]]
    assert routed.summary == "a100 (exposed: 1)"

    # No ready replica behind the load balancer: not listed (the load balancer would answer nothing).
    assert traffic(_inputs({"a100": Exposed(addresses=("10.244.255.9",), port=8080)}, ready=False)).serving == ()
