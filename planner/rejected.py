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
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from api.conditions import set_condition
from api.events import PlanIssued, deterministic_id
from api.keys import DeploymentKey
from api.models import LLMDeploymentStatus, LLMModelStatus
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
        await _tell_model(conn, target, reason, epoch=epoch, now=now, subjects=subjects)
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


async def _tell_model(
    conn: Connection, target: dict[str, Any], reason: str, *, epoch: int, now: datetime, subjects: Subjects
) -> None:
    """The model status plan: sequenced in the model's own lane (`api.plans.model_ref`), like a deployment's."""
    ref = model_ref(target["cluster"], target["namespace"], target["name"], target["uid"])
    sequence, last = await queries.last_plan(conn, ref.key)
    previous = LLMModelStatus.model_validate(last) if last else LLMModelStatus()
    message = f"this version of the LLMModel was refused and is not used: {reason}"[:1024]
    conditions = set_condition(
        previous.conditions,
        type="Accepted",
        status="False",
        reason="InvalidSpec",
        message=message,
        observed_generation=target["generation"],
        now=now,
    )
    status = LLMModelStatus(observed_generation=target["generation"], conditions=list(conditions))
    if last == status.wire():
        return  # the model says so already (the message is its re-observation after that status was written)
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
        events=[KubeEvent(type="Warning", reason="Refused", message=message)],
    )
    await _record(conn, plan, epoch=epoch, now=now, subjects=subjects)


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
