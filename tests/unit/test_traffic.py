"""The planner's share of "one address in the origin cluster": which endpoints plans a deployment's state calls for
(planner.traffic), what the status says (planner.status), the declared network recorded from heartbeats
(planner.health) and the pod addresses folded into the store (store.projections)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from api.events import ClusterHeartbeat, ClusterJoined, ClusterNetworkChanged, decode_event, encode_event
from api.network import ClusterNetwork, ServingEndpoints
from api.plans import DeploymentRef, EndpointsPlan
from planner.health import cluster_events
from planner.status import ClusterProgress, StatusInputs, compute_status
from planner.traffic import ClusterView, Replica, TrafficInputs, traffic
from store.projections import Update, Upsert, fold, pod_row
from store.rows import ClusterRow

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REF = DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="u1")
CPU = ClusterNetwork(mode="flat", pod_cidrs=["10.246.0.0/16"])
A100 = ClusterNetwork(mode="flat", pod_cidrs=["10.244.0.0/16"])


def _views(**health: bool) -> dict[str, ClusterView]:
    nets = {"cpu": CPU, "a100": A100, "mixed": ClusterNetwork(mode="flat", pod_cidrs=["10.245.0.0/16"])}
    return {c: ClusterView(healthy=health.get(c, True), network=nets[c]) for c in nets}


def _state(
    replicas: Sequence[Replica],
    placed: set[str],
    last: Sequence[EndpointsPlan] = (),
    *,
    port: int | None = 8000,
    **health: bool,
) -> TrafficInputs:
    return TrafficInputs(
        ref=REF,
        generation=1,
        port=port,
        clusters=_views(**health),
        replicas=list(replicas),
        placed=placed,
        last={p.cluster: p for p in last},
    )


def _issue(state: TrafficInputs, after: int = 10) -> list[EndpointsPlan]:
    return traffic(state).plans(REF, generation=1, epoch=1, sequence=after, now=NOW)


def _by(plans: Sequence[EndpointsPlan]) -> dict[str, EndpointsPlan]:
    assert len({p.cluster for p in plans}) == len(plans)
    return {p.cluster: p for p in plans}


def _newest(*rounds: Iterable[EndpointsPlan]) -> list[EndpointsPlan]:
    out: dict[str, EndpointsPlan] = {}
    for plans in rounds:
        out.update({p.cluster: p for p in plans})
    return list(out.values())


def test_replicas_elsewhere_give_the_origin_a_service_pointing_at_them_and_the_serving_cluster_admits_it() -> None:
    state = _state([Replica("a100", "10.244.0.5", True), Replica("a100", "10.244.0.6", False)], {"a100"})
    plans = _by(_issue(state))
    origin, serving = plans["cpu"], plans["a100"]
    assert origin.role == "origin" and not origin.local_replicas and origin.port == 8000
    assert origin.serving == [ServingEndpoints(cluster="a100", mode="flat", addresses=["10.244.0.5"], port=8000)]
    assert serving.role == "serving" and serving.admit_cidrs == ["10.246.0.0/16"] and serving.mode == "flat"
    assert [p.sequence for p in plans.values()] == [11, 12]
    assert traffic(state).summary == "a100 (flat: 1)"

    # Level-based: the same state with those plans sent issues nothing; a replica turning ready is added.
    again = replace(state, last={p.cluster: p for p in plans.values()})
    assert _issue(again) == []
    ready = replace(again, replicas=[Replica("a100", "10.244.0.5", True), Replica("a100", "10.244.0.6", True)])
    (update,) = _issue(ready)
    assert update.cluster == "cpu" and update.serving[0].addresses == ["10.244.0.5", "10.244.0.6"]


def test_the_origin_has_its_service_before_any_replica_is_ready() -> None:
    plans = _by(_issue(_state([Replica("a100", None, False)], {"a100"})))
    assert plans["cpu"].serving == [] and not plans["cpu"].remove
    assert plans["a100"].role == "serving"


def test_a_deployment_only_the_origin_serves_needs_no_endpoints_plan() -> None:
    assert _issue(_state([Replica("cpu", "10.246.0.3", True)], {"cpu"})) == []


def test_failover_moves_the_origins_endpoints_to_the_new_cluster_and_removes_the_lost_ones_export_last() -> None:
    before = _issue(_state([Replica("a100", "10.244.0.5", True)], {"a100"}))
    # a100 went silent; its share is retiring, the replacement in mixed is not ready yet: keep a100's endpoints.
    lost = _state(
        [Replica("a100", "10.244.0.5", True), Replica("mixed", "10.245.0.7", False)],
        {"a100", "mixed"},
        before,
        a100=False,
    )
    step1 = _by(_issue(lost))
    assert set(step1) == {"mixed"} and step1["mixed"].role == "serving"
    # The replacement is ready: the origin points at it alone.
    moved = replace(
        lost,
        replicas=[Replica("a100", "10.244.0.5", True), Replica("mixed", "10.245.0.7", True)],
        last={p.cluster: p for p in _newest(before, step1.values())},
    )
    step2 = _by(_issue(moved))
    assert set(step2) == {"cpu"}
    assert step2["cpu"].serving == [ServingEndpoints(cluster="mixed", mode="flat", addresses=["10.245.0.7"], port=8000)]
    # a100's share is removed (it came back, or was given up): its serving objects go too.
    gone = replace(
        moved,
        replicas=[Replica("mixed", "10.245.0.7", True)],
        placed={"mixed"},
        last={p.cluster: p for p in _newest(before, step1.values(), step2.values())},
    )
    step3 = _by(_issue(gone))
    assert set(step3) == {"a100"} and step3["a100"].remove


def test_a_deleted_deployment_removes_what_every_cluster_holds_once() -> None:
    before = _issue(_state([Replica("a100", "10.244.0.5", True)], {"a100"}))
    deleted = _state([Replica("a100", "10.244.0.5", True)], {"a100"}, before, port=None)
    removals = _by(_issue(deleted))
    assert set(removals) == {"cpu", "a100"} and all(p.remove for p in removals.values())
    assert _issue(replace(deleted, last=removals)) == []


def test_the_origin_running_replicas_too_keeps_its_own_service_and_adds_the_other_clusters() -> None:
    state = _state([Replica("cpu", "10.246.0.2", True), Replica("a100", "10.244.0.5", True)], {"cpu", "a100"})
    plans = _by(_issue(state))
    assert plans["cpu"].local_replicas and [s.cluster for s in plans["cpu"].serving] == ["a100"]
    assert traffic(state).summary == "cpu (local: 1), a100 (flat: 1)"
    # Back to the origin alone: the origin's extra slices go (an empty plan), a100's export is removed.
    alone = _state([Replica("cpu", "10.246.0.2", True)], {"cpu"}, list(plans.values()))
    after = _by(_issue(alone))
    assert after["cpu"].serving == [] and after["cpu"].local_replicas and not after["cpu"].remove
    assert after["a100"].remove


def test_status_lists_the_origins_address_first_then_each_serving_clusters() -> None:
    progress = ClusterProgress(
        cluster="a100",
        replicas=1,
        role="active",
        gpu_type=None,
        healthy=True,
        ready_replicas=1,
        available_replicas=1,
        updated_replicas=1,
        workload_current=True,
    )
    status = compute_status(
        StatusInputs(
            origin="cpu",
            namespace="team",
            name="chat",
            generation=1,
            desired_replicas=1,
            port=8080,
            outcome="Placed",
            message="placed",
            clusters=[progress],
            previous=[],
            now=NOW,
            traffic="a100 (flat: 1)",
        )
    )
    assert [(e.cluster, e.url) for e in status.endpoints] == [
        ("cpu", "http://chat.team:8080"),
        ("a100", "http://chat.team.svc.cluster.local:8080"),
    ]
    assert status.wire()["traffic"] == "a100 (flat: 1)"


def _row(network: dict[str, Any] | None) -> ClusterRow:
    return ClusterRow("a100", {}, True, "Joined", NOW, NOW, NOW, network)


def _beat(network: ClusterNetwork | None, sequence: int = 1) -> ClusterHeartbeat:
    return ClusterHeartbeat(
        event_id=f"hb{sequence}", cluster="a100", watcher_id="w", sent_at=NOW, sequence=sequence, network=network
    )


def test_the_declared_network_is_recorded_when_a_cluster_joins_and_when_it_changes() -> None:
    (joined,) = cluster_events([_beat(A100)], {}, now=NOW, recovery_hold=timedelta(seconds=5))
    assert isinstance(joined, ClusterJoined) and joined.network == A100
    assert fold(joined)[0].values["network"] == A100.model_dump(mode="json")  # type: ignore[union-attr]
    same = cluster_events([_beat(A100)], {"a100": _row(A100.model_dump(mode="json"))}, now=NOW, recovery_hold=NOW - NOW)
    assert same == []
    mcs = ClusterNetwork(mode="mcs")
    (changed,) = cluster_events(
        [_beat(mcs, 2)], {"a100": _row(A100.model_dump(mode="json"))}, now=NOW, recovery_hold=NOW - NOW
    )
    assert isinstance(changed, ClusterNetworkChanged) and changed.network == mcs
    assert decode_event(encode_event(changed)) == changed
    assert fold(changed) == [Update("clusters", {"name": "a100"}, {"network": mcs.model_dump(mode="json")})]


def test_a_pods_address_is_folded_only_when_it_can_be_an_endpoint() -> None:
    ok = pod_row("u", {"podIP": "10.244.0.9", "ready": True}, NOW, namespace="team")
    assert ok["pod_ip"] == "10.244.0.9"
    for hostile in ("127.0.0.1", "169.254.169.254", "::1", "not-an-ip", 7):
        assert pod_row("u", {"podIP": hostile}, NOW, namespace="team")["pod_ip"] is None
    assert isinstance(fold(joined_event())[0], Upsert)


def joined_event() -> ClusterJoined:
    return ClusterJoined(event_id="j", cluster="a100", at=NOW)
