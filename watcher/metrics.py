"""Prometheus metrics of the watcher."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHED = Counter("llmop_watcher_events_published_total", "Events published to JetStream", ["kind"])
SKIPPED = Counter("llmop_watcher_events_unchanged_total", "Observations not republished (snapshot unchanged)", ["kind"])
HEARTBEATS = Counter("llmop_watcher_heartbeats_total", "Heartbeats published")
REFUSED = Counter(
    "llmop_watcher_objects_refused_total",
    "Objects skipped instead of published: not translatable (Untranslatable) or larger than the bus carries (TooLarge)",
    ["kind", "reason"],
)
ERRORS = Counter("llmop_watcher_errors_total", "Watch or publish failures", ["kind"])
LAST_HEARTBEAT = Gauge("llmop_watcher_last_heartbeat_timestamp_seconds", "Time of the last published heartbeat")
