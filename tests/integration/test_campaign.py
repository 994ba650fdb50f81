"""A hostile-input campaign against the real planner, on real NATS JetStream and Postgres (issue 15).

Hypothesis generates hostile messages of several classes; they are published on the bus, interleaved with healthy
deployments, and read by the real planner service, which is restarted half way through. Figures are printed
(docs/reliability.md quotes them): inputs tried by class, what became of them, planner exits (must be 0), healthy
deployments placed and how long each took from its publication. Every message is accounted for: recorded as an
event (its stream sequence in the event's metadata), dead-lettered, or a heartbeat.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import encode_event
from tests import builders
from tests.fixtures.operator import eventually
from tests.fixtures.services import Hub
from tests.integration.test_hostile import MODEL, caught_up, deployment, heartbeat, planner

pytestmark = [pytest.mark.anyio, pytest.mark.services, pytest.mark.slow]

HOSTILE = 1200
HEALTHY = 24
QUIET = 6
CONTROL = "".join(chr(c) for c in range(1, 32) if c not in (10,)) + "\x7f\u2028\u202e"

Message = tuple[str, str, bytes]
"""(class, cluster the subject names, bytes)."""


def _snapshot(kind: str, name: str) -> dict[str, Any]:
    match kind:
        case "Node":
            return builders.gpu_node(name)
        case "Pod":
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": builders.meta(name, "default"),
                "spec": {"nodeName": "cpu-0", "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
                "status": {"phase": "Running"},
            }
        case "LLMModel":
            return builders.llm_model(name, "team", MODEL)
        case _:
            return builders.llm_deployment(name, "team", {"modelRef": "gpt-small", "replicas": 1, "port": 8080})


def _event(kind: str, name: str) -> dict[str, Any]:
    event = json.loads(encode_event(builders.observed("a100", kind, _snapshot(kind, name))))
    event["event_id"] = str(uuid.uuid4())  # every message distinct: none is a duplicate of another
    return dict(event)


_KINDS = st.sampled_from(["Node", "Pod", "LLMModel", "LLMDeployment"])
_NAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _strings(event: dict[str, Any]) -> list[list[Any]]:
    """Paths of the string values inside the event's object (and its name), where hostile text goes."""
    paths: list[list[Any]] = [["name"]]

    def walk(value: Any, path: list[Any]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, [*path, key])
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, [*path, index])
        elif isinstance(value, str):
            paths.append(path)

    walk(event["object"], ["object"])
    return paths


def _set(event: dict[str, Any], path: list[Any], value: Any) -> None:
    target: Any = event
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


@st.composite
def _with_text(draw: st.DrawFn, hostile: str) -> Message:
    event = _event(draw(_KINDS), draw(_NAMES))
    paths = _strings(event)
    path = draw(st.sampled_from(paths))
    current: Any = event
    for step in path:
        current = current[step]
    if hostile == "nul":
        at = draw(st.integers(0, len(current)))
        _set(event, path, current[:at] + "\0" + current[at:])
    else:
        _set(event, path, current + draw(st.text(alphabet=CONTROL, min_size=1, max_size=8)))
    return (hostile, "a100", json.dumps(event).encode())


@st.composite
def _wrong_types(draw: st.DrawFn) -> Message:
    kind = draw(_KINDS)
    event = _event(kind, draw(_NAMES))
    fields = {
        "Node": ["labels", "allocatable", "taints", "ready", "unschedulable"],
        "Pod": ["labels", "requests", "nodeName", "phase", "ready"],
        "LLMModel": ["spec", "labels", "generation"],
        "LLMDeployment": ["spec", "labels", "finalizers", "creationTimestamp", "status"],
    }[kind]
    field = draw(st.sampled_from(fields))
    event["object"][field] = draw(_JSON.filter(lambda v: not isinstance(v, dict)) | st.just({"x": [1, 2]}))
    return ("wrong-types", "a100", json.dumps(event).encode())


_QUANTITIES = st.sampled_from(
    ["1Ei", "8E", "9e18", "1e400", "99999999999", "-5", "0.5", "1.5e3m", "12345678901234567890Gi", "NaN", "", "ab"]
)


