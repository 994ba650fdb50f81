"""Outbox relay: plans committed in Postgres are published to JetStream after the commit.

Guarantees:
- A plan reaches NATS only after the transaction that decided it committed; every committed plan is published
  at least once (unsent rows are retried, including after a restart); duplicates are absorbed by the stream's
  de-duplication (``Nats-Msg-Id`` = plan id) and by the applier's (epoch, sequence) check.
- Every plan is published with the planner's signature over its subject and exact bytes (api.signing), in NATS
  headers.
- A plan the bus can never carry (larger than the server's max_payload) costs only itself: it is parked (its
  outbox row keeps the reason and is never tried again) and reported as a failed apply of that plan in its
  cluster — an `ApplyReported` published on the cluster's events subject on behalf of the applier that will never
  see it — so the planner's normal path puts it in the deployment's status (Ready/Degraded ApplyFailed). Plans
  of other deployments and clusters go on being sent.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import TypeAdapter, ValidationError

from api.events import ApplyReported, encode_event
from api.plans import AnyPlan, Plan
from api.signing import PlanSigner
from bus.connection import JetStream
from bus.publish import max_body, publish, publish_many
from bus.subjects import Subjects
from planner import metrics
from store import recorder
from store.engine import Engine
from store.errors import translated

logger = logging.getLogger(__name__)
_PLAN: TypeAdapter[AnyPlan] = TypeAdapter(Plan)


async def relay(engine: Engine, js: JetStream, *, subjects: Subjects, signer: PlanSigner, limit: int = 500) -> int:
    """Publish unsent plans (oldest first); returns how many were sent. Raises BusUnavailable/StoreError.

    Each batch is read, published and marked sent (or parked) in one transaction: a failed publish rolls the
    marks back."""
    sent = 0
    largest = max_body(js)
    while True:
        with translated("relay outbox"):
            async with engine.begin() as conn:
                rows = await recorder.outbox_pending(conn, limit)
                fits = [row for row in rows if len(row.payload) <= largest]
                parked = [row for row in rows if len(row.payload) > largest]
                if fits:
                    await publish_many(
                        js,
                        [(row.subject, row.payload, row.plan_id) for row in fits],
                        headers=[signer.headers(row.subject, row.payload) for row in fits],
                    )
                    await recorder.outbox_mark_sent(conn, [row.id for row in fits])
                for row in parked:
                    reason = (
                        f"plan {row.plan_id} is {len(row.payload)} bytes, more than the bus carries "
                        f"({largest} bytes: NATS max_payload less headers); it was not sent"
                    )
                    await _report(js, subjects, row.payload, reason)
                    await recorder.outbox_park(conn, row.id, reason)
                    metrics.PARKED_PLANS.inc()
                    logger.error("parked %s", reason)
        sent += len(fits)
        if len(rows) < limit:
            return sent


async def _report(js: JetStream, subjects: Subjects, payload: bytes, reason: str) -> None:
    """Report a parked plan as failed in its cluster, as that cluster's applier would (see the module docstring)."""
    try:
        plan = _PLAN.validate_json(payload)
    except ValidationError:  # our own payload: it always parses; if not, the parked row says enough
        return
    ref = plan.deployment
    report = ApplyReported(
        event_id=ApplyReported.id_for(plan.plan_id, plan.cluster),
        cluster=plan.cluster,
        plan_id=plan.plan_id,
        origin_cluster=ref.origin_cluster,
        namespace=ref.namespace,
        name=ref.name,
        outcome="Failed",
        message=reason,
        epoch=plan.epoch,
        sequence=plan.sequence,
        finished_at=datetime.now(UTC),
    )
    await publish(js, subjects.events(plan.cluster), encode_event(report), msg_id=report.event_id)
