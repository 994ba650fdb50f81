"""Prometheus metrics of the planner (exposed by the composition root's /metrics endpoint).

Guarantees: the fleet's per-cluster and per-outcome gauges (free GPUs, cluster health, deployments by placement
outcome) describe the leader's view only — `stop_leading` empties them, so a standby or deposed planner never
exports a stale fleet next to its successor's. charts/llm-operator/files/ (alerts and the Grafana dashboard)
query these names; tests/unit/test_monitoring.py checks that every name they use is registered here or in the
other components' metrics modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from planner.fleet import NodeFree

EVENTS = Counter("llmop_planner_events_total", "Events handled by the planner", ["result"])
STEP_SECONDS = Histogram(
    "llmop_planner_step_seconds",
    "Duration of one planner step (one transaction)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PLANS = Counter("llmop_planner_plans_total", "Plans written to the outbox")
DECISIONS = Counter("llmop_planner_decisions_total", "Placement decisions recorded")
POSITION = Gauge("llmop_planner_position", "Last events-stream sequence committed by the planner")
LEADER = Gauge("llmop_planner_leader", "1 while this planner leads")
EPOCH = Gauge("llmop_planner_epoch", "The epoch this planner leads with (0: standby)")
ERRORS = Counter("llmop_planner_errors_total", "Planner step failures by kind", ["kind"])
LAG = Gauge("llmop_planner_consumer_lag", "Events in the stream not yet handled by the planner")
ISOLATED = Counter(
    "llmop_planner_isolated_batches_total",
    "Batches the store refused as a whole, retried message by message (each offender dead-lettered)",
)
UNDECIDED = Counter(
    "llmop_planner_undecided_messages_total",
    "Messages recorded without deciding, because deciding after them failed (a bug to report)",
)
STREAM_GAPS = Counter(
    "llmop_planner_stream_gaps_total",
    "Events-stream gaps and resets seen by the planner (events lost before it read them); each asks for a resync",
    ["kind"],
)
PARKED_PLANS = Counter(
    "llmop_planner_parked_plans_total", "Plans the bus can never carry (above max_payload), parked and reported"
)
FREE_GPUS = Gauge("llmop_fleet_free_gpus", "Free GPUs after running pods and reservations", ["cluster", "gpu_product"])
CLUSTER_HEALTHY = Gauge(
    "llmop_fleet_cluster_healthy",
    "1 while the planner trusts a member cluster (heartbeats arrive), 0 when Unhealthy",
    ["cluster"],
)
DEPLOYMENTS = Gauge(
    "llmop_planner_deployments",
    "LLMDeployments by the outcome of their latest placement decision (Placed, InsufficientGPU, PolicyDenied, ...)",
    ["outcome"],
)


def observe_step(result: Any, seconds: float) -> None:
    STEP_SECONDS.observe(seconds)
    EVENTS.labels(result="recorded").inc(result.recorded)
    EVENTS.labels(result="duplicate").inc(result.duplicates)
    EVENTS.labels(result="dead_letter").inc(result.dead_letters)
    PLANS.inc(result.plans)
    DECISIONS.inc(result.decisions)
    POSITION.set(result.position)


# The nodes each cluster's free-GPU gauges were last set from, and the GPU kinds they named.
_exported: dict[str, tuple[tuple[NodeFree, ...], frozenset[str]]] = {}


def export_free_gpus(clusters: Mapping[str, tuple[NodeFree, ...]]) -> None:
    """Set the free-GPU gauges of the clusters whose nodes changed since the last export.

    Capacity shares an unchanged cluster's node tuple from step to step (planner/capacity.py), so telling the
    changed clusters apart costs one identity test per cluster, not a pass over every node of the fleet each
    step. A GPU kind a cluster no longer has is set to 0."""
    for cluster, nodes in clusters.items():
        last = _exported.get(cluster)
        if last is not None and last[0] is nodes:
            continue
        free: dict[str, int] = {}
        for node in nodes:
            if node.gpu_product:
                free[node.gpu_product] = free.get(node.gpu_product, 0) + node.gpus
        for product in (last[1] if last is not None else frozenset()) - free.keys():
            FREE_GPUS.labels(cluster=cluster, gpu_product=product).set(0)
        for product, count in free.items():
            FREE_GPUS.labels(cluster=cluster, gpu_product=product).set(count)
        _exported[cluster] = (nodes, frozenset(free))


# The fleet autoscaler's view, per deployment (`origin/namespace/name`): what it saw and what it wants.
AUTOSCALER_DESIRED = Gauge(
    "llmop_autoscaler_desired_replicas", "Replicas the fleet autoscaler wants (after all limits)", ["deployment"]
)
AUTOSCALER_CURRENT = Gauge("llmop_autoscaler_current_replicas", "spec.replicas the autoscaler saw", ["deployment"])
AUTOSCALER_METRIC = Gauge(
    "llmop_autoscaler_metric_value",
    "The fleet figure of one target (TTFT p90 in ms, per-replica queue, rps)",
    ["deployment", "metric"],
)
AUTOSCALER_RATIO = Gauge("llmop_autoscaler_metric_ratio", "Observed / target of one target", ["deployment", "metric"])
AUTOSCALER_AVAILABLE = Gauge(
    "llmop_autoscaler_metrics_available", "1 when every target's metric was available", ["deployment"]
)
AUTOSCALER_DECISIONS = Counter("llmop_autoscaler_decisions_total", "Autoscaler evaluations by outcome", ["outcome"])


def observe_autoscaler(key: tuple[str, str, str], decision: Any) -> None:
    name = "/".join(key)
    AUTOSCALER_CURRENT.labels(deployment=name).set(decision.current)
    AUTOSCALER_DESIRED.labels(deployment=name).set(decision.desired)
    AUTOSCALER_AVAILABLE.labels(deployment=name).set(1 if decision.metrics_available else 0)
    for metric, figures in decision.metrics.items():
        if figures.get("value") is not None:
            AUTOSCALER_METRIC.labels(deployment=name, metric=metric).set(figures["value"])
        if figures.get("ratio") is not None:
            AUTOSCALER_RATIO.labels(deployment=name, metric=metric).set(figures["ratio"])
    if decision.waiting:
        outcome = "waiting"
    elif decision.desired > decision.current:
        outcome = "up"
    elif decision.desired < decision.current:
        outcome = "down"
    else:
        outcome = "unchanged"
    AUTOSCALER_DECISIONS.labels(outcome=outcome).inc()


def forget_autoscaler(key: tuple[str, str, str]) -> None:
    """Drop a deployment's autoscaler series (it was deleted or no longer autoscales)."""
    name = "/".join(key)
    for gauge in (AUTOSCALER_DESIRED, AUTOSCALER_CURRENT, AUTOSCALER_AVAILABLE):
        with contextlib.suppress(KeyError):
            gauge.remove(name)
    for gauge in (AUTOSCALER_METRIC, AUTOSCALER_RATIO):
        for metric in ("timeToFirstTokenP90Ms", "queueDepth", "requestsPerSecond"):
            with contextlib.suppress(KeyError):
                gauge.remove(name, metric)