@st.composite
def _huge_numbers(draw: st.DrawFn) -> Message:
    kind = draw(st.sampled_from(["Node", "Pod"]))
    event = _event(kind, draw(_NAMES))
    field = "allocatable" if kind == "Node" else "requests"
    resource = draw(st.sampled_from(["nvidia.com/gpu", "cpu", "memory"]))
    value: Any = draw(_QUANTITIES | st.integers(min_value=2**31, max_value=2**80) | st.floats())
    event["object"].setdefault(field, {})[resource] = value
    if draw(st.booleans()):
        event["generation"] = draw(st.integers(min_value=2**63, max_value=2**90))
    return ("huge-numbers", "a100", json.dumps(event).encode())


@st.composite
def _garbage(draw: st.DrawFn) -> Message:
    data = draw(st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()))
    return ("garbage", "a100", data)


@st.composite
def _liar(draw: st.DrawFn) -> Message:
    event = _event(draw(_KINDS), draw(_NAMES))
    if draw(st.booleans()):
        event["cluster"] = draw(st.sampled_from(["mixed", "hub", "other"]))  # not the subject's cluster
    else:
        event = {"type": "ClusterJoined", "event_id": str(uuid.uuid4()), "cluster": "a100", "labels": {}}
        event["at"] = "2026-01-01T00:00:00Z"
    return ("liar", "a100", json.dumps(event).encode())


@st.composite
def _big(draw: st.DrawFn) -> Message:
    event = _event("Node", draw(_NAMES))
    size = draw(st.integers(min_value=100, max_value=800))
    event["object"]["labels"].update({f"big-{i}": "v" * 1000 for i in range(size)})
    return ("big", "a100", json.dumps(event).encode())


HOSTILE_MESSAGES = st.one_of(
    _with_text("nul"), _with_text("control"), _wrong_types(), _huge_numbers(), _garbage(), _liar(), _big()
)


def generate(count: int) -> list[Message]:
    """`count` hostile messages as Hypothesis generates them (one per example: it varies them widely)."""
    out: list[Message] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(HOSTILE_MESSAGES)
    def collect(message: Message) -> None:
        out.append(message)

    collect()
    return out


