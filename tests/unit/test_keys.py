"""One deployment key: a tuple in memory, one text form on disk and in ids, and ids that never change with it."""

from __future__ import annotations

from api.keys import DeploymentKey
from api.plans import DeploymentRef, plan_id
from store.projections import pod_row


def test_the_text_form_reads_back() -> None:
    key = DeploymentKey("cpu", "team", "chat")
    assert str(key) == "cpu/team/chat"
    assert DeploymentKey.parse(str(key)) == key
    assert key == ("cpu", "team", "chat")  # sorts, hashes and unpacks as the tuple it is
    assert key.columns() == {"origin_cluster": "cpu", "namespace": "team", "name": "chat"}


def test_a_pod_row_carries_the_key_of_its_deployment_in_the_text_form() -> None:
    labels = {
        "llm.example.com/origin-cluster": "cpu",
        "llm.example.com/namespace": "team",
        "llm.example.com/deployment": "chat",
    }
    row = pod_row("uid-1", {"labels": labels}, at=None, namespace="team")  # type: ignore[arg-type]
    assert (
        DeploymentKey.parse(row["deployment_key"])
        == DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="x").key
    )


def test_plan_ids_are_what_they_always_were() -> None:
    """Plan ids are written on applied objects: the key's text form is part of them and must never change."""
    ref = DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="u-1")
    assert plan_id(ref, "a100", "Workload", 3, 7) == "a3abeb6e-4ecc-5201-a1f3-73f114892d14"