# The clusters whose health gauge is set (a cluster no longer in the table loses its series).
_healthy: set[str] = set()


def export_cluster_health(clusters: Iterable[Any]) -> None:
    """Set `llmop_fleet_cluster_healthy` from the cluster rows as the planner's step left them."""
    seen: set[str] = set()
    for row in clusters:
        CLUSTER_HEALTHY.labels(cluster=row.name).set(1 if row.healthy else 0)
        seen.add(row.name)
    for gone in _healthy - seen:
        with contextlib.suppress(KeyError):
            CLUSTER_HEALTHY.remove(gone)
    _healthy.clear()
    _healthy.update(seen)


# Each reconciled deployment's latest decision outcome, so the per-outcome gauge counts deployments, not decisions.
# The first step after catching up reconciles every deployment (planner/service.py, mode "full"), so within a term
# the counts cover the whole fleet.
_outcomes: dict[tuple[str, str, str], str] = {}


def note_outcome(key: tuple[str, str, str], outcome: str | None) -> None:
    """Record a deployment's latest decision outcome; None: it is gone (or was never decided)."""
    old = _outcomes.pop(key, None) if outcome is None else _outcomes.get(key)
    if old == outcome:
        return
    if old is not None:
        DEPLOYMENTS.labels(outcome=old).dec()
    if outcome is not None:
        _outcomes[key] = outcome
        DEPLOYMENTS.labels(outcome=outcome).inc()


def stop_leading() -> None:
    """This planner no longer leads: drop the fleet view it exported (its successor exports its own)."""
    LEADER.set(0)
    LAG.set(0)
    for gauge in (FREE_GPUS, CLUSTER_HEALTHY, DEPLOYMENTS):
        gauge.clear()
    _exported.clear()
    _healthy.clear()
    _outcomes.clear()
