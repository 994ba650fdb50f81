"""The chart's Grafana dashboard and alert rules against the code (no helm, no promtool, no Prometheus).

- every metric the dashboard's panels and variables, and the alerts' expressions, name is one the operator
  registers (a renamed metric breaks this test, not an incident's dashboard);
- the dashboard is valid JSON Grafana can load (unique panel ids, targets with expressions, a 24-column grid);
- every alert carries a severity and summary/description/runbook annotations whose runbook section exists in
  docs/monitoring.md, and has a `promtool test rules` case where it fires and one where it stays quiet;
- the planner's fleet gauges (cluster health, deployments by outcome) follow what they are told, and a planner
  that stops leading exports none of them.

tests/integration/test_monitoring.py runs promtool and helm on the same files.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

# Imported for their registrations: every component's metrics live in the one default registry.
import applier.metrics
import planner.metrics
import watcher.metrics
from planner.fleet import NodeFree
from planner.metrics import (
    CLUSTER_HEALTHY,
    DEPLOYMENTS,
    FREE_GPUS,
    export_cluster_health,
    export_free_gpus,
    note_outcome,
    stop_leading,
)
from store.rows import ClusterRow

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "charts" / "llm-operator" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
ALERTS = FILES / "alerts.yaml"
ALERT_TESTS = FILES / "alerts.test.yaml"
DOC = ROOT / "docs" / "monitoring.md"

assert applier.metrics and planner.metrics and watcher.metrics

# PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets", "histogram_quantile", "vector",
    "scalar", "time", "absent", "absent_over_time", "abs", "clamp_min", "clamp_max", "label_replace", "label_values",
    "sum_over_time", "avg_over_time", "max_over_time", "min_over_time", "last_over_time", "timestamp", "round",
}  # fmt: skip


def registered_names() -> set[str]:
    """Every series name the operator's metrics can expose (counter: _total; histogram: _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if not family.name.startswith("llmop_"):
            continue
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (with Grafana's variables in it).

    Label matchers, grouping clauses, range selectors and strings are removed first; what remains that is not a
    PromQL word or a number is a metric name."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    words = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return words - PROMQL_WORDS


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every query variable."""
    out = [
        (f"panel {p['title']!r}", t["expr"]) for p in dashboard()["panels"] if p["type"] != "row" for t in p["targets"]
    ]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"variable {var['name']}", var["query"]["query"]))
    return out


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


# ------------------------------------------------------------------------------------ names against the code


def test_the_expression_parser_finds_metric_names_and_only_them() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, kind) (rate(llmop_applier_apply_seconds_bucket{cluster=~"$cluster", '
        'outcome!="a b"}[$__rate_interval]))) / on (instance) group_left (pod) up or vector(0)'
    )
    assert metric_names(expr) == {"llmop_applier_apply_seconds_bucket", "up"}
    assert metric_names("max(llmop_planner_leader) or vector(0) < 1e3") == {"llmop_planner_leader"}


def test_every_dashboard_expression_names_only_registered_metrics() -> None:
    known = registered_names()
    assert {"llmop_fleet_cluster_healthy", "llmop_planner_deployments", "llmop_planner_events_total"} <= known
    unknown = []
    for where, expr in dashboard_exprs():
        if where.startswith("variable"):
            # label_values(metric, label): only the first argument is a metric.
            found = {re.match(r"label_values\((\w+),", expr).group(1)}  # type: ignore[union-attr]
        else:
            found = metric_names(expr)
        assert found, f"{where}: no metric in {expr!r}"
        unknown += [f"{where}: {name}" for name in sorted(found - known)]
    assert not unknown, "metrics the code does not register:\n" + "\n".join(unknown)


def test_every_alert_expression_names_only_registered_metrics() -> None:
    known = registered_names()
    for rule in alerts():
        found = metric_names(rule["expr"])
        assert found, rule["alert"]
        assert found <= known, f"{rule['alert']}: {sorted(found - known)} are not registered"


def test_a_misspelt_metric_is_caught() -> None:
    assert metric_names("sum(rate(llmop_planner_event_total[5m]))") - registered_names() == {
        "llmop_planner_event_total"
    }


# ------------------------------------------------------------------------------------------- the dashboard


def test_dashboard_is_loadable_json_with_a_sound_layout() -> None:
    board = dashboard()
    assert board["uid"] == "llm-operator-fleet" and board["title"]
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        taken = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not taken & cells, f"panel {panel['title']!r} overlaps another"
        cells |= taken
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        assert all(t["expr"].strip() for t in panel["targets"])
    titles = {p["title"] for p in panels}
    # What the issue asks a glance to show.
    assert {
        "Cluster health",
        "Free GPUs by type",
        "Planner step latency",
        "Planner lag and position",
        "Plans applied per cluster",
        "Plans failed per cluster",
        "Dead letters",
        "Autoscaler decisions",
    } <= titles


# ---------------------------------------------------------------------------------------------- the alerts


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    doc = DOC.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        notes = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(notes), rule["alert"]
        anchor = f"docs/monitoring.md#{rule['alert'].lower()}"
        assert notes["runbook"].startswith(anchor), rule["alert"]
        assert rule["alert"].lower() in anchors, f"docs/monitoring.md has no section {rule['alert']}"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    suite = yaml.safe_load(ALERT_TESTS.read_text())
    assert suite["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    assert fires | quiet <= names, "tests of alerts that do not exist"


# --------------------------------------------------------------------------------- the planner's fleet gauges


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def cluster(name: str, *, healthy: bool) -> ClusterRow:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return ClusterRow(name, {}, healthy, "HeartbeatsResumed" if healthy else "HeartbeatsStopped", t, t, t)


@pytest.fixture(autouse=True)
def _fresh_term() -> None:
    stop_leading()


def test_cluster_health_follows_the_rows_and_drops_clusters_that_are_gone() -> None:
    export_cluster_health([cluster("east", healthy=True), cluster("west", healthy=True)])
    assert (
        sample("llmop_fleet_cluster_healthy", cluster="east"),
        sample("llmop_fleet_cluster_healthy", cluster="west"),
    ) == (1, 1)
    export_cluster_health([cluster("east", healthy=False)])
    assert sample("llmop_fleet_cluster_healthy", cluster="east") == 0
    assert sample("llmop_fleet_cluster_healthy", cluster="west") is None


def test_deployments_are_counted_by_their_latest_outcome_once_each() -> None:
    a, b, c = ("m", "ns", "a"), ("m", "ns", "b"), ("m", "ns", "c")
    for key in (a, b, c):
        note_outcome(key, "InsufficientGPU")
    note_outcome(a, "InsufficientGPU")  # decided again, same outcome: still one deployment
    note_outcome(b, "Placed")
    note_outcome(c, None)  # deleted
    assert sample("llmop_planner_deployments", outcome="InsufficientGPU") == 1
    assert sample("llmop_planner_deployments", outcome="Placed") == 1
    note_outcome(c, None)  # deleting what is not counted changes nothing
    note_outcome(a, "PartiallyPlaced")
    assert sample("llmop_planner_deployments", outcome="InsufficientGPU") == 0
    assert sample("llmop_planner_deployments", outcome="PartiallyPlaced") == 1


def test_a_planner_that_stops_leading_exports_no_fleet_view() -> None:
    export_cluster_health([cluster("east", healthy=True)])
    note_outcome(("m", "ns", "a"), "Placed")
    export_free_gpus({"east": (NodeFree("east", "n1", "NVIDIA-A100-SXM4-80GB", 80 << 30, 8, 96_000, 1 << 40),)})
    planner.metrics.LAG.set(12)
    stop_leading()
    for gauge in (CLUSTER_HEALTHY, DEPLOYMENTS, FREE_GPUS):
        assert not [s for m in gauge.collect() for s in m.samples], gauge
    assert sample("llmop_planner_consumer_lag") == 0
    assert sample("llmop_planner_leader") == 0
    # The next term starts afresh: the same outcome counts again.
    note_outcome(("m", "ns", "a"), "Placed")
    assert sample("llmop_planner_deployments", outcome="Placed") == 1
