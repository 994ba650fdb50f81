"""Publishing one cluster's observations to JetStream, without repeating what did not change.

Guarantees:
- Each observation is published with ``Nats-Msg-Id`` = its deterministic event id, and only after JetStream
  acknowledged it is it remembered as published; a failure propagates so the caller relists and republishes.
- An object whose compact snapshot is identical to the last one published for it is not published again (node
  heartbeats, status churn of fields we drop); a relist after a restart republishes everything once.
- After a (re)list, a `ResyncCompleted` event names every uid present, so the store drops what disappeared.
- `forget` (on the planner's resync request) drops the memory of what was published, so the next list resends
  every object; those messages carry a message id of their own (the event id stays), so the stream's
  de-duplication window does not swallow a resend of what the planner never read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from api.events import ObservedKind, ResyncCompleted, encode_event
from bus.connection import JetStream
from bus.publish import publish, publish_many
from bus.subjects import Subjects
from watcher import metrics
from watcher.translate import deleted, observed, snapshot_digest

logger = logging.getLogger(__name__)


class KindPublisher:
    """The sink for one kind of one cluster (see watcher.stream.Sink)."""

    def __init__(
        self,
        *,
        js: JetStream,
        subjects: Subjects,
        cluster: str,
        kind: ObservedKind,
        namespace: str | None,
        clock: Callable[[], datetime],
    ) -> None:
        self._js = js
        self._subject = subjects.events(cluster)
        self._cluster = cluster
        self._kind = kind
        self._namespace = namespace
        self._clock = clock
        self._published: dict[str, str] = {}
        self._resync: str | None = None
        """The resync request being answered (its id makes the resent messages' ids new)."""

    def forget(self, request_id: str) -> None:
        self._published.clear()
        self._resync = request_id

    def _msg_id(self, event_id: str) -> str:
        return event_id if self._resync is None else f"{event_id}.resync.{self._resync}"

    async def listed(self, items: list[dict[str, Any]], resource_version: str) -> None:
        now = self._clock()
        batch: list[tuple[str, bytes, str]] = []
        digests: dict[str, str] = {}
        for obj in items:
            event = observed(self._cluster, self._kind, obj, now)
            digest = snapshot_digest(event.object)
            if self._published.get(event.uid) == digest:
                continue
            batch.append((self._subject, encode_event(event), self._msg_id(event.event_id)))
            digests[event.uid] = digest
        for start in range(0, len(batch), 500):
            await publish_many(self._js, batch[start : start + 500])
        self._published.update(digests)
        uids = sorted(obj["metadata"]["uid"] for obj in items)
        for uid in set(self._published) - set(uids):
            del self._published[uid]
        resync = ResyncCompleted(
            event_id=ResyncCompleted.id_for(self._cluster, self._kind, self._namespace, resource_version),
            cluster=self._cluster,
            kind=self._kind,
            namespace=self._namespace,
            uids=uids,
            resource_version=resource_version,
            observed_at=now,
        )
        await publish(self._js, self._subject, encode_event(resync), msg_id=self._msg_id(resync.event_id))
        self._resync = None
        metrics.PUBLISHED.labels(kind=self._kind).inc(len(batch) + 1)
        logger.debug("%s/%s listed: %d objects, %d published", self._cluster, self._kind, len(items), len(batch))

    async def changed(self, event_type: str, obj: dict[str, Any]) -> None:
        now = self._clock()
        if event_type == "DELETED":
            gone = deleted(self._cluster, self._kind, obj, now)
            await publish(self._js, self._subject, encode_event(gone), msg_id=gone.event_id)
            self._published.pop(gone.uid, None)
            metrics.PUBLISHED.labels(kind=self._kind).inc()
            return
        event = observed(self._cluster, self._kind, obj, now)
        digest = snapshot_digest(event.object)
        if self._published.get(event.uid) == digest:
            metrics.SKIPPED.labels(kind=self._kind).inc()
            return
        await publish(self._js, self._subject, encode_event(event), msg_id=event.event_id)
        self._published[event.uid] = digest
        metrics.PUBLISHED.labels(kind=self._kind).inc()
