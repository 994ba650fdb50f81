"""Execute a workload plan in this cluster: server-side apply what it renders, prune what it no longer holds.

Guarantees:
- One field manager, forced ownership: a hand edit to a field we manage is reverted by the next apply.
- A plan is applied at most once: the Deployment records the (epoch, sequence, plan id) it came from and the
  LLMDeployment incarnation (uid); a plan for that incarnation whose (epoch, sequence) is not newer than the
  record is skipped (`Duplicate` for the same plan id, `Stale` for an older plan). So is a plan from an epoch
  older than the newest this applier has seen, and one older than a plan this process already executed for the
  same deployment (which catches an old plan arriving after a removal deleted the record).
- Objects go only into the plan's namespace, which is created (labelled managed-by) when this cluster lacks it;
  an existing namespace is never modified.
- An object of the same name that belongs to someone else (another LLMDeployment, or not ours at all) is never
  overwritten: the plan fails with a message naming it.
- A weights claim keeps the access modes, class and size it was created with (they are immutable, or can only
  grow); only its labels follow the plan.
- Pruning only touches objects carrying this deployment's identity labels, in its own namespace.
- A removal plan deletes everything of the deployment here; removing what is already gone succeeds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from applier.render import ANNOTATION_UID, MANAGED_KINDS, identity_labels, render, selector_string
from kubeapi import RESOURCES, Kube, KubeError, NotFound
from store.events import ANNOTATION_EPOCH, ANNOTATION_PLAN, ANNOTATION_SEQUENCE, LABEL_MANAGED_BY, MANAGED_BY
from store.plans import WorkloadPlan
from store.quantity import bytes_of

logger = logging.getLogger(__name__)

FIELD_MANAGER = "llm-operator"


@dataclass
class ApplyResult:
    outcome: str  # Applied, Deleted, Duplicate, Stale, Failed
    objects: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class EpochGuard:
    """The newest planner epoch this applier has seen (plans from older epochs are refused), and the newest
    (epoch, sequence) it executed per deployment incarnation."""

    newest: int = 0
    executed: dict[str, tuple[int, int]] = field(default_factory=dict)

    def admit(self, epoch: int) -> bool:
        if epoch < self.newest:
            return False
        self.newest = epoch
        return True

    def executed_for(self, plan: WorkloadPlan) -> tuple[int, int] | None:
        return self.executed.get(_incarnation(plan))

    def record(self, plan: WorkloadPlan) -> None:
        key = _incarnation(plan)
        self.executed[key] = max(self.executed.get(key, (0, 0)), (plan.epoch, plan.sequence))


def _incarnation(plan: WorkloadPlan) -> str:
    return f"{plan.deployment.key}|{plan.deployment.uid}"


@dataclass(frozen=True)
class _Record:
    epoch: int
    sequence: int
    plan_id: str
    uid: str | None


async def _recorded(kube: Kube, plan: WorkloadPlan) -> _Record | None:
    """The plan recorded on the existing Deployment, if any (and if it is ours)."""
    try:
        existing = await kube.get(RESOURCES["Deployment"], plan.deployment.name, plan.deployment.namespace)
    except NotFound:
        return None
    if _owner_conflict(existing, plan) is not None:
        return None
    annotations = existing.get("metadata", {}).get("annotations", {}) or {}
    try:
        return _Record(
            int(annotations.get(ANNOTATION_EPOCH, 0)),
            int(annotations.get(ANNOTATION_SEQUENCE, 0)),
            annotations.get(ANNOTATION_PLAN, ""),
            annotations.get(ANNOTATION_UID),
        )
    except ValueError:
        return None


async def ensure_namespace(kube: Kube, namespace: str) -> None:
    """Create the namespace if this cluster lacks it (an existing one is never modified, so the applier needs
    only get and create on namespaces)."""
    try:
        await kube.get(RESOURCES["Namespace"], namespace)
        return
    except NotFound:
        pass
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
    }
    try:
        await kube.create(RESOURCES["Namespace"], body)
    except KubeError as exc:
        if exc.status != 409:  # 409: created meanwhile
            raise


def _skip_reason(plan: WorkloadPlan, record: _Record | None, guard: EpochGuard) -> ApplyResult | None:
    if record is not None and record.plan_id == plan.plan_id:
        return ApplyResult("Duplicate", message="this plan was already applied")
    wanted = (plan.epoch, plan.sequence)
    if record is not None and record.uid in (None, plan.deployment.uid) and (record.epoch, record.sequence) >= wanted:
        return ApplyResult(
            "Stale",
            message=f"a newer plan (epoch {record.epoch}, sequence {record.sequence}) is already applied",
        )
    executed = guard.executed_for(plan)
    if executed is not None and executed >= wanted:
        return ApplyResult(
            "Stale", message=f"a newer plan (epoch {executed[0]}, sequence {executed[1]}) was already executed"
        )
    return None


async def execute_workload(kube: Kube, plan: WorkloadPlan, guard: EpochGuard) -> ApplyResult:
    if not guard.admit(plan.epoch):
        return ApplyResult("Stale", message=f"plan from epoch {plan.epoch} < newest epoch {guard.newest}")
    skip = _skip_reason(plan, await _recorded(kube, plan), guard)
    if skip is not None:
        return skip

    manifests = render(plan)
    wanted = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    if manifests:
        await ensure_namespace(kube, plan.deployment.namespace)
    # Look first, write after: a plan that would overwrite someone else's object writes nothing.
    bodies: list[tuple[dict[str, Any], bool]] = []
    for manifest in manifests:
        meta = manifest["metadata"]
        try:
            existing = await kube.get(RESOURCES[manifest["kind"]], meta["name"], meta["namespace"])
        except NotFound:
            bodies.append((manifest, False))
            continue
        problem = _owner_conflict(existing, plan)
        if problem is not None:
            where = f"{manifest['kind']}/{meta['namespace']}/{meta['name']}"
            return ApplyResult("Failed", message=f"not applied: {where} {problem}")
        bodies.append(
            (_keep_claim(manifest, existing) if manifest["kind"] == "PersistentVolumeClaim" else manifest, True)
        )
    applied: list[str] = []
    for body, existed in bodies:
        await _apply(kube, body, existed=existed)
        applied.append(f"{body['kind']}/{body['metadata']['name']}")
    pruned = await prune(kube, plan, wanted)
    guard.record(plan)
    if not manifests:
        return ApplyResult("Deleted", objects=pruned, message=f"removed {len(pruned)} object(s)")
    message = f"applied {len(applied)} object(s)" + (f", pruned {', '.join(pruned)}" if pruned else "")
    return ApplyResult("Applied", objects=applied, message=message)


async def _apply(kube: Kube, body: dict[str, Any], *, existed: bool) -> None:
    """Server-side apply with forced ownership. Forcing takes back every field we set, but list entries someone
    added by hand stay (they are theirs), and some then clash with ours: a Service port or container port
    renumbered by hand keeps its name "http", and the merged object is invalid (422). Then the lists are made
    exactly ours with a merge patch (which replaces lists whole) and the apply is repeated."""
    resource = RESOURCES[body["kind"]]
    try:
        await kube.apply(resource, body, field_manager=FIELD_MANAGER)
    except KubeError as exc:
        if exc.status != 422 or not existed or "spec" not in body:
            raise
        meta = body["metadata"]
        logger.info("%s %s/%s: %s; replacing hand-edited lists", body["kind"], meta["namespace"], meta["name"], exc)
        await kube.merge_patch(
            resource, meta["name"], {"spec": body["spec"]}, namespace=meta["namespace"], field_manager=FIELD_MANAGER
        )
        await kube.apply(resource, body, field_manager=FIELD_MANAGER)


def _owner_conflict(existing: dict[str, Any], plan: WorkloadPlan) -> str | None:
    """Why `existing` is not ours to write, or None when it is this deployment's object."""
    object_labels = existing.get("metadata", {}).get("labels") or {}
    ours = identity_labels(plan)
    other = {k: object_labels[k] for k in ours if k in object_labels and object_labels[k] != ours[k]}
    if other:
        owner = ", ".join(f"{k}={v}" for k, v in sorted(other.items()))
        return f"belongs to another LLMDeployment ({owner})"
    if all(k in object_labels for k in ours):
        return None
    managers = {m.get("manager") for m in existing.get("metadata", {}).get("managedFields") or []}
    if FIELD_MANAGER in managers:
        return None  # ours, with identity labels removed by hand: the apply puts them back
    return "exists and is not managed by llm-operator"


