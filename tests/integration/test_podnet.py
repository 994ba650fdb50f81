"""The pod network namespace and the emulator's server, for real: sockets inside the namespace, clients on the host.

No kwok here: pods are given to the server as the apiserver would list them; the e2e test
(tests/e2e/test_podnet.py) does the same with real kwok pods.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_operator.fleet.emulator import SERVED_BY_HEADER, Behaviour, LatencyModel, Server
from llm_operator.fleet.podnet import PodNetwork, exists, listen_in

pytestmark = pytest.mark.anyio


def _pod(name: str, ip: str, port: int = 8000) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": ip},
    }


async def test_a_socket_bound_in_the_namespace_answers_a_client_on_the_host(podnet: PodNetwork) -> None:
    assert exists(podnet)
    sock = listen_in(podnet.name, "10.244.3.7", 8080)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from the pod network\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, sock=sock)
    async with server:
        reader, writer = await asyncio.open_connection("10.244.3.7", 8080)
        assert await reader.readline() == b"hello from the pod network\n"
        writer.close()
    # And the address is not served in the host namespace itself: only the route leads there.
    with socket.socket() as host_sock, pytest.raises(OSError, match="assign"):
        host_sock.bind(("10.244.3.7", 8080))


async def test_the_emulator_serves_each_pod_and_stops_when_the_pod_goes(podnet: PodNetwork) -> None:
    server = Server(
        netns=podnet.name, serves=podnet.contains, model=LatencyModel(ttft_base_s=0.05, ttft_per_request_s=0.1)
    )
    await server.start()
    try:
        server.set_pods("a100", [_pod("p1", "10.244.1.10"), _pod("outside", "10.9.0.1")])
        server.set_pods("mixed", [_pod("p2", "10.245.1.10")])
        await server.reconcile()
        assert sorted(r["served_by"] for r in server.describe()) == ["a100/ns/p1", "mixed/ns/p2"]
        async with aiohttp.ClientSession(trust_env=False) as http:
            for ip, who in (("10.244.1.10", "a100/ns/p1"), ("10.245.1.10", "mixed/ns/p2")):
                async with http.post(f"http://{ip}:8000/v1/completions", json={"prompt": "hi", "max_tokens": 4}) as r:
                    assert r.status == 200
                    assert r.headers[SERVED_BY_HEADER] == who
                    body = await r.json()
                    assert body["served_by"]["pod"] == who.rsplit("/", 1)[1]
                    assert body["usage"]["completion_tokens"] == 4

            # Eight at once: the last ones wait behind the first ones, as in a batch that grows.
            async def one() -> float:
                t0 = time.monotonic()
                async with http.post("http://10.244.1.10:8000/v1/chat/completions", json={"messages": []}) as r:
                    assert r.status == 200
                return time.monotonic() - t0

            alone = await one()
            crowded = await asyncio.gather(*(one() for _ in range(8)))
            assert max(crowded) > alone + 0.5

            async with http.get("http://10.244.1.10:8000/metrics") as r:
                families = {f.name: f for f in text_string_to_metric_families(await r.text())}
            ttft = families["vllm:time_to_first_token_seconds"]
            count = next(s.value for s in ttft.samples if s.name.endswith("_count"))
            assert count == 10

            server.behaviours["a100/ns/p1"] = Behaviour.GARBAGE_METRICS
            async with http.get("http://10.244.1.10:8000/metrics") as r:
                with pytest.raises(ValueError, match="could not convert"):
                    list(text_string_to_metric_families(await r.text()))
            server.behaviours["*"] = Behaviour.UNAVAILABLE
            async with http.post("http://10.245.1.10:8000/v1/completions", json={}) as r:
                assert r.status == 503

            server.set_pods("a100", [])
            await server.reconcile()
            assert [r["served_by"] for r in server.describe()] == ["mixed/ns/p2"]
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.post("http://10.244.1.10:8000/v1/completions", json={}) as r:
                    pass
    finally:
        await server.stop()


async def test_a_load_balancer_frontend_spreads_requests_over_the_replicas_it_selects(podnet: PodNetwork) -> None:
    server = Server(netns=podnet.name, serves=podnet.contains, model=LatencyModel(ttft_base_s=0.0))
    await server.start()
    try:
        chat = [_pod(f"chat-{i}", f"10.244.2.{i + 10}") for i in range(2)]
        other = _pod("other", "10.244.2.30")
        for pod in chat:
            pod["metadata"]["labels"] = {"app": "chat"}
            pod["spec"]["containers"][0]["ports"][0]["name"] = "http"
        server.set_pods("a100", [*chat, other])
        server.set_services(
            "a100",
            [
                {
                    "metadata": {"name": "chat", "namespace": "ns"},
                    "spec": {
                        "type": "LoadBalancer",
                        "selector": {"app": "chat"},
                        "ports": [{"port": 80, "targetPort": "http"}],
                    },
                    "status": {"loadBalancer": {"ingress": [{"ip": "10.244.255.1"}]}},
                }
            ],
        )
        await server.reconcile()
        async with aiohttp.ClientSession(trust_env=False) as http:
            served = set()
            for _ in range(4):
                async with http.post("http://10.244.255.1:80/v1/completions", json={"prompt": "hi"}) as r:
                    assert r.status == 200
                    served.add(r.headers[SERVED_BY_HEADER])
            assert served == {"a100/ns/chat-0", "a100/ns/chat-1"}
            server.set_services("a100", [])
            await server.reconcile()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.post("http://10.244.255.1:80/v1/completions", json={}) as r:
                    pass
    finally:
        await server.stop()
