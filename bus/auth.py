"""Who may do what on the bus: one NATS nkey identity per member cluster, one for the planner.

Guarantees:
- `permissions` is the complete allow list of a role. A cluster may publish only its own events and dead letters,
  and consume only its own plans, through the one named, filtered consumer ``applier-<cluster>`` (created via
  ``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``, so the server checks the filter); it may subscribe only to
  its own inbox prefix (replies, PubAcks and pulled plans travel there). It gets no other JetStream API: no
  ``STREAM.MSG.GET``, no unfiltered consumer, no other cluster's consumer. The planner may publish plans and run
  the streams and its consumers; of events it may publish only on its clusters' behalf what it must (a failed
  apply of a plan too large to send, planner.outbox), and no dead letters. The hub is the fleet's root of trust
  anyway: it signs the plans every applier runs.
  An admin has no restriction (tests and operators' tools only).
- `server_config` renders the ``authorization`` block of nats-server's configuration for a set of identities; a
  server given it refuses every connection without one of those keys.
- Seeds are made with the `nkeys` library from 32 random bytes; only public keys go into the server's config.

Why nkeys in a static, included file rather than decentralised JWT accounts: the fleet is one account with tens of
clusters; a reload (SIGHUP) applies an added or removed key to the running server, closes only the revoked
client and restarts nothing, and it needs no resolver, operator key hierarchy or Go tooling (``nsc``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import nkeys

from bus.subjects import Subjects

PLANNER = "hub"
"""The planner's identity name: "hub" is not a valid cluster name, so it never collides with a cluster's."""


class Role(StrEnum):
    CLUSTER = "cluster"
    PLANNER = "planner"
    ADMIN = "admin"


def applier_consumer(cluster: str) -> str:
    """The one consumer a cluster's applier may use."""
    return f"applier-{cluster}"


def inbox_prefix(subjects: Subjects, identity: str) -> str:
    """The inbox prefix of an identity: replies to it (API answers, PubAcks, pulled plans) go only there."""
    return f"_INBOX_{subjects.prefix}.{identity}"


def permissions(subjects: Subjects, role: Role, name: str) -> dict[str, Any] | None:
    """nats-server ``permissions`` of an identity (None: unrestricted, the admin)."""
    if role is Role.ADMIN:
        return None
    inbox = f"{inbox_prefix(subjects, name)}.>"
    if role is Role.CLUSTER:
        plans = subjects.plans_stream
        consumer = applier_consumer(name)
        return {
            "publish": {
                "allow": [
                    subjects.events(name),
                    subjects.dead_letters(name),
                    "$JS.API.INFO",
                    f"$JS.API.CONSUMER.INFO.{plans}.{consumer}",
                    f"$JS.API.CONSUMER.CREATE.{plans}.{consumer}.{subjects.plans(name)}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{plans}.{consumer}",
                    f"$JS.ACK.{plans}.{consumer}.>",
                ]
            },
            # The planner's requests to relist and resend (bus/control.py) reach every watcher.
            "subscribe": {"allow": [inbox, subjects.resync_requests]},
        }
    streams = (subjects.events_stream, subjects.plans_stream, subjects.dead_letters_stream)
    return {
        "publish": {
            "allow": [
                subjects.all_plans,
                subjects.all_events,  # planner.outbox reports a parked plan as that cluster's failed apply
                subjects.resync_requests,  # after lost events, every watcher relists and resends (bus/control.py)
                "$JS.API.INFO",
                "$JS.API.STREAM.NAMES",
                *(f"$JS.API.STREAM.*.{s}" for s in streams),
                *(f"$JS.API.CONSUMER.*.{s}" for s in streams),
                *(f"$JS.API.CONSUMER.*.{s}.>" for s in streams),
                *(f"$JS.FC.{s}.>" for s in streams),
            ],
            "deny": [subjects.all_dead_letters],
        },
        "subscribe": {"allow": [inbox]},
    }


@dataclass(frozen=True)
class Identity:
    """One key allowed on the bus: whose it is (prefix, name), what it may do (role), and its public key."""

    prefix: str
    name: str
    role: Role
    public_key: str

    def to_json(self) -> dict[str, str]:
        return {"prefix": self.prefix, "name": self.name, "role": self.role.value, "public_key": self.public_key}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Identity:
        return cls(prefix=data["prefix"], name=data["name"], role=Role(data["role"]), public_key=data["public_key"])


def server_config(identities: Iterable[Identity]) -> str:
    """The ``authorization`` block for nats-server (JSON is valid nats-server configuration syntax)."""
    users = []
    for identity in sorted(identities, key=lambda i: (i.prefix, i.name)):
        user: dict[str, Any] = {"nkey": identity.public_key}
        rules = permissions(Subjects(identity.prefix), identity.role, identity.name)
        if rules is not None:
            user["permissions"] = rules
        users.append(user)
    header = (
        "# Generated by `llm-operator bus`: one nkey per identity. Edit with the command, then reload the server.\n"
    )
    return header + "authorization: " + json.dumps({"users": users}, indent=2) + "\n"


def new_seed() -> tuple[str, str]:
    """(seed, public key) of a new user nkey."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), public_key_of(seed.decode())


def public_key_of(seed: str) -> str:
    """The public key of a user seed; ValueError if it is not one."""
    try:
        keypair = nkeys.from_seed(bytearray(seed.strip().encode()))
    except Exception as exc:  # nkeys raises its own error types (and binascii's) for a malformed seed
        raise ValueError("not an nkey seed") from exc
    public = str(keypair.public_key.decode())
    keypair.wipe()
    if not public.startswith("U"):
        raise ValueError("not a user nkey seed")
    return public
