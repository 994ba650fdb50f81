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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bus.consume import Received, SequenceReader
from bus.subjects import Subjects
from planner.decode import Decoded, Delivery, decode_delivery, prepare


@dataclass(frozen=True)
class Batch:
    received: list[Received]
    deliveries: list[Delivery]
    decoded: list[Decoded]


class ReadAhead:
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
        self._pending: asyncio.Task[Batch] | None = None

    async def next(self) -> Batch:
        """The next batch ([] deliveries after `timeout` with nothing new); starts reading the one after it.

        The batch read ahead may have been taken when only its first message had arrived; what has arrived
        since joins it (up to the batch size), so reading ahead never splits what one step would have taken
        into two steps (each with its fixed cost, one waiting for the other)."""
        task = self._pending = self._pending or asyncio.ensure_future(self._read())
        try:
            batch = await task
        finally:
            if task.done():  # taken, or failed; if the caller was cancelled instead, `close` cancels it
                self._pending = None
        room = self._max_bytes - sum(len(r.data) for r in batch.received)
        more = self._reader.ready(self._batch_size - len(batch.received), room) if batch.received and room > 0 else []
        if more:
            deliveries = _deliveries(more)
            batch = Batch(
                batch.received + more,
                batch.deliveries + deliveries,
                batch.decoded + [decode_delivery(d, self._subjects) for d in deliveries],
            )
        self._pending = asyncio.ensure_future(self._read())
        return batch

    async def rewind(self, sequence: int) -> None:
        await self._drop()
        await self._reader.rewind(sequence)

    async def close(self) -> None:
        await self._drop()
        await self._reader.close()

    async def _read(self) -> Batch:
        received = await self._reader.fetch(self._batch_size, timeout=self._timeout, max_bytes=self._max_bytes)
        deliveries = _deliveries(received)
        return Batch(received, deliveries, await prepare(deliveries, self._subjects))

    async def _drop(self) -> None:
        task, self._pending = self._pending, None
        if task is not None:
            task.cancel()
            # Wait for it without taking on its outcome: whatever it read or failed with is dropped (the next read
            # starts from a known sequence), while a cancellation of the caller itself still propagates.
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not report it as never retrieved


def _deliveries(received: list[Received]) -> list[Delivery]:
    return [Delivery(r.subject, r.stream_sequence, r.data, r.stored_at) for r in received]
