"""Shared pieces of the end-to-end benchmarks: a bench-only fleet, the operator as real processes, watches that
timestamp what they see, the components' own metrics, and CPU accounting per process group.

Guarantees:
- The bench fleet is the default fleet under names prefixed ``b-`` with its own kubeconfig and kwok workdir under
  ``<cache>/bench-fleet/``: a developer's fleet, the test fleet and ``~/.kube/config`` are never touched. It is
  brought up at the start and deleted at the end unless ``keep`` (then the next run reuses it, after deleting
  the namespaces an earlier run left behind).
- The operator runs as in production: one ``llm-operator planner`` process (the hub) and one ``llm-operator
  agent`` process (watcher + applier) per member cluster, with the DEFAULT settings unless a benchmark says
  otherwise, each with its own /metrics port. Stopping an agent with SIGKILL is a cluster going silent.
- Watches (list, then watch from the list's resourceVersion) stamp each event with ``time.time()`` when its line
  arrives; a benchmark measures from just before its own request to that stamp.
- Every process started here is stopped at the end (by its pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import anyio
from prometheus_client.parser import text_string_to_metric_families

from kubeapi import RESOURCES, ApiGone, Kube, KubeError, NotFound, Resource
from llm_operator.embedded import _free_port
from llm_operator.fleet import (
    DEFAULT_FLEET,
    ClusterSpec,
    MemberCluster,
    Toolchain,
    cache_dir,
    ensure_toolchain,
    fleet_down,
    fleet_up,
    kubectl,
)
from llm_operator.processes import Process, operator_command
from llm_operator.runtime import Member, connect_kube
from llm_operator.trust import read_signer, write_private_key

REPO = Path(__file__).resolve().parent.parent
PREFIX = "b-"
BENCH_LABEL = "llm-operator-bench"
REPLICA_SETS = Resource("apps", "v1", "ReplicaSet", "replicasets", True)
LLMD = RESOURCES["LLMDeployment"]
LLMM = RESOURCES["LLMModel"]
DEPLOYMENTS = RESOURCES["Deployment"]
NAMESPACES = RESOURCES["Namespace"]
API_VERSION = "llm.example.com/v1alpha1"


def run_main(main: Callable[[], Awaitable[int]]) -> NoReturn:
    """Run a benchmark's `main` on uvloop when it is installed (as the operator runs), exit with its code.

    SIGINT and SIGTERM cancel it, so every `finally` runs: the operator's processes, NATS, Postgres and (unless
    kept) the bench fleet are stopped rather than left behind.
    """

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            return await main()
        except asyncio.CancelledError:
            say("interrupted: stopped what this run started")
            return 130

    try:
        import uvloop
    except ImportError:
        raise SystemExit(asyncio.run(guarded())) from None
    raise SystemExit(uvloop.run(guarded()))


def code_version() -> dict[str, Any]:
    """The commit the operator's code comes from, and whether its packages differ from it (uncommitted edits)."""
    packages = ["planner", "store", "watcher", "applier", "kubeapi", "llm_operator", "migrations"]

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "edited": bool(git("status", "--porcelain", "--", *packages))}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, min, p50, p90, p95, p99, max, mean of `values` (seconds in, milliseconds out)."""
    ms = [v * 1000 for v in values]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "min": min(ms),
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": sum(ms) / len(ms),
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


# ------------------------------------------------------------------------------------------------ the fleet


@dataclass(frozen=True)
class BenchFleet:
    toolchain: Toolchain
    kubeconfig: Path
    workdir: Path
    clusters: Mapping[str, MemberCluster]  # by role: "a100", "mixed", "cpu"
    specs: Mapping[str, ClusterSpec]

    def name(self, role: str) -> str:
        return self.clusters[role].name

    def member(self, role: str) -> Member:
        c = self.clusters[role]
        return Member(name=c.name, context=c.context, labels=dict(c.labels))

    def kubectl(self, role: str, *args: str, input: str | None = None, check: bool = True) -> str:
        return kubectl(self.toolchain, self.clusters[role], *args, input=input, check=check).stdout

    async def kube(self, role: str) -> Kube:
        return await connect_kube(self.member(role), kubeconfig=self.kubeconfig)


def bench_dir() -> Path:
    return cache_dir() / "bench-fleet"


@contextlib.contextmanager
def bench_fleet(*, keep: bool) -> Iterator[BenchFleet]:
    """Bring the bench fleet up (CRDs installed, earlier runs' namespaces gone); delete it at the end unless keep."""
    base = bench_dir()
    base.mkdir(parents=True, exist_ok=True)
    kubeconfig, workdir = base / "kubeconfig", base / "kwok"
    specs = tuple(replace(spec, name=f"{PREFIX}{spec.name}") for spec in DEFAULT_FLEET)
    toolchain = ensure_toolchain(progress=say)
    started = time.monotonic()
    members = fleet_up(toolchain=toolchain, clusters=specs, kubeconfig=kubeconfig, workdir=workdir, progress=say)
    roles = [spec.name.removeprefix(PREFIX) for spec in specs]
    fleet = BenchFleet(
        toolchain=toolchain,
        kubeconfig=kubeconfig,
        workdir=workdir,
        clusters=dict(zip(roles, members, strict=True)),
        specs=dict(zip(roles, specs, strict=True)),
    )
    try:
        for role in roles:
            fleet.kubectl(
                role, "apply", "--server-side", "--force-conflicts", "--field-manager", "llm-operator", "-f",
                str(REPO / "crds"),
            )  # fmt: skip
            fleet.kubectl(
                role, "wait", "--for=condition=Established", "--timeout=60s",
                "crd/llmmodels.llm.example.com", "crd/llmdeployments.llm.example.com",
            )  # fmt: skip
            _delete_bench_namespaces(fleet, role)
        say(f"bench fleet ready in {time.monotonic() - started:.0f}s: {', '.join(m.name for m in members)}")
        yield fleet
    finally:
        if keep:
            say("keeping the bench fleet (--keep-fleet)")
        else:
            fleet_down(toolchain=toolchain, names=[s.name for s in specs], kubeconfig=kubeconfig, workdir=workdir)
            say("bench fleet deleted")


def _delete_bench_namespaces(fleet: BenchFleet, role: str) -> None:
    """Namespaces an earlier run left in a kept fleet: release our finalizers (no operator runs now), delete."""
    out = fleet.kubectl(role, "get", "namespaces", "-l", f"{BENCH_LABEL}=true", "-o", "name")
    names = [line.split("/", 1)[1] for line in out.split() if "/" in line]
    for ns in names:
        items = json.loads(fleet.kubectl(role, "get", "llmdeployments", "-n", ns, "-o", "json"))["items"]
        for item in items:
            fleet.kubectl(
                role, "patch", "llmdeployment", item["metadata"]["name"], "-n", ns, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
    if names:
        fleet.kubectl(role, "delete", "namespace", *names, "--wait=true", "--timeout=120s", check=False)


@contextlib.contextmanager
def log_dir(path: Path | None) -> Iterator[Path]:
    """`path` (created) to keep the operator's logs, or a temporary directory removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="llmop-bench-logs-") as tmp:
        yield Path(tmp)


async def create_namespace(kubes: Iterable[Kube], name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {BENCH_LABEL: "true"}}}
    for kube in kubes:
        with contextlib.suppress(KubeError):
            await kube.create(NAMESPACES, body)


# ------------------------------------------------------------------------------------------ the operator


@dataclass
class Component(Process):
    """One `llm-operator` process (the planner, or one cluster's agent) with its /metrics port."""

    port: int = 0

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            return response.status, await response.text()

    async def metrics(self) -> Metrics:
        _, text = await self.get("/metrics")
        return Metrics.parse(text)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            try:
                status, last = await self.get("/readyz")
                if status == 200:
                    return
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = str(exc)
            await anyio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s: {last}; see {self.log}")


@dataclass
class Metrics:
    """One scrape: (sample name, sorted labels) -> value."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    @staticmethod
    def parse(text: str) -> Metrics:
        out = Metrics()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))


@dataclass
class Operator:
    """The planner and one agent per member cluster, as separate processes."""

    fleet: BenchFleet | None
    """None: no member clusters (the planner alone, fed by simulated clusters)."""
    nats_url: str
    database_url: str
    logs: Path
    prefix: str = "bench"
    settings: Mapping[str, str] = field(default_factory=dict)
    """Extra LLMOP_* variables; empty: the defaults (heartbeat 2 s, timeout 10 s, recovery hold 5 s)."""
    planner: Component | None = None
    agents: dict[str, Component] = field(default_factory=dict)
    identities_dir: Path | None = None
    """LLMOP_NATS_IDENTITIES_DIR: each process connects as the planner or its cluster (None: no authentication)."""

    def _signing(self) -> dict[str, str]:
        """The planner's signing key (generated once into the logs directory) and the agents' pinned public key."""
        path = self.logs / "plan-signing.pem"
        signer = read_signer(path) if path.exists() else write_private_key(path)
        return {"LLMOP_PLAN_SIGNING_KEY": str(path), "LLMOP_PLAN_PUBLIC_KEYS": json.dumps([signer.public_key])}

    def _env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOP_")}
        env.update(
            {
                **self._signing(),
                "LLMOP_NATS_URL": self.nats_url,
                "LLMOP_DATABASE_URL": self.database_url,
                "LLMOP_SUBJECT_PREFIX": self.prefix,
                "LLMOP_METRICS_PORT": str(port),
                # kwok pods serve no HTTP: scraping their made-up addresses would send packets off this machine.
                "LLMOP_LOAD_INTERVAL_SECONDS": "0",
                **self.settings,
            }
        )
        if self.fleet is not None:
            env["LLMOP_KUBECONFIG"] = str(self.fleet.kubeconfig)
        if self.identities_dir is not None:
            env["LLMOP_NATS_IDENTITIES_DIR"] = str(self.identities_dir)
        return env

    async def start_planner(self, wrap: Sequence[str] = ()) -> Component:
        """Start the planner; `wrap`: arguments of `python` before `-m llm_operator` (e.g. a profiler)."""
        port = _free_port()
        self.planner = Component(
            "planner",
            operator_command("planner", "--migrate", python_options=wrap),
            self.logs / "planner.log",
            env=self._env(port),
            port=port,
        )
        self.planner.start()
        await self.planner.wait_ready()
        return self.planner

    async def start_agent(self, role: str) -> Component:
        assert self.fleet is not None
        member = self.fleet.member(role)
        agent = self.agents.get(role)
        if agent is None:
            port = _free_port()
            labels = ",".join(f"{k}={v}" for k, v in member.labels.items())
            argv = ["agent", "--cluster", member.name, "--context", str(member.context), "--labels", labels]
            agent = Component(
                f"agent-{role}",
                operator_command(*argv),
                self.logs / f"agent-{role}.log",
                env=self._env(port),
                port=port,
            )
            self.agents[role] = agent
        agent.start()
        await agent.wait_ready()
        return agent

    async def start(self) -> None:
        assert self.fleet is not None
        await self.start_planner()
        for role in self.fleet.clusters:
            await self.start_agent(role)

    def components(self) -> list[Component]:
        return ([self.planner] if self.planner else []) + list(self.agents.values())

    def stop(self) -> None:
        for component in reversed(self.components()):
            component.stop()


# ------------------------------------------------------------------------------------------------ watches

Handler = Callable[[float, str, dict[str, Any]], None]


async def follow(
    kube: Kube,
    resource: Resource,
    handler: Handler,
    *,
    namespace: str | None = None,
    label_selector: str | None = None,
    started: anyio.Event | None = None,
) -> None:
    """List (events "LISTED"), then watch forever, calling handler(time.time(), type, object) for each event."""
    while True:
        items, version = await kube.list(resource, namespace=namespace, label_selector=label_selector)
        now = time.time()
        for item in items:
            handler(now, "LISTED", item)
        if started is not None:
            started.set()
        try:
            while True:
                async for event in kube.watch(
                    resource, resource_version=version, namespace=namespace, label_selector=label_selector
                ):
                    now = time.time()
                    version = event.object.get("metadata", {}).get("resourceVersion", version)
                    if event.type != "BOOKMARK":
                        handler(now, event.type, event.object)
        except ApiGone:
            continue


@contextlib.asynccontextmanager
async def following(
    watches: Sequence[tuple[Kube, Resource, Handler, str | None, str | None]],
) -> AsyncIterator[None]:
    """Run `follow` for each (kube, resource, handler, namespace, label selector) while the block runs."""
    async with anyio.create_task_group() as tg:
        for kube, resource, handler, namespace, selector in watches:
            started = anyio.Event()
            tg.start_soon(_follow_started, kube, resource, handler, namespace, selector, started)
            with anyio.fail_after(30):
                await started.wait()
        yield
        tg.cancel_scope.cancel()


async def _follow_started(
    kube: Kube, resource: Resource, handler: Handler, namespace: str | None, selector: str | None, started: anyio.Event
) -> None:
    await follow(kube, resource, handler, namespace=namespace, label_selector=selector, started=started)


def condition(obj: Mapping[str, Any], type_: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


async def delete_quietly(kube: Kube, resource: Resource, name: str, namespace: str | None) -> None:
    with contextlib.suppress(NotFound):
        await kube.delete(resource, name, namespace=namespace)


# ------------------------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds used, command line) for every process."""
    table: dict[int, tuple[int, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, cmdline)
    return table


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of which steal) since boot."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK, steal / _TICK


@dataclass
class CpuMeter:
    """CPU seconds per named group of processes; a group is roots (pids or a command-line match) + descendants."""

    groups: dict[str, Callable[[int, str], bool]] = field(default_factory=dict)

    def add_pids(self, name: str, pids: Callable[[], Iterable[int | None]]) -> None:
        self.groups[name] = lambda pid, _cmd: pid in set(pids())

    def add_match(self, name: str, needle: str) -> None:
        self.groups[name] = lambda _pid, cmd: needle in cmd

    def sample(self) -> dict[str, float]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out: dict[str, float] = {}
        claimed: set[int] = set()
        for name, is_root in self.groups.items():
            total = 0.0
            stack = [pid for pid, (_, _, cmd) in table.items() if is_root(pid, cmd)]
            while stack:
                pid = stack.pop()
                if pid in claimed:
                    continue
                claimed.add(pid)
                total += table[pid][1]
                stack.extend(children.get(pid, []))
            out[name] = total
        busy, steal = machine_cpu_seconds()
        out["machine busy"] = busy
        out["machine steal"] = steal
        return out

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> dict[str, float]:
        """CPU use per group over an interval, in cores (1.0 = one core busy all the time)."""
        return {k: max(0.0, after.get(k, 0.0) - before.get(k, 0.0)) / seconds for k in after}


def standard_meter(
    fleet: BenchFleet | None, operator: Operator | None, hub: Any, extra: Mapping[str, str] | None = None
) -> CpuMeter:
    """Groups: each operator process, each bench cluster's control plane, NATS, Postgres (the `bench.common.servers`
    pair `hub`, found by their data directories), anything in `extra` (name -> command-line match), this process."""
    meter = CpuMeter()
    if operator is not None:
        meter.add_pids("planner", lambda: [operator.planner.pid if operator.planner else None])
        for role in operator.agents:
            meter.add_pids(f"agent {role}", _agent_pid(operator, role))
    for role, cluster in (fleet.clusters if fleet else {}).items():
        meter.add_match(f"kube {role}", f"/clusters/{cluster.name}/")
    meter.add_match("nats", str(hub.nats.data_dir))
    meter.add_match("postgres", str(hub.postgres.data_dir))
    for name, needle in (extra or {}).items():
        meter.add_match(name, needle)
    bench_pid = os.getpid()
    meter.add_pids("bench (this process)", lambda: [bench_pid])
    return meter


def _agent_pid(operator: Operator, role: str) -> Callable[[], list[int | None]]:
    return lambda: [operator.agents[role].pid]


async def wait_fleet_known(
    database_url: str, clusters: Sequence[str], timeout: float = 60.0, tls: ssl.SSLContext | None = None
) -> None:
    """Wait until the planner has recorded every cluster as joined and healthy, with its nodes."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url, connect_args={"ssl": tls} if tls else {})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                async with engine.connect() as conn:
                    healthy = {r[0] for r in await conn.execute(text("SELECT name FROM clusters WHERE healthy"))}
                    with_nodes = {r[0] for r in await conn.execute(text("SELECT DISTINCT cluster FROM nodes"))}
                if set(clusters) <= healthy & with_nodes:
                    return
            except Exception as exc:  # tables may not exist yet while the planner migrates
                healthy, with_nodes = set(), set()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"planner database not usable: {exc}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"clusters not all joined with nodes after {timeout:.0f}s: {healthy}, {with_nodes}")
            await anyio.sleep(0.25)
    finally:
        await engine.dispose()


async def wait_until(check: Callable[[], bool], *, deadline: float, interval: float = 0.25) -> bool:
    """Poll `check` until it is true (True) or `deadline` (a time.time()) passes (False)."""
    while True:
        if check():
            return True
        if time.time() >= deadline:
            return False
        await anyio.sleep(interval)


class Timeline:
    """First time each (key, what) happened, and waiting for it."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], float] = {}
        self._waiters: dict[tuple[str, str], anyio.Event] = {}

    def mark(self, key: str, what: str, at: float) -> None:
        if (key, what) in self.times:
            return
        self.times[(key, what)] = at
        waiter = self._waiters.pop((key, what), None)
        if waiter is not None:
            waiter.set()

    def get(self, key: str, what: str) -> float | None:
        return self.times.get((key, what))

    async def wait(self, key: str, what: str, timeout: float) -> float:
        if (key, what) not in self.times:
            waiter = self._waiters.setdefault((key, what), anyio.Event())
            with anyio.fail_after(timeout):
                await waiter.wait()
        return self.times[(key, what)]


__all__ = [
    "API_VERSION",
    "BENCH_LABEL",
    "DEPLOYMENTS",
    "LLMD",
    "LLMM",
    "REPLICA_SETS",
    "BenchFleet",
    "Component",
    "CpuMeter",
    "Metrics",
    "Operator",
    "Timeline",
    "bench_fleet",
    "code_version",
    "condition",
    "create_namespace",
    "delete_quietly",
    "follow",
    "following",
    "log_dir",
    "percentile",
    "run_main",
    "say",
    "standard_meter",
    "summary",
    "wait_fleet_known",
    "wait_until",
]
