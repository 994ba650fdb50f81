"""The applier of one member cluster: take its plans in order, execute them, report each result.

Guarantees:
- Plans are consumed from a durable JetStream consumer. Plans of different LLMDeployments run concurrently (up to
  `workers`); the plans of one deployment run one at a time, in the order the planner issued them. A plan is
  acknowledged only after its result was published.
- Transient failures (apiserver unreachable, 5xx) are retried in place with backoff, holding back that
  deployment's later plans; a permanent failure (the apiserver refused the object) is reported as `Failed` and
  acknowledged. If NATS goes away, unacknowledged plans are delivered again.
- Malformed plans, plans for another cluster, and plans applier.trust refuses (unsigned, forged, replayed,
  far-future epoch) go to the dead-letter subject with the reason, and consumption continues.
- Results are `ApplyReported` events with a deterministic id per (plan, cluster): reporting twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import TypeAdapter, ValidationError

from api.events import ApplyReported, encode_event
from api.plans import Plan, StatusPlan, WorkloadPlan
from api.policy import TenantPolicy
from applier import metrics
from applier.apply import ApplyResult, EpochGuard, execute_workload
from applier.status import execute_status
from applier.trust import DEFAULT_MAX_EPOCH_JUMP, PlanTrust
from bus.connection import JetStream
from bus.consume import Delivery, WorkQueue
from bus.errors import BusUnavailable
from bus.publish import dead_letter, publish
from bus.subjects import Subjects
from kubeapi import Kube, KubeError, TransientKubeError

logger = logging.getLogger(__name__)
ACK_WAIT_SECONDS = 15.0
"""A plan delivered to an applier that died is delivered again after this long; one being worked on is kept
from that by a progress signal every third of it."""
_PLAN: TypeAdapter[WorkloadPlan | StatusPlan] = TypeAdapter(Plan)


@dataclass(frozen=True)
class ApplierSettings:
    cluster: str
    workers: int = 8
    """Plans of different LLMDeployments executed at once; one deployment's plans always run one at a time."""
    retry_seconds: float = 1.0
    max_retry_seconds: float = 30.0
    trusted_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    """Public keys whose plans are executed, by key id (none: every plan is refused)."""
    max_epoch_jump: int = DEFAULT_MAX_EPOCH_JUMP
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    """Which origins may place workloads into which namespaces of this cluster (the last line of defence)."""


@dataclass
class _Applier:
    """One cluster's applier: its dependencies, and what it remembers across plans.

    Per-deployment order across concurrent workers: a deployment's plans always go to the same lane, and a lane
    executes its plans one after the other. `done` holds the stream sequence of the last plan executed per
    deployment and plan kind, so a copy redelivered after a later plan of its kind ran (its ack was lost) is not
    executed again: an older status must not overwrite a newer one."""

    kube: Kube
    js: JetStream
    subjects: Subjects
    settings: ApplierSettings
    guard: EpochGuard = field(default_factory=EpochGuard)
    done: dict[str, int] = field(default_factory=dict)
    trust: PlanTrust = field(init=False)

    def __post_init__(self) -> None:
        self.trust = PlanTrust(self.settings.trusted_keys, max_epoch_jump=self.settings.max_epoch_jump)


async def run_applier(*, kube: Kube, js: JetStream, subjects: Subjects, settings: ApplierSettings) -> None:
    app = _Applier(kube=kube, js=js, subjects=subjects, settings=settings)
    delay = settings.retry_seconds
    logger.info("applier for cluster %s starting (%d workers)", settings.cluster, settings.workers)
    while True:
        try:
            sub = await _subscribe(js, subjects, settings)
            delay = settings.retry_seconds
            await _consume(sub, app)
        except* (BusUnavailable, OSError, TimeoutError) as group:  # also from a worker
            exc = group.exceptions[0]
            logger.warning(
                "applier %s: NATS unavailable (%s: %s); retrying in %.1fs",
                settings.cluster,
                type(exc).__name__,
                exc,
                delay,
                exc_info=exc,
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, settings.max_retry_seconds)


async def _subscribe(js: JetStream, subjects: Subjects, settings: ApplierSettings) -> WorkQueue:
    return await WorkQueue.open(
        js,
        stream=subjects.plans_stream,
        durable=f"applier-{settings.cluster}",
        subject=subjects.plans(settings.cluster),
        ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=settings.workers * 2,
    )


async def _consume(sub: WorkQueue, app: _Applier) -> None:
    settings = app.settings
    async with contextlib.AsyncExitStack() as streams, anyio.create_task_group() as tg:
        inboxes: list[MemoryObjectSendStream[tuple[Delivery, WorkloadPlan | StatusPlan]]] = []
        for _ in range(settings.workers):
            send, receive = anyio.create_memory_object_stream[tuple[Delivery, WorkloadPlan | StatusPlan]](1)
            inboxes.append(await streams.enter_async_context(send))
            tg.start_soon(_lane, receive, app)
        while True:
            msgs = await sub.fetch(settings.workers, timeout=1.0)
            try:
                while msgs:
                    plan = await _plan_of(msgs[0], app)
                    if plan is not None:
                        lane = zlib.crc32(plan.deployment.key.encode()) % len(inboxes)
                        await inboxes[lane].send((msgs[0], plan))
                    msgs.pop(0)
            except anyio.get_cancelled_exc_class():
                await _hand_back(msgs)
                raise
            except anyio.BrokenResourceError:
                # A worker stopped on an error (NATS went away while it reported): the task group is already
                # being torn down with that error, which run_applier handles; only hand the rest back.
                await _hand_back(msgs)
                return


