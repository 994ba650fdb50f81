"""Execute a status plan on the origin LLMDeployment: status, cleanup finalizer, and Kubernetes Events.

Guarantees:
- The plan is for one incarnation of the object: if the object is gone or was recreated (another uid), nothing
  is written (`Stale`).
- Status goes through the /status subresource with server-side apply (one field manager); the finalizer is held
  by that same manager, so releasing it is applying metadata without it.
- Events get deterministic names (one per plan and reason), so a redelivered plan does not record them twice.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from applier.apply import FIELD_MANAGER, ApplyResult
from kubeapi import RESOURCES, Kube, KubeError, NotFound
from store.api import API_VERSION, FINALIZER
from store.plans import StatusPlan

_LLMD = RESOURCES["LLMDeployment"]


async def execute_status(kube: Kube, plan: StatusPlan, *, reporting_component: str) -> ApplyResult:
    ref = plan.deployment
    try:
        current = await kube.get(_LLMD, ref.name, ref.namespace)
    except NotFound:
        return ApplyResult("Stale", message="the LLMDeployment no longer exists")
    if current["metadata"].get("uid") != ref.uid:
        return ApplyResult("Stale", message="the LLMDeployment was recreated; this plan was for the old one")

    head: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "LLMDeployment",
        "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
    }
    if not current["metadata"].get("deletionTimestamp") or plan.finalizer == "remove":
        await kube.apply(
            _LLMD, {**head, "status": plan.status.wire()}, field_manager=FIELD_MANAGER, subresource="status"
        )
    finalizers = [FINALIZER] if plan.finalizer == "ensure" else []
    has = FINALIZER in (current["metadata"].get("finalizers") or [])
    if has != bool(finalizers):
        body: dict[str, Any] = {**head, "metadata": {**head["metadata"], "finalizers": finalizers}}
        with contextlib.suppress(NotFound):  # released and already gone
            await kube.apply(_LLMD, body, field_manager=FIELD_MANAGER)
    for index, event in enumerate(plan.events):
        await _record_event(kube, plan, index, event.type, event.reason, event.message, current, reporting_component)
    return ApplyResult(
        "Applied", objects=[f"LLMDeployment/{ref.name}/status"], message=f"status {plan.status.ready or ''}".strip()
    )


async def _record_event(
    kube: Kube,
    plan: StatusPlan,
    index: int,
    type_: str,
    reason: str,
    message: str,
    obj: dict[str, Any],
    component: str,
) -> None:
    ref = plan.deployment
    suffix = hashlib.blake2b(f"{plan.plan_id}/{index}".encode(), digest_size=6).hexdigest()
    now = plan.issued_at.isoformat().replace("+00:00", "Z")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.name}.{suffix}", "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": "LLMDeployment",
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": ref.uid,
            "resourceVersion": obj["metadata"].get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.create(RESOURCES["Event"], body)
    except KubeError as exc:
        if exc.status != 409:  # 409: recorded by an earlier delivery of this plan
            raise
