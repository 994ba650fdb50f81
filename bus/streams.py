"""The fleet's JetStream streams: events, plans and dead letters.

Guarantees: `ensure_streams` creates (or updates) the three streams with file storage and a de-duplication window,
so a message published twice with the same ``Nats-Msg-Id`` is stored once.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from bus.errors import NATS_ERRORS, BusUnavailable
from bus.subjects import Subjects

DAY = 86400.0


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, *, max_age_days: float = 7.0, duplicate_window: float = 120.0
) -> None:
    configs = [
        StreamConfig(
            name=subjects.events_stream,
            subjects=[subjects.all_events],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=max_age_days * DAY,
            duplicate_window=duplicate_window,
        ),
        StreamConfig(
            name=subjects.plans_stream,
            subjects=[subjects.all_plans],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=max_age_days * DAY,
            duplicate_window=duplicate_window,
        ),
        StreamConfig(
            name=subjects.dead_letters_stream,
            subjects=[subjects.all_dead_letters],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=30 * DAY,
        ),
    ]
    try:
        for config in configs:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)
    except NATS_ERRORS as exc:
        raise BusUnavailable(f"cannot create JetStream streams: {exc or type(exc).__name__}") from exc
