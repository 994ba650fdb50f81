"""A model-server emulator: every running kwok pod of the fleet answers HTTP like a vLLM replica would.

kwok runs no containers. This process watches the fleet's pods (one watch per cluster, optionally limited to some
namespaces and a label selector) and, for every Running pod with an IP in the pod network (``podnet``), binds each
of its TCP container ports *inside the pod network namespace* (``podnet.listen_in``): a client on the host that
dials ``<pod IP>:<port>`` reaches that pod's emulated replica. The process itself stays in the host namespace, where
the fleet's apiservers listen on 127.0.0.1.

Each replica serves:
- ``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI-compatible, no streaming). The answer names
  the replica that served it: header ``X-Served-By: <cluster>/<namespace>/<pod>`` and a ``served_by`` object.
- ``GET /metrics``: vLLM's Prometheus names (``vllm:time_to_first_token_seconds`` histogram,
  ``vllm:num_requests_running``/``waiting``, ``vllm:kv_cache_usage_perc``, token and success counters), labelled
  ``model_name`` and ``engine`` as vLLM does.
- ``GET /health`` and ``GET /v1/models``.

LoadBalancer Services whose ``status.loadBalancer.ingress`` IP lies in the pod network (kwok has no cloud
controller; whoever plays one writes that status, e.g. with an address from ``spec.load_balancer_ip``) are served
too: each request to ``<ingress IP>:<port>`` goes to the next replica the Service selects, as a cloud load
balancer would send it.

Latency model (``LatencyModel``, pure): time to first token grows with the requests in flight on the replica;
requests above the batch size wait (``num_requests_waiting``). A replica can be told to misbehave
(``Behaviour``): garbage metrics, metrics slower than any scrape timeout, or 503 on every request.

An admin API on 127.0.0.1 (host namespace) lists the replicas and changes the latency model and behaviours; the
``Emulator`` class below starts the process and drives that API (for tests and ``make run``).

Run: ``python -m llm_operator.fleet.emulator --netns llmop-pods --kubeconfig K --cluster a100=kwok-a100 ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

logger = logging.getLogger("llm_operator.fleet.emulator")

# vLLM's buckets for vllm:time_to_first_token_seconds (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
SERVED_BY_HEADER = "X-Served-By"
MODEL_LABEL = "llm.example.com/model"
SLOW_METRICS_S = 60.0
MAX_TOKENS = 512


class Behaviour(StrEnum):
    OK = "ok"
    GARBAGE_METRICS = "garbage-metrics"  # /metrics answers 200 with text that is not the exposition format
    SLOW_METRICS = "slow-metrics"  # /metrics answers only after SLOW_METRICS_S (a scrape times out first)
    UNAVAILABLE = "unavailable"  # every request answers 503


# ------------------------------------------------------------------------------------------ pure core


@dataclass(frozen=True)
class LatencyModel:
    """How a replica's latency grows with load. ``in_flight`` counts the request being served.

    TTFT = ``ttft_base_s`` + ``ttft_per_request_s`` x (in_flight - 1): each concurrent request slows prefill.
    Up to ``max_running`` requests run in one batch; the rest wait (vLLM's ``num_requests_waiting``).
    """

    ttft_base_s: float = 0.05
    ttft_per_request_s: float = 0.05
    max_running: int = 8
    tokens_per_s: float = 500.0
    default_tokens: int = 16

    def __post_init__(self) -> None:
        for name in ("ttft_base_s", "ttft_per_request_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 600):
                raise ValueError(f"{name} must be between 0 and 600 seconds, not {value}")
        if self.max_running < 1 or not (math.isfinite(self.tokens_per_s) and self.tokens_per_s > 0):
            raise ValueError("max_running must be >= 1 and tokens_per_s > 0")
        if not 1 <= self.default_tokens <= MAX_TOKENS:
            raise ValueError(f"default_tokens must be between 1 and {MAX_TOKENS}")

    def ttft_s(self, in_flight: int) -> float:
        return self.ttft_base_s + self.ttft_per_request_s * max(0, in_flight - 1)

    def decode_s(self, tokens: int) -> float:
        return tokens / self.tokens_per_s

    def running(self, in_flight: int) -> int:
        return min(max(in_flight, 0), self.max_running)

    def waiting(self, in_flight: int) -> int:
        return max(0, in_flight - self.max_running)

    def kv_cache_usage(self, in_flight: int) -> float:
        return self.running(in_flight) / self.max_running


@dataclass
class ReplicaStats:
    """What one replica has done; rendered as vLLM metrics."""

    in_flight: int = 0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))
    ttft_sum: float = 0.0
    ttft_count: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    succeeded: int = 0

    def observe_ttft(self, seconds: float) -> None:
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
        self.ttft_sum += seconds
        self.ttft_count += 1


def _fmt(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{float(value):.1f}"


def render_metrics(stats: ReplicaStats, model: LatencyModel, *, model_name: str) -> str:
    """PURE: the Prometheus text exposition vLLM serves on /metrics, for one replica (engine "0")."""
    labels = f'engine="0",model_name="{_escape(model_name)}"'
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} {_fmt(model.running(stats.in_flight))}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{labels}}} {_fmt(model.waiting(stats.in_flight))}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{labels}}} {_fmt(model.kv_cache_usage(stats.in_flight))}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{labels}}} {_fmt(stats.prompt_tokens)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{labels}}} {_fmt(stats.generation_tokens)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f'vllm:request_success_total{{{labels},finished_reason="length"}} {_fmt(stats.succeeded)}',
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    for bound, count in zip(TTFT_BUCKETS, stats.bucket_counts, strict=True):
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{{labels},le="{_fmt(bound)}"}} {_fmt(count)}')
    lines += [
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} {_fmt(stats.ttft_count)}',
        f"vllm:time_to_first_token_seconds_count{{{labels}}} {_fmt(stats.ttft_count)}",
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} {_fmt(stats.ttft_sum)}",
    ]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(frozen=True)
class Endpoint:
    """One port of one pod to serve."""

    cluster: str
    namespace: str
    pod: str
    ip: str
    port: int
    model_name: str
    port_name: str = ""

    @property
    def served_by(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.pod}"


@dataclass(frozen=True)
class Frontend:
    """One port of a LoadBalancer Service's ingress address: what a cloud load balancer would serve."""

    cluster: str
    namespace: str
    service: str
    ip: str
    port: int
    selector: tuple[tuple[str, str], ...]
    target: int | str

    @property
    def name(self) -> str:
        return f"{self.cluster}/{self.namespace}/service/{self.service}"


def service_frontends(cluster: str, svc: Mapping[str, Any], *, serves: Callable[[str], bool]) -> list[Frontend]:
    """PURE: the frontends of a LoadBalancer Service whose ingress IPs ``serves`` accepts (kwok has no cloud
    controller: whoever plays it writes ``status.loadBalancer.ingress``). Malformed input yields none."""
    meta, spec, status = (svc.get(k) or {} for k in ("metadata", "spec", "status"))
    if not all(isinstance(x, Mapping) for x in (meta, spec, status)) or spec.get("type") != "LoadBalancer":
        return []
    name, namespace, selector = meta.get("name"), meta.get("namespace"), spec.get("selector")
    if not isinstance(name, str) or not isinstance(namespace, str) or not isinstance(selector, Mapping) or not selector:
        return []
    lb = status.get("loadBalancer") or {}
    ingress = lb.get("ingress") if isinstance(lb, Mapping) else None
    ips = [i.get("ip") for i in ingress or [] if isinstance(i, Mapping)]
    pairs = tuple(sorted((str(k), str(v)) for k, v in selector.items()))
    out: list[Frontend] = []
    for ip in ips:
        if not isinstance(ip, str) or not serves(ip):
            continue
        for port in spec.get("ports") or []:
            if not isinstance(port, Mapping) or port.get("protocol", "TCP") != "TCP":
                continue
            number, target = port.get("port"), port.get("targetPort", port.get("port"))
            if isinstance(number, int) and 0 < number < 65536 and isinstance(target, int | str):
                out.append(Frontend(cluster, namespace, name, ip, number, pairs, target))
    return out


def pod_endpoints(cluster: str, pod: Mapping[str, Any], *, serves: Callable[[str], bool]) -> list[Endpoint]:
    """PURE: the endpoints of a pod that is Running with an IP that ``serves`` accepts (none otherwise).

    Hostile input: anything malformed yields no endpoint rather than an error.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    if not isinstance(meta, Mapping) or not isinstance(status, Mapping) or not isinstance(spec, Mapping):
        return []
    ip, name, namespace = status.get("podIP"), meta.get("name"), meta.get("namespace")
    if status.get("phase") != "Running" or not isinstance(ip, str) or not serves(ip):
        return []
    if not isinstance(name, str) or not isinstance(namespace, str) or meta.get("deletionTimestamp"):
        return []
    labels = meta.get("labels") or {}
    model = labels.get(MODEL_LABEL) if isinstance(labels, Mapping) else None
    model_name = model if isinstance(model, str) else name
    out: list[Endpoint] = []
    for container in spec.get("containers") or []:
        if not isinstance(container, Mapping):
            continue
        for port in container.get("ports") or []:
            if not isinstance(port, Mapping) or port.get("protocol", "TCP") != "TCP":
                continue
            number, port_name = port.get("containerPort"), port.get("name")
            if isinstance(number, int) and 0 < number < 65536:
                named = port_name if isinstance(port_name, str) else ""
                out.append(Endpoint(cluster, namespace, name, ip, number, model_name, named))
    return out


# --------------------------------------------------------------------------------------------- server


@dataclass
class Replica:
    endpoint: Endpoint
    stats: ReplicaStats = field(default_factory=ReplicaStats)
    behaviour: Behaviour = Behaviour.OK
    served: int = 0


class Server:
    """The emulator: pods in, sockets in the pod namespace out, one aiohttp application serving them all."""

    def __init__(
        self,
        *,
        netns: str,
        serves: Callable[[str], bool],
        model: LatencyModel,
    ) -> None:
        self.netns = netns
        self.serves = serves
        self.model = model
        self.replicas: dict[tuple[str, int], Replica] = {}  # (ip, port) -> replica
        self.runners: dict[Endpoint, Any] = {}
        self.wanted: dict[str, set[Endpoint]] = {}  # cluster -> endpoints its pods ask for
        self.behaviours: dict[str, Behaviour] = {}  # served_by (or "*") -> behaviour
        self.pod_labels: dict[tuple[str, str, str], dict[str, str]] = {}  # (cluster, namespace, pod) -> labels
        self.frontends_wanted: dict[str, set[Frontend]] = {}
        self.frontends: dict[Frontend, Any] = {}  # -> runner
        self.turns: dict[Frontend, int] = {}
        self.bind_errors: dict[Endpoint | Frontend, str] = {}

    # ---- the replicas' HTTP API (one application per replica: removing it closes its connections too)

    def app(self, replica: Replica) -> Any:
        from aiohttp import web

        def bound(handler: Callable[[Replica, Any], Any]) -> Callable[[Any], Any]:
            async def handle(request: Any) -> Any:
                return await handler(replica, request)

            return handle

        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/completions", bound(self._completions))
        app.router.add_post("/v1/chat/completions", bound(self._completions))
        app.router.add_get("/metrics", bound(self._metrics))
        app.router.add_get("/health", bound(self._health))
        app.router.add_get("/v1/models", bound(self._models))
        return app

    def _behaviour(self, replica: Replica) -> Behaviour:
        return self.behaviours.get(replica.endpoint.served_by) or self.behaviours.get("*") or Behaviour.OK

    async def _completions(self, replica: Replica, request: Any) -> Any:
        from aiohttp import web

        served_by = {SERVED_BY_HEADER: replica.endpoint.served_by}
        if self._behaviour(replica) is Behaviour.UNAVAILABLE:
            raise web.HTTPServiceUnavailable(text="unavailable (emulated)", headers=served_by)
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON", headers=served_by) from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body is not a JSON object", headers=served_by)
        max_tokens = body.get("max_tokens")
        tokens = max(1, min(max_tokens, MAX_TOKENS)) if isinstance(max_tokens, int) else self.model.default_tokens
        prompt = body.get("prompt") if "prompt" in body else body.get("messages")
        prompt_tokens = max(1, len(json.dumps(prompt)) // 4)
        loop = asyncio.get_running_loop()
        stats = replica.stats
        started = loop.time()
        stats.in_flight += 1
        try:
            await asyncio.sleep(self.model.ttft_s(stats.in_flight))
            stats.observe_ttft(loop.time() - started)
            await asyncio.sleep(self.model.decode_s(tokens))
        finally:
            stats.in_flight -= 1
        stats.prompt_tokens += prompt_tokens
        stats.generation_tokens += tokens
        stats.succeeded += 1
        replica.served += 1
        ep = replica.endpoint
        chat = request.path.endswith("/chat/completions")
        text = f"emulated answer from {ep.served_by}"
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "length"}
        )
        answer = {
            "id": f"cmpl-{ep.pod}-{replica.served}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") if isinstance(body.get("model"), str) else ep.model_name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
            "served_by": {"cluster": ep.cluster, "namespace": ep.namespace, "pod": ep.pod, "ip": ep.ip},
        }
        return web.json_response(answer, headers=served_by)

    async def _metrics(self, replica: Replica, request: Any) -> Any:
        from aiohttp import web

        behaviour = self._behaviour(replica)
        if behaviour is Behaviour.UNAVAILABLE:
            raise web.HTTPServiceUnavailable(text="unavailable (emulated)")
        if behaviour is Behaviour.GARBAGE_METRICS:
            return web.Response(
                text="vllm:num_requests_waiting{{{ not a number\n\x00garbage", content_type="text/plain"
            )
        if behaviour is Behaviour.SLOW_METRICS:
            await asyncio.sleep(SLOW_METRICS_S)
        text = render_metrics(replica.stats, self.model, model_name=replica.endpoint.model_name)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _health(self, replica: Replica, request: Any) -> Any:
        from aiohttp import web

        if self._behaviour(replica) is Behaviour.UNAVAILABLE:
            raise web.HTTPServiceUnavailable(text="unavailable (emulated)")
        return web.Response(text="")

    async def _models(self, replica: Replica, request: Any) -> Any:
        from aiohttp import web

        name = replica.endpoint.model_name
        return web.json_response({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "emulator"}]})

    # ---- keeping the sockets in line with the pods

    async def start(self) -> None:
        """Nothing to start before the first pod; kept so that callers pair it with ``stop``."""

    async def stop(self) -> None:
        for ep in list(self.runners):
            await self._release(ep)
        for runner in self.frontends.values():
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self.frontends.clear()

    def set_pods(self, cluster: str, pods: Iterable[Mapping[str, Any]]) -> None:
        wanted: set[Endpoint] = set()
        self.pod_labels = {k: v for k, v in self.pod_labels.items() if k[0] != cluster}
        for pod in pods:
            found = pod_endpoints(cluster, pod, serves=self.serves)
            wanted.update(found)
            if found:
                labels = (pod.get("metadata") or {}).get("labels") or {}
                self.pod_labels[(cluster, found[0].namespace, found[0].pod)] = dict(labels)
        self.wanted[cluster] = wanted

    def set_services(self, cluster: str, services: Iterable[Mapping[str, Any]]) -> None:
        wanted: set[Frontend] = set()
        for svc in services:
            wanted.update(service_frontends(cluster, svc, serves=self.serves))
        self.frontends_wanted[cluster] = wanted

    def backend(self, frontend: Frontend) -> Replica | None:
        """The next replica behind a frontend, in turn (a load balancer's round robin)."""
        selector = dict(frontend.selector)
        candidates = sorted(
            (
                r
                for r in self.replicas.values()
                if (ep := r.endpoint).cluster == frontend.cluster
                and ep.namespace == frontend.namespace
                and frontend.target in (ep.port, ep.port_name)
                and selector.items() <= self.pod_labels.get((ep.cluster, ep.namespace, ep.pod), {}).items()
            ),
            key=lambda r: r.endpoint.served_by,
        )
        if not candidates:
            return None
        turn = self.turns.get(frontend, 0)
        self.turns[frontend] = turn + 1
        return candidates[turn % len(candidates)]

    def frontend_app(self, frontend: Frontend) -> Any:
        from aiohttp import web

        def forward(handler: Callable[[Replica, Any], Any]) -> Callable[[Any], Any]:
            async def handle(request: Any) -> Any:
                replica = self.backend(frontend)
                if replica is None:
                    raise web.HTTPServiceUnavailable(text=f"no backend for {frontend.name}")
                return await handler(replica, request)

            return handle

        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/completions", forward(self._completions))
        app.router.add_post("/v1/chat/completions", forward(self._completions))
        app.router.add_get("/health", forward(self._health))
        app.router.add_get("/v1/models", forward(self._models))
        return app

    async def reconcile(self) -> None:
        """Bind what the pods want and is not bound, release what no pod wants (bind failures retry later)."""
        from aiohttp import web

        wanted: set[Endpoint] = set().union(*self.wanted.values()) if self.wanted else set()
        for ep in [e for e in self.runners if e not in wanted]:
            await self._release(ep)
            logger.info("stopped serving %s on %s:%d", ep.served_by, ep.ip, ep.port)
        for ep in sorted(wanted - set(self.runners), key=lambda e: (e.cluster, e.namespace, e.pod, e.port)):
            if (ep.ip, ep.port) in self.replicas:
                continue  # another pod still holds that address (an IP reused before the old pod's end was seen)
            try:
                sock = await asyncio.to_thread(_listen, self.netns, ep.ip, ep.port)
            except OSError as e:
                self.bind_errors[ep] = str(e)
                continue
            self.bind_errors.pop(ep, None)
            replica = Replica(ep)
            # A pod that goes away drops its connections at once, as a killed process would.
            runner = web.AppRunner(self.app(replica), access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self.runners[ep] = runner
            self.replicas[(ep.ip, ep.port)] = replica
            logger.info("serving %s on %s:%d", ep.served_by, ep.ip, ep.port)
        await self._reconcile_frontends()

    async def _reconcile_frontends(self) -> None:
        from aiohttp import web

        wanted: set[Frontend] = set().union(*self.frontends_wanted.values()) if self.frontends_wanted else set()
        for fe in [f for f in self.frontends if f not in wanted]:
            runner = self.frontends.pop(fe)
            self.turns.pop(fe, None)
            with contextlib.suppress(Exception):
                await runner.cleanup()
        for fe in sorted(wanted - set(self.frontends), key=lambda f: (f.name, f.ip, f.port)):
            try:
                sock = await asyncio.to_thread(_listen, self.netns, fe.ip, fe.port)
            except OSError as e:
                self.bind_errors[fe] = str(e)
                continue
            self.bind_errors.pop(fe, None)
            runner = web.AppRunner(
                self.frontend_app(fe), access_log=None, handler_cancellation=True, shutdown_timeout=0.1
            )
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self.frontends[fe] = runner
            logger.info("load balancing %s on %s:%d", fe.name, fe.ip, fe.port)

    async def _release(self, ep: Endpoint) -> None:
        runner = self.runners.pop(ep)
        self.replicas.pop((ep.ip, ep.port), None)
        with contextlib.suppress(Exception):
            await runner.cleanup()

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                **dataclasses.asdict(r.endpoint),
                "served_by": r.endpoint.served_by,
                "served": r.served,
                "in_flight": r.stats.in_flight,
                "behaviour": str(self._behaviour(r)),
            }
            for r in sorted(self.replicas.values(), key=lambda r: r.endpoint.served_by)
        ]


def _listen(netns: str, ip: str, port: int) -> Any:
    from llm_operator.fleet.podnet import listen_in

    return listen_in(netns, ip, port)


# ------------------------------------------------------------------------------------------ watching pods


async def watch_cluster(
    server: Server,
    *,
    cluster: str,
    kubeconfig: Path,
    context: str,
    namespaces: Sequence[str],
    selector: str | None,
    changed: asyncio.Event,
) -> None:
    """List and watch the cluster's pods forever, feeding ``server``; errors are logged and retried."""
    from kubernetes_asyncio import config as k8s_config

    from kubeapi import Kube

    while True:
        try:
            api = await k8s_config.new_client_from_config(config_file=str(kubeconfig), context=context)
        except Exception as e:  # the cluster may not be up yet
            logger.warning("%s: cannot load kubeconfig context %s: %s", cluster, context, e)
            await asyncio.sleep(2)
            continue
        kube = Kube(api, name=cluster)
        try:
            await _follow_pods(server, kube, cluster, list(namespaces) or [None], selector, changed)
        except Exception as e:  # anything from the apiserver: list again
            logger.warning("%s: pod watch ended (%s); listing again", cluster, e)
            await asyncio.sleep(1)
        finally:
            await kube.close()


async def _follow_pods(
    server: Server, kube: Any, cluster: str, scopes: list[str | None], selector: str | None, changed: asyncio.Event
) -> None:
    from kubeapi import RESOURCES

    def pods(items: list[Mapping[str, Any]]) -> None:
        server.set_pods(cluster, items)

    def services(items: list[Mapping[str, Any]]) -> None:
        server.set_services(cluster, items)

    async with asyncio.TaskGroup() as tg:
        for ns in scopes:
            tg.create_task(_follow(kube, RESOURCES["Pod"], ns, selector, pods, changed))
            tg.create_task(_follow(kube, RESOURCES["Service"], ns, None, services, changed))


async def _follow(
    kube: Any,
    resource: Any,
    namespace: str | None,
    selector: str | None,
    publish: Callable[[list[Mapping[str, Any]]], None],
    changed: asyncio.Event,
) -> None:
    """List, then watch, one kind in one scope; ``publish`` gets every object after each change."""
    items, version = await kube.list(resource, namespace=namespace, label_selector=selector)
    objects: dict[tuple[str, str], Mapping[str, Any]] = {
        (i["metadata"]["namespace"], i["metadata"]["name"]): i for i in items
    }
    publish(list(objects.values()))
    changed.set()
    while True:
        async for ev in kube.watch(resource, resource_version=version, namespace=namespace, label_selector=selector):
            meta = ev.object.get("metadata") or {}
            if isinstance(meta.get("resourceVersion"), str):
                version = meta["resourceVersion"]
            if ev.type == "BOOKMARK":
                continue
            key = (str(meta.get("namespace")), str(meta.get("name")))
            if ev.type == "DELETED":
                objects.pop(key, None)
            else:
                objects[key] = ev.object
            publish(list(objects.values()))
            changed.set()


def _label(what: Endpoint | Frontend) -> str:
    return what.served_by if isinstance(what, Endpoint) else what.name


async def _admin(server: Server, port: int) -> Any:
    from aiohttp import web

    async def replicas(_: Any) -> Any:
        return web.json_response(
            {
                "replicas": server.describe(),
                "bind_errors": {_label(e): m for e, m in server.bind_errors.items()},
                "frontends": [f"{f.name} {f.ip}:{f.port}" for f in server.frontends],
            }
        )

    async def latency(request: Any) -> Any:
        try:
            server.model = dataclasses.replace(server.model, **await request.json())
        except (ValueError, TypeError) as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        return web.json_response(dataclasses.asdict(server.model))

    async def behaviour(request: Any) -> Any:
        try:
            body = await request.json()
            target, value = str(body["served_by"]), Behaviour(body["behaviour"])
        except (ValueError, KeyError, TypeError) as e:
            raise web.HTTPBadRequest(text=f"want {{served_by, behaviour}}: {e}") from None
        if value is Behaviour.OK:
            server.behaviours.pop(target, None)
        else:
            server.behaviours[target] = value
        return web.json_response({"behaviours": {k: str(v) for k, v in server.behaviours.items()}})

    app = web.Application()
    app.router.add_get("/replicas", replicas)
    app.router.add_put("/latency", latency)
    app.router.add_put("/behaviour", behaviour)
    app.router.add_get("/healthz", lambda _: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner


async def _ok() -> Any:
    from aiohttp import web

    return web.Response(text="ok")


async def serve(args: argparse.Namespace) -> None:
    from llm_operator.fleet.podnet import NETNS_DIR, PodNetwork

    if not (NETNS_DIR / args.netns).exists():
        raise SystemExit(f"emulator: network namespace {args.netns} does not exist (see llm_operator.fleet.podnet)")
    net = PodNetwork(ranges=tuple(args.range), name=args.netns)
    server = Server(netns=args.netns, serves=net.contains, model=LatencyModel(**json.loads(args.latency or "{}")))
    await server.start()
    changed = asyncio.Event()
    admin = await _admin(server, args.admin_port)
    port = admin.addresses[0][1]
    clusters = [c.split("=", 1) for c in args.cluster]
    try:
        async with asyncio.TaskGroup() as tg:
            for name, context in clusters:
                tg.create_task(
                    watch_cluster(
                        server,
                        cluster=name,
                        kubeconfig=Path(args.kubeconfig),
                        context=context,
                        namespaces=args.namespace or [],
                        selector=args.selector,
                        changed=changed,
                    )
                )

            async def reconcile_loop() -> None:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), timeout=1.0)  # retry failed binds every second
                    changed.clear()
                    await server.reconcile()

            tg.create_task(reconcile_loop())
            ready = json.dumps({"admin": f"http://127.0.0.1:{port}"})
            if args.ready_file:
                await asyncio.to_thread(_write_atomically, Path(args.ready_file), ready)
            print(ready, flush=True)
    finally:
        await server.stop()
        await admin.cleanup()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_operator.fleet.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--netns", required=True, help="the pod network namespace (podnet)")
    parser.add_argument("--range", action="append", required=True, help="a pod range served by the namespace")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--cluster", action="append", required=True, help="NAME=CONTEXT, repeatable")
    parser.add_argument("--namespace", action="append", help="watch only these namespaces (default: all)")
    parser.add_argument("--selector", help="label selector of the pods to serve")
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--ready-file")
    parser.add_argument("--latency", help="LatencyModel fields as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s emulator %(levelname)s %(message)s")
    loop_main = serve(args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_until_signal(loop_main))


