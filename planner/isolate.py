"""A batch the store refused, retried message by message: one bad message costs only itself.

A step writes a whole batch in one transaction, so one value the database refuses (or one decision that fails on
hostile data) rolls back everything. Then each message gets its own transaction, in order:
1. the step as usual, for this message alone;
2. failing that, the message recorded and folded without deciding (mode "catch-up"): the message is fine, deciding
   after it is what failed — logged as an error and counted (`llmop_planner_undecided_messages_total`); the next
   step's decisions run again;
3. failing that too, the message is dead-lettered with the store's reason, and the position moves past it.

Guarantees: every message of the batch is used or dead-lettered, each in the transaction that moves the position
past it; transient errors and a lost leadership propagate unchanged (the caller retries the batch or stops), so
only data ever goes to the dead letters. Slow (up to three transactions per message): it runs only after a
failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from bus.errors import BusUnavailable
from planner import metrics
from planner.decode import Decoded, Delivery
from planner.handle import LostLeadership, StepConfig, StepResult, begin, dead_letter, step
from planner.memory import CapacityMemory
from planner.scaling import AutoscalerMemory
from store import recorder
from store.engine import Engine
from store.epochs import LeaseLost
from store.errors import SchemaNotReady, TransientStoreError, translated

logger = logging.getLogger(__name__)

NOT_DATA: tuple[type[BaseException], ...] = (
    TransientStoreError,
    SchemaNotReady,
    BusUnavailable,
    LostLeadership,
    LeaseLost,
)
"""Failures that say nothing about the data: never a reason to set a message aside."""


async def one_by_one(
    engine: Engine,
    *,
    deliveries: Sequence[Delivery],
    decoded: Sequence[Decoded],
    epoch: int,
    now: Callable[[], datetime],
    config: StepConfig,
    health_grace_until: datetime,
    mode: Literal["normal", "catch-up", "full"],
    memory: CapacityMemory,
    autoscaler: AutoscalerMemory | None = None,
) -> StepResult:
    """Run the batch as the module docstring says; the summed result (position: the last one committed)."""
    metrics.ISOLATED.inc()
    total = StepResult()
    for index, (delivery, outcome) in enumerate(zip(deliveries, decoded, strict=True)):
        # A full reconcile is done once, with the first message (which is what the batch would have done).
        usual = "normal" if mode == "full" and index else mode
        result: StepResult | None = None
        failure: Exception | None = None
        for attempt in ("as usual", "catch-up"):
            try:
                with translated(f"planner step on message {delivery.stream_sequence} alone"):
                    async with engine.begin() as conn:
                        result = await step(
                            conn,
                            deliveries=[delivery],
                            decoded=[outcome],
                            epoch=epoch,
                            now=now(),
                            config=config,
                            health_grace_until=health_grace_until,
                            mode="catch-up" if attempt == "catch-up" else usual,
                            memory=memory,
                            autoscaler=autoscaler,
                        )
                break
            except NOT_DATA:
                raise
            except Exception as exc:  # data the store or the decisions refused: see the module docstring
                memory.forget()  # it may describe the rolled-back transaction
                failure = exc
                if attempt == "catch-up":
                    break
                logger.warning(
                    "message %s alone failed (%s); recording it without deciding", delivery.stream_sequence, exc
                )
        if result is not None and failure is not None:
            metrics.UNDECIDED.inc()
            logger.error(
                "deciding after message %s failed; recorded it without deciding (a bug to report): %s",
                delivery.stream_sequence,
                failure,
            )
        if result is None:
            result = await _set_aside(engine, delivery, failure, epoch=epoch, now=now(), config=config)
        total.recorded += result.recorded
        total.duplicates += result.duplicates
        total.dead_letters += result.dead_letters
        total.plans += result.plans
        total.decisions += result.decisions
        total.position = max(total.position, result.position)
    return total


async def _set_aside(
    engine: Engine, delivery: Delivery, failure: Exception | None, *, epoch: int, now: datetime, config: StepConfig
) -> StepResult:
    try:
        return await _dead_letter(engine, delivery, failure, epoch=epoch, now=now, config=config, report=True)
    except NOT_DATA:
        raise
    except Exception as exc:  # telling the deployment failed on the same data: keep the message without telling
        logger.error("could not report dead letter %s in a status: %s", delivery.stream_sequence, exc)
        return await _dead_letter(engine, delivery, failure, epoch=epoch, now=now, config=config, report=False)


async def _dead_letter(
    engine: Engine,
    delivery: Delivery,
    failure: Exception | None,
    *,
    epoch: int,
    now: datetime,
    config: StepConfig,
    report: bool,
) -> StepResult:
    result = StepResult()
    with translated(f"dead-letter message {delivery.stream_sequence}"):
        async with engine.begin() as conn:
            result.position = await begin(conn, epoch=epoch, consumer=config.consumer)
            if delivery.stream_sequence > result.position:
                await dead_letter(
                    conn,
                    delivery=delivery,
                    reason=f"the store refused it: {type(failure).__name__}: {failure}",
                    consumer=config.consumer,
                    epoch=epoch,
                    now=now,
                    subjects=config.subjects,
                    report=report,
                )
                await recorder.record_position(conn, config.consumer, delivery.stream_sequence)
                result.position = delivery.stream_sequence
                result.dead_letters = 1
    return result
