"""The applier of one member cluster: take its plans in order, execute them, report each result.

Guarantees:
- Plans are consumed from a durable JetStream consumer, one at a time (max one unacknowledged), so they are
  executed in the order the planner issued them; a plan is acknowledged only after its result was published.
- Transient failures (apiserver unreachable, 5xx, NATS down) leave the plan unacknowledged and it is retried with
  backoff; a permanent failure (the apiserver refused the object) is reported as `Failed` and acknowledged.
- Malformed plans, or plans for another cluster, go to the dead-letter subject and consumption continues.
- Results are `ApplyReported` events with a deterministic id per (plan, cluster): reporting twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import TypeAdapter, ValidationError

from applier import metrics
from applier.apply import ApplyResult, EpochGuard, execute_workload
from applier.status import execute_status
from kubeapi import Kube, KubeError, TransientKubeError
from store.bus import BusUnavailable, publish
from store.events import ApplyReported, encode_event
from store.plans import Plan, StatusPlan, WorkloadPlan
from store.subjects import Subjects

logger = logging.getLogger(__name__)
_PLAN: TypeAdapter[WorkloadPlan | StatusPlan] = TypeAdapter(Plan)


@dataclass(frozen=True)
class ApplierSettings:
    cluster: str
    retry_seconds: float = 1.0
    max_retry_seconds: float = 30.0


async def run_applier(*, kube: Kube, js: JetStreamContext, subjects: Subjects, settings: ApplierSettings) -> None:
    guard = EpochGuard()
    durable = f"applier-{settings.cluster}"
    delay = settings.retry_seconds
    logger.info("applier for cluster %s starting", settings.cluster)
    while True:
        try:
            sub = await js.pull_subscribe(
                subjects.plans(settings.cluster),
                durable=durable,
                stream=subjects.plans_stream,
                config=ConsumerConfig(
                    durable_name=durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=120,
                    max_ack_pending=1,
                    filter_subject=subjects.plans(settings.cluster),
                ),
            )
            delay = settings.retry_seconds
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await _handle(msg, kube=kube, js=js, subjects=subjects, settings=settings, guard=guard)
        except (nats.errors.Error, BusUnavailable, OSError, TimeoutError) as exc:
            logger.warning("applier %s: NATS unavailable (%s); retrying in %.1fs", settings.cluster, exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, settings.max_retry_seconds)


async def _handle(
    msg: Msg, *, kube: Kube, js: JetStreamContext, subjects: Subjects, settings: ApplierSettings, guard: EpochGuard
) -> None:
    try:
        plan = _PLAN.validate_json(msg.data)
    except ValidationError as exc:
        await _dead_letter(msg, js, subjects, settings, f"not a plan: {exc.errors()[0]['msg']}")
        return
    if plan.cluster != settings.cluster:
        await _dead_letter(msg, js, subjects, settings, f"plan for cluster {plan.cluster} reached {settings.cluster}")
        return
    started = datetime.now(UTC)
    try:
        if isinstance(plan, WorkloadPlan):
            result = await execute_workload(kube, plan, guard)
        else:
            result = await execute_status(kube, plan, reporting_component=f"llm-operator-{settings.cluster}")
    except TransientKubeError as exc:
        retries = msg.metadata.num_delivered if msg.metadata else 1
        wait = min(settings.retry_seconds * 2 ** min(retries, 6), settings.max_retry_seconds)
        logger.warning("plan %s: %s; retrying in %.1fs", plan.plan_id, exc, wait)
        metrics.APPLIES.labels(kind=plan.kind, outcome="Retry").inc()
        await msg.nak(delay=wait)
        return
    except KubeError as exc:
        result = ApplyResult("Failed", message=str(exc))
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
    await publish(js, subjects.events(settings.cluster), encode_event(report), msg_id=report.event_id)
    await msg.ack_sync()


async def _dead_letter(
    msg: Msg, js: JetStreamContext, subjects: Subjects, settings: ApplierSettings, reason: str
) -> None:
    logger.error("applier %s: dead-lettering a message: %s", settings.cluster, reason)
    await js.publish(
        subjects.dead_letters(settings.cluster),
        msg.data,
        headers={"Llm-Operator-Reason": reason[:500], "Llm-Operator-Subject": msg.subject},
    )
    metrics.APPLIES.labels(kind="unknown", outcome="DeadLetter").inc()
    await msg.ack_sync()
