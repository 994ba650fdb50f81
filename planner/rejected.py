"""Telling an LLMDeployment's owner that a version of it, or of the LLMModel it uses, was refused (dead-lettered)
and why.

Guarantees:
- Only a refused message that names an LLMDeployment or LLMModel in the cluster it arrived from (a
  `ResourceObserved` whose envelope parses) is reported: a message that lies about its origin tells nobody
  anything. A refused LLMModel is reported on the LLMModel itself (a model status plan: `Accepted` False with
  reason `InvalidSpec`, the refusal as its message, and a Warning event `Refused`) and on every LLMDeployment of
  its namespace that uses it.
- The report is a status plan to the origin cluster, like every status the planner writes: `Ready` False with
  reason `InvalidSpec` and the refusal as its message, plus a Warning event `Refused`; its (epoch, sequence) is
  the deployment's next, recorded with a `PlanIssued` event in the caller's transaction, so it is ordered with
  every other plan for the deployment and survives a restart.
- A refusal the object's status already states is not issued again: the object observed anew after its status
  was written (a new resourceVersion, the same hostile spec) is refused again, and writing the same status once
  more would be a loop of plans, Events and observations.
- The planner keeps what it last accepted for the deployment (its workloads go on running as planned); a later
  valid version is decided as usual and replaces this status.
- A deployment the planner never accepted gets no finalizer from this report (nothing to clean up), so deleting
  it is never blocked by the planner.
- An LLMModel version the planner records gets its verdict too (`report_models`): `Accepted` True (reason
  `Valid`) once a valid version follows a refusal, or False (`InvalidSpec`, the first schema error) when the
  recorded spec is not a model the planner can use. A model that never had a status and is valid gets none
  (no write, and no re-observation, for every model of the fleet).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from api.conditions import set_condition
from api.events import Event, PlanIssued, ResourceObserved, deterministic_id
from api.keys import DeploymentKey
from api.models import LLMDeploymentStatus, LLMModelSpec, LLMModelStatus
from api.plans import DeploymentRef, KubeEvent, ModelStatusPlan, StatusPlan, model_ref, plan_id
from bus.subjects import Subjects
from store import queries, recorder
from store.engine import Connection
from store.projections import fold


def refused_deployment(raw: bytes, subject: str, subjects: Subjects) -> dict[str, Any] | None:
    """The LLMDeployment a refused message is about, if its envelope says so plainly; None otherwise."""
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(found, dict) or found.get("type") != "ResourceObserved":
        return None
    if found.get("kind") not in ("LLMDeployment", "LLMModel"):
        return None
    cluster, namespace, name, uid = (found.get(k) for k in ("cluster", "namespace", "name", "uid"))
    generation = found.get("generation")
    texts = (cluster, namespace, name, uid)
    if not all(isinstance(t, str) and t and "\0" not in t for t in texts) or cluster != subjects.cluster_of(subject):
        return None
    obj = found.get("object")
    deleting = isinstance(obj, dict) and bool(obj.get("deletionTimestamp"))
    return {
        "kind": found["kind"],
        "cluster": cluster,
        "namespace": namespace,
        "name": name,
        "uid": uid,
        "generation": generation if isinstance(generation, int) and generation >= 0 else 0,
        "deleting": deleting,
    }


async def report_refused(
    conn: Connection, raw: bytes, subject: str, reason: str, *, epoch: int, now: datetime, subjects: Subjects
) -> bool:
    """Issue the status plan described in the module docstring; False when there is no deployment to tell."""
    target = refused_deployment(raw, subject, subjects)
    if target is None:
        return False
    if target["kind"] == "LLMModel":
        verdict = ("False", "InvalidSpec", f"this version of the LLMModel was refused and is not used: {reason}")
        await _tell_model(conn, target, verdict, epoch=epoch, now=now, subjects=subjects)
        model = (target["cluster"], target["namespace"], target["name"])
        users = await queries.deployment_keys_using_models(conn, [model])
        found = await queries.deployments(conn, users)
        for key in users:
            if key in found:
                user = found[key]
                await _tell(
                    conn,
                    {**target, "name": key[2], "uid": user.uid, "generation": user.generation, "deleting": False},
                    f"the LLMModel {target['name']} it uses was refused and is not planned: {reason}",
                    epoch=epoch,
                    now=now,
                    subjects=subjects,
                )
        return True
    await _tell(
        conn,
        target,
        f"this version of the LLMDeployment was refused and is not planned: {reason}",
        epoch=epoch,
        now=now,
        subjects=subjects,
    )
    return True


async def report_models(
    conn: Connection, events: Iterable[Event], *, epoch: int, now: datetime, subjects: Subjects
) -> int:
    """The verdict on each LLMModel version recorded in this step (module docstring); the number of plans issued."""
    issued = 0
    for event in events:
        if not isinstance(event, ResourceObserved) or event.kind != "LLMModel" or not event.namespace:
            continue
        try:
            LLMModelSpec.model_validate(event.object.get("spec") or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            problem = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
            verdict = ("False", "InvalidSpec", f"this version of the LLMModel is not usable: {problem}")
        else:
            verdict = ("True", "Valid", "the planner uses this version of the LLMModel")
        target = {
            "cluster": event.cluster,
            "namespace": event.namespace,
            "name": event.name,
            "uid": event.uid,
            "generation": event.generation or 0,
        }
        issued += await _tell_model(
            conn, target, verdict, only_if_stated=verdict[0] == "True", epoch=epoch, now=now, subjects=subjects
        )
    return issued


async def _tell_model(
    conn: Connection,
    target: dict[str, Any],
    verdict: tuple[str, str, str],
    *,
    only_if_stated: bool = False,
    epoch: int,
    now: datetime,
    subjects: Subjects,
) -> int:
    """The model status plan: sequenced in the model's own lane (`api.plans.model_ref`), like a deployment's.
    `only_if_stated`: only where the model already has a status of ours (a valid model is not written to)."""
    ref = model_ref(target["cluster"], target["namespace"], target["name"], target["uid"])
    sequence, last = await queries.last_plan(conn, ref.key)
    if last is None and only_if_stated:
        return 0
    previous = LLMModelStatus.model_validate(last) if last else LLMModelStatus()
    status_, reason, message = verdict
    message = message[:1024]
    conditions = set_condition(
        previous.conditions,
        type="Accepted",
        status=status_,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        observed_generation=target["generation"],
        now=now,
    )
    status = LLMModelStatus(observed_generation=target["generation"], conditions=list(conditions))
    if last == status.wire():
        return 0  # the model says so already (the message is its re-observation after that status was written)
    plan = ModelStatusPlan(
        plan_id=plan_id(ref, ref.origin_cluster, "ModelStatus", epoch, sequence + 1),
        epoch=epoch,
        sequence=sequence + 1,
        cluster=ref.origin_cluster,
        deployment=ref,
        generation=target["generation"],
        issued_at=now,
        model=target["name"],
        status=status,
        events=[
            KubeEvent(type="Warning", reason="Refused", message=message)
            if status_ == "False"
            else KubeEvent(type="Normal", reason="Accepted", message=message)
        ],
    )
    await _record(conn, plan, epoch=epoch, now=now, subjects=subjects)
    return 1


async def _record(
    conn: Connection, plan: StatusPlan | ModelStatusPlan, *, epoch: int, now: datetime, subjects: Subjects
) -> None:
    """Record the plan (a `PlanIssued` event and its projection) and put it in the outbox, in `conn`'s transaction."""
    issued = PlanIssued(event_id=deterministic_id("issued", plan.plan_id), cluster="hub", plan=plan, at=now)
    stored = await recorder.append(conn, [(issued, {"epoch": epoch})])
    await recorder.apply_ops(conn, [op for s in stored for op in fold(s.event)])
    await recorder.outbox_put_many(
        conn, [(plan.plan_id, subjects.plans(plan.cluster), plan.model_dump_json().encode())]
    )


