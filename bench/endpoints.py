"""Failover through the origin's Service: how long clients of ``http://<name>.<namespace>:<port>`` go unanswered.

It runs the end-to-end test tests/e2e/test_traffic.py (the whole operator in-process: planner and one agent per
cluster, with the tests' settings — heartbeat every 0.5 s, Unhealthy after 5 s of silence, recovery hold 2 s —
on the local kwok fleet, with the pod network and the model-server emulator answering at the pods' addresses)
for ``--rounds`` failovers, alternating between the a100 and mixed clusters. Each round: the serving cluster's
agent is stopped and its emulated replicas answer 503 at the same instant (the kill); a continuous stream of
requests goes through the origin's Service, resolving its EndpointSlices before every request as kube-proxy would.

Figures per round, from the kill:
- detection: until the planner recorded the cluster Unhealthy (its ClusterHealthChanged event's recorded_at);
- endpoints after detection: from then until the origin's EndpointSlices point at the new cluster alone (which
  includes the replacement replica being scheduled, started and observed ready, one endpoints plan and its apply);
- failed window: the longest run of unanswered requests (first failure to the next answer).

Run: ``python -m bench.endpoints [--rounds 5]``; writes bench/results/endpoints.json. Needs root for the pod network
namespace (as the e2e tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import print_table, write_result

FIGURES = ("detected_s", "endpoints_after_detection_s", "failed_window_s")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llmop-bench-endpoints-") as tmp:
        result = Path(tmp) / "rounds.json"
        env = {**os.environ, "LLMOP_TRAFFIC_ROUNDS": str(rounds), "LLMOP_TRAFFIC_RESULT": str(result)}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            f"--basetemp={tmp}/pt",
            "tests/e2e/test_traffic.py",
            "-k",
            "failover",
        ]
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0 or not result.exists():
            raise SystemExit(f"the failover run failed (pytest exit {done.returncode})")
        measured: list[dict[str, float]] = json.loads(result.read_text())["rounds"]
    summary = {
        name: {
            "p50": quantile([r[name] for r in measured], 0.5),
            "p99": quantile([r[name] for r in measured], 0.99),
            "max": max(r[name] for r in measured),
        }
        for name in FIGURES
    }
    return {"rounds": measured, "summary": summary}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = run(args.rounds)
    path = write_result("endpoints", result)
    s = result["summary"]
    print_table(
        f"failover through the origin's Service ({args.rounds} rounds)",
        [(name, f"p50 {s[name]['p50']:.2f} s, p99 {s[name]['p99']:.2f} s", "-", "-") for name in FIGURES],
    )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
