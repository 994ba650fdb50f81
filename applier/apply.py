"""Execute a workload plan in this cluster: server-side apply what it renders, prune what it no longer holds.

Guarantees:
- One field manager, forced ownership: a hand edit to a field we manage is reverted by the next apply.
- A plan is applied at most once: the Deployment records the (epoch, sequence, plan id) it came from and the
  LLMDeployment incarnation (uid); a plan for that incarnation whose (epoch, sequence) is not newer than the
  record is skipped (`Duplicate` for the same plan id, `Stale` for an older plan). So is one older than a plan
  this process already executed for the same deployment (which catches an old plan arriving after a removal
  deleted the record). A deposed planner's late plan is thereby refused wherever its successor already planned.
- The cluster's tenant policy (api.policy) is checked first: a plan it refuses (a reserved namespace, an origin
  no rule admits, Secret/PVC references it does not allow) touches nothing and fails with the policy's reason.
- Objects go only into the plan's namespace. When this cluster lacks it, it is created (labelled managed-by and
  Pod Security `restricted`) only if the policy says so; otherwise the plan fails. An existing namespace is
  never modified.
- An object of the same name that belongs to someone else (another LLMDeployment, or not ours at all) is never
  overwritten: the plan fails with a message naming it.
- A weights claim keeps the access modes, class and size it was created with (they are immutable, or can only
  grow); only its labels follow the plan.
- Pruning only touches this deployment's objects in its own namespace: those the last plan recorded on the
  Deployment and the new one no longer holds; with no record to trust, for a deployment new to this process,
  those found at the names its objects have (`render.object_name`, looked up with the rest), and otherwise
  (removals, a record lost by hand) those carrying its identity labels.
- Independent API calls go out together (a deployment new to this process is looked up in one round), and the
  Deployment, which carries the record, is written last.
- A removal plan deletes everything of the deployment here; removing what is already gone succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio

from api.events import ApplyOutcome
from api.labels import (
    ANNOTATION_EPOCH,
    ANNOTATION_OBJECTS,
    ANNOTATION_PLAN,
    ANNOTATION_SEQUENCE,
    ANNOTATION_UID,
)
from api.plans import WorkloadPlan
from api.policy import NAMESPACE_LABELS, TenantPolicy, allows, references_of
from api.quantity import bytes_of
from applier.render import (
    MANAGED_KINDS,
    identity_labels,
    object_name,
    object_ref,
    render,
    selector_string,
)
from kubeapi import RESOURCES, Kube, KubeError, NotFound

logger = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")

FIELD_MANAGER = "llm-operator"
DEFAULT_POLICY = TenantPolicy()


@dataclass
class ApplyResult:
    outcome: ApplyOutcome
    objects: list[str] = field(default_factory=list)
    message: str = ""


@dataclass
class EpochGuard:
    """The newest (epoch, sequence) this applier executed per deployment incarnation.

    Per deployment, not per applier: plans of different deployments run concurrently, so a plan the previous
    planner leader committed (and relayed late) may arrive after the new leader's plans for *other* deployments;
    it is still that deployment's newest plan, and the new leader counts on it being applied."""

    executed: dict[str, tuple[int, int]] = field(default_factory=dict)

    def executed_for(self, plan: WorkloadPlan) -> tuple[int, int] | None:
        return self.executed.get(_incarnation(plan))

    def record(self, plan: WorkloadPlan) -> None:
        key = _incarnation(plan)
        self.executed[key] = max(self.executed.get(key, (0, 0)), (plan.epoch, plan.sequence))


def _incarnation(plan: WorkloadPlan) -> str:
    return f"{plan.deployment.key!s}|{plan.deployment.uid}"


@dataclass(frozen=True)
class _Record:
    epoch: int
    sequence: int
    plan_id: str
    uid: str | None
    objects: frozenset[str] | None
    """`Kind/name` of what that plan applied (None on Deployments written before the record held it)."""


def _record_of(existing: dict[str, Any] | None, plan: WorkloadPlan) -> _Record | None:
    """The plan recorded on the existing Deployment, if there is one and it is ours."""
    if existing is None or _owner_conflict(existing, plan) is not None:
        return None
    annotations = existing.get("metadata", {}).get("annotations", {}) or {}
    objects = annotations.get(ANNOTATION_OBJECTS)
    try:
        return _Record(
            int(annotations.get(ANNOTATION_EPOCH, 0)),
            int(annotations.get(ANNOTATION_SEQUENCE, 0)),
            annotations.get(ANNOTATION_PLAN, ""),
            annotations.get(ANNOTATION_UID),
            frozenset(o for o in objects.split(",") if o) if objects is not None else None,
        )
    except ValueError:
        return None


