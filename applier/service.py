"""The applier of one member cluster: take its plans in order, execute them, report each result.

Guarantees:
- Plans are consumed from a durable JetStream consumer. Each LLMDeployment has a lane of its own (created when a
  plan for it arrives, gone when it has none left): plans of different deployments run concurrently (up to
  `workers` at once), the plans of one deployment one at a time, in the order the planner issued them. A plan
  waiting in a lane is superseded by a newer plan of the same kind for the same deployment (each holds the whole
  intent), so a slow deployment holds at most one running and one waiting plan per kind — never the consumer's
  whole window. A plan is acknowledged only after its result was published.
- Transient failures (apiserver unreachable, 5xx) are retried with exponential backoff, holding back only that
  deployment's later plans, at most `max_attempts` times; then, like a permanent failure (the apiserver refused
  the object), the plan is reported `Failed` with the reason (the deployment's status says ApplyFailed) and
  acknowledged. If NATS goes away, unacknowledged plans are delivered again.
- Malformed plans, plans for another cluster, and plans applier.trust refuses (unsigned, forged, replayed,
  far-future epoch) go to the dead-letter subject with the reason, and consumption continues. Any
  other error restarts the consumer after a pause (unacknowledged plans are delivered again); it never ends the
  agent.
- Results are `ApplyReported` events with a deterministic id per (plan, cluster): reporting twice is harmless.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import TypeAdapter, ValidationError

from api.events import ApplyReported, encode_event
from api.keys import DeploymentKey
from api.plans import AnyPlan, EndpointsPlan, ModelStatusPlan, Plan, ScalePlan, StatusPlan, WorkloadPlan
from api.policy import TenantPolicy
from applier import metrics
from applier.apply import ApplyResult, EpochGuard, execute_workload
from applier.endpoints import execute_endpoints
from applier.scale import execute_scale
from applier.status import execute_model_status, execute_status
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
_PLAN: TypeAdapter[AnyPlan] = TypeAdapter(Plan)


@dataclass(frozen=True)
class ApplierSettings:
    cluster: str
    workers: int = 8
    """Plans of different LLMDeployments executed at once; one deployment's plans always run one at a time."""
    retry_seconds: float = 1.0
    max_retry_seconds: float = 30.0
    max_attempts: int = 10
    """Tries of a plan that keeps failing transiently before it is reported Failed (1: no retry)."""
    trusted_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    """Public keys whose plans are executed, by key id (none: every plan is refused)."""
    max_epoch_jump: int = DEFAULT_MAX_EPOCH_JUMP
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    """Which origins may place workloads into which namespaces of this cluster (the last line of defence)."""
    exposed: bool = False
    """The cluster declares the ``exposed`` network (api.network): model Services serving other origins are
    LoadBalancers."""


@dataclass
class _Applier:
    """One cluster's applier: its dependencies, and what it remembers across plans.

    Per-deployment order across concurrent workers: a deployment's plans always go to its own lane (`lanes`, by
    deployment key), and a lane executes its plans one after the other. `done` holds the stream sequence of the
    last plan executed per deployment and plan kind, so a copy redelivered after a later plan of its kind ran (its
    ack was lost) is not executed again: an older status must not overwrite a newer one."""

    kube: Kube
    js: JetStream
    subjects: Subjects
    settings: ApplierSettings
    guard: EpochGuard = field(default_factory=EpochGuard)
    done: dict[str, int] = field(default_factory=dict)
    lanes: dict[DeploymentKey, deque[tuple[Delivery, AnyPlan]]] = field(default_factory=dict)
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
        except* Exception as group:  # also from a worker
            exc = group.exceptions[0]
            if all(isinstance(e, BusUnavailable | OSError | TimeoutError) for e in group.exceptions):
                logger.warning(
                    "applier %s: NATS unavailable (%s: %s); retrying in %.1fs",
                    settings.cluster,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=exc,
                )
            else:
                # A bug, or a plan of a shape nobody foresaw: the applier starts over (unacknowledged plans come
                # back) instead of ending, and with it the agent and its cluster's heartbeats.
                logger.error(
                    "applier %s: unexpected error; restarting in %.1fs", settings.cluster, delay, exc_info=group
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
        # Room for every worker's plan plus a waiting one per kind for some deployments (see _dispatch).
        max_ack_pending=settings.workers * 4,
    )


async def _consume(sub: WorkQueue, app: _Applier) -> None:
    settings = app.settings
    limiter = anyio.CapacityLimiter(settings.workers)
    app.lanes.clear()
    async with anyio.create_task_group() as tg:
        while True:
            msgs = await sub.fetch(settings.workers, timeout=1.0)
            try:
                while msgs:
                    plan = await _plan_of(msgs[0], app)
                    if plan is not None:
                        await _dispatch(msgs[0], plan, app, tg, limiter)
                    msgs.pop(0)
            except anyio.get_cancelled_exc_class():
                await _hand_back(msgs)
                raise


