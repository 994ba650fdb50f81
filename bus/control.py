"""Resync requests: the planner asks every watcher to relist and resend everything it sees.

Why: the planner's store is complete only if it read every event. When events were lost before it read them (a
gap: they aged out of the stream, or the stream was reset), the only source of truth left is the clusters
themselves, so the planner asks the watchers to relist and resend.

Guarantees: requests travel on core NATS (``<prefix>.control.resync``), outside every stream: a watcher that is
not running misses them and needs none (it lists everything when it starts). `request_resync` never raises (a lost
request is repeated when the planner next sees a gap, and watchers relist periodically anyway); `resync_requests`
yields one id per request received, and ends only when cancelled.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext

from bus.errors import NATS_ERRORS, BusUnavailable
from bus.subjects import Subjects

logger = logging.getLogger(__name__)


def _client(js: JetStreamContext) -> Any:
    return js._nc  # nats-py keeps the core client of a JetStream context private


async def request_resync(js: JetStreamContext, subjects: Subjects, *, request_id: str, reason: str) -> bool:
    """Ask every running watcher to relist and resend; False if it could not be sent (logged)."""
    body = json.dumps({"id": request_id, "reason": reason}).encode()
    try:
        await _client(js).publish(subjects.resync_requests, body)
        await _client(js).flush(timeout=5)
    except NATS_ERRORS as exc:
        logger.warning("resync request %s not sent: %s", request_id, exc or type(exc).__name__)
        return False
    return True


async def resync_requests(js: JetStreamContext, subjects: Subjects) -> AsyncIterator[str]:
    """The id of each resync request received. Raises BusUnavailable if it cannot subscribe."""
    try:
        sub = await _client(js).subscribe(subjects.resync_requests)
    except NATS_ERRORS as exc:
        raise BusUnavailable(f"cannot subscribe to resync requests: {exc or type(exc).__name__}") from exc
    try:
        async for msg in sub.messages:
            try:
                found = json.loads(msg.data)
                request_id = str(found["id"])[:100]
            except (ValueError, KeyError, TypeError):
                continue  # not a request of ours: ignored
            yield request_id
    finally:
        with contextlib.suppress(*NATS_ERRORS):
            await sub.unsubscribe()
