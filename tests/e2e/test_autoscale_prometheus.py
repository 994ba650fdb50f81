"""The load signal through a real Prometheus: the fleet's Prometheus build discovers the emulated kwok pods through
Kubernetes service discovery against the kwok apiservers, scrapes them every second, and the agents ask it
(``prometheus_url``) instead of scraping the pods themselves.

- The figures agree: under a steady load, one observation computed from direct scrapes of the replicas and one
  computed by PromQL over the same window give the same replicas, queue, batch and KV-cache figures, and the same
  request rate and TTFT p90 within the tolerance that sampling at different instants allows.
- The whole loop: with the operator's agents on Prometheus, load on the replicas makes the planner scale the
  LLMDeployment up through /scale, and the agents did ask Prometheus (its own query counter moved).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import aiohttp
import anyio
import pytest
import yaml

from llm_operator.fleet.emulator import LatencyModel, post_json
from tests.e2e.test_applier import SEED_DIR
from tests.fixtures.operator import Kubectl, eventually, running_operator
from tests.fixtures.podnet import StartEmulator
from tests.fixtures.prometheus import Prometheus, StartPrometheus
from tests.fixtures.services import Hub
from watcher import signal
from watcher.load import LoadSettings, Scraper, Target

pytestmark = [pytest.mark.anyio, pytest.mark.fleet]

TIMEOUT_S = 60.0
# Every request's time to first token is base + per_request x (in flight - 1); with CLIENTS closed-loop clients on
# each replica and a batch of 2, a replica holds ~CLIENTS in flight: 2 running, CLIENTS - 2 waiting.
CLIENTS = 6
STEADY = LatencyModel(ttft_base_s=0.3, ttft_per_request_s=0.05, max_running=2)


# ------------------------------------------------------------------------------------------------ helpers


class Load:
    """Closed-loop clients (threads) sending completions to the replicas ``pick`` names, until stopped.

    Bounded: each client stops after ``max_requests`` or ``max_seconds``, whichever comes first, and sends only to
    pod addresses of the test's own pod network."""

    def __init__(
        self, pick: Callable[[int], str | None], *, clients: int, max_seconds: float = 300, max_requests: int = 5000
    ) -> None:
        self._pick = pick
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, index: int) -> None:
        for _ in range(self._max_requests):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            url = self._pick(index)
            if url is None:
                self._stop.wait(0.2)
                continue
            try:
                status, _, _ = post_json(url, {"model": "m", "prompt": "hello", "max_tokens": 16}, timeout=10)
                ok = status == 200
            except OSError:
                ok = False
            with self._lock:
                self.sent += 1
                self.failed += 0 if ok else 1
            if not ok:
                self._stop.wait(0.2)  # a replica going away: do not spin

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


def _deployment(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai", "ports": [
                    {"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 9000}]}]},
            },
        },
    }  # fmt: skip


