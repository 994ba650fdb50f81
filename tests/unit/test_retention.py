"""Which events a retention policy may age out, and which partitions the planner keeps created ahead."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from api.events import ClusterHealthChanged, LoadObserved, ResourceDeleted, ResyncCompleted
from store.recorder import retention_of
from store.retention import horizon_note, wanted
from tests import builders


def test_raw_observations_are_prunable_and_everything_else_is_audit() -> None:
    node = builders.observed("a100", "Node", builders.gpu_node("gpu-1"))
    spec = builders.observed("cpu", "LLMDeployment", builders.llm_deployment("chat", "team", {"modelRef": "m"}))
    model = builders.observed("cpu", "LLMModel", builders.llm_model("m", "team", {"modelName": "x", "image": "i"}))
    gone = ResourceDeleted(
        event_id="d", cluster="a100", kind="Pod", namespace="team", name="p", uid="u", resource_version="1",
        observed_at=builders.T0,
    )  # fmt: skip
    spec_gone = ResourceDeleted(
        event_id="d2", cluster="cpu", kind="LLMDeployment", namespace="team", name="chat", uid="u2",
        resource_version="2", observed_at=builders.T0,
    )  # fmt: skip
    load = LoadObserved(
        event_id="l", cluster="a100", origin_cluster="cpu", namespace="team", name="chat", window_seconds=10,
        replicas=1, reporting=1, observed_at=builders.T0,
    )  # fmt: skip
    resync = ResyncCompleted(
        event_id="r", cluster="a100", kind="Pod", uids=[], resource_version="3", observed_at=builders.T0
    )
    health = ClusterHealthChanged(event_id="h", cluster="a100", healthy=False, reason="x", at=builders.T0)
    assert [retention_of(e) for e in (node, gone, load)] == ["observation"] * 3
    # Resyncs stay: replay after a prune needs them to delete what they found gone.
    assert [retention_of(e) for e in (spec, model, spec_gone, resync, health)] == ["audit"] * 5


def test_partitions_wanted_ahead_cover_contiguous_days_and_months_across_a_year_end() -> None:
    parts = wanted(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), days_ahead=2)
    audit = [p for p in parts if p.retention == "audit"]
    days = [p for p in parts if p.retention == "observation"]
    assert [p.name for p in audit] == ["events_audit_202612", "events_audit_202701"]
    assert audit[0].end == audit[1].start == datetime(2027, 1, 1, tzinfo=UTC)
    assert [p.name for p in days] == [
        "events_observation_20261231",
        "events_observation_20270101",
        "events_observation_20270102",
    ]
    assert all(a.end == b.start for a, b in itertools.pairwise(days))
    assert all(p.end - p.start == timedelta(days=1) for p in days)


def test_the_horizon_note_says_what_is_incomplete_and_what_is_not() -> None:
    note = horizon_note(datetime(2026, 11, 25, tzinfo=UTC))
    assert "before 2026-11-25T00:00:00+00:00 were pruned by the retention policy" in note
    assert "placements, decisions, plans and applies are complete" in note