async def _dispatch(msg: Delivery, plan: AnyPlan, app: _Applier, tg: TaskGroup, limiter: anyio.CapacityLimiter) -> None:
    """Queue the plan in its deployment's lane (starting the lane if it has none).

    The lane is changed before anything is awaited: a lane that finds itself empty ends, so a plan appended after
    an await could land in a lane that is gone and never run.
    """
    key = plan.deployment.key
    queue = app.lanes.get(key)
    if queue is None:
        queue = app.lanes[key] = deque([(msg, plan)])
        tg.start_soon(_lane, key, queue, app, limiter)
        return
    superseded: list[tuple[Delivery, AnyPlan, AnyPlan]] = []
    for waiting in [item for item in queue if item[1].kind == plan.kind]:
        if waiting[1].plan_id == plan.plan_id:
            # The same plan delivered again while it waited (its ack wait ran out): keep the newer delivery.
            queue.remove(waiting)
        elif (waiting[1].epoch, waiting[1].sequence) > (plan.epoch, plan.sequence):
            # An older plan arriving late: it need not run, but what it had to say still gets said.
            queue[queue.index(waiting)] = (waiting[0], _carry_events(plan, waiting[1]))
            await _supersede(msg, plan, waiting[1], app)
            return
        else:
            # Not started yet, and a newer plan of its kind holds the whole intent: this one need not run.
            queue.remove(waiting)
            plan = _carry_events(waiting[1], plan)
            superseded.append((waiting[0], waiting[1], plan))
    queue.append((msg, plan))
    for old_msg, old, new in superseded:
        await _supersede(old_msg, old, new, app)


MAX_CARRIED_EVENTS = 32
"""Events a superseding plan takes over from the plans it replaced (the newest are kept)."""


def _carry_events(old: AnyPlan, new: AnyPlan) -> AnyPlan:
    """`new`, also recording the Kubernetes Events `old` would have: the planner sends an event (Placed, Applied,
    FailedOver) once, with the status plan of the decision that caused it, so a superseded plan must not take
    its events with it."""
    with_events = StatusPlan | ScalePlan | ModelStatusPlan
    if not isinstance(old, with_events) or not isinstance(new, with_events) or not old.events:
        return new
    merged = list(dict.fromkeys([*old.events, *new.events]))[-MAX_CARRIED_EVENTS:]
    return new.model_copy(update={"events": merged})


async def _supersede(msg: Delivery, old: AnyPlan, new: AnyPlan, app: _Applier) -> None:
    message = f"superseded by plan {new.plan_id} (sequence {new.sequence}) before it ran"
    logger.info("plan %s: %s", old.plan_id, message)
    metrics.APPLIES.labels(cluster=app.settings.cluster, kind=old.kind, outcome="Superseded").inc()
    await _report(old, ApplyResult("Superseded", message=message), app)
    await msg.ack()


async def _lane(
    key: DeploymentKey, queue: deque[tuple[Delivery, AnyPlan]], app: _Applier, limiter: anyio.CapacityLimiter
) -> None:
    """Run one deployment's plans in order until none is left; the lane then ends (a later plan starts a new one)."""
    try:
        while queue:
            msg, plan = queue.popleft()
            await _one(msg, plan, app, limiter)
    except anyio.get_cancelled_exc_class():
        # Stopping: hand back what waits here now, rather than after ack_wait.
        await _hand_back([m for m, _ in queue])
        queue.clear()
        raise
    finally:
        if app.lanes.get(key) is queue:
            del app.lanes[key]


async def _plan_of(msg: Delivery, app: _Applier) -> AnyPlan | None:
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


async def _hand_back(msgs: list[Delivery]) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
        for msg in msgs:
            await msg.nak()


async def _one(msg: Delivery, plan: AnyPlan, app: _Applier, limiter: anyio.CapacityLimiter) -> None:
    sequence = msg.stream_sequence
    # A later plan of the same kind supersedes an earlier one (each holds the whole intent); a status plan
    # says nothing about the workload, and the other way round.
    done_key = f"{plan.deployment.key!s}|{plan.kind}"
    if sequence and sequence <= app.done.get(done_key, 0):
        logger.info(
            "plan %s: redelivered after a later %s plan of its deployment ran; skipped",
            plan.plan_id,
            plan.kind,
            extra=_about(plan, app.settings.cluster),
        )
        await msg.ack()
        return
    try:
        await _handle(msg, plan, app, limiter)
    except anyio.get_cancelled_exc_class():
        await _hand_back([msg])  # stopping: hand it back now rather than after ack_wait
        raise
    if sequence:
        app.done[done_key] = max(sequence, app.done.get(done_key, 0))