def _served(emu_replicas: Sequence[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    return sorted((r for r in emu_replicas if r["port"] == port), key=lambda r: r["pod"])


def _query_count(prom: Prometheus) -> float:
    """How many instant queries Prometheus has answered (its own metric, read from its /metrics)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{prom.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _close(a: float | None, b: float | None, *, rel: float, abs_: float = 0.0) -> bool:
    return a is not None and b is not None and abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


# --------------------------------------------------------------------------- figures: direct vs Prometheus


async def test_prometheus_and_direct_scrapes_give_the_same_observation(
    kubectl: Kubectl, namespace: str, emulator: StartEmulator, prometheus: StartPrometheus
) -> None:
    fleet = kubectl.fleet
    cluster = fleet.clusters["cpu"].name
    emu = emulator(namespaces=[namespace], clusters=["cpu"], latency=STEADY)
    prom = prometheus(namespaces=[namespace], clusters=["cpu"])
    await kubectl("cpu", "apply", "-f", "-", input=json.dumps(_deployment("chat", namespace, 2)))
    replicas = _served(
        emu.wait_for_replicas(lambda rs: len(_served(rs, 8000)) == 2, timeout=TIMEOUT_S, what="2 replicas served"),
        8000,
    )
    # Discovered through the kube API, relabelled, and only the serving port of each pod (not the grpc one).
    targets = prom.wait_for_targets(
        lambda ts: sum(t["health"] == "up" for t in ts) == 2, timeout=TIMEOUT_S, what="2 healthy scrape targets"
    )
    assert sorted((t["labels"]["namespace"], t["labels"]["pod"], t["labels"]["cluster"]) for t in targets) == sorted(
        (namespace, r["pod"], cluster) for r in replicas
    )
    assert {t["scrapeUrl"] for t in targets} == {f"http://{r['ip']}:8000/metrics" for r in replicas}

    target = Target(
        key=(cluster, namespace, "chat"),
        namespace=namespace,
        names=signal.names_for("vllm"),
        replicas={r["pod"]: f"http://{r['ip']}:8000/metrics" for r in replicas},
    )

    async def resolve() -> list[Target]:
        return [target]

    urls = [f"http://{r['ip']}:8000/v1/completions" for r in replicas]
    with Load(lambda i: urls[i % len(urls)], clients=CLIENTS * len(urls), max_seconds=120):
        # Steady state first: every client has a request in flight, and Prometheus holds a full window of it.
        await anyio.sleep(6)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            direct = Scraper(cluster=cluster, settings=LoadSettings(interval_seconds=5), resolve=resolve, http=http)
            await direct.round()  # the first reading of each replica: gauges only
            await anyio.sleep(5)
            [scraped] = await direct.round()
            via = Scraper(
                cluster=cluster,
                settings=LoadSettings(interval_seconds=5, prometheus_url=prom.url),
                resolve=resolve,
                http=http,
            )
            [queried] = await via.round()

    assert scraped.problems == [] and queried.problems == [], (scraped.problems, queried.problems)
    assert (queried.replicas, queried.reporting) == (scraped.replicas, scraped.reporting) == (2, 2)
    # Gauges are read at instants up to a scrape interval apart; a client between two requests moves one by 1.
    expected_waiting = 2 * (CLIENTS - STEADY.max_running)
    assert _close(scraped.waiting, expected_waiting, rel=0, abs_=2), scraped
    assert _close(queried.waiting, scraped.waiting, rel=0, abs_=2), (queried, scraped)
    assert _close(queried.running, scraped.running, rel=0, abs_=1), (queried, scraped)
    assert _close(queried.kv_cache_usage, scraped.kv_cache_usage, rel=0, abs_=0.25), (queried, scraped)
    # Rates: the same 5 s of a steady load, counted from two readings vs extrapolated by rate() over samples.
    assert scraped.requests_per_second and scraped.requests_per_second > 5, scraped
    assert _close(queried.requests_per_second, scraped.requests_per_second, rel=0.3), (queried, scraped)
    # TTFT p90: both from histogram deltas over the window (increase() vs reading minus reading).
    ttft = STEADY.ttft_s(CLIENTS)
    assert _close(scraped.ttft_p90_seconds, ttft, rel=0.5), scraped
    assert _close(queried.ttft_p90_seconds, scraped.ttft_p90_seconds, rel=0.25), (queried, scraped)


# ------------------------------------------------------------------------ the whole operator on Prometheus


@contextmanager
def _rotating(pick_from: Callable[[], list[str]]) -> Iterator[Callable[[int], str | None]]:
    """Spread clients over the replicas being served right now (refreshed every second)."""
    state: dict[str, Any] = {"urls": [], "at": 0.0}
    lock = threading.Lock()

    def pick(index: int) -> str | None:
        with lock:
            if time.monotonic() - state["at"] > 1.0:
                state["urls"], state["at"] = pick_from(), time.monotonic()
            urls: list[str] = state["urls"]
        return urls[index % len(urls)] if urls else None

    yield pick


@pytest.mark.services
async def test_load_read_through_prometheus_scales_the_llm_deployment(
    hub: Hub, kubectl: Kubectl, namespace: str, emulator: StartEmulator, prometheus: StartPrometheus
) -> None:
    emu = emulator(namespaces=[namespace], latency=STEADY)
    prom = prometheus(namespaces=[namespace])
    deployment: dict[str, Any] = yaml.safe_load((SEED_DIR / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = "busy"
    deployment["spec"]["replicas"] = 1
    deployment["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "target": {"queueDepth": 4}}
    port = int(deployment["spec"]["port"])

    async with running_operator(hub, kubectl, namespace, load_interval_seconds=5, prometheus_url=prom.url) as operator:
        ns = operator.namespace
        await kubectl("cpu", "apply", "-n", ns, "-f", str(SEED_DIR / "model.yaml"))
        await kubectl("cpu", "apply", "-n", ns, "-f", "-", input=json.dumps(deployment))
        # The operator runs on this event loop: the fixtures' blocking waits go to a thread.
        served = await anyio.to_thread.run_sync(
            lambda: emu.wait_for_replicas(lambda rs: len(_served(rs, port)) == 1, timeout=TIMEOUT_S, what="a replica")
        )
        [replica] = _served(served, port)
        await anyio.to_thread.run_sync(
            lambda: prom.wait_for_targets(
                lambda ts: any(t["health"] == "up" and t["labels"].get("pod") == replica["pod"] for t in ts),
                timeout=TIMEOUT_S,
                what="Prometheus to scrape the replica",
            )
        )
        queries_before = await anyio.to_thread.run_sync(_query_count, prom)

        def urls() -> list[str]:
            return [f"http://{r['ip']}:{port}/v1/completions" for r in _served(emu.replicas(), port)]

        # 12 clients on one replica with a batch of 2: ~10 waiting against a target of 4 per replica.
        with _rotating(urls) as pick, Load(pick, clients=12, max_seconds=180) as load:

            async def scaled() -> int | None:
                found = await kubectl.get("cpu", "llmdeployment", "busy", "-n", ns)
                replicas = (found or {}).get("spec", {}).get("replicas")
                return replicas if replicas and replicas > 1 else None

            replicas = await eventually(scaled, timeout=90, what="the autoscaler to scale up through /scale")
            assert 2 <= replicas <= 3
            await eventually(
                lambda: _emulated(emu, port, replicas), timeout=TIMEOUT_S, what="the added replicas to serve"
            )
        assert load.sent > 0 and load.failed < load.sent / 2, (load.sent, load.failed)

        # Why it scaled, as `history` tells it: the queue the agents read through Prometheus.
        lines = json.loads(await _cli(hub, "history", f"llmdeployment/{ns}/busy", "--json"))
        scaled_lines = [line["summary"] for line in lines if line["kind"] == "Scaled"]
        assert any("queue" in summary for summary in scaled_lines), lines
        llmd = await kubectl.json("cpu", "get", "llmdeployment", "busy", "-n", ns)
        conditions = {c["type"]: c for c in llmd["status"].get("conditions", [])}
        assert conditions["ScalingActive"]["status"] == "True", conditions

    # The agents asked Prometheus: on this path they never scrape the pods themselves.
    assert await anyio.to_thread.run_sync(_query_count, prom) > queries_before


async def _emulated(emu: Any, port: int, count: int) -> bool:
    return len(_served(await anyio.to_thread.run_sync(emu.replicas), port)) >= count


async def _cli(hub: Hub, *args: str) -> str:
    env = {**os.environ, "LLMOP_DATABASE_URL": hub.database_url}
    result = await anyio.run_process([sys.executable, "-m", "llm_operator", *args], env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()
