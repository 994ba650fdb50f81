"""The pure parts of projection snapshots (store/snapshots.py) and of folding a subset of the projections: when a
snapshot is due, which are thinned, how Postgres' JSON of a table becomes rows again, and that the payload fields
replay leaves out are never read by the fold. The database side: tests/integration/test_snapshots.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from api.events import ClusterShare, ClusterVerdict, PlacementDecided
from store import snapshots
from store.memory import MemoryTables
from store.projections import UNFOLDED_FIELDS, Delete, Update, Upsert, fold

NOW = datetime(2026, 12, 2, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("events_since", "seconds_since", "expected"),
    [
        (0, None, False),  # an empty log: nothing to copy
        (1, None, True),  # no snapshot yet
        (0, 10_000.0, False),  # nothing new, however long ago
        (4_999, 10.0, False),
        (5_000, 10.0, True),  # enough events
        (3, 900.0, True),  # enough time, something new
        (3, 899.0, False),
    ],
)
def test_a_snapshot_is_due_after_enough_events_or_enough_time_with_something_new(
    events_since: int, seconds_since: float | None, expected: bool
) -> None:
    due = snapshots.due(events_since=events_since, seconds_since=seconds_since, every_events=5000, every_seconds=900)
    assert due is expected


def test_by_time_only_when_the_event_count_is_zero() -> None:
    assert not snapshots.due(events_since=10**9, seconds_since=1.0, every_events=0, every_seconds=900)


def test_thinning_keeps_the_last_hour_then_one_an_hour_then_one_a_day() -> None:
    mine = snapshots.FINGERPRINT
    taken = {
        1: (NOW - timedelta(days=3, hours=5), mine),
        2: (NOW - timedelta(days=3, hours=4), mine),  # same day as 1 → dropped
        3: (NOW - timedelta(days=2), mine),  # another day → kept
        4: (NOW - timedelta(hours=5, minutes=20), mine),
        5: (NOW - timedelta(hours=5, minutes=10), mine),  # same hour as 4 → dropped
        6: (NOW - timedelta(hours=3), mine),
        7: (NOW - timedelta(minutes=50), mine),  # the last hour: all kept
        8: (NOW - timedelta(minutes=49), mine),
        9: (NOW - timedelta(minutes=1), "before-a-migration"),  # another table shape: always dropped
    }
    drop = snapshots.to_drop(((p, at, f) for p, (at, f) in taken.items()), now=NOW)
    assert drop == [2, 5, 9]


def test_postgres_json_of_a_table_becomes_rows_with_times_and_keys() -> None:
    memory = MemoryTables(["clusters"])
    state = json.dumps(
        [
            {
                "name": "a100",
                "labels": {"gpu": "a100"},
                "healthy": True,
                "health_reason": "Joined",
                "joined_at": "2026-12-02T07:04:09.66107+00:00",
                "health_changed_at": "2026-12-02T09:04:09+02:00",
                "last_heartbeat_at": None,
                "network": None,
            }
        ]
    )
    snapshots.decode_into(memory, "clusters", state)
    (row,) = memory.rows("clusters")
    assert memory.tables["clusters"].rows.keys() == {("a100",)}
    assert row["joined_at"] == datetime(2026, 12, 2, 7, 4, 9, 661070, tzinfo=UTC)
    assert row["health_changed_at"] == datetime(2026, 12, 2, 7, 4, 9, tzinfo=UTC)
    assert row["labels"] == {"gpu": "a100"} and row["last_heartbeat_at"] is None


def test_a_subset_of_the_tables_skips_ops_on_the_others_and_refuses_unknown_names() -> None:
    memory = MemoryTables(["clusters"])
    memory.apply(
        [
            Upsert("plans", {"plan_id": "p"}, {"kind": "workload"}),
            Upsert("clusters", {"name": "a"}, {"healthy": True}),
            Update("clusters", {"name": "a"}, {"healthy": False}),
        ]
    )
    assert list(memory.tables) == ["clusters"]
    assert [r["healthy"] for r in memory.rows("clusters")] == [False]
    with pytest.raises(ValueError, match="not projection tables"):
        MemoryTables(["clusters", "events"])


def _decision(**fields: object) -> PlacementDecided:
    return PlacementDecided.model_validate(
        {
            "event_id": "d1",
            "cluster": "hub",
            "origin_cluster": "cpu",
            "namespace": "ns",
            "name": "x",
            "generation": 1,
            "desired_replicas": 2,
            "outcome": "Placed",
            "shares": [ClusterShare(cluster="a100", replicas=2, gpu_type="NVIDIA-A100-SXM4-80GB", nodes={"n1": 2})],
            "replica_gpus": 4,
            "epoch": 3,
            "decided_at": NOW,
            **fields,
        }
    )


def test_the_payload_fields_replay_leaves_out_are_never_read_by_the_fold() -> None:
    full = _decision(
        verdicts=(
            ClusterVerdict(cluster="a100", eligible=True, replicas=2),
            ClusterVerdict(cluster="b", eligible=False, reason="unhealthy", detail="no heartbeat"),
        ),
        inputs={"clusters": {"a100": {"free": 8}}, "nodes": 40},
    )
    assert set(UNFOLDED_FIELDS["PlacementDecided"]) == {"verdicts", "inputs"}
    stripped = PlacementDecided.model_validate(
        {k: v for k, v in full.model_dump().items() if k not in UNFOLDED_FIELDS["PlacementDecided"]}
    )
    assert stripped.verdicts == () and stripped.inputs == {}
    assert fold(stripped) == fold(full)
    # And the fold does read what it keeps: a different share gives different ops.
    other = _decision(shares=[ClusterShare(cluster="b", replicas=2)])
    assert fold(other) != fold(full)


def test_a_deletion_by_uid_finds_its_row_through_the_index_also_after_the_name_was_reused() -> None:
    memory = MemoryTables(["pods"])
    pod = {"cluster": "a", "namespace": "n", "name": "p"}
    memory.apply([Upsert("pods", pod, {"uid": "u1", "phase": "Running"})])
    memory.apply([Upsert("pods", pod, {"uid": "u2", "phase": "Pending"})])  # deleted and recreated, same name
    memory.apply([Delete("pods", {"uid": "u1", "cluster": "a"})])  # the old pod's deletion, late: nothing to do
    assert [r["uid"] for r in memory.rows("pods")] == ["u2"]
    memory.apply([Delete("pods", {"uid": "u2", "cluster": "b"})])  # same uid, another cluster: not this row
    assert len(memory.rows("pods")) == 1
    memory.apply([Delete("pods", {"uid": "u2", "cluster": "a"})])
    assert memory.rows("pods") == []
    assert memory.tables["pods"].by_uid == {}
