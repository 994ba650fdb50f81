"""Publishing one cluster's observations to JetStream, without repeating what did not change.

Guarantees:
- Each observation is published with ``Nats-Msg-Id`` = its deterministic event id, and only after JetStream
  acknowledged it is it remembered as published; a failure to reach NATS propagates so the caller relists and
  republishes.
- An object whose compact snapshot is identical to the last one published for it is not published again (node
  heartbeats, status churn of fields we drop); a relist after a restart republishes everything once.
- After a (re)list, a `ResyncCompleted` event names every uid present, so the store drops what disappeared.
- One bad object costs only itself: an object that cannot be translated, or whose event is larger than the bus
  carries, is skipped, counted (``llmop_watcher_objects_refused_total``), logged, and announced by a small
  `ObservationRefused` event (when it has a name and uid to announce); the list and the watch go on. Its uid stays in
  the resync set, so the store keeps the last good snapshot instead of taking the object for deleted.
- `forget` (on the planner's resync request) drops the memory of what was published, so the next list resends
  every object; those messages carry a message id of their own (the event id stays), so the stream's
  de-duplication window does not swallow a resend of what the planner never read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from api.events import ObservationRefused, ObservedKind, ResourceObserved, ResyncCompleted, encode_event
from bus.connection import JetStream
from bus.errors import PayloadTooLarge
from bus.publish import publish, publish_many
from bus.subjects import Subjects
from watcher import metrics
from watcher.translate import deleted, observed, snapshot_digest

logger = logging.getLogger(__name__)
DEFAULT_MAX_PAYLOAD = 1024 * 1024 - 1024
"""NATS' default max_payload less room for headers; the service passes the connected server's own figure."""


class _Refused(Exception):
    def __init__(self, reason: str, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.size = size


def _ident(obj: Any) -> tuple[str | None, str, str, str]:
    """(namespace, name, uid, resourceVersion) as text, whatever the object holds ('' where it holds nothing)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    namespace = meta.get("namespace")

    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""

    return (
        namespace if isinstance(namespace, str) else None,
        text(meta.get("name")),
        text(meta.get("uid")),
        str(meta.get("resourceVersion", "")),
    )


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
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self._js = js
        self._subject = subjects.events(cluster)
        self._cluster = cluster
        self._kind = kind
        self._namespace = namespace
        self._clock = clock
        self._max_payload = max_payload
        self._published: dict[str, str] = {}
        self._refused: dict[str, str] = {}
        """uid -> resourceVersion of the last refusal announced, so a relist does not announce it again."""
        self._resync: str | None = None
        """The resync request being answered (its id makes the resent messages' ids new)."""

    def _encoded(self, obj: dict[str, Any], now: datetime) -> tuple[ResourceObserved, bytes]:
        try:
            event = observed(self._cluster, self._kind, obj, now)
            data = encode_event(event)
        except Exception as exc:  # hostile input: any shape the translation does not expect
            raise _Refused("Untranslatable", f"cannot translate: {type(exc).__name__}: {exc}"[:900]) from exc
        if len(data) > self._max_payload:
            raise _Refused(
                "TooLarge",
                f"snapshot of {len(data)} bytes exceeds the bus's max payload of {self._max_payload} bytes",
                len(data),
            )
        return event, data

    async def _refuse(self, obj: Any, refusal: _Refused, now: datetime) -> None:
        namespace, name, uid, version = _ident(obj)
        metrics.REFUSED.labels(kind=self._kind, reason=refusal.reason).inc()
        where = f"{self._cluster}/{self._kind} {namespace + '/' if namespace else ''}{name or '?'} (uid {uid or '?'})"
        if self._refused.get(uid) == version and uid:
            return
        logger.warning("%s: skipped, not published: %s", where, refusal.message)
        if not (name and uid):
            return  # nothing to name it by: the metric and the log are all there is
        try:
            notice = ObservationRefused(
                event_id=ObservationRefused.id_for(self._cluster, self._kind, uid, version),
                cluster=self._cluster,
                kind=self._kind,
                namespace=namespace[:253] if namespace else None,
                name=name[:253],
                uid=uid[:128],
                resource_version=version[:64],
                reason=refusal.reason,
                message=refusal.message[:1000],
                size_bytes=refusal.size,
                observed_at=now,
            )
            await publish(self._js, self._subject, encode_event(notice), msg_id=notice.event_id)
        except (ValueError, PayloadTooLarge) as exc:  # a name that is not text even after cutting: log only
            logger.warning("%s: refusal not announced: %s", where, exc)
            return
        self._refused[uid] = version
        self._published.pop(uid, None)  # when it changes back to something we can publish, publish it

    def forget(self, request_id: str) -> None:
        self._published.clear()
        self._resync = request_id

    def _msg_id(self, event_id: str) -> str:
        return event_id if self._resync is None else f"{event_id}.resync.{self._resync}"

    async def listed(self, items: list[dict[str, Any]], resource_version: str) -> None:
        now = self._clock()
        batch: list[tuple[str, bytes, str]] = []
        digests: dict[str, str] = {}
        uids: set[str] = set()
        for obj in items:
            uid = _ident(obj)[2]
            if uid:
                uids.add(uid)
            try:
                event, data = self._encoded(obj, now)
            except _Refused as refusal:
                await self._refuse(obj, refusal, now)
                continue
            digest = snapshot_digest(event.object)
            if self._published.get(event.uid) == digest:
                continue
            batch.append((self._subject, data, self._msg_id(event.event_id)))
            digests[event.uid] = digest
        for start in range(0, len(batch), 500):
            await publish_many(self._js, batch[start : start + 500])
        self._published.update(digests)
        for gone in set(self._published) - uids:
            del self._published[gone]
        for gone in set(self._refused) - uids:
            del self._refused[gone]
        resync = ResyncCompleted(
            event_id=ResyncCompleted.id_for(self._cluster, self._kind, self._namespace, resource_version),
            cluster=self._cluster,
            kind=self._kind,
            namespace=self._namespace,
            uids=sorted(uids),
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
            try:
                gone = deleted(self._cluster, self._kind, obj, now)
                data = encode_event(gone)
                if len(data) > self._max_payload:  # the deletion matters, the snapshot does not
                    gone = gone.model_copy(update={"object": {}})
                    data = encode_event(gone)
            except Exception as exc:  # hostile input, as above
                await self._refuse(obj, _Refused("Untranslatable", f"cannot translate a deletion: {exc}"[:900]), now)
                return
            await publish(self._js, self._subject, data, msg_id=gone.event_id)
            self._published.pop(gone.uid, None)
            self._refused.pop(gone.uid, None)
            metrics.PUBLISHED.labels(kind=self._kind).inc()
            return
        try:
            event, data = self._encoded(obj, now)
        except _Refused as refusal:
            await self._refuse(obj, refusal, now)
            return
        digest = snapshot_digest(event.object)
        if self._published.get(event.uid) == digest:
            metrics.SKIPPED.labels(kind=self._kind).inc()
            return
        await publish(self._js, self._subject, data, msg_id=event.event_id)
        self._published[event.uid] = digest
        self._refused.pop(event.uid, None)
        metrics.PUBLISHED.labels(kind=self._kind).inc()
