"""A hostile-input campaign through a real member cluster's apiserver, with the whole operator running (issue 15).

Hypothesis generates hostile objects of several classes: LLMModels and LLMDeployments that the CRD schema may
accept yet carry control characters (NUL among them), quantities at the edges of the Kubernetes grammar, huge
numbers, annotations near the apiserver's size limit; unmanaged Pods with hostile resource requests; Nodes whose
GPU feature discovery labels are garbage. They are created through the kube client in one member cluster
("cpu"), interleaved with healthy LLMDeployments, while the operator (planner and one agent per cluster, the
`operator` fixture) runs; the planner is stopped and started again half way through.

What it holds:
- what the apiserver refuses is refused at the door (counted, with its reason);
- every object the apiserver accepted is accounted for: used (its observation recorded), dead-lettered (the
  message's raw bytes name its uid) or refused by the watcher (an `ObservationRefused` event); a refused LLMModel
  says so in its status (`Accepted` False) and a refused LLMDeployment in its status (`Ready` False, InvalidSpec);
- no operator component exits (the fixture fails the test on any crash), and the planner goes on after its
  restart;
- every healthy deployment is placed, within seconds.
Figures are printed (docs/reliability.md quotes them). `LLMOP_CAMPAIGN_SIZE` sets the number of hostile objects
(default 200, about two minutes).

Shared-fleet safety: Pods are never bound (a node selector nothing matches, so no session's capacity changes) and
the Nodes created are not kwok's (no Ready condition), unschedulable, tainted, and have no allocatable: no planner
may place on them. All are deleted at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kubeapi import RESOURCES, Kube, KubeError
from llm_operator.runtime import Member, connect_kube
from tests.fixtures.operator import RunningOperator, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.fleet, pytest.mark.services, pytest.mark.slow]

SIZE = int(os.environ.get("LLMOP_CAMPAIGN_SIZE", "200"))
HEALTHY = 12
QUIET = 3
PLACED_WITHIN = 30.0
"""Seconds a healthy deployment may take from its creation to its placement amid the noise (asserted; the
figures printed are the real ones)."""

CONTROL = "".join(chr(c) for c in range(1, 32) if c != 10) + "\x7f\u2028\u202e"
QUANTITIES = [
    "1Ei", "8E", "1E", "999Pi", "9223372036854775807", "9223372036854775808", "1e18", "1e308", "1.5e3m", "0.000001",
    "12345678901234567890Gi", "1e-3", "0", "-1", "+1Ki", ".5", "5.", "1_000", "0x10", "NaN", "", " 1", "1 ",
]  # fmt: skip
GPU_MEMORY = ["", "0", "abc", "1e400", "99999999999999999999", "0x50", "NaN", "Infinity", "80GB", "1.5", "-1", "a" * 63]

Spec = tuple[str, str, dict[str, Any]]
"""(class, kind, object without namespace and name)."""


def _model_body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "llm.example.com/v1alpha1", "kind": "LLMModel", "metadata": {}, "spec": spec}


def _deployment_body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "llm.example.com/v1alpha1", "kind": "LLMDeployment", "metadata": {}, "spec": spec}


# The CRD schema refuses control characters in every spec string (they are refused at the door); the apiserver's
# own metadata (annotations) takes any text, so most hostile text goes there.
_TEXT_FIELDS = ["modelName", "image", "args", "env", "healthPath", "metricsPath", *["annotation"] * 6]


@st.composite
def _model_text(draw: st.DrawFn, nul: bool) -> Spec:
    spec: dict[str, Any] = {"modelName": "m", "image": "r/x:v1", "resources": {"cpu": "100m", "memory": "128Mi"}}
    body = _model_body(spec)
    bad = draw(st.text(alphabet=CONTROL, min_size=1, max_size=6))
    if nul:
        at = draw(st.integers(0, len(bad)))
        bad = bad[:at] + "\0" + bad[at:]
    where = draw(st.sampled_from(_TEXT_FIELDS))
    match where:
        case "args":
            spec["args"] = ["--x=" + bad]
        case "env":
            spec["env"] = [{"name": "E", "value": bad}]
        case "healthPath":
            spec["startup"] = {"healthPath": "/h" + bad}
        case "metricsPath":
            spec["serving"] = {"metricsPath": "/m" + bad}
        case "annotation":
            body["metadata"]["annotations"] = {"example.com/note": "n" + bad}
        case _:
            spec[where] = spec[where] + bad
    return ("model-nul" if nul else "model-control", "LLMModel", body)


@st.composite
def _model_quantity(draw: st.DrawFn) -> Spec:
    resources: dict[str, Any] = {"cpu": "100m", "memory": "128Mi"}
    field = draw(st.sampled_from(["cpu", "memory", "sharedMemory", "gpu.minMemory", "gpu.count"]))
    value: Any = draw(st.sampled_from(QUANTITIES) | st.integers(min_value=2**31, max_value=2**63 - 1))
    if field == "gpu.count":
        resources["gpu"] = {"count": draw(st.integers(min_value=17, max_value=2**63 - 1) | st.integers(-5, 0))}
    elif field == "gpu.minMemory":
        resources["gpu"] = {"count": 1, "minMemory": value}
    else:
        resources[field] = value
    return ("model-quantity", "LLMModel", _model_body({"modelName": "m", "image": "r/x:v1", "resources": resources}))


@st.composite
def _deployment_text(draw: st.DrawFn) -> Spec:
    bad = draw(st.text(alphabet=CONTROL + "\0", min_size=1, max_size=6))
    spec: dict[str, Any] = {"modelRef": "tiny", "replicas": 0}
    where = draw(st.sampled_from(["modelRef", "clusters", "matchLabels", *["annotation"] * 3]))
    body = _deployment_body(spec)
    match where:
        case "modelRef":
            spec["modelRef"] = "tiny" + bad
        case "clusters":
            spec["placement"] = {"clusters": ["c" + bad]}
        case "matchLabels":
            spec["placement"] = {"clusterSelector": {"matchLabels": {"gpu": "x" + bad}}}
        case _:
            body["metadata"]["annotations"] = {"example.com/note": bad}
    return ("deployment-text", "LLMDeployment", body)


@st.composite
def _deployment_numbers(draw: st.DrawFn) -> Spec:
    spec: dict[str, Any] = {"modelRef": "tiny", "replicas": 0}
    field = draw(st.sampled_from(["replicas", "port", "runAsUser", "maxClusters"]))
    value = draw(
        st.sampled_from([-1, 1001, 2**31, 2**63 - 1, 65536, 0]) | st.integers(min_value=2**31, max_value=2**62)
    )
    match field:
        case "runAsUser":
            spec["security"] = {"runAsUser": value}
        case "maxClusters":
            spec["placement"] = {"maxClusters": value}
        case _:
            spec[field] = value
    return ("deployment-numbers", "LLMDeployment", _deployment_body(spec))


@st.composite
def _annotations(draw: st.DrawFn) -> Spec:
    # The apiserver's limit is 256 KiB for all annotations together: some of these pass, some are refused.
    size = draw(st.integers(min_value=200_000, max_value=270_000))
    value = "v" * size
    if draw(st.booleans()):
        return ("annotations-large", "LLMModel", {**_model_body({"modelName": "m", "image": "r/x:v1"}),
                "metadata": {"annotations": {"example.com/big": value}}})  # fmt: skip
    body = _deployment_body({"modelRef": "tiny", "replicas": 0})
    body["metadata"]["annotations"] = {"example.com/big": value}
    return ("annotations-large", "LLMDeployment", body)


@st.composite
def _pod(draw: st.DrawFn) -> Spec:
    resource = draw(st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage"]))
    value = draw(st.sampled_from(QUANTITIES) | st.integers(min_value=2**31, max_value=2**63 - 1).map(str))
    resources: dict[str, Any] = {"requests": {resource: value}}
    if resource == "nvidia.com/gpu":
        resources["limits"] = {resource: value}  # an extended resource's request must equal its limit
    meta: dict[str, Any] = {}
    if draw(st.booleans()):
        meta["annotations"] = {"example.com/note": draw(st.text(alphabet=CONTROL + "\0", min_size=1, max_size=6))}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            # Never scheduled: a selector no node of the shared fleet has.
            "nodeSelector": {"llm-operator.example.com/campaign": "nowhere"},
            "containers": [{"name": "c", "image": "r/x:v1", "resources": resources}],
        },
    }
    return ("pod-requests", "Pod", body)


@st.composite
def _node(draw: st.DrawFn) -> Spec:
    labels = {"nvidia.com/gpu.memory": draw(st.sampled_from(GPU_MEMORY))}
    if draw(st.booleans()):
        labels["nvidia.com/gpu.count"] = draw(st.sampled_from(GPU_MEMORY))
    if draw(st.booleans()):
        labels["nvidia.com/gpu.product"] = draw(st.sampled_from(["", "A100", "x" * 63, "NVIDIA-A100-SXM4-80GB"]))
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"labels": labels},
        # Not kwok's (no kwok.x-k8s.io/node annotation): never Ready, and fenced off twice more.
        "spec": {
            "unschedulable": True,
            "taints": [{"key": "llm-operator.example.com/campaign", "effect": "NoSchedule"}],
        },
    }
    return ("node-labels", "Node", body)


def generate(count: int) -> list[Spec]:
    """`count` hostile objects as Hypothesis generates them (derandomized: the same run every time). Nodes are
    cluster-scoped objects in a shared fleet: at most 20."""
    out: list[Spec] = []
    nodes = 0

    @settings(max_examples=count * 3, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        st.one_of(
            _model_text(nul=True),
            _model_text(nul=False),
            _model_quantity(),
            _deployment_text(),
            _deployment_numbers(),
            _annotations(),
            _pod(),
            _node(),
        )
    )
    def collect(item: Spec) -> None:
        nonlocal nodes
        if len(out) >= count or (item[1] == "Node" and nodes >= 20):
            return
        nodes += item[1] == "Node"
        out.append(item)

    collect()
    return out


def _tiny_model() -> dict[str, Any]:
    body = _model_body({"modelName": "tiny", "image": "registry.example/tiny:v1",
                        "resources": {"cpu": "100m", "memory": "128Mi"}})  # fmt: skip
    body["metadata"]["name"] = "tiny"
    return body


@pytest.fixture
async def member(operator: RunningOperator) -> AsyncIterator[Kube]:
    cluster = operator.kubectl.fleet.clusters["cpu"]
    kube = await connect_kube(
        Member(name=cluster.name, context=cluster.context), kubeconfig=operator.kubectl.fleet.kubeconfig
    )
    try:
        yield kube
    finally:
        await kube.close()


async def test_hostile_campaign_through_a_member_apiserver(operator: RunningOperator, member: Kube) -> None:
    ns = operator.namespace
    cluster = operator.cluster("cpu")
    hostile = generate(SIZE)
    engine = create_async_engine(operator.hub.database_url)
    accepted: dict[str, tuple[str, str, str]] = {}  # uid -> (class, kind, name)
    door: Counter[str] = Counter()  # class -> refused by the apiserver
    door_reasons: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    created_at: dict[str, datetime] = {}
    nodes: list[str] = []
    limiter = anyio.CapacityLimiter(6)

    async def create(index: int, item: Spec) -> None:
        kind_class, kind, body = item
        name = f"h{index:05d}-{kind.lower()}"
        meta = dict(body["metadata"])
        if kind == "Node":
            name = f"campaign-{ns}-{index:05d}"
            nodes.append(name)
        else:
            meta["namespace"] = ns
        body = {**body, "metadata": {**meta, "name": name}}
        tried[kind_class] += 1
        async with limiter:
            try:
                made = await member.create(RESOURCES[kind], body)
            except KubeError as exc:
                if exc.status in (400, 413, 422):
                    door[kind_class] += 1
                    door_reasons[_reason(str(exc))] += 1
                    return
                raise
        accepted[made["metadata"]["uid"]] = (kind_class, kind, name)

    async def healthy(index: int) -> None:
        name = f"healthy-{index:02d}"
        body = _deployment_body({"modelRef": "tiny", "replicas": 1})
        body["metadata"] = {"name": name, "namespace": ns}
        created_at[name] = datetime.now(UTC)
        await member.create(RESOURCES["LLMDeployment"], body)

    started = time.monotonic()
    try:
        await member.create(RESOURCES["LLMModel"], {**_tiny_model(), "metadata": {"name": "tiny", "namespace": ns}})
        # Baseline: healthy deployments with no noise.
        for index in range(QUIET):
            await healthy(HEALTHY + index)
            await eventually(_placed(engine, index + 1), timeout=60, what="a quiet deployment to be placed")
        chunk = -(-len(hostile) // HEALTHY)
        for index in range(HEALTHY):
            if index == HEALTHY // 2:
                # A restart in the middle: stop the planner, start a new one; it goes on from the committed position.
                await operator.stop("planner")
                await operator.start_planner()
            async with anyio.create_task_group() as tg:
                for offset, item in enumerate(hostile[index * chunk : (index + 1) * chunk]):
                    tg.start_soon(create, index * chunk + offset, item)
            await healthy(index)
        await eventually(_placed(engine, HEALTHY + QUIET), timeout=120, what="every healthy deployment placed")
        created = time.monotonic() - started

        outcome: dict[str, Counter[str]] = {c: Counter() for c in tried}

        async def all_accounted() -> bool:
            found = await _outcomes(engine, cluster, set(accepted))
            for counter in outcome.values():
                counter.clear()
            missing = []
            for uid, (kind_class, _, name) in accepted.items():
                if uid in found:
                    outcome[kind_class][found[uid]] += 1
                else:
                    missing.append(name)
            assert not missing, f"{len(missing)} not yet accounted for, e.g. {missing[:5]}"
            return True

        await eventually(all_accounted, timeout=180, interval=2, what="every accepted hostile object accounted for")
        elapsed = time.monotonic() - started

        # The owners are told: a dead-lettered model or deployment carries a condition saying why.
        letters = {uid for uid, v in (await _outcomes(engine, cluster, set(accepted))).items() if v == "dead-lettered"}
        told: Counter[str] = Counter()

        async def owners_told() -> bool:
            told.clear()
            untold = []
            for uid in letters:
                _, kind, name = accepted[uid]
                if kind not in ("LLMModel", "LLMDeployment"):
                    continue
                obj = await member.get(RESOURCES[kind], name, ns)
                conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
                wanted = "Accepted" if kind == "LLMModel" else "Ready"
                found = conditions.get(wanted)
                if found and found["status"] == "False" and found["reason"] == "InvalidSpec":
                    told[kind] += 1
                else:
                    untold.append(name)
            assert not untold, f"{len(untold)} refused objects without a status saying why, e.g. {untold[:5]}"
            return True

        await eventually(owners_told, timeout=120, interval=2, what="refused models and deployments told why")
        # Told once, not in a loop: writing the status makes a new version the watcher reports (and the planner
        # refuses) again; the same status is not issued twice.
        refused_names = {f"LLMModel:{n}" if k == "LLMModel" else n for u, (_, k, n) in accepted.items() if u in letters}
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT name, count(*) FROM plans WHERE kind IN ('Status', 'ModelStatus') "
                    "AND name = ANY(:names) GROUP BY name"
                ),
                {"names": sorted(refused_names)},
            )
            status_plans = {str(n): int(c) for n, c in rows}
        waits, quiet = await _waits(engine, created_at)
    finally:
        for name in nodes:
            await member.delete(RESOURCES["Node"], name)
        await engine.dispose()

    print(
        f"\nfleet campaign: {sum(tried.values())} hostile objects + {HEALTHY + QUIET} healthy deployments through "
        f"{cluster}'s apiserver; {created:.1f} s to create them and place the healthy, {elapsed:.1f} s until every "
        f"object was accounted for; operator exits: {len(operator.failures)}; planner restarts: 1"
    )
    print(f"  {'class':20s} {'tried':>6s} {'door':>6s} {'used':>6s} {'dead-l.':>8s} {'watcher':>8s}")
    for kind_class in sorted(tried):
        got = outcome[kind_class]
        print(
            f"  {kind_class:20s} {tried[kind_class]:6d} {door[kind_class]:6d} {got['used']:6d} "
            f"{got['dead-lettered']:8d} {got['refused-by-watcher']:8d}"
        )
    print("  refused at the door (apiserver), first words of the reason:")
    for reason, count in door_reasons.most_common(10):
        print(f"    {count:5d}  {reason}")
    print(f"  dead-lettered objects whose status says why: {dict(told)}")
    most = max(status_plans.values(), default=0)
    print(f"  status plans per refused model or deployment: at most {most}")
    print(
        f"  healthy placed: {len(waits)} of {HEALTHY} amid the noise, seconds from creation to placement: median "
        f"{statistics.median(waits):.2f}, max {max(waits):.2f} (without noise: median {statistics.median(quiet):.2f}, "
        f"max {max(quiet):.2f})"
    )
    assert not operator.failures
    assert len(waits) == HEALTHY
    assert max(waits) < PLACED_WITHIN
    assert sum(outcome["model-nul"].values()) == outcome["model-nul"]["dead-lettered"]
    assert most <= 1, status_plans


def _reason(message: str) -> str:
    """The apiserver's refusal without the object's name: what kind of refusal it is."""
    detail = message.split(" is invalid: ", 1)[-1].split("Invalid value", 1)[0]
    if "Invalid value" in message:
        detail += "Invalid value: " + message.split("Invalid value", 1)[1].split(": ", 2)[-1]
    return detail.strip()[:110]


def _placed(engine: AsyncEngine, count: int) -> Any:
    async def check() -> bool:
        async with engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT count(DISTINCT name) FROM placements WHERE name LIKE 'healthy-%' AND replicas > 0")
            )
        return int(found or 0) >= count

    return check


async def _outcomes(engine: AsyncEngine, cluster: str, uids: set[str]) -> dict[str, str]:
    """What became of each object (by uid): used, dead-lettered or refused-by-watcher."""
    found: dict[str, str] = {}
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT type, payload->>'uid' FROM events WHERE cluster = :c "
                "AND type IN ('ResourceObserved', 'ObservationRefused')"
            ),
            {"c": cluster},
        )
        for kind, uid in rows:
            if uid in uids:
                found[uid] = "used" if kind == "ResourceObserved" else "refused-by-watcher"
        raws = await conn.execute(text("SELECT raw FROM dead_letters"))
        for (raw,) in raws:
            try:
                uid = json.loads(bytes(raw)).get("uid")
            except (ValueError, AttributeError):
                continue
            if uid in uids:
                found.setdefault(uid, "dead-lettered")
    return found


async def _waits(engine: AsyncEngine, created_at: dict[str, datetime]) -> tuple[list[float], list[float]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT name, min(planned_at) FROM placements WHERE name LIKE 'healthy-%' GROUP BY name")
        )
        placed = {str(name): at for name, at in rows}
    quiet = {f"healthy-{HEALTHY + i:02d}" for i in range(QUIET)}
    noisy = [(placed[n] - created_at[n]).total_seconds() for n in placed if n not in quiet and n in created_at]
    calm = [(placed[n] - created_at[n]).total_seconds() for n in quiet if n in placed]
    return noisy, calm
