"""Execute a status plan on the origin LLMDeployment (status, cleanup finalizer, Kubernetes Events), or a model
status plan on the origin LLMModel (status and Events).

Guarantees:
- The plan is for one incarnation of the object: if the object is gone or was recreated (another uid), nothing
  is written (`Stale`), also when that happens while the plan is being executed (every write carries the uid as
  a precondition).
- Status goes through the /status subresource with server-side apply (one field manager); the finalizer is held
  by that same manager, so releasing it is applying metadata without it. Other finalizers are left alone.
- While the object is being deleted, the finalizer is never added back and the status is only written by the
  plan that releases it.
- Events get deterministic names (one per plan and event), so a redelivered plan does not record them twice.
- A model status plan writes the LLMModel's /status (server-side apply, the same field manager, the uid as a
  precondition) and its Events, and nothing else: no finalizer, never the spec.
"""

from __future__ import annotations

import hashlib
from typing import Any

from api.models import API_VERSION, FINALIZER
from api.plans import KubeEvent, ModelStatusPlan, ScalePlan, StatusPlan
from applier.apply import FIELD_MANAGER, ApplyResult
from kubeapi import RESOURCES, Kube, KubeError, NotFound, TransientKubeError

_LLMD = RESOURCES["LLMDeployment"]
_LLMM = RESOURCES["LLMModel"]


class _Gone(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def execute_status(kube: Kube, plan: StatusPlan, *, reporting_component: str) -> ApplyResult:
    try:
        return await _execute(kube, plan, reporting_component)
    except _Gone as gone:
        return ApplyResult("Stale", message=gone.message)


async def _current(kube: Kube, plan: StatusPlan) -> dict[str, Any]:
    ref = plan.deployment
    try:
        current = await kube.get(_LLMD, ref.name, ref.namespace)
    except NotFound:
        raise _Gone("the LLMDeployment no longer exists") from None
    if current["metadata"].get("uid") != ref.uid:
        raise _Gone("the LLMDeployment was recreated; this plan was for the old one")
    return current


async def _write(kube: Kube, plan: StatusPlan, body: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
    """Apply `body`; if that fails because the object vanished or was replaced meanwhile (404; 409 from the uid
    precondition; 403 because applying to a missing object would create it, which the applier may not), the
    plan is stale."""
    try:
        return await kube.apply(_LLMD, body, field_manager=FIELD_MANAGER, subresource=subresource)
    except KubeError as exc:
        if exc.status in (403, 404, 409):
            await _current(kube, plan)  # raises _Gone when that is what happened
        raise


async def _execute(kube: Kube, plan: StatusPlan, reporting_component: str) -> ApplyResult:
    ref = plan.deployment
    current = await _current(kube, plan)
    head: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "LLMDeployment",
        "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
    }
    deleting = bool(current["metadata"].get("deletionTimestamp"))
    written: list[str] = []
    if not deleting or plan.finalizer == "remove":
        await _write(kube, plan, {**head, "status": plan.status.wire()}, subresource="status")
        written.append(f"LLMDeployment/{ref.name}/status")
    has = FINALIZER in (current["metadata"].get("finalizers") or [])
    want = plan.finalizer == "ensure" and not deleting
    if plan.finalizer == "remove" and has:
        after = await _write(kube, plan, {**head, "metadata": {**head["metadata"], "finalizers": []}})
        if FINALIZER in (after.get("metadata", {}).get("finalizers") or []):
            await _release_foreign(kube, plan, after)
        written.append(f"LLMDeployment/{ref.name}/finalizer-released")
    elif want and not has:
        await _write(kube, plan, {**head, "metadata": {**head["metadata"], "finalizers": [FINALIZER]}})
        written.append(f"LLMDeployment/{ref.name}/finalizer")
    for index, event in enumerate(plan.events):
        if await record_event(kube, plan, index, event, current, reporting_component):
            written.append(f"Event/{event_name(plan, index)}")
    return ApplyResult("Applied", objects=written, message=f"status {plan.status.ready or ''}".strip())


async def _release_foreign(kube: Kube, plan: StatusPlan, obj: dict[str, Any]) -> None:
    """Our finalizer set by another field manager (an older applier, or by hand) is not released by applying
    without it: remove it with a merge patch guarded by the resourceVersion, keeping every other finalizer."""
    ref = plan.deployment
    meta = obj["metadata"]
    rest = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    patch = {"metadata": {"uid": ref.uid, "resourceVersion": meta["resourceVersion"], "finalizers": rest or None}}
    try:
        await kube.merge_patch(_LLMD, ref.name, patch, namespace=ref.namespace, field_manager=FIELD_MANAGER)
    except NotFound:
        return  # released and already gone
    except KubeError as exc:
        if exc.status == 409:  # changed meanwhile: retry the plan, which reads the object again
            raise TransientKubeError(str(exc), status=409, reason=exc.reason) from exc
        raise


async def execute_model_status(kube: Kube, plan: ModelStatusPlan, *, reporting_component: str) -> ApplyResult:
    ref = plan.deployment
    try:
        current = await kube.get(_LLMM, plan.model, ref.namespace)
    except NotFound:
        return ApplyResult("Stale", message="the LLMModel no longer exists")
    if current["metadata"].get("uid") != ref.uid:
        return ApplyResult("Stale", message="the LLMModel was recreated; this plan was for the old one")
    body = {
        "apiVersion": API_VERSION,
        "kind": "LLMModel",
        "metadata": {"name": plan.model, "namespace": ref.namespace, "uid": ref.uid},
        "status": plan.status.wire(),
    }
    try:
        await kube.apply(_LLMM, body, field_manager=FIELD_MANAGER, subresource="status")
    except KubeError as exc:
        if exc.status in (404, 409):  # gone or replaced meanwhile (the uid precondition)
            return ApplyResult("Stale", message=f"the LLMModel changed while its status was written: {exc}")
        raise
    written = [f"LLMModel/{plan.model}/status"]
    for index, event in enumerate(plan.events):
        if await record_event(kube, plan, index, event, current, reporting_component):
            written.append(f"Event/{event_name(plan, index)}")
    return ApplyResult("Applied", objects=written, message="model status")


def _involved(plan: StatusPlan | ScalePlan | ModelStatusPlan) -> tuple[str, str]:
    """The kind and name of the object a plan's Events are about."""
    if isinstance(plan, ModelStatusPlan):
        return "LLMModel", plan.model
    return "LLMDeployment", plan.deployment.name


def event_name(plan: StatusPlan | ScalePlan | ModelStatusPlan, index: int) -> str:
    """The Event's name: the same for every delivery of one plan, different for every plan and event."""
    suffix = hashlib.blake2b(f"{plan.plan_id}/{index}".encode(), digest_size=6).hexdigest()
    return f"{_involved(plan)[1][:200]}.{suffix}"


async def record_event(
    kube: Kube,
    plan: StatusPlan | ScalePlan | ModelStatusPlan,
    index: int,
    event: KubeEvent,
    obj: dict[str, Any],
    component: str,
) -> bool:
    """Create the Event; False if an earlier delivery of this plan already did."""
    ref = plan.deployment
    kind, name = _involved(plan)
    now = plan.issued_at.isoformat().replace("+00:00", "Z")
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(plan, index), "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": name,
            "namespace": ref.namespace,
            "uid": ref.uid,
            "resourceVersion": obj["metadata"].get("resourceVersion", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
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
        if exc.status == 409:  # recorded by an earlier delivery of this plan
            return False
        raise
    return True
