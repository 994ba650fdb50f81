"""The load signal's shell: every few seconds, read the inference metrics of this cluster's ready model replicas
and publish one compact `LoadObserved` per LLMDeployment.

Guarantees:
- Where replicas are: the Deployments the applier manages here (their `llm.example.com/serving` annotation says
  the runtime, metrics port and path) and their ready pods (pod IP), listed from the kube API each round. Tests
  replace that by passing `resolve` (a keyword dependency), never by faking the kube API.
- Bounded: at most `concurrency` scrapes at once, each within `timeout_seconds` and `signal.MAX_TEXT` bytes; a
  round starts every `interval_seconds` (clamped to 1..60 s), so each deployment yields at most one observation
  per interval whatever its replica count.
- A replica that times out, refuses, answers non-200 or nonsense costs only itself: it is left out of
  `reporting` and named in `problems` (so the planner never scales down on it).
- With `prometheus_url`, figures come from a Prometheus-compatible query API (/api/v1/query) instead of the pods:
  the same observation, computed by PromQL over the same window (pods identified by `namespace` and `pod` labels).
- Publishing goes through the bus with a deterministic id per (cluster, deployment, time); if NATS is away the
  observation is dropped (the next one supersedes it), never queued without bound.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio

from api import histogram
from api.events import LoadObserved, encode_event
from api.labels import ANNOTATION_SERVING, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_NAMESPACE, LABEL_ORIGIN, MANAGED_BY
from api.models import ServingMetrics
from bus.connection import JetStream
from bus.errors import BusUnavailable
from bus.publish import publish
from bus.subjects import Subjects
from kubeapi import RESOURCES, Kube, KubeError
from watcher import metrics, signal

logger = logging.getLogger(__name__)

DeploymentKey = tuple[str, str, str]
"""(origin cluster, namespace, LLMDeployment name)."""


@dataclass(frozen=True)
class Target:
    """One LLMDeployment's replicas in this cluster, and how to read them."""

    key: DeploymentKey
    namespace: str
    """The namespace its pods run in here."""
    names: signal.MetricNames
    replicas: Mapping[str, str] = field(default_factory=dict)
    """Ready pod name → metrics URL."""


Resolve = Callable[[], Awaitable[Sequence[Target]]]


@dataclass(frozen=True)
class LoadSettings:
    interval_seconds: float = 10.0
    timeout_seconds: float = 3.0
    concurrency: int = 16
    prometheus_url: str | None = None
    """A Prometheus-compatible API (Prometheus, Thanos, Mimir, VictoriaMetrics) to query instead of the pods."""

    @property
    def interval(self) -> float:
        # 1 s at the least: short enough for tests and demos on a small fleet, and still a bounded rate.
        return min(60.0, max(1.0, self.interval_seconds))


def _now() -> datetime:
    return datetime.now(UTC)


async def run_load(
    *,
    kube: Kube,
    js: JetStream,
    subjects: Subjects,
    cluster: str,
    settings: LoadSettings,
    resolve: Resolve | None = None,
) -> None:
    """Scrape and publish forever (cancel to stop)."""
    resolve = resolve or (lambda: pod_targets(kube))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.timeout_seconds)) as http:
        scraper = Scraper(cluster=cluster, settings=settings, resolve=resolve, http=http)
        subject = subjects.events(cluster)
        while True:
            started = time.monotonic()
            try:
                for event in await scraper.round():
                    await publish(js, subject, encode_event(event), msg_id=event.event_id)
                    metrics.PUBLISHED.labels(kind="LoadObserved").inc()
            except (BusUnavailable, KubeError) as exc:
                metrics.ERRORS.labels(kind="load").inc()
                logger.warning("cluster %s: load round incomplete: %s", cluster, exc)
            await anyio.sleep(max(0.0, settings.interval - (time.monotonic() - started)))


