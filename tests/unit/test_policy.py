"""The tenant policy (api.policy) as a table, the planner's use of it (planner.tenancy through reconcile), and
identity labels trusted only in the namespace they name (api.labels)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

import pytest
import yaml

from api.events import ResourceObserved, stream_of
from api.labels import LABEL_DEPLOYMENT, LABEL_NAMESPACE, LABEL_ORIGIN, deployment_identity
from api.models import LLMModelSpec
from api.policy import PlacementRule, References, TenantPolicy, allows, allows_endpoints, references_of
from planner.reconcile import reconcile
from store.projections import pod_row, workload_row
from tests.unit.test_reconcile import inputs, status_plan, workload_plans

TEAMS = TenantPolicy.model_validate(
    yaml.safe_load(
        """
rules:
  - origins: [cpu]
    namespaces: [team-*]
    clusters: [cpu, a100]
    createNamespaces: true
    references: false
  - origins: [cpu]
    namespaces: [team-secure]
    clusters: [cpu]
  - origins: ["*"]
    namespaces: [shared]
    clusters: ["*"]
operatorNamespace: llm-operator
"""
    )
)
SECRET = References(secrets=frozenset({"hf-token"}))


@pytest.mark.parametrize(
    ("policy", "origin", "namespace", "cluster", "references", "allowed", "create", "reason"),
    [
        # The default policy: everything but the reserved namespaces, nothing created.
        (TenantPolicy(), "cpu", "team", "a100", SECRET, True, False, ""),
        (TenantPolicy(), "cpu", "kube-system", "cpu", None, False, False, "namespace kube-system is reserved"),
        (TenantPolicy(), "cpu", "kube-public", "a100", None, False, False, "namespace kube-public is reserved"),
        (TenantPolicy(), "cpu", "kube-node-lease", "a100", None, False, False, "is reserved"),
        # Rules: origin, namespace and target cluster must all match one rule.
        (TEAMS, "cpu", "team-a", "a100", None, True, True, ""),
        (TEAMS, "cpu", "team-a", "mixed", None, False, False, "no rule lets namespace team-a of cluster cpu"),
        (TEAMS, "a100", "team-a", "cpu", None, False, False, "no rule lets namespace team-a of cluster a100"),
        (TEAMS, "a100", "shared", "mixed", SECRET, True, False, ""),
        (TEAMS, "cpu", "other", "cpu", None, False, False, "no rule"),
        # References resolve only where a matching rule allows them.
        (TEAMS, "cpu", "team-a", "cpu", SECRET, False, False, "may not use Secret hf-token in cluster cpu"),
        (TEAMS, "cpu", "team-secure", "cpu", SECRET, True, False, ""),  # the second rule allows them
        (TEAMS, "cpu", "team-secure", "a100", SECRET, False, False, "may not use Secret hf-token"),
        # The operator's own namespace, whatever the rules say.
        (TEAMS, "cpu", "llm-operator", "cpu", None, False, False, "namespace llm-operator is reserved"),
    ],
)
def test_allows(
    policy: TenantPolicy,
    origin: str,
    namespace: str,
    cluster: str,
    references: References | None,
    allowed: bool,
    create: bool,
    reason: str,
) -> None:
    verdict = allows(policy, origin_cluster=origin, namespace=namespace, cluster=cluster, references=references)
    assert verdict.allowed is allowed
    assert verdict.create_namespace is create
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("role", "origin", "namespace", "cluster", "allowed", "reason"),
    [
        # The origin's own Service: any rule for that origin and namespace, whatever clusters it targets.
        ("origin", "cpu", "team-a", "cpu", True, ""),
        ("origin", "cpu", "shared", "cpu", True, ""),
        ("origin", "a100", "team-a", "a100", False, "no rule lets namespace team-a of cluster a100 place workloads"),
        ("origin", "cpu", "kube-system", "cpu", False, "namespace kube-system is reserved"),
        ("origin", "cpu", "llm-operator", "cpu", False, "namespace llm-operator is reserved"),
        ("origin", "cpu", "team-a", "a100", False, "an origin endpoints plan of cluster cpu cannot write in a100"),
        # A serving cluster: exactly what its workload there needs.
        ("serving", "cpu", "team-a", "a100", True, ""),
        ("serving", "cpu", "team-a", "mixed", False, "no rule lets namespace team-a of cluster cpu"),
        ("serving", "a100", "shared", "mixed", True, ""),
        ("serving", "cpu", "kube-public", "a100", False, "is reserved"),
    ],
)
def test_allows_endpoints(
    role: Literal["origin", "serving"], origin: str, namespace: str, cluster: str, allowed: bool, reason: str
) -> None:
    verdict = allows_endpoints(TEAMS, role=role, origin_cluster=origin, namespace=namespace, cluster=cluster)
    assert verdict.allowed is allowed
    assert verdict.create_namespace is False  # endpoints never create a namespace, even where the rule would
    assert reason in verdict.reason


def test_the_policy_is_frozen_and_strict() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        TenantPolicy.model_validate({"rules": [{"origin": ["cpu"]}]})
    with pytest.raises(ValueError, match="frozen"):
        TEAMS.rules[0].create_namespaces = False  # type: ignore[misc]
    assert PlacementRule().matches("any", "namespace", "cluster")


def test_references_of_a_model() -> None:
    model = LLMModelSpec.model_validate(
        {
            "modelName": "m",
            "image": "i",
            "resources": {"cpu": "1", "memory": "1Gi"},
            "source": {"uri": "pvc://weights/llama", "secretRef": "loader"},
            "env": [{"name": "T", "secretKeyRef": {"name": "hf-token", "key": "token"}}, {"name": "X", "value": "1"}],
        }
    )
    assert references_of(model) == References(secrets=frozenset({"loader", "hf-token"}), claims={"weights"})
    assert not references_of(None)


# ------------------------------------------------------------------------------------------- the planner


def test_the_planner_holds_a_deployment_no_cluster_admits_with_a_condition() -> None:
    denied = TenantPolicy(rules=(PlacementRule(namespaces=("other",)),))
    outcome = reconcile(replace(inputs(), tenant_policy=denied))
    assert not workload_plans(outcome)
    assert outcome.decided is not None
    assert outcome.decided.outcome == "PolicyDenied"
    ready = {c.type: c for c in status_plan(outcome).status.conditions}
    assert ready["Ready"].status == "False"
    assert ready["Ready"].reason == "PolicyDenied"
    assert "no rule lets namespace team of cluster cpu" in ready["Placed"].message


def test_no_cluster_known_yet_is_not_a_policy_refusal() -> None:
    # A planner that has just started may read a deployment before any cluster's first heartbeat: nothing was
    # refused then, and the status must not blame the policy (with an empty reason).
    denied = TenantPolicy(rules=(PlacementRule(namespaces=("other",)),))
    for policy in (TenantPolicy(), denied):
        outcome = reconcile(replace(inputs(), clusters=[], tenant_policy=policy))
        assert outcome.decided is not None
        assert outcome.decided.outcome == "NoEligibleCluster", outcome.decided.outcome


def test_the_planner_places_only_into_clusters_the_policy_admits() -> None:
    assert set(workload_plans(reconcile(inputs()))) == {"a100"}  # the first fit without a policy
    only_mixed = TenantPolicy(rules=(PlacementRule(clusters=("mixed", "cpu")),))
    assert set(workload_plans(reconcile(replace(inputs(), tenant_policy=only_mixed)))) == {"mixed"}


# ------------------------------------------------------------------------------------------ identity labels

LABELS = {LABEL_ORIGIN: "cpu", LABEL_NAMESPACE: "victim", LABEL_DEPLOYMENT: "chat"}
AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_identity_labels_count_only_in_the_namespace_they_name() -> None:
    assert deployment_identity(LABELS, "victim") == ("cpu", "victim", "chat")
    assert deployment_identity(LABELS, "tenant") is None
    assert deployment_identity({LABEL_ORIGIN: "cpu", LABEL_DEPLOYMENT: "chat"}, "tenant") == ("cpu", "tenant", "chat")
    assert deployment_identity({LABEL_DEPLOYMENT: "chat"}, "victim") is None

    forged = workload_row("u", {"labels": LABELS, "status": {"readyReplicas": 3}}, AT, namespace="tenant")
    assert (forged["origin_cluster"], forged["deployment_namespace"], forged["deployment_name"]) == (None, None, None)
    real = workload_row("u", {"labels": LABELS}, AT, namespace="victim")
    assert (real["origin_cluster"], real["deployment_namespace"], real["deployment_name"]) == ("cpu", "victim", "chat")
    assert pod_row("u", {"labels": LABELS}, AT, namespace="tenant")["deployment_key"] is None
    assert pod_row("u", {"labels": LABELS}, AT, namespace="victim")["deployment_key"] == "cpu/victim/chat"

    def observed(namespace: str) -> ResourceObserved:
        return ResourceObserved(
            event_id="e",
            cluster="a100",
            kind="Deployment",
            namespace=namespace,
            name="chat",
            uid="u",
            resource_version="1",
            object={"labels": LABELS},
            observed_at=AT,
        )

    assert stream_of(observed("victim")) != stream_of(observed("tenant"))
    assert stream_of(observed("tenant")) == "Deployment/a100/tenant/chat"