def _keep_claim(manifest: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    """The claim as it must be applied over an existing one: access modes and class as they are (immutable),
    the size never smaller than now (claims only grow)."""
    have = existing.get("spec", {})
    spec = dict(manifest["spec"])
    if have.get("accessModes"):
        spec["accessModes"] = list(have["accessModes"])
    if "storageClassName" in spec:
        if have.get("storageClassName"):
            spec["storageClassName"] = have["storageClassName"]
        else:
            del spec["storageClassName"]
    current = have.get("resources", {}).get("requests", {}).get("storage")
    wanted = spec["resources"]["requests"]["storage"]
    if current is not None and bytes_of(current) > bytes_of(wanted):
        spec["resources"] = {"requests": {"storage": current}}
    return {**manifest, "spec": spec}


async def prune(kube: Kube, plan: WorkloadPlan, wanted: set[tuple[str, str]]) -> list[str]:
    """Delete this deployment's objects that the plan no longer holds (only ours: selected by identity labels)."""
    removed: list[str] = []
    namespace = plan.deployment.namespace
    for kind in MANAGED_KINDS:
        resource = RESOURCES[kind]
        try:
            items, _ = await kube.list(resource, namespace=namespace, label_selector=selector_string(plan))
        except NotFound:
            continue  # the kind is not served here: nothing to prune
        for item in items:
            name = item["metadata"]["name"]
            if (kind, name) in wanted:
                continue
            if await kube.delete(resource, name, namespace=namespace):
                removed.append(f"{kind}/{name}")
    return removed
