"""Outbox relay: plans committed in Postgres are published to JetStream after the commit.

Guarantees: a plan reaches NATS only after the transaction that decided it committed; every committed plan is
published at least once (unsent rows are retried, including after a restart); duplicates are absorbed by the
stream's de-duplication (``Nats-Msg-Id`` = plan id) and by the applier's (epoch, sequence) check. Every plan
is published with the planner's signature over its subject and exact bytes (api.signing), in NATS headers.
"""

from __future__ import annotations

from api.signing import PlanSigner
from bus.connection import JetStream
from bus.publish import publish_many
from store import recorder
from store.engine import Engine
from store.errors import translated


async def relay(engine: Engine, js: JetStream, *, signer: PlanSigner, limit: int = 500) -> int:
    """Publish unsent plans (oldest first); returns how many were sent. Raises BusUnavailable/StoreError.

    Each batch is read, published and marked sent in one transaction: a failed publish rolls the marks back."""
    sent = 0
    while True:
        with translated("relay outbox"):
            async with engine.begin() as conn:
                rows = await recorder.outbox_pending(conn, limit)
                if rows:
                    await publish_many(
                        js,
                        [(subject, payload, plan_id) for _, plan_id, subject, payload in rows],
                        headers=[signer.headers(subject, payload) for _, _, subject, payload in rows],
                    )
                    await recorder.outbox_mark_sent(conn, [row_id for row_id, _, _, _ in rows])
        sent += len(rows)
        if len(rows) < limit:
            return sent
