"""The planner's read-ahead on real NATS JetStream: batches in stream order, decoded as the step would, one batch
ahead at most, and a rewind that drops what was read ahead and reads again from where the caller says."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from api.events import encode_event
from bus.consume import Received, SequenceReader
from bus.publish import publish
from planner.decode import decode_delivery
from planner.readahead import ReadAhead
from tests import builders
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.anyio, pytest.mark.services]


async def _publish_nodes(js: JetStreamContext, hub: Hub, count: int) -> None:
    for i in range(count):
        event = builders.observed("a100", "Node", builders.gpu_node(f"gpu-{i}", uid=f"gpu-{i}-uid"))
        await publish(js, hub.subjects.events("a100"), encode_event(event), msg_id=event.event_id)
    # And one that is not an event at all: it must come out decoded as malformed, in its place.
    await publish(js, hub.subjects.events("a100"), b"{not json", msg_id="garbage")


def _reader(js: JetStreamContext, hub: Hub, start: int, batch: int) -> ReadAhead:
    sequences = SequenceReader(
        js, stream=hub.subjects.events_stream, subject=hub.subjects.all_events, start_sequence=start
    )
    return ReadAhead(sequences, subjects=hub.subjects, batch_size=batch, timeout=2.0)


async def test_batches_come_in_stream_order_decoded_as_the_step_would(js: JetStreamContext, hub: Hub) -> None:
    await _publish_nodes(js, hub, 25)
    async with _reader(js, hub, 1, batch=10) as reader:
        sequences: list[int] = []
        while len(sequences) < 26:
            batch = await reader.next()
            assert len(batch.deliveries) <= 10
            assert [d.stream_sequence for d in batch.deliveries] == [r.stream_sequence for r in batch.received]
            for delivery, decoded in zip(batch.deliveries, batch.decoded, strict=True):
                assert decoded == decode_delivery(delivery, hub.subjects)
            sequences += [d.stream_sequence for d in batch.deliveries]
        assert sequences == list(range(1, 27))
        assert batch.decoded[-1].event is None and batch.decoded[-1].refused
        assert [d.event is not None for d in batch.decoded[:-1]] == [True] * (len(batch.decoded) - 1)
        assert (await reader.next()).deliveries == []  # nothing more: an empty batch after the timeout


async def test_rewind_drops_the_batch_read_ahead_and_reads_again_from_the_given_sequence(
    js: JetStreamContext, hub: Hub
) -> None:
    await _publish_nodes(js, hub, 30)
    async with _reader(js, hub, 1, batch=10) as reader:
        first = await reader.next()  # 1..k out (k ≤ 10: a pull may hand out fewer); more is being read ahead
        got = [d.stream_sequence for d in first.deliveries]
        assert got == list(range(1, len(got) + 1)) and 1 <= len(got) <= 10, got
        # The step of 1..k failed after committing 1..3 (or all of a shorter batch), say.
        restart = min(4, len(got) + 1)
        await reader.rewind(restart)
        again = await reader.next()
        assert again.deliveries[0].stream_sequence == restart
        seen = [d.stream_sequence for d in again.deliveries]
        while seen[-1] < 31:
            seen += [d.stream_sequence for d in (await reader.next()).deliveries]
        assert seen == list(range(restart, 32))


class WatchedReader(SequenceReader):
    """The real reader, noting what each `fetch` (the read ahead's own reads) handed out."""

    def __init__(self, js: JetStreamContext, hub: Hub) -> None:
        super().__init__(js, stream=hub.subjects.events_stream, subject=hub.subjects.all_events, start_sequence=1)
        self.fetched: list[list[int]] = []

    async def fetch(self, batch: int, timeout: float, max_bytes: int | None = None) -> list[Received]:
        received = await super().fetch(batch, timeout, max_bytes)
        self.fetched.append([r.stream_sequence for r in received])
        return received


async def test_what_arrived_while_the_step_ran_joins_the_batch_read_ahead(
    nats_client: NatsClient, js: JetStreamContext, hub: Hub
) -> None:
    """The batch read ahead is taken as soon as its first message arrives; messages that arrive before the
    caller asks for it join it, so reading ahead does not split them into two steps."""
    sequences = WatchedReader(js, hub)
    events = [builders.observed("a100", "Node", builders.gpu_node(f"gpu-{i}", uid=f"gpu-{i}-uid")) for i in range(5)]

    async def send(index: int) -> None:
        event = events[index]
        await publish(js, hub.subjects.events("a100"), encode_event(event), msg_id=event.event_id)

    async with ReadAhead(sequences, subjects=hub.subjects, batch_size=10, timeout=5.0) as reader:
        await send(0)
        assert [d.stream_sequence for d in (await reader.next()).deliveries] == [1]
        # The caller is "in its step" now; the read ahead takes message 2 alone as soon as it arrives ...
        await send(1)

        async def taken() -> bool:
            return [2] in sequences.fetched

        await eventually(taken, timeout=10, what="the read ahead to take message 2", interval=0.01)
        for index in range(2, 5):
            await send(index)

        async def delivered() -> bool:  # ... and 3, 4, 5 are sent to this client by the server
            (consumer,) = await js.consumers_info(hub.subjects.events_stream)
            return consumer.delivered is not None and (consumer.delivered.stream_seq or 0) >= 5

        await eventually(delivered, timeout=10, what="messages 3-5 delivered to the reader", interval=0.01)
        await nats_client.flush()  # everything the server sent before its answer has been taken in
        batch = await reader.next()
        assert [d.stream_sequence for d in batch.deliveries] == [2, 3, 4, 5]
        assert [d.event for d in batch.decoded] == events[1:]
        assert sequences.fetched == [[1], [2]]  # the join came from what had arrived, not from another read
