"""Plan signatures (api.signing) and the applier's admission of plans (applier.trust): pure, no bus."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from api.keys import DeploymentKey
from api.plans import DeploymentRef, StatusPlan, WorkloadPlan, plan_id
from api.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    InvalidKey,
    generate_private_key,
    load_signer,
    parse_public_key,
    trusted_keys,
    verify,
)
from applier.trust import PlanTrust

SUBJECT = "fleet.plans.gpu"
BODY = b'{"kind":"Workload","epoch":3,"sequence":7}'
SIGNER = load_signer(generate_private_key())
OTHER = load_signer(generate_private_key())
KEYS = trusted_keys([SIGNER.public_key])


def test_a_signed_plan_verifies() -> None:
    assert verify(KEYS, SUBJECT, BODY, SIGNER.headers(SUBJECT, BODY)) is None


def test_unsigned_is_refused() -> None:
    assert verify(KEYS, SUBJECT, BODY, None) == "unsigned: the plan carries no signature"
    assert verify(KEYS, SUBJECT, BODY, {KEY_ID_HEADER: SIGNER.kid}).startswith("unsigned")


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        (SUBJECT, BODY.replace(b'"epoch":3', b'"epoch":1000000000000000000')),  # a changed epoch
        (SUBJECT, BODY + b" "),  # any byte
        ("fleet.plans.cpu", BODY),  # moved to another cluster's subject
    ],
)
def test_a_changed_plan_or_subject_is_forged(subject: str, body: bytes) -> None:
    reason = verify(KEYS, subject, body, SIGNER.headers(SUBJECT, BODY))
    assert reason is not None
    assert reason.startswith("forged: the signature does not match")


def test_an_unknown_key_is_forged() -> None:
    reason = verify(KEYS, SUBJECT, BODY, OTHER.headers(SUBJECT, BODY))
    assert reason == f"forged: signed with unknown key {OTHER.kid!r}"
    # Claiming the trusted key's id does not help either.
    headers = {**OTHER.headers(SUBJECT, BODY), KEY_ID_HEADER: SIGNER.kid}
    assert (verify(KEYS, SUBJECT, BODY, headers) or "").startswith("forged: the signature does not match")
    assert (verify(KEYS, SUBJECT, BODY, {**headers, SIGNATURE_HEADER: "%%%"}) or "").startswith("forged")


def test_rotation_accepts_both_keys_while_both_are_pinned() -> None:
    both = trusted_keys([SIGNER.public_key, OTHER.public_key])
    assert verify(both, SUBJECT, BODY, SIGNER.headers(SUBJECT, BODY)) is None
    assert verify(both, SUBJECT, BODY, OTHER.headers(SUBJECT, BODY)) is None
    assert verify(trusted_keys([OTHER.public_key]), SUBJECT, BODY, SIGNER.headers(SUBJECT, BODY)) is not None


def test_key_material_round_trips_and_bad_material_is_named_without_the_key() -> None:
    assert load_signer(generate_private_key()).kid != SIGNER.kid
    assert trusted_keys([SIGNER.public_key]).keys() == {SIGNER.kid}
    for bad in ("ed25519:AAAA", "rsa:abc", "ed25519:not base64!"):
        with pytest.raises(InvalidKey):
            parse_public_key(bad)
    with pytest.raises(InvalidKey, match="not an unencrypted PEM private key"):
        load_signer(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


# --------------------------------------------------------------------------------------------- applier.trust

REF = DeploymentRef(origin_cluster="cpu", namespace="team", name="chat", uid="u1")


def plan(epoch: int, sequence: int, *, name: str = "chat") -> WorkloadPlan:
    ref = REF.model_copy(update={"name": name})
    return WorkloadPlan(
        plan_id=plan_id(ref, "gpu", "Workload", epoch, sequence),
        epoch=epoch,
        sequence=sequence,
        cluster="gpu",
        deployment=ref,
        generation=1,
        issued_at=datetime(2026, 1, 1, tzinfo=UTC),
        replicas=1,
        model_name="m",
    )


def test_newer_plans_are_admitted_and_a_later_older_one_is_a_replay() -> None:
    trust = PlanTrust(KEYS)
    assert trust.admit(plan(1, 1), 10) is None
    assert trust.admit(plan(1, 2), 11) is None
    assert trust.admit(plan(2, 1), 12) is None  # a new planner term
    reason = trust.admit(plan(1, 2), 13)  # the old bytes published again
    assert reason is not None
    assert reason.startswith("replayed: epoch 1 sequence 2 arrived after epoch 2 sequence 1")


def test_redeliveries_and_the_same_plan_again_pass() -> None:
    trust = PlanTrust(KEYS)
    assert trust.admit(plan(1, 1), 10) is None
    assert trust.admit(plan(1, 2), 11) is None
    assert trust.admit(plan(1, 1), 10) is None  # JetStream redelivered the older one (same stream position)
    assert trust.admit(plan(1, 2), 14) is None  # equal (epoch, sequence): the same signed plan
    assert trust.newest[DeploymentKey("cpu", "team", "chat")].stream_sequence == 11


def test_a_far_future_epoch_is_refused_and_moves_nothing() -> None:
    trust = PlanTrust(KEYS, max_epoch_jump=100)
    assert trust.admit(plan(5, 1), 10) is None
    reason = trust.admit(plan(10**18, 2), 11)
    assert reason is not None
    assert reason.startswith("far-future epoch")
    assert trust.highest_epoch == 5
    assert trust.admit(plan(5, 2), 12) is None  # the real planner's next plan still goes through
    assert trust.admit(plan(105, 1, name="other"), 13) is None  # within the bound


def test_deployments_are_independent() -> None:
    trust = PlanTrust(KEYS)
    assert trust.admit(plan(2, 9), 10) is None
    assert trust.admit(plan(2, 1, name="other"), 11) is None
    base = plan(2, 10).model_dump(include={"plan_id", "epoch", "sequence", "cluster", "deployment", "generation"})
    status = StatusPlan.model_validate({**base, "issued_at": datetime(2026, 1, 1, tzinfo=UTC), "status": {}})
    assert trust.admit(status, 12) is None  # a status plan shares its deployment's sequence
    assert trust.admit(plan(2, 9), 13) is not None