async def _tell(
    conn: Connection, target: dict[str, Any], message: str, *, epoch: int, now: datetime, subjects: Subjects
) -> None:
    key = DeploymentKey(target["cluster"], target["namespace"], target["name"])
    row = (await queries.deployments(conn, [key])).get(key)
    # The last status written, also for a deployment the planner never accepted: a refusal repeated (the object
    # observed again after its status was written) then writes the same status, which changes nothing, and the
    # watcher has nothing new to report — no loop.
    sequence, last = await queries.last_plan(conn, key)
    previous = LLMDeploymentStatus.model_validate(last) if last else LLMDeploymentStatus()
    message = message[:1024]
    conditions = set_condition(
        previous.conditions,
        type="Ready",
        status="False",
        reason="InvalidSpec",
        message=message,
        observed_generation=target["generation"],
        now=now,
    )
    status = previous.model_copy(
        update={"conditions": list(conditions), "ready": "InvalidSpec", "observed_generation": target["generation"]}
    )
    if last == status.wire() and not target["deleting"]:
        return  # it says so already
    ref = DeploymentRef(origin_cluster=key[0], namespace=key[1], name=key[2], uid=target["uid"])
    plan = StatusPlan(
        plan_id=plan_id(ref, ref.origin_cluster, "Status", epoch, sequence + 1),
        epoch=epoch,
        sequence=sequence + 1,
        cluster=ref.origin_cluster,
        deployment=ref,
        generation=target["generation"],
        issued_at=now,
        status=status,
        finalizer="ensure" if row is not None and row.has_finalizer and not target["deleting"] else "remove",
        events=[KubeEvent(type="Warning", reason="Refused", message=message)],
    )
    await _record(conn, plan, epoch=epoch, now=now, subjects=subjects)
