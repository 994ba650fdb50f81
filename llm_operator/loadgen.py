"""A load generator for an LLMDeployment: closed-loop clients sending OpenAI-style completions to its ready
replicas in every member cluster, one after the other, as the clients of its Service would be spread over them.

Guarantees:
- Bounded: `concurrency` is the number of requests in flight (each client waits for its answer, or the
  `timeout_seconds`, before sending the next); it can be changed while running, and never exceeds
  `MAX_CONCURRENCY`.
- Replicas come from the kube API of each member cluster (Running, Ready pods with an IP and the deployment's
  labels, `replicas_of`, pure), read again every `refresh_seconds`; requests go round robin over them. Nothing
  is sent when there is no replica.
- A replica that refuses, times out or answers non-200 costs that request only: it is recorded as an error.
- Every answer is a `Sample` (wall-clock time, latency, status, the replica that served it), kept in a ring of
  `max_samples`; `summary` gives the figures of a recent window.
No proxy is ever used: the pods' addresses are this machine's (the pod network) or the cluster's.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio

from api.labels import LABEL_DEPLOYMENT, LABEL_NAMESPACE
from kubeapi import RESOURCES, Kube, KubeError

MAX_CONCURRENCY = 1024


@dataclass(frozen=True)
class Replica:
    cluster: str
    pod: str
    url: str
    """Base URL, http://<pod IP>:<port>."""


@dataclass(frozen=True)
class Sample:
    at: float
    """Wall-clock seconds when the answer came."""
    latency_s: float
    status: int
    """HTTP status, or 0 when the request got no answer."""
    replica: str
    """<cluster>/<pod>."""


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    requests_per_second: float
    latency_p50_s: float | None
    latency_p90_s: float | None
    by_cluster: dict[str, int]


def replicas_of(cluster: str, pods: Sequence[Mapping[str, Any]], *, namespace: str, name: str) -> list[Replica]:
    """PURE: the deployment's Running, Ready pods with an IP, and the URL of their first TCP port (the serving
    port the applier renders). Anything malformed is skipped."""
    out: list[Replica] = []
    for pod in pods:
        meta, status, spec = (pod.get(k) or {} for k in ("metadata", "status", "spec"))
        labels = meta.get("labels") or {}
        if labels.get(LABEL_DEPLOYMENT) != name or labels.get(LABEL_NAMESPACE, meta.get("namespace")) != namespace:
            continue
        ip = status.get("podIP")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if status.get("phase") != "Running" or not ready or not isinstance(ip, str) or meta.get("deletionTimestamp"):
            continue
        ports = [
            p.get("containerPort")
            for c in spec.get("containers") or []
            for p in c.get("ports") or []
            if p.get("protocol", "TCP") == "TCP"
        ]
        port = next((p for p in ports if isinstance(p, int) and 0 < p < 65536), None)
        if port is None:
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out.append(Replica(cluster, str(meta.get("name", "")), f"http://{host}:{port}"))
    return sorted(out, key=lambda r: (r.cluster, r.pod))


async def kube_replicas(kubes: Mapping[str, Kube], *, namespace: str, name: str) -> list[Replica]:
    """The deployment's replicas in every cluster of `kubes` (cluster name → client); a cluster that cannot be
    read contributes none this time."""
    found: list[Replica] = []
    for cluster, kube in kubes.items():
        try:
            pods, _ = await kube.list(
                RESOURCES["Pod"],
                namespace=namespace,
                label_selector=f"{LABEL_DEPLOYMENT}={name}",
                field_selector="status.phase=Running",
            )
        except KubeError:
            continue
        found += replicas_of(cluster, pods, namespace=namespace, name=name)
    return found


class LoadGenerator:
    def __init__(
        self,
        *,
        resolve: Callable[[], Awaitable[Sequence[Replica]]],
        concurrency: int,
        timeout_seconds: float = 30.0,
        refresh_seconds: float = 1.0,
        path: str = "/v1/completions",
        max_tokens: int = 16,
        max_samples: int = 200_000,
    ) -> None:
        self._resolve = resolve
        self._concurrency = 0
        self.concurrency = concurrency
        self._timeout = timeout_seconds
        self._refresh = refresh_seconds
        self._path = path
        self._body = json.dumps({"prompt": "How do I reset my password?", "max_tokens": max_tokens}).encode()
        self.replicas: list[Replica] = []
        self.samples: deque[Sample] = deque(maxlen=max_samples)
        self._turn = itertools.count()
        self._workers = 0

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        self._concurrency = max(0, min(int(value), MAX_CONCURRENCY))

    async def run(self) -> None:
        """Send requests until cancelled."""
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as http,
            anyio.create_task_group() as tg,
        ):
            while True:
                self.replicas = list(await self._resolve())
                while self._workers < self._concurrency:
                    tg.start_soon(self._client, http, self._workers)
                    self._workers += 1
                await anyio.sleep(self._refresh)

    async def _client(self, http: aiohttp.ClientSession, index: int) -> None:
        while True:
            replicas = self.replicas
            if index >= self._concurrency or not replicas:
                await anyio.sleep(0.05)
                continue
            replica = replicas[next(self._turn) % len(replicas)]
            started = time.monotonic()
            try:
                async with http.post(
                    replica.url + self._path, data=self._body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    status = response.status
            except (TimeoutError, aiohttp.ClientError, OSError):
                status = 0
            self.samples.append(
                Sample(time.time(), time.monotonic() - started, status, f"{replica.cluster}/{replica.pod}")
            )
            if status != 200:
                await anyio.sleep(0.1)  # a refusing replica is not hammered in a tight loop

    def summary(self, seconds: float, *, now: float | None = None) -> Summary:
        """The answers of the last `seconds`."""
        now = time.time() if now is None else now
        recent = [s for s in reversed(self.samples) if s.at > now - seconds] if seconds > 0 else []
        return summarise(recent, seconds)


def summarise(samples: Sequence[Sample], seconds: float) -> Summary:
    """PURE: count, errors, rate and latency quantiles (of the successful answers) of some samples."""
    ok = sorted(s.latency_s for s in samples if s.status == 200)
    by_cluster: dict[str, int] = {}
    for s in samples:
        if s.status == 200:
            cluster = s.replica.split("/", 1)[0]
            by_cluster[cluster] = by_cluster.get(cluster, 0) + 1
    return Summary(
        requests=len(samples),
        errors=sum(1 for s in samples if s.status != 200),
        requests_per_second=len(ok) / seconds if seconds > 0 else 0.0,
        latency_p50_s=_quantile(ok, 0.5),
        latency_p90_s=_quantile(ok, 0.9),
        by_cluster=dict(sorted(by_cluster.items())),
    )


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
