"""The bus identities of one installation, on disk: who may connect to NATS and the server's auth configuration.

Layout under `root` (default ``<data_dir>/bus``), readable by the owner only (files 0600, directories 0700):
- ``identities.json``: every identity (prefix, name, role, public key);
- ``<prefix>/<name>/nats.nk``: the seed of each identity made here, alone in its directory so that it can be
  handed (mounted) to that cluster's agent and nobody else;
- ``_server/auth.conf``: the ``authorization`` block nats-server includes (public keys only; alone in its
  directory for the same reason).

Guarantees: adding is idempotent (an existing identity keeps its seed); revoking removes the key from
``auth.conf`` and deletes the seed, so after a server reload the revoked identity is refused and its open
connection closed, while every other client stays connected. Files are written whole (temp file + rename).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bus.auth import PLANNER, Identity, Role, new_seed, public_key_of, server_config
from bus.subjects import Subjects, valid_cluster_name

SEED_FILE = "nats.nk"


class IdentityError(Exception):
    """An identity cannot be added or used; the message says why."""


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable and writable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing temp file
    os.replace(tmp, path)


@dataclass(frozen=True)
class BusIdentities:
    root: Path

    @property
    def server_config_path(self) -> Path:
        return self.root / "_server" / "auth.conf"

    @property
    def _registry(self) -> Path:
        return self.root / "identities.json"

    def seeds_dir(self, prefix: str) -> Path:
        """Where the seeds of one installation (subject prefix) are: ``<name>/nats.nk`` each."""
        Subjects(prefix)  # validates
        return self.root / prefix

    def seed_path(self, prefix: str, name: str) -> Path:
        return self.seeds_dir(prefix) / name / SEED_FILE

    def all(self) -> list[Identity]:
        if not self._registry.exists():
            return []
        data = json.loads(self._registry.read_text())
        return [Identity.from_json(item) for item in data.get("identities", [])]

    def add(self, prefix: str, name: str, role: Role) -> Path:
        """Make (or keep) the identity and its seed; rewrite the server configuration. Returns the seed's path."""
        if role is Role.CLUSTER and not valid_cluster_name(name):
            raise IdentityError(f"invalid cluster name {name!r}: use a DNS label (lowercase letters, digits, '-')")
        if role is not Role.CLUSTER and not (name == PLANNER or role is Role.ADMIN):
            raise IdentityError(f"the planner's identity is named {PLANNER!r}")
        if role is Role.ADMIN and valid_cluster_name(name):
            raise IdentityError(f"admin identity {name!r} must not look like a cluster name (use e.g. 'admin_tools')")
        path = self.seed_path(prefix, name)
        identities = {(i.prefix, i.name): i for i in self.all()}
        existing = identities.get((prefix, name))
        if existing is not None and path.exists():
            if existing.role is not role:
                raise IdentityError(f"{name!r} already exists as a {existing.role.value} identity")
            if public_key_of(path.read_text()) == existing.public_key:
                self.write_server_config()
                return path
        seed, public = new_seed()
        _write_private(path, seed + "\n")
        identities[(prefix, name)] = Identity(prefix=prefix, name=name, role=role, public_key=public)
        self._save(identities.values())
        return path

    def revoke(self, prefix: str, name: str) -> bool:
        """Remove the identity and its seed; False if there was none."""
        identities = {(i.prefix, i.name): i for i in self.all()}
        found = identities.pop((prefix, name), None) is not None
        with contextlib.suppress(FileNotFoundError):
            self.seed_path(prefix, name).unlink()
        with contextlib.suppress(OSError):
            self.seed_path(prefix, name).parent.rmdir()
        self._save(identities.values())
        return found

    def ensure(self, prefix: str, clusters: list[str]) -> None:
        """The planner's and these clusters' identities exist (the local fleet of `llm-operator up`)."""
        present = {(i.prefix, i.name) for i in self.all()}
        wanted = [(PLANNER, Role.PLANNER), *((c, Role.CLUSTER) for c in clusters)]
        for name, role in wanted:
            if (prefix, name) not in present or not self.seed_path(prefix, name).exists():
                self.add(prefix, name, role)
        self.write_server_config()

    def write_server_config(self) -> Path:
        _write_private(self.server_config_path, server_config(self.all()))
        return self.server_config_path

    def _save(self, identities: Iterable[Identity]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # everything below is the owner's only
        items = sorted((i.to_json() for i in identities), key=lambda d: (d["prefix"], d["name"]))
        _write_private(self._registry, json.dumps({"identities": items}, indent=2) + "\n")
        self.write_server_config()