async def _plan_of(msg: Delivery, app: _Applier) -> WorkloadPlan | StatusPlan | None:
    """The plan in `msg`, or None after dead-lettering what is not a plan for this cluster."""
    cluster = app.settings.cluster
    refused = app.trust.signature_problem(msg.subject, msg.data, msg.headers)
    if refused is not None:
        await _dead_letter(msg, app, refused)
        return None
    try:
        plan = _PLAN.validate_json(msg.data)
    except ValidationError as exc:
        await _dead_letter(msg, app, f"not a plan: {exc.errors()[0]['msg']}")
        return None
    if plan.cluster != cluster:
        await _dead_letter(msg, app, f"plan for cluster {plan.cluster} reached {cluster}")
        return None
    refused = app.trust.admit(plan, msg.stream_sequence)
    if refused is not None:
        await _dead_letter(msg, app, refused)
        return None
    return plan


async def _lane(inbox: MemoryObjectReceiveStream[tuple[Delivery, WorkloadPlan | StatusPlan]], app: _Applier) -> None:
    async with inbox:
        try:
            async for msg, plan in inbox:
                await _one(msg, plan, app)
        except anyio.get_cancelled_exc_class():
            # Stopping: hand back what waits here now, rather than after ack_wait.
            waiting: list[Delivery] = []
            with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream):
                while True:
                    waiting.append(inbox.receive_nowait()[0])
            await _hand_back(waiting)
            raise


async def _hand_back(msgs: list[Delivery]) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        for msg in msgs:
            await msg.nak()


async def _one(msg: Delivery, plan: WorkloadPlan | StatusPlan, app: _Applier) -> None:
    sequence = msg.stream_sequence
    # A later plan of the same kind supersedes an earlier one (each holds the whole intent); a status plan
    # says nothing about the workload, and the other way round.
    done_key = f"{plan.deployment.key}|{plan.kind}"
    if sequence and sequence <= app.done.get(done_key, 0):
        logger.info(
            "plan %s: redelivered after a later %s plan of its deployment ran; skipped", plan.plan_id, plan.kind
        )
        await msg.ack()
        return
    try:
        await _handle(msg, plan, app)
    except anyio.get_cancelled_exc_class():
        await _hand_back([msg])  # stopping: hand it back now rather than after ack_wait
        raise
    if sequence:
        app.done[done_key] = max(sequence, app.done.get(done_key, 0))


async def _handle(msg: Delivery, plan: WorkloadPlan | StatusPlan, app: _Applier) -> None:
    """Execute, retrying transient failures in place (the lane waits, so the deployment's later plans cannot
    overtake this one), then report and acknowledge."""
    settings = app.settings
    started = datetime.now(UTC)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep_alive, msg)
        result = await _execute(plan, app)
        tg.cancel_scope.cancel()
    seconds = (datetime.now(UTC) - started).total_seconds()
    metrics.APPLY_SECONDS.labels(kind=plan.kind).observe(seconds)
    metrics.APPLIES.labels(kind=plan.kind, outcome=result.outcome).inc()
    log = logger.warning if result.outcome == "Failed" else logger.info
    log(
        "plan %s (%s seq %d, %s/%s) in %s: %s %s",
        plan.plan_id,
        plan.kind,
        plan.sequence,
        plan.deployment.namespace,
        plan.deployment.name,
        settings.cluster,
        result.outcome,
        result.message,
    )
    report = ApplyReported(
        event_id=ApplyReported.id_for(plan.plan_id, settings.cluster),
        cluster=settings.cluster,
        plan_id=plan.plan_id,
        origin_cluster=plan.deployment.origin_cluster,
        namespace=plan.deployment.namespace,
        name=plan.deployment.name,
        outcome=result.outcome,  # type: ignore[arg-type,unused-ignore]
        message=result.message[:2000],
        objects=result.objects,
        epoch=plan.epoch,
        sequence=plan.sequence,
        finished_at=datetime.now(UTC),
    )
    await publish(app.js, app.subjects.events(settings.cluster), encode_event(report), msg_id=report.event_id)
    await msg.ack()


async def _execute(plan: WorkloadPlan | StatusPlan, app: _Applier) -> ApplyResult:
    settings = app.settings
    attempt = 0
    while True:
        try:
            if isinstance(plan, WorkloadPlan):
                return await execute_workload(app.kube, plan, app.guard, policy=settings.policy)
            return await execute_status(app.kube, plan, reporting_component=f"llm-operator-{settings.cluster}")
        except TransientKubeError as exc:
            attempt += 1
            wait = min(settings.retry_seconds * 2 ** min(attempt - 1, 6), settings.max_retry_seconds)
            logger.warning("plan %s: %s; retrying in %.1fs", plan.plan_id, exc, wait)
            metrics.APPLIES.labels(kind=plan.kind, outcome="Retry").inc()
            await anyio.sleep(wait)
        except KubeError as exc:
            return ApplyResult("Failed", message=str(exc))


async def _keep_alive(msg: Delivery) -> None:
    """While a plan is being worked on (retries included), tell JetStream so: it is not delivered again."""
    while True:
        await anyio.sleep(ACK_WAIT_SECONDS / 3)
        await msg.in_progress()


async def _dead_letter(msg: Delivery, app: _Applier, reason: str) -> None:
    logger.error("applier %s: dead-lettering a message: %s", app.settings.cluster, reason)
    await dead_letter(
        app.js, app.subjects.dead_letters(app.settings.cluster), msg.data, reason=reason, original_subject=msg.subject
    )
    metrics.APPLIES.labels(kind="unknown", outcome="DeadLetter").inc()
    await msg.ack()
