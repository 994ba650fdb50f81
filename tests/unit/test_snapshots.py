"""Snapshots with the wrong types are refused at decode; what decodes, the fold takes without an exception.

Covers a buggy or compromised watcher (labels as a list, a string where a number belongs, a number where a string
belongs, garbage quantities and times) and mislabelled nodes (GPU feature discovery writing garbage in
nvidia.com/gpu.memory), plus integers beyond the projection columns.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.events import MalformedEvent, ResourceObserved, decode_event
from api.quantity import INT4_MAX, INT8_MAX
from store.projections import Upsert, fold
from tests import builders

AT = datetime(2026, 1, 1, tzinfo=UTC)


def wire(kind: str, obj: Any, **envelope: Any) -> bytes:
    """An observation as a watcher would put it on the bus, with whatever `obj` is (no model in between)."""
    return json.dumps(
        {
            "type": "ResourceObserved",
            "event_id": "e1",
            "cluster": "east",
            "kind": kind,
            "namespace": "ns" if kind not in ("Node",) else None,
            "name": "x",
            "uid": "u1",
            "resource_version": "1",
            "observed_at": AT.isoformat(),
            "object": obj,
            **envelope,
        }
    ).encode()


def good(kind: str) -> dict[str, Any]:
    raw = {
        "Node": builders.gpu_node("n1"),
        "Pod": {
            "metadata": builders.meta("p", "ns"),
            "spec": {"nodeName": "n1", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
            "status": {"phase": "Running"},
        },
        "LLMDeployment": builders.llm_deployment("d", "ns", {"modelRef": "m", "replicas": 1}),
        "LLMModel": builders.llm_model("m", "ns", {"modelName": "m", "image": "r/x:v1"}),
        "Deployment": {
            "metadata": builders.meta("w", "ns", generation=2),
            "spec": {"replicas": 2},
            "status": {"readyReplicas": 1, "observedGeneration": 2},
        },
    }[kind]
    return builders.observed("east", kind, raw).object  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["Node", "Pod", "LLMDeployment", "LLMModel", "Deployment"])
def test_real_snapshots_decode_and_fold(kind: str) -> None:
    event = decode_event(wire(kind, good(kind)))
    assert isinstance(event, ResourceObserved)
    assert fold(event)


@pytest.mark.parametrize(
    ("kind", "change", "where"),
    [
        pytest.param("Node", {"labels": ["a", "b"]}, "labels", id="labels-as-a-list"),
        pytest.param("Node", {"labels": {"a": 5}}, "labels.a", id="number-where-a-string-belongs"),
        pytest.param("Node", {"unschedulable": "false"}, "unschedulable", id="string-where-a-bool-belongs"),
        pytest.param("Node", {"allocatable": ["not", "a", "map"]}, "allocatable", id="allocatable-as-a-list"),
        pytest.param("Node", {"allocatable": {"nvidia.com/gpu": "eight"}}, "allocatable", id="garbage-quantity"),
        pytest.param("Node", {"taints": "NoSchedule"}, "taints", id="taints-as-a-string"),
        pytest.param("Pod", {"requests": {"cpu": "1Ki "}}, "requests.cpu", id="quantity-with-a-space"),
        pytest.param("Pod", {"requests": {"cpu": True}}, "requests.cpu", id="bool-quantity"),
        pytest.param("Pod", {"nodeName": 7}, "nodeName", id="number-node-name"),
        pytest.param("Deployment", {"replicas": "3"}, "replicas", id="string-where-a-number-belongs"),
        pytest.param("Deployment", {"replicas": 2**40}, "replicas", id="replicas-beyond-int4"),
        pytest.param("Deployment", {"status": {"readyReplicas": -1}}, "status.readyReplicas", id="negative-count"),
        pytest.param("Deployment", {"annotations": ["x"]}, "annotations", id="annotations-as-a-list"),
        pytest.param("LLMDeployment", {"creationTimestamp": "yesterday"}, "creationTimestamp", id="bad-time"),
        pytest.param("LLMDeployment", {"finalizers": "x"}, "finalizers", id="finalizers-as-a-string"),
        pytest.param("LLMDeployment", {"spec": ["x"]}, "spec", id="spec-as-a-list"),
        pytest.param("LLMModel", {"generation": "1"}, "generation", id="string-generation"),
    ],
)
def test_wrong_types_are_refused_at_decode_with_the_field_named(kind: str, change: dict[str, Any], where: str) -> None:
    with pytest.raises(MalformedEvent) as refused:
        decode_event(wire(kind, {**good(kind), **change}))
    assert f"{kind} snapshot: {where}" in refused.value.reason


def test_an_object_that_is_not_a_map_is_refused() -> None:
    with pytest.raises(MalformedEvent):
        decode_event(wire("Node", ["labels"]))


@pytest.mark.parametrize("label", ["80GB", "²", "9" * 400, "-1", "0x10", ""])
def test_gpu_memory_label_garbage_folds_to_unknown_memory(label: str) -> None:
    snapshot = good("Node")
    snapshot["labels"]["nvidia.com/gpu.memory"] = label
    (op,) = fold(decode_event(wire("Node", snapshot)))
    assert isinstance(op, Upsert) and op.values["gpu_memory_bytes"] == 0


def test_integers_beyond_the_columns_are_clamped_by_the_fold() -> None:
    node = good("Node")
    node["allocatable"] = {"nvidia.com/gpu": "3000000000", "cpu": "1e40", "memory": "9Ei"}
    (op,) = fold(decode_event(wire("Node", node)))
    assert isinstance(op, Upsert)
    assert op.values["gpu_allocatable"] == INT4_MAX
    assert op.values["cpu_allocatable_m"] == INT8_MAX
    assert op.values["memory_allocatable_bytes"] == INT8_MAX
    pod = good("Pod")
    pod["requests"] = {"nvidia.com/gpu": "1e12"}
    (op,) = fold(decode_event(wire("Pod", pod)))
    assert isinstance(op, Upsert) and op.values["gpu_request"] == INT4_MAX


# ---------------------------------------------------------------------------------------------- property-based

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_fields = {
    "Node": ["labels", "allocatable", "capacity", "taints", "unschedulable", "ready"],
    "Pod": ["labels", "nodeName", "phase", "ready", "requests"],
    "Deployment": ["labels", "annotations", "generation", "replicas", "status", "conditions"],
    "LLMDeployment": ["labels", "spec", "status", "finalizers", "deletionTimestamp", "creationTimestamp"],
    "LLMModel": ["labels", "spec", "generation", "managers"],
}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(_fields)))
def test_any_snapshot_is_refused_at_decode_or_folded_without_an_exception(data: st.DataObject, kind: str) -> None:
    snapshot = good(kind)
    for field in data.draw(st.lists(st.sampled_from(_fields[kind]), max_size=3, unique=True)):
        snapshot[field] = data.draw(_json)
    try:
        event = decode_event(wire(kind, snapshot))
    except MalformedEvent:
        return
    fold(event)