async def test_hostile_campaign(engine: AsyncEngine, js: JetStreamContext, hub: Hub) -> None:
    hostile = generate(HOSTILE)
    sequences: dict[int, str] = {}  # stream sequence -> class ("healthy", "heartbeat" or a hostile class)
    published_at: dict[str, datetime] = {}

    async def put(kind: str, cluster: str, data: bytes, msg_id: str) -> None:
        ack = await js.publish(hub.subjects.events(cluster), data, headers={"Nats-Msg-Id": msg_id}, timeout=10)
        sequences[int(ack.seq)] = kind

    async def healthy(index: int) -> None:
        name = f"healthy-{index}"
        event = deployment(name, "gpt-small")
        published_at[name] = datetime.now(UTC)
        await put("healthy", "a100", encode_event(event), event.event_id)

    setup = [
        heartbeat("a100", 0),
        *(builders.observed("a100", "Node", builders.cpu_node(f"cpu-{i}", cpu="64")) for i in range(4)),
        builders.observed("a100", "LLMModel", builders.llm_model("gpt-small", "team", MODEL)),
    ]
    for event in setup:
        await put(
            "heartbeat" if event.type == "ClusterHeartbeat" else "healthy", "a100", encode_event(event), event.event_id
        )

    chunk = math.ceil(len(hostile) / HEALTHY)
    started = time.monotonic()
    async with planner(engine, js, hub):
        # The same healthy deployments without noise first: what "as fast as without the noise" means here.
        for index in range(QUIET):
            await healthy(HEALTHY + index)
            await eventually(_all_placed(engine, index + 1), timeout=30, what="a quiet deployment to be placed")
        for index in range(HEALTHY // 2):
            for kind, cluster, data in hostile[index * chunk : (index + 1) * chunk]:
                await put(kind, cluster, data, str(uuid.uuid4()))
            await healthy(index)
        await eventually(await caught_up(engine, js, hub), timeout=120, what="the first planner to read the first half")
    # A restart in the middle: the next planner goes on from the committed position, no crash loop.
    async with planner(engine, js, hub, holder="p2"):
        for index in range(HEALTHY // 2, HEALTHY):
            for kind, cluster, data in hostile[index * chunk : (index + 1) * chunk]:
                await put(kind, cluster, data, str(uuid.uuid4()))
            await healthy(index)
        await eventually(await caught_up(engine, js, hub), timeout=120, what="the second planner to read it all")
        await eventually(_all_placed(engine, HEALTHY + QUIET), timeout=60, what="all healthy deployments to be placed")
    elapsed = time.monotonic() - started

    async with engine.connect() as conn:
        letters = {
            int(s): str(r) for s, r in (await conn.execute(text("SELECT stream_sequence, reason FROM dead_letters")))
        }
        used = {
            int(s)
            for (s,) in await conn.execute(
                text("SELECT (metadata->>'stream_sequence')::bigint FROM events WHERE metadata ? 'stream_sequence'")
            )
        }
        placed = {
            str(name): at
            for name, at in await conn.execute(
                text("SELECT name, min(planned_at) FROM placements WHERE name LIKE 'healthy-%' GROUP BY name")
            )
        }
    tried = Counter(sequences.values())
    outcome: dict[str, Counter[str]] = {kind: Counter() for kind in tried}
    unaccounted = []
    for sequence, kind in sequences.items():
        if sequence in letters:
            outcome[kind]["dead-lettered"] += 1
        elif sequence in used or kind == "heartbeat":
            outcome[kind]["used"] += 1
        else:
            unaccounted.append((sequence, kind))
    print(f"\nhostile campaign: {len(sequences)} messages in {elapsed:.1f} s, planner exits: 0, restarts: 1")
    for kind in sorted(tried):
        print(
            f"  {kind:13s} tried {tried[kind]:5d}  used {outcome[kind]['used']:5d}  "
            f"dead-lettered {outcome[kind]['dead-lettered']:5d}"
        )
    reasons = Counter(r.split(":")[0][:60] for r in letters.values())
    print("  dead-letter reasons (first words):")
    for reason, count in reasons.most_common(8):
        print(f"    {count:5d}  {reason}")
    quiet = {f"healthy-{HEALTHY + i}" for i in range(QUIET)}
    waits = sorted((placed[n] - published_at[n]).total_seconds() for n in placed if n not in quiet)
    quiet_waits = sorted((placed[n] - published_at[n]).total_seconds() for n in quiet)
    print(
        f"  healthy deployments placed amid the noise: {len(waits)} of {HEALTHY}; seconds from publication to "
        f"placement: median {statistics.median(waits):.2f}, max {max(waits):.2f} "
        f"(without noise: median {statistics.median(quiet_waits):.2f}, max {max(quiet_waits):.2f})"
    )
    isolated = REGISTRY.get_sample_value("llmop_planner_isolated_batches_total") or 0
    print(f"  batches retried message by message (the store refused a value): {isolated:.0f}")
    assert not unaccounted, f"messages neither used nor dead-lettered: {unaccounted[:10]}"
    assert outcome["healthy"]["used"] == tried["healthy"]
    # Control characters Postgres accepts are stored as they are; a message is refused only where the text has a
    # grammar (a quantity, a timestamp) that the control character breaks — never by the store.
    control_refusals = [letters[s] for s, kind in sequences.items() if kind == "control" and s in letters]
    for reason in control_refusals[:5]:
        print(f"  control refused: {reason[:150]!r}")
    assert not [r for r in control_refusals if "store refused" in r or "cannot store" in r]
    assert outcome["nul"]["used"] == 0
    assert len(waits) == HEALTHY


def _all_placed(engine: AsyncEngine, count: int) -> Callable[[], Any]:
    async def check() -> bool:
        async with engine.connect() as conn:
            found = await conn.execute(
                text("SELECT count(DISTINCT name) FROM placements WHERE name LIKE 'healthy-%' AND replicas > 0")
            )
            return int(found.scalar_one()) >= count

    return check
