"""The load generator's pure parts: which pods are replicas to send to, and the figures of a window."""

from __future__ import annotations

from typing import Any

from llm_operator.loadgen import MAX_CONCURRENCY, LoadGenerator, Replica, Sample, replicas_of, summarise


def pod(name: str, *, ip: str | None = "10.244.0.5", ready: bool = True, phase: str = "Running", **extra: Any) -> Any:
    labels = {"llm.example.com/deployment": "chat", "llm.example.com/namespace": "team"}
    return {
        "metadata": {"name": name, "namespace": "team", "labels": labels, **extra},
        "spec": {"containers": [{"name": "model", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_only_running_ready_pods_of_the_deployment_with_an_ip_and_a_port() -> None:
    other = pod("other")
    other["metadata"]["labels"]["llm.example.com/deployment"] = "else"
    no_port = pod("no-port")
    no_port["spec"]["containers"][0]["ports"] = [{"containerPort": 99999}]
    pods = [
        pod("b", ip="10.244.0.6"),
        pod("a"),
        pod("unready", ready=False),
        pod("pending", phase="Pending"),
        pod("no-ip", ip=None),
        pod("leaving", deletionTimestamp="2026-01-01T00:00:00Z"),
        other,
        no_port,
        {"metadata": None, "status": "nonsense"},
    ]
    assert replicas_of("a100", pods, namespace="team", name="chat") == [
        Replica("a100", "a", "http://10.244.0.5:8080"),
        Replica("a100", "b", "http://10.244.0.6:8080"),
    ]


def test_ipv6_addresses_are_bracketed() -> None:
    assert replicas_of("c", [pod("a", ip="fd00::5")], namespace="team", name="chat")[0].url == "http://[fd00::5]:8080"


def test_summary_counts_errors_apart_and_quantiles_from_answers() -> None:
    samples = [Sample(100.0 + i, 0.1 * (i + 1), 200, f"{'a100' if i % 2 else 'mixed'}/p{i}") for i in range(10)]
    samples.append(Sample(105.0, 5.0, 0, "a100/gone"))
    s = summarise(samples, 10)
    assert (s.requests, s.errors) == (11, 1)
    assert s.requests_per_second == 1.0
    assert s.latency_p50_s is not None and abs(s.latency_p50_s - 0.5) < 1e-9
    assert s.latency_p90_s is not None and abs(s.latency_p90_s - 0.9) < 1e-9
    assert s.by_cluster == {"a100": 5, "mixed": 5}
    assert summarise([], 5).latency_p90_s is None


def test_concurrency_is_bounded() -> None:
    async def nothing() -> list[Replica]:
        return []

    gen = LoadGenerator(resolve=nothing, concurrency=10**6)
    assert gen.concurrency == MAX_CONCURRENCY
    gen.concurrency = -3
    assert gen.concurrency == 0
