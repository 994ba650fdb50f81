"""Cluster health rules: which cluster events a step's heartbeats and silences call for. Pure.

Guarantees:
- A heartbeat from a cluster the planner does not know makes it join; changed labels and a changed declared network
  (api.network) are recorded; a cluster
  that went unhealthy is trusted again only `recovery_hold` after it went (hysteresis against flapping).
- A healthy cluster becomes unhealthy when nothing was heard from it for longer than `heartbeat_timeout`, judged on
  the stream's clock (`read_up_to`), and never within one timeout of a new leader's start (`grace_until`).
- Event ids are deterministic, so a step that is retried records the same events once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from api.events import (
    ClusterHealthChanged,
    ClusterHeartbeat,
    ClusterJoined,
    ClusterLabelsChanged,
    ClusterNetworkChanged,
    Event,
    deterministic_id,
)
from store.rows import ClusterRow


def cluster_events(
    heartbeats: Iterable[ClusterHeartbeat],
    clusters: Mapping[str, ClusterRow],
    *,
    now: datetime,
    recovery_hold: timedelta,
) -> list[Event]:
    out: list[Event] = []
    for hb in heartbeats:
        row = clusters.get(hb.cluster)
        if row is None:
            out.append(
                ClusterJoined(
                    event_id=deterministic_id("joined", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    labels=hb.labels,
                    at=now,
                    network=hb.network,
                )
            )
            continue
        if dict(row.labels) != hb.labels:
            out.append(
                ClusterLabelsChanged(
                    event_id=deterministic_id("labels", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    labels=hb.labels,
                    at=now,
                )
            )
        declared = hb.network.model_dump(mode="json") if hb.network is not None else None
        if declared != row.network:
            out.append(
                ClusterNetworkChanged(
                    event_id=deterministic_id("network", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    network=hb.network,
                    at=now,
                )
            )
        if not row.healthy and now - row.health_changed_at >= recovery_hold:
            out.append(
                ClusterHealthChanged(
                    event_id=deterministic_id("healthy", hb.cluster, hb.watcher_id, str(hb.sequence)),
                    cluster=hb.cluster,
                    healthy=True,
                    reason="HeartbeatsResumed",
                    last_heartbeat_at=now,
                    at=now,
                )
            )
    return out


def silent_clusters(
    clusters: Iterable[ClusterRow],
    *,
    now: datetime,
    read_up_to: datetime,
    heartbeat_timeout: timedelta,
    grace_until: datetime,
) -> list[Event]:
    out: list[Event] = []
    for row in clusters:
        if not row.healthy:
            continue
        # A planner that just took over has not heard anyone yet: give every cluster one timeout from then.
        last = max(row.last_heartbeat_at or row.joined_at, grace_until - heartbeat_timeout)
        if read_up_to - last > heartbeat_timeout:
            out.append(
                ClusterHealthChanged(
                    event_id=deterministic_id("unhealthy", row.name, last.isoformat()),
                    cluster=row.name,
                    healthy=False,
                    reason="HeartbeatsStopped",
                    last_heartbeat_at=row.last_heartbeat_at,
                    at=now,
                )
            )
    return out
