"""Shared pieces of the benchmarks: throw-away servers, realistic event streams, and result printing.

Guarantees: servers are started in a temporary directory and stopped at the end; event generators are seeded and
deterministic; results are printed as a table and written as JSON under bench/results/.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from api.events import Event, ResourceObserved
from bench.tls import Pki, SslPostgres, make_pki
from bus.auth import Role
from llm_operator.embedded import EmbeddedNats, EmbeddedPostgres, _free_port
from llm_operator.identities import BusIdentities
from watcher import translate

RESULTS = Path(__file__).parent / "results"
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@dataclass
class Servers:
    nats: EmbeddedNats
    postgres: EmbeddedPostgres | SslPostgres
    identities: BusIdentities | None = None
    """With authentication: who NATS accepts (the bench itself as an admin; `grant` adds the operator's)."""
    pki: Pki | None = None
    """With TLS: NATS and Postgres require it, with a client certificate (bench.tls)."""

    def tls_env(self) -> dict[str, str]:
        """The operator's LLMOP_* TLS settings (none without TLS)."""
        return self.pki.env() if self.pki else {}

    def client_ssl(self) -> ssl.SSLContext | None:
        return self.pki.client_context() if self.pki else None

    @property
    def admin_seed(self) -> Path | None:
        return self.identities.seed_path("bench", "admin_bench") if self.identities else None

    def grant(self, prefix: str, clusters: list[str]) -> Path | None:
        """The planner's and the clusters' identities; returns LLMOP_NATS_IDENTITIES_DIR (None without auth)."""
        if self.identities is None:
            return None
        self.identities.ensure(prefix, clusters)
        self.nats.reload()
        return self.identities.seeds_dir(prefix)


@contextmanager
def servers(*, auth: bool = False, tls: bool = False) -> Iterator[Servers]:
    """NATS and Postgres for one run; `tls`: both require TLS with a client certificate (bench.tls)."""
    with tempfile.TemporaryDirectory(prefix="llmop-bench-") as tmp:
        identities = None
        if auth:
            identities = BusIdentities(Path(tmp) / "bus")
            identities.add("bench", "admin_bench", Role.ADMIN)
        pki = make_pki(Path(tmp) / "pki") if tls else None
        nats = EmbeddedNats(
            Path(tmp) / "nats",
            port=_free_port(),
            auth_config=identities.server_config_path if identities else None,
            tls_cert=pki.server_cert if pki else None,
            tls_key=pki.server_key if pki else None,
            tls_ca=pki.ca if pki else None,
        ).start()
        postgres: EmbeddedPostgres | SslPostgres
        if pki is not None:
            postgres = SslPostgres(Path(tmp) / "pg" / "data", pki, database="bench").start()
        else:
            postgres = EmbeddedPostgres(Path(tmp) / "pg", database="bench", cleanup="delete").start()
        try:
            yield Servers(nats, postgres, identities, pki)
        finally:
            nats.stop()
            postgres.stop()


def rss_mib() -> float:
    """Current resident set size of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _node(cluster: int, index: int, rng: random.Random, version: int) -> dict[str, Any]:
    products = [("NVIDIA-A100-SXM4-80GB", 81920), ("NVIDIA-H100-80GB-HBM3", 81559), ("NVIDIA-A100-SXM4-40GB", 40960)]
    product, memory = products[(cluster + index) % len(products)]
    allocatable = {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "1Ti"}
    return {
        "metadata": {
            "name": f"gpu-{index:03d}",
            "uid": f"node-{cluster}-{index}",
            "resourceVersion": str(version),
            "labels": {
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.memory": str(memory),
                "nvidia.com/gpu.count": "8",
                "kubernetes.io/hostname": f"gpu-{index:03d}",
                "topology.kubernetes.io/zone": f"zone-{index % 3}",
                "node.kubernetes.io/instance-type": "p4d.24xlarge",
                "revision": str(rng.randrange(1000)),
            },
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": allocatable,
            "capacity": allocatable,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _pod(cluster: int, index: int, rng: random.Random, version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"model-{index % 500}-{index}",
            "namespace": f"team-{index % 20}",
            "uid": f"pod-{cluster}-{index}",
            "resourceVersion": str(version),
            "labels": {
                "app.kubernetes.io/managed-by": "llm-operator",
                "llm.example.com/deployment": f"model-{index % 500}",
                "llm.example.com/namespace": f"team-{index % 20}",
                "llm.example.com/origin-cluster": f"c{cluster:03d}",
            },
        },
        "spec": {
            "nodeName": f"gpu-{index % 20:03d}",
            "containers": [
                {
                    "name": "model-server",
                    "resources": {
                        "requests": {"cpu": "8", "memory": "80Gi", "nvidia.com/gpu": str(rng.choice([1, 2, 4]))},
                        "limits": {"memory": "80Gi"},
                    },
                }
            ],
        },
        "status": {
            "phase": rng.choice(["Running", "Running", "Pending"]),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def observations(count: int, *, clusters: int = 20, seed: int = 7) -> Iterator[Event]:
    """A realistic watcher stream: node and pod snapshots across clusters (mostly updates of known objects)."""
    rng = random.Random(seed)
    for i in range(count):
        cluster = rng.randrange(clusters)
        at = T0 + timedelta(milliseconds=i)
        if rng.random() < 0.4:
            obj = _node(cluster, rng.randrange(20), rng, 10_000 + i)
            yield translate.observed(f"c{cluster:03d}", "Node", obj, at)
        else:
            obj = _pod(cluster, rng.randrange(2000), rng, 10_000 + i)
            yield translate.observed(f"c{cluster:03d}", "Pod", obj, at)


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine(), "at": datetime.now(UTC).isoformat()}, indent=2))
    return path


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(r[i]) for r in [("figure", "value", "target", "result"), *rows]) for i in range(4)]
    print(f"\n{title}")
    for row in [("figure", "value", "target", "result"), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))


__all__ = ["ResourceObserved", "Servers", "observations", "print_table", "rss_mib", "servers", "write_result"]
