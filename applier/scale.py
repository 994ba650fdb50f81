"""Execute a scale plan on the origin LLMDeployment, as a HorizontalPodAutoscaler would: spec.replicas through
the /scale subresource, the ScalingActive condition through /status, and a Kubernetes Event.

Guarantees:
- The plan is for one incarnation of the object: if it is gone or was recreated (another uid), nothing is
  written (`Stale`).
- Replicas are written with a merge patch on /scale only when they differ, under the autoscaler's own field
  manager (`kubectl get llmd -o yaml --show-managed-fields` says who scaled); the apiserver's admission rules
  (minReplicas..maxReplicas) still apply, and a refusal is reported as `Failed`.
- The condition is applied under that same field manager: the conditions list is keyed by type, so the
  planner's status writes (another manager) neither remove it nor are removed by it.
"""

from __future__ import annotations

from api.models import API_VERSION
from api.plans import ScalePlan
from applier.apply import ApplyResult
from applier.status import record_event
from kubeapi import RESOURCES, Kube, KubeError, NotFound

AUTOSCALER_FIELD_MANAGER = "llm-operator-autoscaler"
_LLMD = RESOURCES["LLMDeployment"]


async def execute_scale(kube: Kube, plan: ScalePlan, *, reporting_component: str) -> ApplyResult:
    ref = plan.deployment
    try:
        current = await kube.get(_LLMD, ref.name, ref.namespace)
    except NotFound:
        return ApplyResult("Stale", message="the LLMDeployment no longer exists")
    if current["metadata"].get("uid") != ref.uid:
        return ApplyResult("Stale", message="the LLMDeployment was recreated; this plan was for the old one")
    if current["metadata"].get("deletionTimestamp"):
        return ApplyResult("Stale", message="the LLMDeployment is being deleted")
    written: list[str] = []
    before = current.get("spec", {}).get("replicas")
    try:
        if plan.replicas is not None and before != plan.replicas:
            await kube.merge_patch(
                _LLMD,
                ref.name,
                {"spec": {"replicas": plan.replicas}},
                namespace=ref.namespace,
                field_manager=AUTOSCALER_FIELD_MANAGER,
                subresource="scale",
            )
            written.append(f"LLMDeployment/{ref.name}/scale")
        if plan.condition is not None:
            body = {
                "apiVersion": API_VERSION,
                "kind": "LLMDeployment",
                "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
                "status": {"conditions": [plan.condition.model_dump(mode="json", by_alias=True)]},
            }
            await kube.apply(_LLMD, body, field_manager=AUTOSCALER_FIELD_MANAGER, subresource="status")
            written.append(f"LLMDeployment/{ref.name}/status")
    except NotFound:
        return ApplyResult("Stale", message="the LLMDeployment no longer exists")
    except KubeError as exc:
        if exc.status == 409:
            return ApplyResult("Stale", message="the LLMDeployment was recreated while scaling")
        raise
    for index, event in enumerate(plan.events):
        if await record_event(kube, plan, index, event, current, reporting_component):
            written.append(f"Event/{index}")
    message = f"replicas {before} → {plan.replicas}" if plan.replicas is not None else "condition only"
    return ApplyResult("Applied", objects=written, message=message)
