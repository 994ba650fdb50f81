"""Prometheus metrics of the applier.

`cluster` is the member cluster the applier serves: one process may run several (`llm-operator up`), and the
hub's alerts and dashboard (charts/llm-operator/files/) group plan outcomes by it."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

APPLIES = Counter("llmop_applier_plans_total", "Plans handled by the applier", ["cluster", "kind", "outcome"])
APPLY_SECONDS = Histogram(
    "llmop_applier_apply_seconds",
    "Time to execute one plan",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
