"""Durable, de-duplicated publishing.

Guarantees: `publish` and `publish_many` wait for the stream's acknowledgement — when they return, the messages
are durable in JetStream; each carries a ``Nats-Msg-Id`` so a republish within the window is stored once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from nats.js import JetStreamContext

from bus.errors import NATS_ERRORS, BusUnavailable, PayloadTooLarge

MSG_ID = "Nats-Msg-Id"
HEADER_ROOM = 1024
"""Bytes kept for headers: the server counts headers and body against its max_payload (and drops the connection
of a client that sends more), while the client checks only the body."""


def max_body(js: JetStreamContext) -> int:
    """The largest message body this connection may publish: the server's max_payload less `HEADER_ROOM`."""
    nc = getattr(js, "_nc", None)  # nats-py keeps the connection private; its max_payload comes from the server
    payload = int(getattr(nc, "max_payload", 1024 * 1024))
    return payload - HEADER_ROOM


def _check_size(js: JetStreamContext, data: bytes) -> None:
    limit = max_body(js)
    if len(data) > limit:
        raise PayloadTooLarge(len(data), limit)


async def publish(js: JetStreamContext, subject: str, data: bytes, *, msg_id: str, timeout: float = 5.0) -> bool:
    """Publish durably; True if JetStream stored it, False if it was a duplicate of an earlier message.
    `PayloadTooLarge` if it can never be published (nothing was sent)."""
    _check_size(js, data)
    try:
        ack = await js.publish(subject, data, timeout=timeout, headers={MSG_ID: msg_id})
    except NATS_ERRORS as exc:
        raise BusUnavailable(f"publish to {subject} failed: {exc or type(exc).__name__}") from exc
    return not ack.duplicate


async def publish_many(
    js: JetStreamContext,
    items: Sequence[tuple[str, bytes, str]],
    *,
    headers: Sequence[Mapping[str, str]] | None = None,
    timeout: float = 10.0,
) -> int:
    """Publish (subject, data, msg_id) items pipelined, each with its `headers` (aligned with `items`) if given;
    returns how many were new. All-or-error; `PayloadTooLarge` (before anything is sent) if one item can never
    be published."""
    for _, data, _ in items:
        _check_size(js, data)
    extra: Sequence[Mapping[str, str]] = headers if headers is not None else [{}] * len(items)
    try:
        futures = [
            await js.publish_async(s, d, headers={**more, MSG_ID: i})
            for (s, d, i), more in zip(items, extra, strict=True)
        ]
        acks = await asyncio.wait_for(asyncio.gather(*futures), timeout)
    except NATS_ERRORS as exc:
        raise BusUnavailable(f"publish failed: {exc or type(exc).__name__}") from exc
    return sum(1 for ack in acks if not ack.duplicate)


REASON = "Llm-Operator-Reason"
ORIGINAL_SUBJECT = "Llm-Operator-Subject"


async def dead_letter(
    js: JetStreamContext, subject: str, data: bytes, *, reason: str, original_subject: str, timeout: float = 5.0
) -> None:
    """Park a message that cannot be used on the dead-letter subject, with the reason a person can act on."""
    headers = {REASON: reason[:500], ORIGINAL_SUBJECT: original_subject}
    try:
        await js.publish(subject, data, timeout=timeout, headers=headers)
    except NATS_ERRORS as exc:
        raise BusUnavailable(f"dead-lettering to {subject} failed: {exc or type(exc).__name__}") from exc