class Scraper:
    """Remembers each replica's last reading, so two rounds give rates and histogram deltas."""

    def __init__(
        self,
        *,
        cluster: str,
        settings: LoadSettings,
        resolve: Resolve,
        http: aiohttp.ClientSession,
        clock: Callable[[], datetime] = _now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cluster = cluster
        self._settings = settings
        self._resolve = resolve
        self._http = http
        self._clock = clock
        self._monotonic = monotonic
        self._last: dict[DeploymentKey, dict[str, signal.PodReading]] = {}
        self._last_round: dict[DeploymentKey, float] = {}

    async def round(self) -> list[LoadObserved]:
        """Read every target once; one observation per deployment (the first round of a replica gives gauges
        only: rates need two readings)."""
        targets = await self._resolve()
        now = self._clock()
        limiter = anyio.CapacityLimiter(max(1, self._settings.concurrency))
        results: dict[DeploymentKey, dict[str, signal.PodReading | str]] = {t.key: {} for t in targets}
        figures_by_key: dict[DeploymentKey, signal.Figures] = {}
        async with anyio.create_task_group() as tg:
            for target in targets:
                if self._settings.prometheus_url:
                    tg.start_soon(self._query, target, figures_by_key, limiter)
                    continue
                for pod, url in target.replicas.items():
                    tg.start_soon(self._scrape, target, pod, url, results[target.key], limiter)
        out: list[LoadObserved] = []
        tick = self._monotonic()
        for target in targets:
            previous = self._last.get(target.key, {})
            window = tick - self._last_round.get(target.key, tick - self._settings.interval)
            found = figures_by_key.get(target.key)
            if found is None:
                found = signal.figures(
                    previous, results[target.key], replicas=len(target.replicas), window_seconds=max(window, 0.001)
                )
                self._last[target.key] = {
                    p: r for p, r in results[target.key].items() if isinstance(r, signal.PodReading)
                }
            self._last_round[target.key] = tick
            out.append(self._event(target, found, now))
        for gone in set(self._last) - {t.key for t in targets}:
            self._last.pop(gone, None)
            self._last_round.pop(gone, None)
        return out

    async def _scrape(
        self,
        target: Target,
        pod: str,
        url: str,
        into: dict[str, signal.PodReading | str],
        limiter: anyio.CapacityLimiter,
    ) -> None:
        async with limiter:
            try:
                async with self._http.get(url, allow_redirects=False) as response:
                    if response.status != 200:
                        into[pod] = f"HTTP {response.status} from {url}"
                        return
                    body = await _read_bounded(response, signal.MAX_TEXT)
                into[pod] = signal.parse(body.decode("utf-8", "replace"), target.names, at=self._monotonic())
            except signal.BadMetrics as exc:
                into[pod] = str(exc)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                into[pod] = f"{type(exc).__name__} reading {url}: {str(exc)[:100]}".rstrip(": ")
        if isinstance(into[pod], str):
            metrics.ERRORS.labels(kind="scrape").inc()

    async def _query(
        self, target: Target, into: dict[DeploymentKey, signal.Figures], limiter: anyio.CapacityLimiter
    ) -> None:
        async with limiter:
            into[target.key] = await prometheus_figures(
                self._http, self._settings.prometheus_url or "", target, window_seconds=self._settings.interval
            )

    def _event(self, target: Target, found: signal.Figures, now: datetime) -> LoadObserved:
        origin, namespace, name = target.key
        return LoadObserved(
            event_id=LoadObserved.id_for(self._cluster, origin, namespace, name, now),
            cluster=self._cluster,
            origin_cluster=origin,
            namespace=namespace,
            name=name,
            window_seconds=min(3600.0, max(found.window_seconds, 0.001)),
            replicas=found.replicas,
            reporting=found.reporting,
            waiting=found.waiting,
            running=found.running,
            requests_per_second=found.requests_per_second,
            kv_cache_usage=found.kv_cache_usage,
            ttft_p90_seconds=found.ttft_p90_seconds,
            ttft_buckets=found.ttft_buckets[:64],
            problems=[p[:300] for p in found.problems[:8]],
            observed_at=now,
        )


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or BadMetrics once it exceeds `limit` bytes (a replica cannot make the agent buffer more)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise signal.BadMetrics(f"metrics text larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------ finding replicas


async def pod_targets(kube: Kube) -> list[Target]:
    """The model Deployments the applier manages in this cluster and their ready pods' metrics URLs."""
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    deployments, _ = await kube.list(RESOURCES["Deployment"], label_selector=selector)
    pods, _ = await kube.list(RESOURCES["Pod"], label_selector=selector, field_selector="status.phase=Running")
    return targets_of(deployments, pods)


def targets_of(deployments: Sequence[dict[str, Any]], pods: Sequence[dict[str, Any]]) -> list[Target]:
    """Pure: pair Deployments with their ready pods. Objects without the identity labels or with a broken
    serving annotation are skipped (one bad object costs only itself)."""
    ready: dict[tuple[str, str, str], dict[str, str]] = {}
    for pod in pods:
        meta = pod.get("metadata", {})
        labels = meta.get("labels", {}) or {}
        ip = (pod.get("status", {}) or {}).get("podIP")
        conditions = (pod.get("status", {}) or {}).get("conditions", []) or []
        if not ip or meta.get("deletionTimestamp"):
            continue
        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            continue
        origin, name = labels.get(LABEL_ORIGIN), labels.get(LABEL_DEPLOYMENT)
        if origin and name:
            ready.setdefault((origin, meta.get("namespace", ""), name), {})[meta.get("name", "")] = ip
    out: list[Target] = []
    for dep in deployments:
        meta = dep.get("metadata", {})
        labels = meta.get("labels", {}) or {}
        origin, name = labels.get(LABEL_ORIGIN), labels.get(LABEL_DEPLOYMENT)
        if not origin or not name:
            continue
        serving = _serving(meta.get("annotations", {}) or {})
        if serving is None:
            continue
        runtime, port, path, names = serving
        here = meta.get("namespace", "")
        replicas = ready.get((origin, here, name), {})
        out.append(
            Target(
                key=(origin, labels.get(LABEL_NAMESPACE, here), name),
                namespace=here,
                names=signal.names_for(runtime, names),
                replicas={pod: f"http://{_host(ip)}:{port}{path}" for pod, ip in sorted(replicas.items())},
            )
        )
    return out


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip  # IPv6 literals need brackets


def _serving(annotations: Mapping[str, str]) -> tuple[str, int, str, ServingMetrics | None] | None:
    raw = annotations.get(ANNOTATION_SERVING)
    if not raw:
        return None
    try:
        body = json.loads(raw)
        port = int(body["port"])
        path = str(body.get("path", "/metrics"))
        names = ServingMetrics.model_validate(body["names"]) if body.get("names") else None
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("unreadable %s annotation: %s", ANNOTATION_SERVING, exc)
        return None
    if not 0 < port < 65536 or not path.startswith("/"):
        return None
    return str(body.get("runtime", "vllm")), port, path, names


# -------------------------------------------------------------------------------------- the Prometheus path


async def prometheus_figures(
    http: aiohttp.ClientSession, base_url: str, target: Target, *, window_seconds: float
) -> signal.Figures:
    """The same figures from a Prometheus-compatible API: instant queries over the target's ready pods."""
    names = target.names
    window = f"{max(5, math.ceil(window_seconds))}s"
    pods = "|".join(_regex_escape(p) for p in target.replicas) or "^$"
    match = f'{{namespace="{target.namespace}",pod=~"{pods}"}}'
    problems: list[str] = []

    async def query(promql: str) -> list[dict[str, Any]]:
        try:
            async with http.get(f"{base_url.rstrip('/')}/api/v1/query", params={"query": promql}) as response:
                body = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            problems.append(f"query failed: {type(exc).__name__} {str(exc)[:100]}")
            return []
        if not isinstance(body, dict) or body.get("status") != "success":
            problems.append(f"query refused: {str(body)[:150]}")
            return []
        result = body.get("data", {}).get("result", [])
        return result if isinstance(result, list) else []

    def scalar(rows: list[dict[str, Any]]) -> float | None:
        try:
            value = float(rows[0]["value"][1]) if rows else None
        except (KeyError, IndexError, TypeError, ValueError):
            return None
        return value if value is not None and math.isfinite(value) and value >= 0 else None

    reporting_rows = await query(f"count(up{match} == 1)") if target.replicas else []
    waiting = scalar(await query(f"sum({names.requests_waiting}{match})")) if names.requests_waiting else None
    running = scalar(await query(f"sum({names.requests_running}{match})")) if names.requests_running else None
    kv = None
    for kv_name in names.kv_cache_usage:
        kv = scalar(await query(f"avg({kv_name}{match})"))
        if kv is not None:
            break
    rate = scalar(await query(f"sum(rate({names.requests}{match}[{window}]))")) if names.requests else None
    buckets: list[tuple[float, float]] = []
    if names.time_to_first_token:
        rows = await query(f"sum by (le) (increase({names.time_to_first_token}_bucket{match}[{window}]))")
        for row in rows:
            try:
                bound = float(row["metric"]["le"])
                count = float(row["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if math.isfinite(count) and count >= 0 and not math.isnan(bound):
                buckets.append((bound, count))
        buckets.sort()
    reporting = int(scalar(reporting_rows) or 0)
    return signal.Figures(
        replicas=len(target.replicas),
        reporting=reporting if reporting else (len(target.replicas) if waiting is not None else 0),
        window_seconds=window_seconds,
        waiting=waiting,
        running=running,
        requests_per_second=rate,
        kv_cache_usage=min(kv, 1.0) if kv is not None else None,
        ttft_buckets=buckets,
        ttft_p90_seconds=histogram.bucket_quantile(signal.TTFT_QUANTILE, buckets) if buckets else None,
        problems=problems[:8],
    )


def _regex_escape(text: str) -> str:
    return "".join("\\\\" + c if c in ".^$*+?()[]{}|\\" else c for c in text)