async def _handle(msg: Delivery, plan: AnyPlan, app: _Applier, limiter: anyio.CapacityLimiter) -> None:
    """Execute, retrying transient failures (the lane waits, so the deployment's later plans cannot overtake this
    one; other deployments' lanes go on), then report and acknowledge."""
    settings = app.settings
    started = datetime.now(UTC)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keep_alive, msg)
        result = await _execute(plan, app, limiter)
        tg.cancel_scope.cancel()
    seconds = (datetime.now(UTC) - started).total_seconds()
    metrics.APPLY_SECONDS.labels(kind=plan.kind).observe(seconds)
    metrics.APPLIES.labels(cluster=settings.cluster, kind=plan.kind, outcome=result.outcome).inc()
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
        extra=_about(plan, settings.cluster),
    )
    await _report(plan, result, app)
    await msg.ack()


async def _report(plan: AnyPlan, result: ApplyResult, app: _Applier) -> None:
    settings = app.settings
    report = ApplyReported(
        event_id=ApplyReported.id_for(plan.plan_id, settings.cluster),
        cluster=settings.cluster,
        plan_id=plan.plan_id,
        origin_cluster=plan.deployment.origin_cluster,
        namespace=plan.deployment.namespace,
        name=plan.deployment.name,
        outcome=result.outcome,
        message=result.message[:2000],
        objects=result.objects,
        epoch=plan.epoch,
        sequence=plan.sequence,
        finished_at=datetime.now(UTC),
    )
    await publish(app.js, app.subjects.events(settings.cluster), encode_event(report), msg_id=report.event_id)


async def _execute(plan: AnyPlan, app: _Applier, limiter: anyio.CapacityLimiter) -> ApplyResult:
    """One attempt at a time holds a worker (`limiter`); waiting out a backoff does not."""
    settings = app.settings
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            async with limiter:
                if isinstance(plan, WorkloadPlan):
                    return await execute_workload(
                        app.kube, plan, app.guard, policy=settings.policy, exposed=settings.exposed
                    )
                if isinstance(plan, EndpointsPlan):
                    return await execute_endpoints(app.kube, plan, policy=settings.policy)
                if isinstance(plan, ScalePlan):
                    return await execute_scale(app.kube, plan, reporting_component=f"llm-operator-{settings.cluster}")
                if isinstance(plan, ModelStatusPlan):
                    return await execute_model_status(
                        app.kube, plan, reporting_component=f"llm-operator-{settings.cluster}"
                    )
                return await execute_status(app.kube, plan, reporting_component=f"llm-operator-{settings.cluster}")
        except (KubeError, ExceptionGroup) as raised:
            exc = _kube_error(raised)
            if exc is None:
                raise
            if not isinstance(exc, TransientKubeError):
                return ApplyResult("Failed", message=str(exc))
            attempt += 1
            if attempt >= settings.max_attempts:
                return ApplyResult(
                    "Failed",
                    message=f"gave up after {attempt} attempts in {time.monotonic() - started:.0f}s: {exc}",
                )
            wait = min(settings.retry_seconds * 2 ** min(attempt - 1, 6), settings.max_retry_seconds)
            logger.warning(
                "plan %s: %s; retrying in %.1fs (attempt %d of %d)",
                plan.plan_id,
                exc,
                wait,
                attempt,
                settings.max_attempts,
                extra=_about(plan, settings.cluster),
            )
            metrics.APPLIES.labels(cluster=settings.cluster, kind=plan.kind, outcome="Retry").inc()
            await anyio.sleep(wait)


def _kube_error(raised: BaseException) -> KubeError | None:
    """The Kubernetes error behind `raised`: itself, or — for the group that calls made in parallel raise — a
    permanent error of the group if there is one (retrying cannot help), else its first transient one. None if
    anything else is in it (a bug or cancellation: not ours to swallow)."""
    if isinstance(raised, KubeError):
        return raised
    leaves: list[BaseException] = []
    pending = [raised]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    errors = [e for e in leaves if isinstance(e, KubeError)]
    if not errors or len(errors) != len(leaves):
        return None
    return next((e for e in errors if not isinstance(e, TransientKubeError)), errors[0])


def _about(plan: AnyPlan, cluster: str) -> dict[str, object]:
    """The structured fields of a log line about one plan (`llm_operator.logs` prints them in both formats)."""
    return {
        "cluster": cluster,
        "object": f"{plan.deployment.namespace}/{plan.deployment.name}",
        "plan_id": plan.plan_id,
        "epoch": plan.epoch,
    }


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
    metrics.APPLIES.labels(cluster=app.settings.cluster, kind="unknown", outcome="DeadLetter").inc()
    await msg.ack()
