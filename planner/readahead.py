"""Read and prepare the planner's next batch while the current one's step runs.

A step spends much of its time waiting on Postgres; the pure part of the next step (reading it from JetStream,
decoding, checking, folding: `prepare`) fits in those waits, so Python and Postgres work at the same time.

Guarantees:
- Batches come out in stream order, with everything that has arrived by the time the caller asks (up to the
  batch size), as `SequenceReader.fetch` at that moment would have returned it.
- At most one batch is read ahead, and a batch is at most `batch_size` messages and about `max_bytes` bytes (one
  message more at most): memory stays bounded by one batch in number and in bytes.
- `rewind` drops what was read ahead and reads again from the given sequence; `close` drops it and stops
  reading. A reading error (`BusUnavailable`) surfaces from the `next` call that would have returned the batch.
- The read ahead runs in the task group `ReadAhead` opens as an async context manager: nothing outlives the
  `async with` block, and leaving it closes the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from bus.consume import Received, SequenceReader
from bus.subjects import Subjects
from planner.decode import Decoded, Delivery, decode_delivery, prepare


@dataclass(frozen=True)
class Batch:
    received: list[Received]
    deliveries: list[Delivery]
    decoded: list[Decoded]


@dataclass
class _Pending:
    """One batch being read ahead: its outcome once `done` is set (a batch, or the error reading it raised)."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    batch: Batch | None = None
    error: Exception | None = None


class ReadAhead:
    """Use as `async with ReadAhead(...) as reader:`; `next`, `rewind` and `close` only inside the block."""

    def __init__(
        self,
        reader: SequenceReader,
        *,
        subjects: Subjects,
        batch_size: int,
        timeout: float,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._reader = reader
        self._subjects = subjects
        self._batch_size = batch_size
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._pending: _Pending | None = None
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> ReadAhead:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        assert task_group is not None, "ReadAhead left without being entered"
        with anyio.CancelScope(shield=True):
            await self.close()
        return await task_group.__aexit__(kind, exc, traceback)

    async def next(self) -> Batch:
        """The next batch ([] deliveries after `timeout` with nothing new); starts reading the one after it.

        The batch read ahead may have been taken when only its first message had arrived; what has arrived
        since joins it (up to the batch size), so reading ahead never splits what one step would have taken
        into two steps (each with its fixed cost, one waiting for the other)."""
        pending = self._pending = self._pending or self._start()
        await pending.done.wait()
        # Taken, or failed. (Were the caller cancelled while waiting, the read would stay pending: `close` or
        # `rewind` drops it.)
        self._pending = None
        if pending.error is not None:
            raise pending.error
        batch = pending.batch
        assert batch is not None
        room = self._max_bytes - sum(len(r.data) for r in batch.received)
        more = self._reader.ready(self._batch_size - len(batch.received), room) if batch.received and room > 0 else []
        if more:
            deliveries = _deliveries(more)
            batch = Batch(
                batch.received + more,
                batch.deliveries + deliveries,
                batch.decoded + [decode_delivery(d, self._subjects) for d in deliveries],
            )
        self._pending = self._start()
        return batch

    async def rewind(self, sequence: int) -> None:
        await self._drop()
        await self._reader.rewind(sequence)

    async def close(self) -> None:
        await self._drop()
        await self._reader.close()

    def _start(self) -> _Pending:
        if self._task_group is None:
            raise RuntimeError("ReadAhead.next outside `async with ReadAhead(...)`")
        pending = _Pending()
        self._task_group.start_soon(self._read_into, pending)
        return pending

    async def _read_into(self, pending: _Pending) -> None:
        try:
            with pending.scope:
                try:
                    pending.batch = await self._read()
                except Exception as exc:  # kept for the `next` that would have returned the batch
                    pending.error = exc
        finally:
            pending.done.set()

    async def _read(self) -> Batch:
        received = await self._reader.fetch(self._batch_size, timeout=self._timeout, max_bytes=self._max_bytes)
        deliveries = _deliveries(received)
        return Batch(received, deliveries, await prepare(deliveries, self._subjects))

    async def _drop(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            # Whatever it read or failed with is dropped: the next read starts from a known sequence.
            pending.scope.cancel()
            await pending.done.wait()


def _deliveries(received: list[Received]) -> list[Delivery]:
    return [Delivery(r.subject, r.stream_sequence, r.data, r.stored_at) for r in received]
