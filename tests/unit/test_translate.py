"""The watcher's pure translation of raw objects into compact snapshots and events."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from api.events import ResourceObserved, decode_event, encode_event
from watcher import translate

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def node(heartbeat: str = "2026-11-27T10:00:00Z", gpus: str = "8") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "gpu-1",
            "uid": "n1",
            "resourceVersion": "10",
            "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "time": heartbeat}],
        },
        "spec": {
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule", "timeAdded": heartbeat}]
        },
        "status": {
            "allocatable": {"nvidia.com/gpu": gpus, "cpu": "96"},
            "capacity": {"nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
        },
    }


def test_node_heartbeats_do_not_change_the_snapshot_but_capacity_does() -> None:
    before = translate.snapshot_digest(translate.node_snapshot(node("2026-11-27T10:00:00Z")))
    heartbeat = translate.snapshot_digest(translate.node_snapshot(node("2026-11-27T10:00:40Z")))
    fewer_gpus = translate.snapshot_digest(translate.node_snapshot(node(gpus="7")))
    assert before == heartbeat
    assert before != fewer_gpus


def test_node_snapshot_keeps_what_placement_needs() -> None:
    snapshot = translate.node_snapshot(node())
    assert snapshot == {
        "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        "allocatable": {"nvidia.com/gpu": "8", "cpu": "96"},
        "capacity": {"nvidia.com/gpu": "8"},
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        "unschedulable": False,
        "ready": True,
    }


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            {"containers": [{"resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]},
            {"cpu": "2", "memory": "4294967296"},
            id="requests",
        ),
        pytest.param(
            {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
            {"nvidia.com/gpu": "4"},
            id="gpu-from-limits",
        ),
        pytest.param(
            {
                "containers": [
                    {"resources": {"requests": {"cpu": "500m"}}},
                    {"resources": {"requests": {"cpu": "250m"}}},
                ]
            },
            {"cpu": "0.75"},
            id="containers-add-up",
        ),
        pytest.param(
            {
                "containers": [{"resources": {"requests": {"cpu": "1"}}}],
                "initContainers": [{"resources": {"requests": {"cpu": "3"}}}],
            },
            {"cpu": "3"},
            id="largest-init-container-wins",
        ),
        pytest.param(
            {"containers": [{"resources": {"requests": {"cpu": "1"}}}], "overhead": {"cpu": "100m"}},
            {"cpu": "1.1"},
            id="overhead-added",
        ),
        pytest.param({"containers": [{}]}, {}, id="no-requests"),
    ],
)
def test_pod_requests_are_counted_as_the_scheduler_counts_them(spec: dict[str, Any], expected: dict[str, str]) -> None:
    assert translate.pod_requests(spec) == expected


def test_pod_snapshot_keeps_only_the_operators_labels() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "uid": "u",
            "resourceVersion": "1",
            "labels": {"llm.example.com/deployment": "chat", "pod-template-hash": "abc"},
        },
        "spec": {"nodeName": "gpu-1", "containers": [{}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    snapshot = translate.pod_snapshot(pod)
    assert snapshot["labels"] == {"llm.example.com/deployment": "chat"}
    assert (snapshot["nodeName"], snapshot["phase"], snapshot["ready"]) == ("gpu-1", "Running", True)


def test_custom_resources_drop_the_last_applied_annotation_and_keep_who_changed_them() -> None:
    obj = {
        "metadata": {
            "name": "chat",
            "namespace": "n",
            "uid": "u",
            "resourceVersion": "5",
            "generation": 2,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "ml"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "time": "t", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"modelRef": "m", "replicas": 2},
    }
    snapshot = translate.custom_resource_snapshot(obj)
    assert snapshot["annotations"] == {"team": "ml"}
    assert snapshot["managers"] == [{"manager": "kubectl", "operation": "Apply", "time": "t"}]
    assert snapshot["spec"] == {"modelRef": "m", "replicas": 2}


def test_event_ids_are_deterministic_in_cluster_kind_uid_and_resource_version() -> None:
    first = translate.observed("a100", "Node", node(), NOW)
    again = translate.observed("a100", "Node", copy.deepcopy(node()), datetime(2030, 1, 1, tzinfo=UTC))
    elsewhere = translate.observed("mixed", "Node", node(), NOW)
    assert first.event_id == again.event_id == ResourceObserved.id_for("a100", "Node", "n1", "10")
    assert first.event_id != elsewhere.event_id


def test_events_survive_the_wire() -> None:
    event = translate.observed("a100", "Node", node(), NOW)
    assert decode_event(encode_event(event)) == event
    gone = translate.deleted("a100", "Node", node(), NOW)
    assert decode_event(encode_event(gone)) == gone


def test_pod_snapshot_keeps_the_address_of_our_replicas_only() -> None:
    ours = {
        "metadata": {
            "name": "p",
            "namespace": "n",
            "uid": "u",
            "labels": {"app.kubernetes.io/managed-by": "llm-operator"},
        },
        "spec": {"containers": [{}]},
        "status": {"phase": "Running", "podIP": "10.244.0.7"},
    }
    assert translate.pod_snapshot(ours)["podIP"] == "10.244.0.7"
    theirs = {**ours, "metadata": {**ours["metadata"], "labels": {}}}
    assert "podIP" not in translate.pod_snapshot(theirs)