async def _until_signal(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------------- driving it (tests)


class EmulatorError(Exception):
    pass


@dataclass
class Emulator:
    """A running emulator process and its admin API (synchronous, for tests and scripts)."""

    process: subprocess.Popen[bytes]
    admin: str
    log: Path

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read())

    def replicas(self) -> list[dict[str, Any]]:
        """The replicas being served: cluster, namespace, pod, ip, port, served_by, served, in_flight, behaviour."""
        return list(self._call("GET", "/replicas")["replicas"])

    def bind_errors(self) -> dict[str, str]:
        return dict(self._call("GET", "/replicas")["bind_errors"])

    def set_latency(self, **fields: Any) -> dict[str, Any]:
        """Change the latency model (any ``LatencyModel`` field)."""
        return dict(self._call("PUT", "/latency", fields))

    def set_behaviour(self, served_by: str, behaviour: Behaviour | str) -> None:
        """``served_by`` is ``<cluster>/<namespace>/<pod>``, or ``*`` for every replica."""
        self._call("PUT", "/behaviour", {"served_by": served_by, "behaviour": str(behaviour)})

    def wait_for_replicas(
        self, predicate: Callable[[list[dict[str, Any]]], bool], *, timeout: float, what: str
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            current = self.replicas()
            if predicate(current):
                return current
            if self.process.poll() is not None:
                raise EmulatorError(f"the emulator exited ({self.process.returncode}); see {self.log}")
            if time.monotonic() > deadline:
                raise EmulatorError(f"timed out after {timeout:.0f}s waiting for {what}; serving {current}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def running(
    *,
    netns: str,
    ranges: Sequence[str],
    kubeconfig: Path,
    clusters: Mapping[str, str],
    namespaces: Sequence[str] = (),
    selector: str | None = None,
    latency: LatencyModel | None = None,
    workdir: Path,
    timeout: float = 30.0,
) -> Iterator[Emulator]:
    """Start the emulator (``clusters``: name -> kubeconfig context) and stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"emulator-{os.getpid()}-{time.monotonic_ns()}.json"
    log = ready.with_suffix(".log")
    argv = [sys.executable, "-m", "llm_operator.fleet.emulator", "--netns", netns, "--kubeconfig", str(kubeconfig)]
    argv += [a for r in ranges for a in ("--range", r)]
    argv += [a for name, ctx in clusters.items() for a in ("--cluster", f"{name}={ctx}")]
    argv += [a for ns in namespaces for a in ("--namespace", ns)]
    argv += ["--selector", selector] if selector else []
    argv += ["--latency", json.dumps(dataclasses.asdict(latency))] if latency else []
    argv += ["--ready-file", str(ready)]
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    emulator: Emulator | None = None
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None:
                raise EmulatorError(f"the emulator exited ({process.returncode}): {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise EmulatorError(f"the emulator did not start within {timeout:.0f}s; see {log}")
            time.sleep(0.1)
        emulator = Emulator(process=process, admin=json.loads(ready.read_text())["admin"], log=log)
        yield emulator
    finally:
        if emulator is not None:
            emulator.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        ready.unlink(missing_ok=True)


def post_json(url: str, body: Mapping[str, Any], *, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` to ``url`` without any proxy; (status, headers, parsed JSON or text). Network errors raise
    OSError (URLError is one)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            raw, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


if __name__ == "__main__":
    main()
