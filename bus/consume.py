"""Ordered reading of a stream from a sequence the caller chooses.

Guarantees: `SequenceReader` hands out messages strictly in stream order from the position the caller passes (the
planner passes the position it committed in Postgres), so after any crash reading resumes exactly where the
committed effects end; memory stays bounded by flow control when the caller falls behind: the messages waiting
are at most `buffer` in number and `buffer_bytes` in size (plus one message), and a batch handed out is at most
`max_bytes` (plus one message: a batch always holds at least one). A sequence skipped (messages removed before
they were read) is logged; the caller sees it in the sequences and decides what to do (planner/gaps.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.errors import NATS_ERRORS, BusUnavailable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    subject: str
    stream_sequence: int
    data: bytes
    pending: int = 0
    """Messages still in the stream after this one, for this reader (consumer lag)."""
    stored_at: datetime | None = None
    """When JetStream stored it (the server's clock)."""


class SequenceReader:
    """An ordered, unacknowledged reader of one stream from a sequence the caller chooses.

    Built on JetStream's ordered push consumer (flow-controlled, re-created by the client on any gap), which
    delivers several times faster than pull fetches in nats-py. Messages wait in a bounded queue: when the caller
    falls behind, the callback blocks, flow control pauses the server, and memory stays bounded.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        subject: str,
        start_sequence: int,
        buffer: int = 4096,
        buffer_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._js = js
        self._stream = stream
        self._subject = subject
        self._next = max(1, start_sequence)
        self._buffer = buffer
        self._buffer_bytes = buffer_bytes
        self._queue: asyncio.Queue[Msg] | None = None
        self._queued_bytes = 0
        self._room = asyncio.Event()
        self._sub: Any = None

    async def _open(self) -> asyncio.Queue[Msg]:
        queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=self._buffer)
        room = self._room = asyncio.Event()
        room.set()
        self._queued_bytes = 0
        self._queue = queue  # before subscribing: the first messages may arrive before `subscribe` returns

        async def deliver(msg: Msg) -> None:
            # The client runs one subscription's callbacks one after the other: while this waits, flow control
            # holds the server back.
            await room.wait()
            if queue is not self._queue:
                return  # a reader that was closed or rewound: this message is read again from the new start
            self._queued_bytes += len(msg.data)
            if self._queued_bytes >= self._buffer_bytes:
                room.clear()
            await queue.put(msg)

        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._next)
        try:
            self._sub = await self._js.subscribe(
                self._subject, stream=self._stream, ordered_consumer=True, config=config, cb=deliver
            )
        except NATS_ERRORS as exc:
            self._queue = None
            raise BusUnavailable(f"cannot read {self._stream}: {exc or type(exc).__name__}") from exc
        return queue

    async def fetch(self, batch: int, timeout: float, max_bytes: int | None = None) -> list[Received]:
        """Up to `batch` messages (and about `max_bytes`) in stream order; [] after `timeout` seconds with none."""
        queue = self._queue or await self._open()
        try:
            first = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            return []
        self._taken(first)
        budget = None if max_bytes is None else max_bytes - len(first.data)
        return self._in_order([first, *self._arrived(queue, batch - 1, budget)])

    def ready(self, batch: int, max_bytes: int | None = None) -> list[Received]:
        """Up to `batch` messages (and up to `max_bytes`) that have already arrived, without waiting."""
        return [] if self._queue is None else self._in_order(self._arrived(self._queue, batch, max_bytes))

    def _arrived(self, queue: asyncio.Queue[Msg], most: int, max_bytes: int | None = None) -> list[Msg]:
        msgs: list[Msg] = []
        left = max_bytes
        while len(msgs) < most and not queue.empty() and (left is None or left > 0):
            msg = queue.get_nowait()
            self._taken(msg)
            msgs.append(msg)
            if left is not None:
                left -= len(msg.data)
        return msgs

    def _taken(self, msg: Msg) -> None:
        self._queued_bytes -= len(msg.data)
        if self._queued_bytes < self._buffer_bytes:
            self._room.set()

    def _in_order(self, msgs: list[Msg]) -> list[Received]:
        out = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq < self._next:
                continue  # already handed out (a re-created consumer may overlap)
            if seq > self._next:
                logger.error(
                    "stream %s skipped from %d to %d: messages expired before they were read",
                    self._stream,
                    self._next,
                    seq,
                )
            self._next = seq + 1
            out.append(Received(msg.subject, seq, msg.data, int(msg.metadata.num_pending or 0), msg.metadata.timestamp))
        return out

    async def rewind(self, sequence: int) -> None:
        """Read again from `sequence` (after a failed step whose effects were rolled back)."""
        await self.close()
        self._next = max(1, sequence)

    async def close(self) -> None:
        sub, self._sub, self._queue = self._sub, None, None
        if sub is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()


@dataclass(frozen=True)
class Delivery:
    """One message of a work queue, to be acknowledged (done), handed back (nak) or kept (in progress).

    Acknowledging waits for the server's confirmation; handing back and progress signals are best effort (a
    lost one only means the message is delivered again after the consumer's ack wait)."""

    subject: str
    data: bytes
    stream_sequence: int
    _msg: Msg

    @property
    def headers(self) -> dict[str, str]:
        """The message's NATS headers (empty when it has none)."""
        return dict(self._msg.headers or {})

    async def ack(self) -> None:
        try:
            await self._msg.ack_sync()
        except NATS_ERRORS as exc:
            raise BusUnavailable(f"ack on {self.subject} failed: {exc or type(exc).__name__}") from exc

    async def nak(self, delay: float | None = None) -> None:
        with contextlib.suppress(*NATS_ERRORS):
            await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        with contextlib.suppress(*NATS_ERRORS):
            await self._msg.in_progress()


class WorkQueue:
    """A named, filtered, durable pull consumer: each message is delivered to one taker until acknowledged.

    The consumer is created through the filtered create API (``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``),
    so the server can confine a client to its own subject with permissions."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subject: str,
        ack_wait: float,
        max_ack_pending: int,
    ) -> WorkQueue:
        config = ConsumerConfig(
            durable_name=durable,
            name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            filter_subject=subject,
        )
        try:
            # Create or update (max_ack_pending follows the setting; the server keeps the consumer's position).
            await js.add_consumer(stream, config=config)
            sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
        except NATS_ERRORS as exc:
            raise BusUnavailable(f"cannot consume {subject}: {exc or type(exc).__name__}") from exc
        return cls(sub)

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to `batch` messages; [] after `timeout` seconds with none."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:  # nats-py raises its own or the builtin one when nothing came
            return []
        except NATS_ERRORS as exc:
            raise BusUnavailable(f"fetch failed: {exc or type(exc).__name__}") from exc
        return [
            Delivery(m.subject, m.data, m.metadata.sequence.stream if m.metadata and m.metadata.sequence else 0, m)
            for m in msgs
        ]