async def _get_or_none(kube: Kube, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    try:
        return await kube.get(RESOURCES[kind], name, namespace)
    except NotFound:
        return None


async def ensure_namespace(kube: Kube, namespace: str, *, create: bool) -> str | None:
    """Create the namespace if this cluster lacks it and `create` allows it (an existing one is never modified,
    so the applier needs only get, and create where the policy allows it, on namespaces). Returns why the plan
    cannot go on (the namespace is missing and may not be created), or None."""
    if await _get_or_none(kube, "Namespace", namespace, "") is not None:
        return None
    if not create:
        return (
            f"not applied: namespace {namespace} does not exist in this cluster and the tenant policy does not let "
            "the operator create it"
        )
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": dict(NAMESPACE_LABELS)},
    }
    try:
        await kube.create(RESOURCES["Namespace"], body)
    except KubeError as exc:
        if exc.status != 409:  # 409: created meanwhile
            raise
    return None


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


async def _all(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run independent API calls at once (each is one round trip; the apiserver serves them in parallel)."""
    results: list[T | None] = [None] * len(calls)

    async def run(index: int) -> None:
        results[index] = await calls[index]()

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(run, index)
    return results  # type: ignore[return-value]


async def execute_workload(
    kube: Kube, plan: WorkloadPlan, guard: EpochGuard, *, policy: TenantPolicy = DEFAULT_POLICY, exposed: bool = False
) -> ApplyResult:
    """Look, then write: every object the plan would overwrite is checked first (a plan that would overwrite
    someone else's object writes nothing); then everything but the Deployment is applied while what the plan no
    longer holds is deleted, and the Deployment, which carries the record, goes last: a plan interrupted
    anywhere is not recorded as applied, and its redelivery does it all again.

    Round trips: a deployment this process has not applied before (new, or first since a restart) is looked up
    in one round (its Deployment, every object, the namespace), then written in two. A known one reads its
    Deployment first, whose record names the objects that need no lookup.

    `exposed`: the cluster declares the ``exposed`` network (applier.render: the model's Service is a
    LoadBalancer where it serves another origin)."""
    namespace = plan.deployment.namespace
    verdict = allows(
        policy,
        origin_cluster=plan.deployment.origin_cluster,
        namespace=namespace,
        cluster=plan.cluster,
        references=references_of(plan.model),
    )
    if not verdict.allowed:
        return ApplyResult("Failed", message=f"refused by this cluster's tenant policy: {verdict.reason}")
    manifests = render(plan, exposed=exposed)
    others = [m for m in manifests if m["kind"] != "Deployment"]
    first_time = bool(manifests) and guard.executed_for(plan) is None
    found: dict[str, dict[str, Any] | None] = {}
    leftovers: list[str] | None = None
    if first_time:
        # The kinds this plan does not render are looked up too, at the names they would have: with no record to
        # trust, that is what there is to prune (no label-selected lists of every kind in a second round).
        rendered = {m["kind"] for m in manifests}
        absent = [(kind, object_name(plan, kind)) for kind in MANAGED_KINDS if kind not in rendered]
        lookups: list[Callable[[], Awaitable[Any]]] = [
            partial(_get_or_none, kube, "Deployment", plan.deployment.name, namespace),
            *(partial(_get_or_none, kube, m["kind"], m["metadata"]["name"], namespace) for m in others),
            *(partial(_get_or_none, kube, kind, name, namespace) for kind, name in absent),
            partial(ensure_namespace, kube, namespace, create=verdict.create_namespace),
        ]
        current, *rest = await _all(lookups)
        if rest[-1] is not None:
            return ApplyResult("Failed", message=rest[-1])
        found = dict(zip((object_ref(m) for m in others), rest, strict=False))
        absent_found = rest[len(others) : len(others) + len(absent)]
        leftovers = [
            f"{kind}/{name}"
            for (kind, name), obj in zip(absent, absent_found, strict=True)
            if obj and _owner_conflict(obj, plan) is None
        ]
    else:
        current = await _get_or_none(kube, "Deployment", plan.deployment.name, namespace)
    record = _record_of(current, plan)
    skip = _skip_reason(plan, record, guard)
    if skip is not None:
        return skip

    wanted = {object_ref(m) for m in manifests}
    # What the last plan of this incarnation applied is ours: no need to look it up again (claims excepted:
    # they are applied over what exists).
    known = record.objects if record is not None and record.uid == plan.deployment.uid else None
    if not first_time:
        looked_up = [
            m for m in others if known is None or object_ref(m) not in known or m["kind"] == "PersistentVolumeClaim"
        ]
        later: list[Callable[[], Awaitable[Any]]] = [
            partial(_get_or_none, kube, m["kind"], m["metadata"]["name"], namespace) for m in looked_up
        ]
        if manifests and current is None:
            later.append(partial(ensure_namespace, kube, namespace, create=verdict.create_namespace))
        results = await _all(later)
        if len(results) > len(looked_up) and results[-1] is not None:
            return ApplyResult("Failed", message=results[-1])
        found = dict(zip((object_ref(m) for m in looked_up), results, strict=False))
    for manifest in manifests:
        ref = object_ref(manifest)
        existing = current if manifest["kind"] == "Deployment" else found.get(ref)
        problem = _owner_conflict(existing, plan) if existing is not None else None
        if problem is not None:
            return ApplyResult(
                "Failed", message=f"not applied: {manifest['kind']}/{namespace}/{ref.split('/')[1]} {problem}"
            )

    def body(manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        ref = object_ref(manifest)
        existing = current if manifest["kind"] == "Deployment" else found.get(ref)
        if existing is not None and manifest["kind"] == "PersistentVolumeClaim":
            return _keep_claim(manifest, existing), True
        return manifest, existing is not None or (known is not None and ref in known)

    first = [body(m) for m in others]
    last = [body(m) for m in manifests if m["kind"] == "Deployment"]
    # Pruning touches only objects the plan does not hold, so it runs alongside the applies; the Deployment's
    # own removal (when the plan has none) stays last inside _delete.
    if known is not None and manifests:
        cleanup: Callable[[], Awaitable[list[str]]] = partial(_delete, kube, plan, sorted(known - wanted))
    elif leftovers is not None:
        cleanup = partial(_delete, kube, plan, leftovers)
    else:
        cleanup = partial(prune, kube, plan, wanted)
    applies = partial(_all, [partial(_apply, kube, b, existed=existed) for b, existed in first])
    _, pruned = await _both(applies, cleanup)
    for b, existed in last:
        await _apply(kube, b, existed=existed)
    guard.record(plan)
    if not manifests:
        return ApplyResult("Deleted", objects=pruned, message=f"removed {len(pruned)} object(s)")
    applied = [object_ref(b) for b, _ in first + last]
    message = f"applied {len(applied)} object(s)" + (f", pruned {', '.join(pruned)}" if pruned else "")
    return ApplyResult("Applied", objects=applied, message=message)


async def _both(a: Callable[[], Awaitable[T]], b: Callable[[], Awaitable[U]]) -> tuple[T, U]:
    """Run two independent groups of calls at once."""
    first: list[T] = []
    second: list[U] = []

    async def run_a() -> None:
        first.append(await a())

    async def run_b() -> None:
        second.append(await b())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_a)
        tg.start_soon(run_b)
    return first[0], second[0]


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


async def prune(kube: Kube, plan: WorkloadPlan, wanted: set[str]) -> list[str]:
    """Delete this deployment's objects that the plan no longer holds, found by their identity labels (only
    ours) in its namespace, whatever the record says: for removals and when there is no record to trust."""
    namespace = plan.deployment.namespace

    async def of_kind(kind: str) -> list[str]:
        try:
            items, _ = await kube.list(RESOURCES[kind], namespace=namespace, label_selector=selector_string(plan))
        except NotFound:
            return []  # the kind is not served here: nothing to prune
        return [f"{kind}/{item['metadata']['name']}" for item in items]

    found = [ref for refs in await _all([partial(of_kind, kind) for kind in MANAGED_KINDS]) for ref in refs]
    return await _delete(kube, plan, [ref for ref in found if ref not in wanted])


async def _delete(kube: Kube, plan: WorkloadPlan, refs: list[str]) -> list[str]:
    """Delete `Kind/name`s in the plan's namespace, the Deployment (the record) last; those already gone are
    not reported."""
    namespace = plan.deployment.namespace

    async def one(ref: str) -> str | None:
        kind, name = ref.split("/", 1)
        return ref if await kube.delete(RESOURCES[kind], name, namespace=namespace) else None

    records = [ref for ref in refs if ref.startswith("Deployment/")]
    rest = [ref for ref in refs if ref not in records]
    removed = await _all([partial(one, ref) for ref in rest]) + await _all([partial(one, ref) for ref in records])
    return [ref for ref in removed if ref is not None]
