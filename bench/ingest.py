"""Ingest benchmark: events/s from JetStream into the event store (idempotent append + projections + consumer
position, in the planner's real step, read as the planner service reads: the next batch read and decoded while
the current step runs), against the raw JetStream fetch+ack rate measured in the same run.

Run: `python -m bench.ingest [--events 100000]`. Targets (issue 4): ≥ 20,000 events/s and ≥ 50 % of raw.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

import nats
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy.ext.asyncio import create_async_engine

from api.events import encode_event
from bench.common import observations, print_table, servers, write_result
from bus.consume import SequenceReader
from bus.streams import ensure_streams
from bus.subjects import Subjects
from llm_operator.gc_tuning import tune_gc
from planner.handle import StepConfig, step
from planner.memory import CapacityMemory
from planner.readahead import ReadAhead
from planner.service import BATCH_SIZE
from store import schema
from store.epochs import campaign


async def publish(js: nats.js.JetStreamContext, subjects: Subjects, count: int) -> float:
    started = time.perf_counter()
    pending = []
    for event in observations(count):
        pending.append(
            await js.publish_async(
                subjects.events(event.cluster), encode_event(event), headers={"Nats-Msg-Id": event.event_id}
            )
        )
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return time.perf_counter() - started


async def raw_fetch_ack(js: nats.js.JetStreamContext, subjects: Subjects, count: int, batch: int) -> float:
    sub = await js.pull_subscribe(
        subjects.all_events,
        durable="raw-baseline",
        stream=subjects.events_stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
    )
    seen = 0
    started = time.perf_counter()
    while seen < count:
        msgs = await sub.fetch(batch, timeout=5)
        for msg in msgs:
            await msg.ack()
        seen += len(msgs)
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return elapsed


async def ingest(js: nats.js.JetStreamContext, subjects: Subjects, url: str, count: int, batch: int) -> float:
    engine = create_async_engine(url, pool_size=2)
    await schema.upgrade(engine)
    lease = await campaign(engine, holder="bench")
    config = StepConfig(
        consumer="planner", subjects=subjects, heartbeat_timeout=timedelta(days=1), recovery_hold=timedelta(seconds=1)
    )
    # As the planner service reads: the next batch is read and prepared while the current step runs.
    memory = CapacityMemory()
    seen = 0
    async with ReadAhead(
        SequenceReader(js, stream=subjects.events_stream, subject=subjects.all_events, start_sequence=1),
        subjects=subjects,
        batch_size=batch,
        timeout=5,
    ) as reader:
        started = time.perf_counter()
        while seen < count:
            ahead = await reader.next()
            now = datetime.now(UTC)
            async with engine.begin() as conn:
                await step(
                    conn,
                    deliveries=ahead.deliveries,
                    decoded=ahead.decoded,
                    epoch=lease.epoch,
                    now=now,
                    config=config,
                    health_grace_until=now,
                    memory=memory,
                )
            seen += len(ahead.deliveries)
        elapsed = time.perf_counter() - started
    await lease.release()
    await engine.dispose()
    return elapsed


async def main(count: int, batch: int) -> None:
    tune_gc()  # as every operator process does (llm_operator.cli): the step runs in this process
    with servers() as hub:
        subjects = Subjects("bench")
        nc = await nats.connect(hub.nats.url)
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        published = await publish(js, subjects, count)
        raw = await raw_fetch_ack(js, subjects, count, batch)
        stored = await ingest(js, subjects, hub.postgres.url("bench"), count, batch)
        await nc.close()
    raw_rate, ingest_rate = count / raw, count / stored
    ratio = ingest_rate / raw_rate
    print_table(
        f"ingest benchmark: {count:,} events (node/pod snapshots, 20 clusters), batch {batch}",
        [
            ("publish (setup)", f"{count / published:,.0f} ev/s", "-", "-"),
            ("raw JetStream fetch+ack", f"{raw_rate:,.0f} ev/s", "baseline", "-"),
            (
                "ingest into store",
                f"{ingest_rate:,.0f} ev/s",
                "≥ 20,000 ev/s",
                "PASS" if ingest_rate >= 20_000 else "FAIL",
            ),
            ("ingest / raw", f"{ratio:.0%}", "≥ 50 %", "PASS" if ratio >= 0.5 else "FAIL"),
        ],
    )
    path = write_result(
        "ingest",
        {
            "events": count,
            "batch": batch,
            "raw_events_per_s": raw_rate,
            "ingest_events_per_s": ingest_rate,
            "ratio": ratio,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=BATCH_SIZE, help="events per step (the planner's default)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.events, args.batch))  # what the operator runs on (llm_operator.cli)
    except ImportError:
        asyncio.run(main(args.events, args.batch))
