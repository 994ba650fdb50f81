"""The harness end to end: real kwok pods get IPs from their cluster's own pod range, and a request from the host
to a pod's IP and port reaches the emulated replica of exactly that pod."""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from llm_operator.fleet.emulator import SERVED_BY_HEADER, post_json

if TYPE_CHECKING:
    from tests.fixtures.fleet import Fleet
    from tests.fixtures.podnet import StartEmulator

pytestmark = pytest.mark.fleet
TIMEOUT_S = 60.0


@pytest.fixture
def namespace(fleet: Fleet) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    for role in ("a100", "mixed"):
        fleet.kubectl(role, "create", "namespace", name)
    yield name
    for role in ("a100", "mixed"):
        fleet.kubectl(role, "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


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
                "spec": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai",
                            "ports": [{"name": "http", "containerPort": 8000}],
                        }
                    ],
                },
            },
        },
    }


def _running_pods(fleet: Fleet, role: str, namespace: str, count: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = json.loads(fleet.kubectl(role, "get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]
        return running if len(running) == count else None

    return fleet.poll_until(check, timeout=TIMEOUT_S, what=f"{count} running pods in {role}/{namespace}")


def test_a_request_from_the_host_reaches_the_emulated_replica_of_that_kwok_pod(
    fleet: Fleet, namespace: str, emulator: StartEmulator
) -> None:
    emu = emulator(namespaces=[namespace], clusters=["a100", "mixed"])
    for role in ("a100", "mixed"):
        fleet.kubectl(role, "apply", "-f", "-", input=json.dumps(_deployment("chat", namespace, 2)))
    pods = {role: _running_pods(fleet, role, namespace, 2) for role in ("a100", "mixed")}
    for role, cluster_pods in pods.items():
        cluster_range = ipaddress.IPv4Network(fleet.specs[role].pod_cidr or "")
        assert all(ipaddress.IPv4Address(p["status"]["podIP"]) in cluster_range for p in cluster_pods), role
    emu.wait_for_replicas(lambda rs: len(rs) == 4, timeout=TIMEOUT_S, what="4 replicas served")

    for role, cluster_pods in pods.items():
        for pod in cluster_pods:
            status, headers, body = post_json(
                f"http://{pod['status']['podIP']}:8000/v1/completions", {"model": "m", "prompt": "hello"}
            )
            assert status == 200, body
            expected = f"{fleet.clusters[role].name}/{namespace}/{pod['metadata']['name']}"
            assert headers[SERVED_BY_HEADER] == expected
            assert body["served_by"]["pod"] == pod["metadata"]["name"]

    # Scaled down: the replica of the deleted pod stops answering, the other still answers.
    fleet.kubectl("a100", "scale", "deployment", "chat", "-n", namespace, "--replicas=1")
    left = _running_pods(fleet, "a100", namespace, 1)[0]
    gone = next(p for p in pods["a100"] if p["metadata"]["name"] != left["metadata"]["name"])
    emu.wait_for_replicas(lambda rs: len(rs) == 3, timeout=TIMEOUT_S, what="the deleted pod's replica to stop")
    with pytest.raises(OSError, match="refused"):
        post_json(f"http://{gone['status']['podIP']}:8000/v1/completions", {"prompt": "x"}, timeout=5)
    status, _, _ = post_json(f"http://{left['status']['podIP']}:8000/v1/completions", {"prompt": "x"})
    assert status == 200
