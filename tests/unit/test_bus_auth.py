"""The permissions `llm-operator bus` generates, and the identities directory on disk (files 0600, revocation)."""

from __future__ import annotations

import inspect
import json
import stat
from pathlib import Path

import pytest

from applier import service as applier_service
from bus.auth import PLANNER, Role, applier_consumer, inbox_prefix, permissions, public_key_of, server_config
from bus.subjects import Subjects
from llm_operator.identities import BusIdentities, IdentityError

S = Subjects("fleet")


def test_a_cluster_may_use_only_its_own_subjects_consumer_and_inbox() -> None:
    rules = permissions(S, Role.CLUSTER, "east")
    assert rules is not None
    assert rules["subscribe"] == {"allow": ["_INBOX_fleet.east.>", "fleet.control.resync"]}  # + resync requests
    allowed = rules["publish"]["allow"]
    assert "fleet.events.east" in allowed and "fleet.deadletters.east" in allowed
    assert "$JS.API.CONSUMER.CREATE.FLEET_PLANS.applier-east.fleet.plans.east" in allowed
    assert not [s for s in allowed if "west" in s or (s.endswith(">") and not s.startswith("$JS.ACK."))]
    assert not [s for s in allowed if "plans" in s and not s.startswith("$JS")]  # publishes no plan
    assert not [s for s in allowed if "MSG.GET" in s or "DURABLE" in s]


def test_the_planner_publishes_plans_and_reports_but_no_dead_letters_and_an_admin_is_unrestricted() -> None:
    rules = permissions(S, Role.PLANNER, PLANNER)
    assert rules is not None
    assert "fleet.plans.>" in rules["publish"]["allow"]
    assert "fleet.events.>" in rules["publish"]["allow"]  # a parked plan's failed apply (planner.outbox)
    assert "fleet.deadletters.>" in rules["publish"]["deny"]
    assert rules["subscribe"] == {"allow": [f"{inbox_prefix(S, PLANNER)}.>"]}
    assert permissions(S, Role.ADMIN, "admin_x") is None


def test_the_applier_uses_the_consumer_the_permissions_name() -> None:
    assert applier_consumer("east") == "applier-east"
    assert 'f"applier-{settings.cluster}"' in inspect.getsource(applier_service)


def test_identities_on_disk(tmp_path: Path) -> None:
    identities = BusIdentities(tmp_path / "bus")
    seed = identities.add("fleet", "east", Role.CLUSTER)
    assert seed == tmp_path / "bus" / "fleet" / "east" / "nats.nk"
    assert identities.add("fleet", "east", Role.CLUSTER) == seed  # idempotent: the same seed
    for path in (seed, identities.server_config_path, tmp_path / "bus" / "identities.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(seed.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "bus").stat().st_mode) == 0o700
    public = public_key_of(seed.read_text())
    config = identities.server_config_path.read_text()
    assert public in config and seed.read_text().strip() not in config  # public keys only
    assert json.loads(config.split("authorization: ", 1)[1])["users"][0]["nkey"] == public
    assert identities.revoke("fleet", "east")
    assert not seed.exists() and public not in identities.server_config_path.read_text()
    assert not identities.revoke("fleet", "east")


def test_bad_names_are_refused(tmp_path: Path) -> None:
    identities = BusIdentities(tmp_path)
    with pytest.raises(IdentityError):
        identities.add("fleet", "East_1", Role.CLUSTER)
    with pytest.raises(IdentityError):
        identities.add("fleet", "hub", Role.CLUSTER)
    with pytest.raises(ValueError, match="nkey seed"):
        public_key_of("not a seed")


def test_server_config_is_sorted_and_stable() -> None:
    assert server_config([]) == server_config([])
