"""The model-server emulator's pure core: the latency model, the vLLM metric format, which pods it serves."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_operator.fleet.emulator import (
    TTFT_BUCKETS,
    LatencyModel,
    ReplicaStats,
    pod_endpoints,
    render_metrics,
    service_frontends,
)


def test_time_to_first_token_grows_with_the_requests_in_flight() -> None:
    model = LatencyModel(ttft_base_s=0.1, ttft_per_request_s=0.05, max_running=4)
    assert model.ttft_s(1) == pytest.approx(0.1)
    assert model.ttft_s(5) == pytest.approx(0.3)
    assert [model.ttft_s(n) for n in range(1, 10)] == sorted(model.ttft_s(n) for n in range(1, 10))
    assert (model.running(6), model.waiting(6), model.kv_cache_usage(6)) == (4, 2, 1.0)
    assert (model.running(2), model.waiting(2), model.kv_cache_usage(2)) == (2, 0, 0.5)


@pytest.mark.parametrize(
    "fields",
    [{"ttft_base_s": -1}, {"ttft_per_request_s": float("nan")}, {"max_running": 0}, {"tokens_per_s": 0}],
)
def test_nonsense_latency_models_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        LatencyModel(**fields)


def test_metrics_parse_as_prometheus_text_with_vllm_names_and_labels() -> None:
    model = LatencyModel(max_running=2)
    stats = ReplicaStats(in_flight=3, prompt_tokens=10, generation_tokens=20, succeeded=2)
    for seconds in (0.03, 0.3, 3.0):
        stats.observe_ttft(seconds)
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(stats, model, model_name='m"x'))}
    samples = {(s.name, s.labels.get("le")): s for f in families.values() for s in f.samples}
    assert families["vllm:time_to_first_token_seconds"].type == "histogram"
    assert families["vllm:num_requests_running"].type == "gauge"
    assert samples[("vllm:num_requests_running", None)].value == 2
    assert samples[("vllm:num_requests_waiting", None)].value == 1
    assert samples[("vllm:kv_cache_usage_perc", None)].value == 1.0
    assert samples[("vllm:time_to_first_token_seconds_count", None)].value == 3
    assert samples[("vllm:time_to_first_token_seconds_sum", None)].value == pytest.approx(3.33)
    assert samples[("vllm:time_to_first_token_seconds_bucket", "0.04")].value == 1
    assert samples[("vllm:time_to_first_token_seconds_bucket", "0.5")].value == 2
    assert samples[("vllm:time_to_first_token_seconds_bucket", "+Inf")].value == 3
    assert samples[("vllm:generation_tokens_total", None)].value == 20
    assert samples[("vllm:num_requests_running", None)].labels == {"engine": "0", "model_name": 'm"x'}
    buckets = [s.value for s in families["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and len(buckets) == len(TTFT_BUCKETS) + 1


def _pod(**overrides: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"llm.example.com/model": "llama"}},
        "spec": {
            "containers": [{"name": "c", "ports": [{"containerPort": 8000}, {"containerPort": 53, "protocol": "UDP"}]}]
        },
        "status": {"phase": "Running", "podIP": "10.244.0.5"},
    }
    for key, value in overrides.items():
        pod[key] = value
    return pod


def test_running_pods_in_the_pod_network_are_served_on_their_tcp_ports() -> None:
    eps = pod_endpoints("a100", _pod(), serves=lambda ip: ip.startswith("10.244."))
    assert [(e.served_by, e.ip, e.port, e.model_name) for e in eps] == [("a100/ns/p", "10.244.0.5", 8000, "llama")]
    assert eps[0].port_name == ""


@pytest.mark.parametrize(
    "pod",
    [
        _pod(status={"phase": "Pending", "podIP": "10.244.0.5"}),
        _pod(status={"phase": "Running"}),
        _pod(status={"phase": "Running", "podIP": "127.0.0.1"}),
        _pod(metadata={"name": "p", "namespace": "ns", "deletionTimestamp": "2026-01-01T00:00:00Z"}),
        _pod(spec={"containers": [{"ports": [{"containerPort": "8000"}, {"containerPort": 70000}]}]}),
        _pod(spec="garbage"),
        _pod(metadata=None),
    ],
)
def test_other_or_malformed_pods_are_not_served(pod: dict[str, Any]) -> None:
    assert pod_endpoints("a100", pod, serves=lambda ip: ip.startswith("10.244.")) == []


def _service(**overrides: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "metadata": {"name": "chat", "namespace": "ns"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "chat"}, "ports": [{"port": 80, "targetPort": "http"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.244.255.1"}, {"hostname": "lb.example.com"}]}},
    }
    svc.update(overrides)
    return svc


def test_load_balancer_services_with_an_ingress_in_the_pod_network_are_served() -> None:
    (fe,) = service_frontends("a100", _service(), serves=lambda ip: ip.startswith("10.244."))
    assert (fe.name, fe.ip, fe.port, fe.target, fe.selector) == (
        "a100/ns/service/chat",
        "10.244.255.1",
        80,
        "http",
        (("app", "chat"),),
    )


@pytest.mark.parametrize(
    "svc",
    [
        _service(spec={"type": "ClusterIP", "selector": {"app": "chat"}, "ports": [{"port": 80}]}),
        _service(status={}),
        _service(status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}),
        _service(spec={"type": "LoadBalancer", "ports": [{"port": 80}]}),
        _service(spec="garbage"),
    ],
)
def test_other_services_get_no_frontend(svc: dict[str, Any]) -> None:
    assert service_frontends("a100", svc, serves=lambda ip: ip.startswith("10.244.")) == []
