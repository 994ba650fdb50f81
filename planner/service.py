"""The planner service: campaign for leadership, then read the event stream in order and run planner steps.

Guarantees:
- Only the leader reads and plans. It reads the events stream from the position committed in Postgres, so a crash
  anywhere resumes exactly after the last committed step: no event lost, none applied twice.
- A new leader first catches up on the backlog (recording and folding without deciding), then reconciles every
  deployment once, then plans step by step.
- Plans are relayed to NATS after each committing step; a failed relay is retried on the next step.
- The fleet's capacity is carried from step to step (planner/memory.py) and forgotten when a step fails.
- The next batch is read and decoded while the current step runs (planner/readahead.py); a failed step drops
  it and reads again from the committed position.
- Events lost before the planner read them (a gap in the stream's sequences, or a stream made again: its end
  before the committed position) are logged as errors, counted (`llmop_planner_stream_gaps_total`) and repaired
  by asking every watcher to relist and resend (bus/control.py); after a reset the position starts over.
- A step that fails transiently (database or NATS gone) is rolled back and retried from the same position after
  a backoff; losing the leader lock stops planning and the service campaigns again.
- The loop never exits over data: a batch that fails for any other reason (a value the store refuses, a decision
  that fails on hostile data) is retried message by message (planner/isolate.py), each offender dead-lettered.
  Only a database that is not migrated stops the planner.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio

from api.policy import TenantPolicy
from api.signing import PlanSigner
from bus.connection import JetStream
from bus.consume import SequenceReader
from bus.control import request_resync
from bus.errors import BusUnavailable
from bus.subjects import Subjects
from planner import metrics
from planner.gaps import gaps, was_reset
from planner.handle import LostLeadership, StepConfig, StepResult, begin, step
from planner.isolate import NOT_DATA, one_by_one
from planner.memory import CapacityMemory
from planner.outbox import relay
from planner.readahead import Batch, ReadAhead
from planner.scaling import AutoscalerMemory
from store import recorder
from store import retention as store_retention
from store import snapshots as store_snapshots
from store.engine import Engine
from store.epochs import Lease, LeaseLost, campaign
from store.errors import SchemaNotReady, StoreError, TransientStoreError, translated

logger = logging.getLogger(__name__)


RESET_CHECK_SECONDS = 10.0
"""While idle, how often the planner checks that the events stream was not made again under it."""

BATCH_SIZE = 2048
"""Events per step at most. A step has a fixed cost (the writers' lock, the epoch check, the cluster and
deployment look-ups, the position) of about 30 statements: at 512 it was a quarter of the per-event cost of a
backlog; at 2048, ingest is ~30 % faster (bench.ingest). Batches are whatever has arrived, so this only
matters when the planner is behind."""


@dataclass(frozen=True)
class PlannerSettings:
    holder: str
    signer: PlanSigner
    """Signs every plan the planner publishes (appliers refuse unsigned plans)."""
    tenant_policy: TenantPolicy = field(default_factory=TenantPolicy)
    batch_size: int = BATCH_SIZE
    tick_seconds: float = 0.5
    heartbeat_timeout_seconds: float = 10.0
    recovery_hold_seconds: float = 5.0
    unschedulable_seconds: float = 60.0
    retry_seconds: float = 1.0
    retention: Retention | None = None
    """Partition upkeep and pruning of the event log while leading (None: neither)."""
    snapshots: SnapshotPolicy | None = None
    """While leading, copy the projections into projection snapshots by this policy (store.snapshots; None: never)."""


@dataclass(frozen=True)
class Retention:
    observations: timedelta | None
    """How long raw observations are kept (None: forever)."""
    check_seconds: float = 3600.0
    days_ahead: int = 2


@dataclass(frozen=True)
class SnapshotPolicy:
    every_events: int = 2000
    """A snapshot once this many events were recorded since the last (0: by time only)."""
    every_seconds: float = 900.0
    """... or once this long passed, if anything was recorded."""
    check_seconds: float = 10.0
    """How often the policy is looked at (the shortest time between two snapshots)."""


def _now() -> datetime:
    return datetime.now(UTC)


async def run_planner(*, engine: Engine, js: JetStream, subjects: Subjects, settings: PlannerSettings) -> None:
    """Run forever (until cancelled): campaign, lead, and campaign again after losing the lease."""
    while True:
        lease = await campaign(engine, holder=settings.holder, retry_interval=settings.retry_seconds)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_guard_lease, lease, settings.retry_seconds)
                if settings.retention is not None:
                    tg.start_soon(_keep_log, engine, settings.retention)
                if settings.snapshots is not None:
                    tg.start_soon(_keep_snapshots, engine, settings.snapshots)
                await _lead(engine=engine, js=js, subjects=subjects, settings=settings, epoch=lease.epoch)
        except* (LeaseLost, LostLeadership) as group:
            logger.warning("planner %s stopped leading: %s", settings.holder, group.exceptions[0])
        finally:
            await lease.release()
        metrics.stop_leading()


async def _keep_log(engine: Engine, retention: Retention) -> None:
    """While leading: create the log's coming partitions and prune one aged-out day of observations per run.

    Failures are logged and tried again next time: the DEFAULT partition takes inserts meanwhile, and a prune
    that did not run only keeps data longer.
    """
    while True:
        try:
            with translated("keep the event log's partitions"):
                async with engine.begin() as conn:
                    created = await store_retention.ensure_partitions(conn, now=_now(), days_ahead=retention.days_ahead)
                if created:
                    logger.info("event log partitions created: %s", ", ".join(created))
                if retention.observations is not None:
                    async with engine.begin() as conn:
                        pruned = await store_retention.prune(conn, now=_now(), keep=retention.observations)
                    for p in pruned:
                        logger.info(
                            "retention: dropped %s (%d observations, %d kept as the last of their object); "
                            "observations are kept from %s",
                            p.partition,
                            p.rows,
                            p.kept_as_snapshot,
                            p.kept_from.isoformat(),
                        )
        except StoreError as exc:
            logger.warning("event log upkeep failed, retrying in %.0fs: %s", retention.check_seconds, exc)
        except Exception:  # housekeeping never takes planning down with it; the next run tries again
            logger.exception("event log upkeep failed, retrying in %.0fs", retention.check_seconds)
        await anyio.sleep(retention.check_seconds)


async def _keep_snapshots(engine: Engine, policy: SnapshotPolicy) -> None:
    """While leading: a projection snapshot when the policy says one is due (store.snapshots.due), and the old
    ones thinned.

    Like the log's upkeep, a failure is logged and tried again: without a new snapshot a look at the past only
    folds more of the log.
    """
    while True:
        await anyio.sleep(policy.check_seconds)
        try:
            with translated("take a projection snapshot"):
                # Thinning first: a snapshot of another table shape may sit at the very position to copy.
                async with engine.begin() as conn:
                    thinned = await store_snapshots.thin(conn, now=_now())
                async with engine.connect() as conn:
                    position, last, taken_at = await store_snapshots.head(conn)
                if not store_snapshots.due(
                    events_since=position - (last or 0),
                    seconds_since=(_now() - taken_at).total_seconds() if taken_at is not None else None,
                    every_events=policy.every_events,
                    every_seconds=policy.every_seconds,
                ):
                    continue
                taken = await store_snapshots.take(engine)
            if taken is not None:
                logger.info(
                    "projection snapshot at position %d: %d rows, %d bytes stored, %.2fs (%d old ones removed)",
                    taken.position,
                    taken.rows,
                    taken.bytes,
                    taken.seconds,
                    thinned,
                )
        except StoreError as exc:
            logger.warning("projection snapshot failed, retrying in %.0fs: %s", policy.check_seconds, exc)
        except Exception:  # housekeeping never takes planning down with it
            logger.exception("projection snapshot failed, retrying in %.0fs", policy.check_seconds)


async def _guard_lease(lease: Lease, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        await lease.check()


async def _lead(*, engine: Engine, js: JetStream, subjects: Subjects, settings: PlannerSettings, epoch: int) -> None:
    metrics.LEADER.set(1)
    metrics.EPOCH.set(epoch)
    config = StepConfig(
        consumer="planner",
        subjects=subjects,
        heartbeat_timeout=timedelta(seconds=settings.heartbeat_timeout_seconds),
        recovery_hold=timedelta(seconds=settings.recovery_hold_seconds),
        unschedulable=timedelta(seconds=settings.unschedulable_seconds),
        tenant_policy=settings.tenant_policy,
    )
    with translated("read planner position"):
        async with engine.connect() as conn:
            position = await recorder.consumer_position(conn, config.consumer)
    first, backlog_end = await _stream_bounds(js, subjects)
    if was_reset(position, backlog_end):
        position = await _after_reset(engine, js, config, epoch, position, first, backlog_end)
    logger.info(
        "planner epoch %d: reading %s from %d (backlog ends at %d)",
        epoch,
        subjects.events_stream,
        position + 1,
        backlog_end,
    )
    grace_until = _now() + config.heartbeat_timeout
    mode: Literal["normal", "catch-up", "full"] = "catch-up" if backlog_end > position else "full"
    outbox_dirty = True  # a previous leader may have left committed plans unsent
    memory = CapacityMemory()  # this term's view of the fleet's capacity, carried from step to step
    autoscaler = AutoscalerMemory()  # the fleet autoscaler's history, like an HPA controller's
    reset_checked = time.monotonic()
    async with ReadAhead(
        SequenceReader(js, stream=subjects.events_stream, subject=subjects.all_events, start_sequence=position + 1),
        subjects=subjects,
        batch_size=settings.batch_size,
        timeout=settings.tick_seconds,
    ) as reader:
        while True:
            try:
                batch = await reader.next()
                received, deliveries = batch.received, batch.deliveries
                caught_up = not received or received[-1].stream_sequence >= backlog_end
                missing = gaps(position, (r.stream_sequence for r in received))
                if missing:
                    await _after_gaps(js, config, epoch, missing)
                if not received and time.monotonic() - reset_checked > RESET_CHECK_SECONDS:
                    # A stream made again while we read: the reader drops its sequences (they are behind it).
                    reset_checked = time.monotonic()
                    first, last = await _stream_bounds(js, subjects)
                    if was_reset(position, last):
                        position = await _after_reset(engine, js, config, epoch, position, first, last)
                        await reader.rewind(position + 1)
                        continue
                started = time.perf_counter()
                try:
                    with translated("planner step"):
                        async with engine.begin() as conn:
                            result = await step(
                                conn,
                                deliveries=deliveries,
                                epoch=epoch,
                                now=_now(),
                                config=config,
                                health_grace_until=grace_until,
                                mode=mode,
                                memory=memory,
                                autoscaler=autoscaler,
                                decoded=batch.decoded,
                            )
                except NOT_DATA:
                    raise
                except Exception as exc:  # data: one message, or the decisions after it (planner/isolate.py)
                    metrics.ERRORS.labels(kind=type(exc).__name__).inc()
                    logger.error("planner step failed on its data (%s); retrying message by message", exc)
                    memory.forget()
                    result = await _isolated(engine, batch, epoch, config, grace_until, mode, memory, autoscaler)
                metrics.observe_step(result, time.perf_counter() - started)
                if received:
                    metrics.LAG.set(received[-1].pending)
                position = result.position
                if mode == "full":
                    logger.info("planner epoch %d caught up at %d and reconciled every deployment", epoch, position)
                mode = "full" if mode == "catch-up" and caught_up else ("normal" if mode == "full" else mode)
                if result.plans or outbox_dirty:
                    await relay(engine, js, subjects=subjects, signer=settings.signer)
                    outbox_dirty = False
            except (TransientStoreError, BusUnavailable) as exc:
                metrics.ERRORS.labels(kind=type(exc).__name__).inc()
                logger.warning("planner step failed, retrying from %d: %s", position + 1, exc)
                outbox_dirty = True
                memory.forget()  # it may describe the step that was rolled back
                await reader.rewind(position + 1)
                await anyio.sleep(settings.retry_seconds)
            except SchemaNotReady:
                metrics.ERRORS.labels(kind="SchemaNotReady").inc()
                raise


async def _isolated(
    engine: Engine,
    batch: Batch,
    epoch: int,
    config: StepConfig,
    grace_until: datetime,
    mode: Literal["normal", "catch-up", "full"],
    memory: CapacityMemory,
    autoscaler: AutoscalerMemory,
) -> StepResult:
    return await one_by_one(
        engine,
        deliveries=batch.deliveries,
        decoded=batch.decoded,
        epoch=epoch,
        now=_now,
        config=config,
        health_grace_until=grace_until,
        mode=mode,
        memory=memory,
        autoscaler=autoscaler,
    )


async def _stream_bounds(js: JetStream, subjects: Subjects) -> tuple[int, int]:
    """(first, last) sequence of the events stream; first > last when it holds nothing."""
    try:
        info = await js.stream_info(subjects.events_stream)
    except Exception as exc:  # translated: any client error means the bus is not usable yet
        raise BusUnavailable(f"cannot read {subjects.events_stream} info: {exc}") from exc
    last = int(info.state.last_seq)
    first = int(info.state.first_seq) if int(info.state.messages) else last + 1
    return first, last


async def _after_gaps(js: JetStream, config: StepConfig, epoch: int, missing: list[tuple[int, int]]) -> None:
    lost = sum(b - a + 1 for a, b in missing)
    metrics.STREAM_GAPS.labels(kind="gap").inc(len(missing))
    ranges = ", ".join(f"{a}-{b}" for a, b in missing[:5])
    logger.error(
        "EVENTS LOST: %d events of %s were removed before the planner read them (sequences %s); "
        "asking every watcher to resend everything",
        lost,
        config.subjects.events_stream,
        ranges,
    )
    await request_resync(
        js, config.subjects, request_id=f"{epoch}-{missing[0][0]}-{missing[-1][1]}", reason=f"gap {ranges}"
    )


async def _after_reset(
    engine: Engine, js: JetStream, config: StepConfig, epoch: int, position: int, first: int, last: int
) -> int:
    """The stream was made again: read it from its start, and have the watchers resend everything."""
    metrics.STREAM_GAPS.labels(kind="reset").inc()
    logger.error(
        "EVENTS STREAM RESET: %s ends at %d but the planner had read up to %d; reading it again from %d and "
        "asking every watcher to resend everything",
        config.subjects.events_stream,
        last,
        position,
        first,
    )
    with translated("reset planner position"):
        async with engine.begin() as conn:
            await begin(conn, epoch=epoch, consumer=config.consumer)
            await recorder.reset_position(conn, config.consumer, first - 1)
    await request_resync(js, config.subjects, request_id=f"{epoch}-reset-{last}", reason="events stream reset")
    return first - 1
