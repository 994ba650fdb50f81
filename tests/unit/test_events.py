"""Events in the log are forever: decisions recorded before verdicts were kept still decode, from the log and from
the wire, and read as "no verdicts recorded"."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.events import PlacementDecided, decode_event
from store.reader import decode_row

OLD_DECISION: dict[str, Any] = {
    "origin_cluster": "cpu",
    "namespace": "team",
    "name": "chat",
    "generation": 1,
    "desired_replicas": 2,
    "outcome": "Placed",
    "shares": [{"cluster": "a100", "replicas": 2, "role": "active", "gpu_type": None, "nodes": {"a-1": 2}}],
    "replica_gpus": 4,
    "replica_cpu_m": 8000,
    "replica_memory_bytes": 85899345920,
    "reasons": ["cluster cpu released: maxClusters is 1"],
    "message": "placed a100=2",
    "inputs": {"clusters": {}, "placed": 2},
    "epoch": 1,
    "decided_at": "2026-11-27T09:00:00+00:00",
}


@pytest.mark.parametrize("version", [1, 2])
def test_a_stored_decision_without_verdicts_decodes(version: int) -> None:
    payload = dict(OLD_DECISION)
    if version == 1:
        for key in ("replica_gpus", "replica_cpu_m", "replica_memory_bytes"):
            del payload[key]
    row = {
        "position": 7,
        "event_id": "old-decision",
        "type": "PlacementDecided",
        "schema_version": version,
        "cluster": "cpu",
        "payload": payload,
    }

    decision = decode_row(row)

    assert isinstance(decision, PlacementDecided)
    assert (decision.verdicts, decision.released) == ((), ())
    assert decision.reasons == ["cluster cpu released: maxClusters is 1"]


def test_a_decision_without_verdicts_decodes_from_the_wire() -> None:
    wire = {**OLD_DECISION, "event_id": "old", "type": "PlacementDecided", "schema_version": 2, "cluster": "cpu"}

    decision = decode_event(json.dumps(wire).encode())

    assert isinstance(decision, PlacementDecided)
    assert (decision.verdicts, decision.released) == ((), ())
