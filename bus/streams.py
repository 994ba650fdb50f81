"""The fleet's JetStream streams: events, plans and dead letters.

Guarantees:
- `ensure_streams` creates a missing stream with file storage, a de-duplication window (a message published twice
  with the same ``Nats-Msg-Id`` is stored once) and its limits: the defaults below, overridden by what the
  operator configured.
- A stream that exists is never silently retuned: only limits the operator configured explicitly are applied to
  it (each change logged as "field: old -> new"); every other limit keeps the value it has, whoever set it (e.g.
  with ``nats stream edit``), and where that differs from our default it is logged once at start.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from bus.errors import NATS_ERRORS, BusUnavailable
from bus.subjects import Subjects

logger = logging.getLogger(__name__)

DAY = 86400.0
StreamRole = Literal["events", "plans", "dead-letters"]
STREAM_ROLES: tuple[StreamRole, ...] = ("events", "plans", "dead-letters")


@dataclass(frozen=True)
class StreamLimits:
    """JetStream limits of one stream; None means "not configured" (a default at creation, else left alone)."""

    max_bytes: int | None = None
    """Total size of the stream; -1 unlimited."""
    max_age_seconds: float | None = None
    """Messages older than this are removed; 0 unlimited."""
    max_msgs: int | None = None
    """Number of messages in the stream; -1 unlimited."""
    max_msgs_per_subject: int | None = None
    """Messages kept per subject (per cluster: subjects carry the cluster name); -1 unlimited."""
    discard: Literal["old", "new"] | None = None
    """At a limit: drop the oldest messages (old) or refuse new ones (new: publishers see errors and retry)."""

    def merged(self, override: StreamLimits) -> StreamLimits:
        """These limits with every field `override` sets replaced."""
        return dataclasses.replace(self, **{k: v for k, v in dataclasses.asdict(override).items() if v is not None})


DEFAULT_LIMITS: Mapping[StreamRole, StreamLimits] = {
    "events": StreamLimits(max_age_seconds=7 * DAY, discard="old"),
    "plans": StreamLimits(max_age_seconds=7 * DAY, discard="old"),
    "dead-letters": StreamLimits(max_age_seconds=30 * DAY, discard="old"),
}


def _config_fields(limits: StreamLimits) -> dict[str, Any]:
    """The StreamConfig fields `limits` sets, in NATS' terms."""
    out: dict[str, Any] = {}
    if limits.max_bytes is not None:
        out["max_bytes"] = limits.max_bytes
    if limits.max_age_seconds is not None:
        out["max_age"] = limits.max_age_seconds
    if limits.max_msgs is not None:
        out["max_msgs"] = limits.max_msgs
    if limits.max_msgs_per_subject is not None:
        out["max_msgs_per_subject"] = limits.max_msgs_per_subject
    if limits.discard is not None:
        out["discard"] = DiscardPolicy(limits.discard)
    return out


def _normal(field: str, value: Any) -> Any:
    """A config value as comparable text: the server reports unlimited as -1 or 0 (and None when absent)."""
    if isinstance(value, DiscardPolicy):
        return value.value
    if value is None:
        return {"max_age": 0.0, "discard": "old"}.get(field, -1)
    if field == "max_age":
        return float(value)
    return value


def _differences(current: StreamConfig, fields: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        name: (_normal(name, getattr(current, name)), _normal(name, wanted))
        for name, wanted in fields.items()
        if _normal(name, getattr(current, name)) != _normal(name, wanted)
    }


def _described(differences: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name}: {old} -> {new}" for name, (old, new) in sorted(differences.items()))


def _new_config(name: str, subject: str, limits: StreamLimits, duplicate_window: float | None) -> StreamConfig:
    config = StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        **_config_fields(limits),
    )
    if duplicate_window is not None:
        config.duplicate_window = duplicate_window
    return config


async def ensure_streams(
    js: JetStreamContext,
    subjects: Subjects,
    *,
    limits: Mapping[StreamRole, StreamLimits] | None = None,
    duplicate_window: float = 120.0,
) -> dict[str, dict[str, tuple[Any, Any]]]:
    """Create missing streams; apply configured limits to existing ones. Returns the changes made per stream."""
    configured = dict(limits or {})
    streams: list[tuple[StreamRole, str, str, float | None]] = [
        ("events", subjects.events_stream, subjects.all_events, duplicate_window),
        ("plans", subjects.plans_stream, subjects.all_plans, duplicate_window),
        ("dead-letters", subjects.dead_letters_stream, subjects.all_dead_letters, None),
    ]
    changed: dict[str, dict[str, tuple[Any, Any]]] = {}
    try:
        for role, name, subject, window in streams:
            wanted = configured.get(role, StreamLimits())
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                limits_at_creation = DEFAULT_LIMITS[role].merged(wanted)
                await js.add_stream(_new_config(name, subject, limits_at_creation, window))
                logger.info("JetStream stream %s created (%s)", name, _config_fields(limits_at_creation))
                continue
            current = info.config
            differences = _differences(current, _config_fields(wanted))
            if differences:
                await js.update_stream(dataclasses.replace(current, **_config_fields(wanted)))
                logger.warning("JetStream stream %s: configured limits applied: %s", name, _described(differences))
                changed[name] = differences
            kept = {
                field: pair
                for field, pair in _differences(current, _config_fields(DEFAULT_LIMITS[role])).items()
                if field not in _config_fields(wanted)
            }
            if kept:
                logger.info(
                    "JetStream stream %s keeps limits set outside this configuration (theirs -> our default): %s",
                    name,
                    _described(kept),
                )
    except NATS_ERRORS as exc:
        raise BusUnavailable(f"cannot create JetStream streams: {exc or type(exc).__name__}") from exc
    return changed
