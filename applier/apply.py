"""Execute a workload plan in this cluster: server-side apply what it renders, prune what it no longer holds.

Guarantees:
- One field manager, forced ownership: a hand edit to a field we manage is reverted by the next apply.
- A plan is applied at most once: the Deployment records the (epoch, sequence, plan id) it came from; a plan that
  is not newer than that record is skipped (`Duplicate` for the same plan id, `Stale` for an older plan), and
  so is a plan from an epoch older than the newest this applier has seen.
- Pruning only touches objects carrying this deployment's identity labels, in its own namespace.
- A removal plan deletes everything of the deployment here; removing what is already gone succeeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from applier.render import MANAGED_KINDS, render, selector_string
from kubeapi import RESOURCES, Kube, NotFound
from store.events import ANNOTATION_EPOCH, ANNOTATION_PLAN, ANNOTATION_SEQUENCE, LABEL_MANAGED_BY, MANAGED_BY
from store.plans import WorkloadPlan

logger = logging.getLogger(__name__)

FIELD_MANAGER = "llm-operator"


@dataclass
class ApplyResult:
    outcome: str  # Applied, Deleted, Duplicate, Stale
    objects: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class EpochGuard:
    """The newest planner epoch this applier has seen; plans from older epochs are refused."""

    newest: int = 0

    def admit(self, epoch: int) -> bool:
        if epoch < self.newest:
            return False
        self.newest = epoch
        return True


async def _recorded(kube: Kube, plan: WorkloadPlan) -> tuple[int, int, str] | None:
    """(epoch, sequence, plan id) recorded on the existing Deployment, if any."""
    try:
        existing = await kube.get(RESOURCES["Deployment"], plan.deployment.name, plan.deployment.namespace)
    except NotFound:
        return None
    annotations = existing.get("metadata", {}).get("annotations", {}) or {}
    try:
        return (
            int(annotations.get(ANNOTATION_EPOCH, 0)),
            int(annotations.get(ANNOTATION_SEQUENCE, 0)),
            annotations.get(ANNOTATION_PLAN, ""),
        )
    except ValueError:
        return None


async def ensure_namespace(kube: Kube, namespace: str) -> None:
    """Create the namespace if this cluster lacks it (an existing one is never modified)."""
    try:
        await kube.get(RESOURCES["Namespace"], namespace)
    except NotFound:
        await kube.apply(
            RESOURCES["Namespace"],
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
            },
            field_manager=FIELD_MANAGER,
        )


async def execute_workload(kube: Kube, plan: WorkloadPlan, guard: EpochGuard) -> ApplyResult:
    if not guard.admit(plan.epoch):
        return ApplyResult("Stale", message=f"plan from epoch {plan.epoch} < newest epoch {guard.newest}")
    recorded = await _recorded(kube, plan)
    if recorded is not None:
        _epoch, sequence, recorded_id = recorded
        if recorded_id == plan.plan_id:
            return ApplyResult("Duplicate", message="this plan was already applied")
        # Sequences only grow per deployment, across planner epochs: a recorded one at least as high is newer.
        if sequence >= plan.sequence:
            return ApplyResult("Stale", message=f"a newer plan (sequence {sequence}) is already applied")

    manifests = render(plan)
    wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    applied: list[str] = []
    if manifests:
        await ensure_namespace(kube, plan.deployment.namespace)
    for manifest in manifests:
        await kube.apply(RESOURCES[manifest["kind"]], manifest, field_manager=FIELD_MANAGER)
        applied.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
    pruned = await prune(kube, plan, wanted)
    if not manifests:
        return ApplyResult("Deleted", objects=pruned, message=f"removed {len(pruned)} object(s)")
    message = f"applied {len(applied)} object(s)" + (f", pruned {', '.join(pruned)}" if pruned else "")
    return ApplyResult("Applied", objects=applied, message=message)


async def prune(kube: Kube, plan: WorkloadPlan, wanted: set[tuple[str, str]]) -> list[str]:
    """Delete this deployment's objects that the plan no longer holds (only ours: selected by identity labels)."""
    removed: list[str] = []
    namespace = plan.deployment.namespace
    for kind in MANAGED_KINDS:
        resource = RESOURCES[kind]
        try:
            items, _ = await kube.list(resource, namespace=namespace, label_selector=selector_string(plan))
        except NotFound:
            continue  # the namespace or the kind does not exist here: nothing to prune
        for item in items:
            name = item["metadata"]["name"]
            if (kind, name) in wanted:
                continue
            if await kube.delete(resource, name, namespace=namespace):
                removed.append(f"{kind}/{name}")
    return removed
