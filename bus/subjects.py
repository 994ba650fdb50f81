"""NATS subject and JetStream stream names, derived from one prefix so test runs can be isolated.

Guarantees: a cluster's events go to ``<prefix>.events.<cluster>`` and its plans to ``<prefix>.plans.<cluster>``;
stream names are ``<PREFIX>_EVENTS`` / ``<PREFIX>_PLANS``; cluster names are valid single subject tokens
(DNS labels), checked by `valid_cluster_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CLUSTER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PREFIX = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")


def valid_cluster_name(name: str) -> bool:
    return bool(_CLUSTER.match(name)) and name != "hub"


@dataclass(frozen=True)
class Subjects:
    prefix: str = "fleet"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"invalid subject prefix {self.prefix!r}: use lowercase letters, digits, '-' or '_'")

    def events(self, cluster: str) -> str:
        return f"{self.prefix}.events.{cluster}"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"

    def plans(self, cluster: str) -> str:
        return f"{self.prefix}.plans.{cluster}"

    @property
    def all_plans(self) -> str:
        return f"{self.prefix}.plans.>"

    def dead_letters(self, cluster: str) -> str:
        return f"{self.prefix}.deadletters.{cluster}"

    @property
    def all_dead_letters(self) -> str:
        return f"{self.prefix}.deadletters.>"

    @property
    def resync_requests(self) -> str:
        """Core NATS (no stream): the planner asks the watchers to relist and resend (bus/control.py)."""
        return f"{self.prefix}.control.resync"

    @property
    def events_stream(self) -> str:
        return f"{self._upper}_EVENTS"

    @property
    def plans_stream(self) -> str:
        return f"{self._upper}_PLANS"

    @property
    def dead_letters_stream(self) -> str:
        return f"{self._upper}_DEADLETTERS"

    @property
    def _upper(self) -> str:
        return self.prefix.upper().replace("-", "_")

    def cluster_of(self, subject: str) -> str | None:
        """The cluster token of an events/plans/deadletters subject, or None."""
        parts = subject.split(".")
        if len(parts) == 3 and parts[0] == self.prefix:
            return parts[2]
        return None
