"""The chart's monitoring with the real tools: helm renders the Grafana dashboard ConfigMap and the
PrometheusRule (hub releases, when enabled), promtool checks the rules and runs each alert's unit tests, every
dashboard expression parses as PromQL; and the planner's fleet gauges the alerts read are set by a real planner
step on Postgres.

promtool comes from the fleet toolchain (`llm-operator fleet build`; ~/.cache/llm-operator/bin/prometheus-*/).
A missing promtool or helm fails these tests with the command that builds it: they are never skipped.
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine

from api.events import ClusterHeartbeat, deterministic_id
from llm_operator.fleet import build
from planner.handle import StepConfig, step
from planner.metrics import stop_leading
from store.epochs import campaign
from tests import builders
from tests.builders import Feed
from tests.fixtures.services import Hub, repo_root

CHART = repo_root() / "charts" / "llm-operator"
FILES = CHART / "files"
ALERTS = FILES / "alerts.yaml"
ALERT_TESTS = FILES / "alerts.test.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"
BUILD_HINT = "build it with `llm-operator fleet build` (the fleet toolchain)"


# --------------------------------------------------------------------------------------------------- tools


def promtool() -> Path:
    """promtool of the fleet toolchain (built with Prometheus by `llm-operator fleet build`)."""
    path = build.toolchain_paths().promtool
    if not path.is_file():
        pytest.fail(f"promtool is missing at {path}: {BUILD_HINT}")
    return path


def helm_binary() -> Path:
    helm = build.toolchain_paths().helm
    if not helm.is_file():
        pytest.fail(f"helm is missing at {helm}: {BUILD_HINT}")
    return helm


def run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def template(*args: str, values: str = "hub-values.yaml") -> dict[tuple[str, str], dict[str, Any]]:
    """`helm template` of the chart: the rendered objects by (kind, name)."""
    done = run(helm_binary(), "template", "hub", CHART, "--namespace", "llm-hub", "-f", CHART / "ci" / values, *args)
    assert done.returncode == 0, done.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}


ENABLED = ("--set", "monitoring.grafanaDashboard.enabled=true", "--set", "monitoring.prometheusRule.enabled=true")


# ---------------------------------------------------------------------------------------------------- helm


def test_hub_release_ships_the_dashboard_and_the_alerts_when_enabled() -> None:
    objects = template(
        *ENABLED,
        "--set", "monitoring.grafanaDashboard.annotations.grafana_folder=LLM",
        "--set", "monitoring.grafanaDashboard.namespace=monitoring",
        "--set", "monitoring.prometheusRule.labels.release=kps",
    )  # fmt: skip
    board = objects[("ConfigMap", "hub-llm-operator-grafana-dashboard")]
    assert board["metadata"]["namespace"] == "monitoring"
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llm-operator"
    assert board["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    # The JSON as shipped, byte for byte apart from the trailing newline (Grafana placeholders untouched).
    assert board["data"]["llm-operator-fleet.json"] == DASHBOARD.read_text().strip()
    assert json.loads(board["data"]["llm-operator-fleet.json"]) == json.loads(DASHBOARD.read_text())

    rule = objects[("PrometheusRule", "hub-llm-operator-alerts")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "llm-hub"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_the_sidecar_label_is_configurable() -> None:
    objects = template(
        "--set", "monitoring.grafanaDashboard.enabled=true",
        "--set-json", 'monitoring.grafanaDashboard.labels={"grafana_dashboard": null, "dashboards": "llm"}',
    )  # fmt: skip
    labels = objects[("ConfigMap", "hub-llm-operator-grafana-dashboard")]["metadata"]["labels"]
    assert labels["dashboards"] == "llm"
    assert "grafana_dashboard" not in labels


def test_off_by_default_and_never_in_member_releases() -> None:
    kinds = {kind for kind, _ in template()}
    assert "PrometheusRule" not in kinds
    assert ("ConfigMap", "hub-llm-operator-grafana-dashboard") not in template()
    member = template(*ENABLED, values="member-values.yaml")
    assert not [key for key in member if key[0] == "PrometheusRule" or key[1].endswith("grafana-dashboard")]


@pytest.mark.parametrize("values", ["hub-values.yaml", "member-values.yaml"])
def test_the_pod_monitor_scrapes_every_operator_pod_of_the_release(values: str) -> None:
    pod_monitor = ("--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.podMonitor.labels.release=kps")
    objects = template(*pod_monitor, values=values)
    monitor = objects[("PodMonitor", "hub-llm-operator")]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    deployments = [obj for (kind, _), obj in objects.items() if kind == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]
        assert selector.items() <= pod["metadata"]["labels"].items(), deployment["metadata"]["name"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert "metrics" in ports, deployment["metadata"]["name"]
    assert not [key for key in template(values=values) if key[0] == "PodMonitor"]


def test_a_misspelt_monitoring_value_is_refused() -> None:
    done = run(
        helm_binary(), "template", "hub", CHART, "-f", CHART / "ci" / "hub-values.yaml",
        "--set", "monitoring.prometheusRule.enable=true",
    )  # fmt: skip
    assert done.returncode != 0
    assert "enable" in done.stderr and "not allowed" in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------------ promtool


def test_promtool_checks_the_rules_file() -> None:
    done = run(promtool(), "check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout, done.stdout


def test_promtool_unit_tests_every_alert() -> None:
    done = run(promtool(), "test", "rules", ALERT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_promtool_checks_the_rules_the_chart_renders(tmp_path: Path) -> None:
    rule = template(*ENABLED)[("PrometheusRule", "hub-llm-operator-alerts")]
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = run(promtool(), "check", "rules", rendered)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("alert", "before", "after"),
    [
        # Slower to fire than its tests expect.
        ("LLMOperatorClusterUnhealthy", "        for: 5m\n", "        for: 10m\n"),
        # A threshold the lagging test's 1500 events no longer cross.
        ("LLMOperatorPlannerLagging", "llmop_planner_consumer_lag) > 1000", "llmop_planner_consumer_lag) > 2000"),
        # Fires on an idle planner too: the quiet case catches it.
        (
            "LLMOperatorPlannerStalled",
            "max(llmop_planner_consumer_lag) > 0 and on () ",
            "max(llmop_planner_consumer_lag) >= 0 and on () ",
        ),
    ],
)
def test_the_alert_unit_tests_catch_a_changed_rule(tmp_path: Path, alert: str, before: str, after: str) -> None:
    text = ALERTS.read_text()
    assert before in text
    (tmp_path / ALERTS.name).write_text(text.replace(before, after, 1))
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    done = run(promtool(), "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert alert in done.stdout + done.stderr


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, as a recording rule that promtool parses."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
    assert len(exprs) > 20
    fill = {"$__rate_interval": "5m", "$cluster": ".*", "$deployment": ".*"}
    rules = []
    for i, expr in enumerate(exprs):
        filled = expr
        for var, value in fill.items():
            filled = filled.replace(var, value)
        assert "$" not in filled, f"a Grafana variable the test does not fill in: {expr}"
        rules.append({"record": f"llmop_dashboard:panel_{i}", "expr": filled})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool(), "check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"SUCCESS: {len(rules)} rules found", done.stdout), done.stdout


# ------------------------------------------------------------------------- the gauges, from a planner step


A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.anyio
@pytest.mark.services
async def test_a_planner_step_sets_cluster_health_and_deployments_by_outcome(engine: AsyncEngine, hub: Hub) -> None:
    stop_leading()  # another test of this session may have led before
    lease = await campaign(engine, holder="test")
    await lease.release()
    feed = Feed(hub.subjects)
    start = feed.clock
    config = StepConfig(
        consumer="planner",
        subjects=hub.subjects,
        heartbeat_timeout=timedelta(seconds=30),
        recovery_hold=timedelta(seconds=2),
    )

    def heartbeat(cluster: str) -> ClusterHeartbeat:
        return ClusterHeartbeat(
            event_id=deterministic_id("hb", cluster, str(feed.sequence)),
            cluster=cluster,
            watcher_id="w1",
            sent_at=feed.clock,
            sequence=feed.sequence,
        )

    async def steps(*events: Any) -> None:
        feed.tick(5)
        async with engine.begin() as conn:
            await step(
                conn,
                deliveries=feed.deliver(*events),
                epoch=lease.epoch,
                now=feed.clock,
                config=config,
                health_grace_until=start,
            )

    def model(name: str, product: str) -> Any:
        gpu = {"count": 4, "types": [product]}
        spec = {"modelName": name, "image": "registry/vllm:1", "resources": {"cpu": "8", "memory": "80Gi", "gpu": gpu}}
        return builders.observed("east", "LLMModel", builders.llm_model(name, "team", spec))

    def deployment(name: str, model_name: str) -> Any:
        spec = {"modelRef": model_name, "replicas": 1, "port": 8080}
        return builders.observed(
            "east", "LLMDeployment", builders.llm_deployment(name, "team", spec, uid=f"{name}-uid")
        )

    await steps(heartbeat("east"), heartbeat("west"))
    assert (
        gauge("llmop_fleet_cluster_healthy", cluster="east"),
        gauge("llmop_fleet_cluster_healthy", cluster="west"),
    ) == (1, 1)

    # One deployment fits the A100 node; the other wants H100s nobody has.
    await steps(
        heartbeat("east"),
        heartbeat("west"),
        builders.observed("west", "Node", builders.gpu_node("gpu-1", product=A100, uid="gpu-1-uid")),
        model("a100-model", A100),
        model("h100-model", H100),
    )
    await steps(deployment("fits", "a100-model"), deployment("waits", "h100-model"))
    assert gauge("llmop_planner_deployments", outcome="Placed") == 1
    assert gauge("llmop_planner_deployments", outcome="InsufficientGPU") == 1

    # An H100 node arrives: the waiting deployment is placed, and counted once, under its new outcome.
    await steps(
        heartbeat("east"), builders.observed("west", "Node", builders.gpu_node("gpu-2", product=H100, uid="gpu-2-uid"))
    )
    assert gauge("llmop_planner_deployments", outcome="Placed") == 2
    assert gauge("llmop_planner_deployments", outcome="InsufficientGPU") == 0

    # west falls silent for longer than the heartbeat timeout: Unhealthy, and the gauge says so.
    for _ in range(8):
        await steps(heartbeat("east"))
    assert gauge("llmop_fleet_cluster_healthy", cluster="west") == 0
    assert gauge("llmop_fleet_cluster_healthy", cluster="east") == 1


# ----------------------------------------------------------------------------------------- the web dashboard

WEB_DASHBOARD = ("--set", "dashboard.enabled=true", "--set", "dashboard.database.existingSecret=dashboard-db")


def test_the_hub_release_serves_the_web_dashboard_behind_a_token_when_enabled() -> None:
    assert not [key for key in template() if key[1].endswith("-dashboard")]
    objects = template(*WEB_DASHBOARD, "--set", "dashboard.token.existingSecret=dashboard-token")
    deployment = objects[("Deployment", "hub-llm-operator-dashboard")]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "hub-llm-operator-dashboard"
    assert pod["automountServiceAccountToken"] is False  # it calls no Kubernetes API
    (container,) = pod["containers"]
    assert container["args"] == ["dashboard", "--host", "0.0.0.0", "--port", "8080"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LLMOP_DASHBOARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "dashboard-db", "key": "url"}
    assert env["LLMOP_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "dashboard-token", "key": "token"}
    # Postgres only: no NATS address, no credentials of the planner's.
    assert not [name for name in env if "NATS" in name] and "LLMOP_DATABASE_URL" not in env
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = objects[("Service", "hub-llm-operator-dashboard")]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    behind_proxy = template(*WEB_DASHBOARD, "--set", "dashboard.trustedHeader=X-Forwarded-User")
    (proxied,) = behind_proxy[("Deployment", "hub-llm-operator-dashboard")]["spec"]["template"]["spec"]["containers"]
    assert {"name": "LLMOP_DASHBOARD_TRUSTED_HEADER", "value": "X-Forwarded-User"} in proxied["env"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (WEB_DASHBOARD, "dashboard.token.existingSecret"),  # never served without access control
        (("--set", "dashboard.enabled=true", "--set", "dashboard.token.existingSecret=t"), "read-only role"),
        (("--set", "dashboard.trustedHeader=X-User: admin"), "trustedHeader"),
    ],
)
def test_a_dashboard_without_access_control_or_database_is_refused(args: tuple[str, ...], says: str) -> None:
    done = run(helm_binary(), "template", "hub", CHART, "-f", CHART / "ci" / "hub-values.yaml", *args)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
