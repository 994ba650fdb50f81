"""Pure checks of the Helm chart (no helm, no cluster): values.schema.json against the values files, the schema
against the operator's own validation rules, the chart's CRDs against crds/, and its RBAC against the kinds the
code reads and writes. tests/e2e/test_helm.py runs the chart with the real helm.

`jsonschema` is not a dependency, so a small validator below implements exactly the keywords the schema uses;
a keyword it does not know fails the test rather than being skipped.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.network import NETWORK_MODES, ClusterNetwork
from api.policy import TenantPolicy
from api.signing import trusted_keys
from applier.render import MANAGED_KINDS
from bus import subjects
from bus.streams import STREAM_ROLES
from kubeapi import RESOURCES
from llm_operator.settings import Settings, StreamLimitSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llm-operator"


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def load_values(*files: str) -> dict[str, Any]:
    """values.yaml overlaid with the given files, merged as helm merges maps."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    for name in files:
        _merge(merged, yaml.safe_load((CHART / name).read_text()))
    return merged


def _merge(into: dict[str, Any], overlay: dict[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


# ------------------------------------------------------------------------------ a small JSON Schema validator

ANNOTATIONS = {"$schema", "$comment", "title", "description", "definitions", "default", "examples"}
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, TYPES[name])


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "") -> list[str]:
    """Errors as "path: problem"; empty when `value` is valid."""
    errors: list[str] = []
    where = path or "/"
    for keyword, arg in schema.items():
        if keyword in ANNOTATIONS or keyword in ("then", "additionalProperties"):
            continue  # annotations; "then" with "if"; additionalProperties with "properties"
        if keyword == "$ref":
            assert arg.startswith("#/definitions/"), arg
            errors += validate(value, root["definitions"][arg.split("/")[-1]], root, path)
        elif keyword == "type":
            names = arg if isinstance(arg, list) else [arg]
            if not any(_is_type(value, n) for n in names):
                errors.append(f"{where}: expected {arg}, got {type(value).__name__}")
        elif keyword == "enum":
            if value not in arg:
                errors.append(f"{where}: {value!r} not one of {arg}")
        elif keyword == "const":
            if value != arg:
                errors.append(f"{where}: {value!r} != {arg!r}")
        elif keyword == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                errors.append(f"{where}: {value!r} does not match {arg}")
        elif keyword == "minLength":
            if isinstance(value, str) and len(value) < arg:
                errors.append(f"{where}: shorter than {arg}")
        elif keyword == "minimum":
            if _is_type(value, "number") and value < arg:
                errors.append(f"{where}: {value} < {arg}")
        elif keyword == "maximum":
            if _is_type(value, "number") and value > arg:
                errors.append(f"{where}: {value} > {arg}")
        elif keyword == "exclusiveMinimum":
            if _is_type(value, "number") and value <= arg:
                errors.append(f"{where}: {value} <= {arg}")
        elif keyword == "required":
            if isinstance(value, dict):
                errors += [f"{where}: missing property {name!r}" for name in arg if name not in value]
        elif keyword == "properties":
            if isinstance(value, dict):
                extra = schema.get("additionalProperties", True)
                for key, item in value.items():
                    if key in arg:
                        errors += validate(item, arg[key], root, f"{path}/{key}")
                    elif extra is False:
                        errors.append(f"{where}: additional property {key!r} not allowed")
                    elif isinstance(extra, dict):
                        errors += validate(item, extra, root, f"{path}/{key}")
        elif keyword == "propertyNames":
            if isinstance(value, dict):
                for key in value:
                    errors += validate(key, arg, root, f"{path}/{key} (name)")
        elif keyword == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    errors += validate(item, arg, root, f"{path}/{i}")
        elif keyword == "minItems":
            if isinstance(value, list) and len(value) < arg:
                errors.append(f"{where}: fewer than {arg} items")
        elif keyword == "maxItems":
            if isinstance(value, list) and len(value) > arg:
                errors.append(f"{where}: more than {arg} items")
        elif keyword == "uniqueItems":
            if arg and isinstance(value, list) and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
                errors.append(f"{where}: items are not unique")
        elif keyword == "allOf":
            for sub in arg:
                errors += validate(value, sub, root, path)
        elif keyword == "anyOf":
            if all(validate(value, sub, root, path) for sub in arg):
                errors.append(f"{where}: matches none of anyOf")
        elif keyword == "if":
            if not validate(value, arg, root, path):
                errors += validate(value, schema.get("then", {}), root, path)
        else:
            raise AssertionError(f"the test validator does not know keyword {keyword!r}: extend it")
    if "additionalProperties" in schema and "properties" not in schema and isinstance(value, dict):
        for key, item in value.items():
            errors += validate(item, schema["additionalProperties"], root, f"{path}/{key}")
    return errors


# -------------------------------------------------------------------------------------------- the schema


def test_schema_is_draft_07_json_and_closed() -> None:
    schema = load_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def objects(node: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
        found = []
        if isinstance(node, dict):
            if "properties" in node:
                found.append((path, node))
            for key, child in node.items():
                found += objects(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                found += objects(child, f"{path}/{i}")
        return found

    # Every object the values define rejects unknown keys, so a misspelt value fails instead of being ignored
    # (list items are Kubernetes objects, e.g. EnvVar, left to the apiserver).
    open_objects = [
        path
        for path, node in objects(schema, "")
        if node.get("type") == "object" and node.get("additionalProperties", True) is not False and "/items" not in path
    ]
    assert open_objects == []


def test_default_and_ci_values_validate() -> None:
    schema = load_schema()
    for files in (("ci/member-values.yaml",), ("ci/hub-values.yaml",)):
        assert validate(load_values(*files), schema, schema) == [], files


def test_defaults_alone_name_what_is_missing() -> None:
    schema = load_schema()
    errors = validate(load_values(), schema, schema)
    assert errors == [
        "/cluster: missing property 'name'",
        "/nats: missing property 'url'",
        "/planSigning/publicKeys: fewer than 1 items",
    ]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"cluster": {"name": "GPU_East"}}, "/cluster/name: 'GPU_East' does not match"),
        ({"cluster": {"name": "a" * 64}}, "/cluster/name:"),
        ({"cluster": {"labels": {"tier": "gold,silver"}}}, "/cluster/labels/tier:"),
        ({"cluster": {"labels": {"bad key": "x"}}}, "/cluster/labels/bad key (name):"),
        ({"nats": {"url": "http://hub:4222"}}, "/nats/url:"),
        ({"nats": {"subjectPrefix": "Fleet"}}, "/nats/subjectPrefix:"),
        ({"agent": {"watchNamespaces": ["a", "a"]}}, "/agent/watchNamespaces: items are not unique"),
        ({"agent": {"heartbeatSeconds": 0}}, "/agent/heartbeatSeconds: 0 <= 0"),
        ({"agent": {"replicas": 2}}, "/agent: additional property 'replicas' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy:"),
        ({"log": {"level": "TRACE"}}, "/log/level:"),
        ({"planner": {"enabled": True}}, "/planner/database: matches none of anyOf"),
        ({"planner": {"enabled": True, "database": {"url": "mysql://x"}}}, "/planner/database/url:"),
        ({"planner": {"streams": {"events": {"discard": "all"}}}}, "/planner/streams/events/discard:"),
        ({"planner": {"streams": {"audit": {}}}}, "/planner/streams: additional property 'audit'"),
        ({"planner": {"enabled": True, "database": {"url": "postgresql://x"}}}, "/planSigning/existingSecret:"),
        ({"planSigning": {"publicKeys": []}}, "/planSigning/publicKeys: fewer than 1 items"),
        ({"planSigning": {"publicKeys": ["ssh-ed25519 AAAA"]}}, "/planSigning/publicKeys/0:"),
        ({"network": {"mode": "mesh"}}, "/network/mode: 'mesh' not one of"),
        ({"network": {"podCIDRs": ["10.244.0.0"]}}, "/network/podCIDRs/0:"),
        ({"network": {"podCIDRs": ["10.244.0.0/33"]}}, "/network/podCIDRs/0:"),
        ({"network": {"podCIDRs": ["fd00::/64"]}}, "/network/podCIDRs/0:"),
        ({"network": {"podCIDRs": [f"10.{i}.0.0/16" for i in range(17)]}}, "/network/podCIDRs: more than 16"),
        ({"network": {"podCidrs": []}}, "/network: additional property 'podCidrs'"),
        ({"tenantPolicy": {"rules": [{"origin": ["a"]}]}}, "/tenantPolicy/rules/0: additional property 'origin'"),
        ({"tenantPolicy": {"rules": [{"createNamespaces": "yes"}]}}, "/tenantPolicy/rules/0/createNamespaces:"),
    ],
)
def test_bad_values_are_rejected(overrides: dict[str, Any], problem: str) -> None:
    schema = load_schema()
    values = load_values("ci/member-values.yaml")
    _merge(values, overrides)
    errors = validate(values, schema, schema)
    assert any(e.startswith(problem) for e in errors), errors


def test_schema_agrees_with_the_operators_own_rules() -> None:
    """The chart must refuse exactly what `llm-operator agent` would refuse at start-up."""
    schema = load_schema()
    cluster_pattern = schema["definitions"]["clusterName"]["pattern"]
    prefix_pattern = schema["properties"]["nats"]["properties"]["subjectPrefix"]["pattern"]
    assert cluster_pattern == subjects._CLUSTER.pattern
    assert prefix_pattern == subjects._PREFIX.pattern
    for name in ("gpu-east-1", "a", "t-cpu", "GPU", "-a", "a-", "a_b", "a" * 63, "a" * 64):
        assert bool(re.search(cluster_pattern, name)) == subjects.valid_cluster_name(name), name
    default_prefix = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]["subjectPrefix"]
    assert default_prefix == subjects.Subjects().prefix


def test_stream_limit_values_are_the_settings_the_planner_reads() -> None:
    """planner.streams is passed as LLMOP_STREAM_LIMITS: the schema names exactly the fields Settings accepts."""
    streams = load_schema()["properties"]["planner"]["properties"]["streams"]
    assert set(streams["properties"]) == set(STREAM_ROLES)
    for limit in streams["properties"].values():
        assert set(limit["properties"]) == set(StreamLimitSettings.model_fields)
    values = {"events": {"max_bytes": 10 * 2**30, "max_age_days": 3, "discard": "new"}}
    settings = Settings(stream_limits=values)  # type: ignore[arg-type]
    assert settings.stream_limits["events"].limits().max_age_seconds == 3 * 86400


def test_network_values_are_the_settings_the_watcher_reports() -> None:
    """network.mode and network.podCIDRs become LLMOP_NETWORK_MODE / LLMOP_NETWORK_POD_CIDRS: the schema admits
    exactly the modes and (IPv4) ranges the operator accepts, and the defaults declare nothing."""
    network = load_schema()["properties"]["network"]["properties"]
    assert network["mode"]["enum"] == ["", *NETWORK_MODES]
    assert network["podCIDRs"]["maxItems"] == ClusterNetwork.model_fields["pod_cidrs"].metadata[0].max_length
    pattern = network["podCIDRs"]["items"]["pattern"]
    for cidr, accepted in (
        ("10.244.0.0/16", True),
        ("10.244.3.0/24", True),
        ("0.0.0.0/0", True),
        ("192.168.1.1/32", True),
        ("10.244.0.0", False),
        ("10.244.0.0/33", False),
        ("256.0.0.0/8", False),
        ("fd00::/64", False),
        ("10.244.0.0/16,10.245.0.0/16", False),
    ):
        assert bool(re.search(pattern, cidr)) is accepted, cidr
        if accepted:
            assert Settings(network_pod_cidrs=[cidr]).cluster_network() is not None
    assert load_values()["network"] == {"mode": "", "podCIDRs": []}
    assert Settings(network_mode=None).cluster_network() is None
    declared = Settings(network_mode="exposed", network_pod_cidrs=["10.244.0.0/16"]).cluster_network()
    assert declared == ClusterNetwork(mode="exposed", pod_cidrs=["10.244.0.0/16"])


# ------------------------------------------------------------------------------------------ chart metadata


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "llm-operator"
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"].startswith(">=1.29")


def test_chart_crds_are_the_generated_crds() -> None:
    """The chart ships crds/ as files (a symlinked directory breaks `kubectl apply -f charts/llm-operator/crds`)."""
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert not (CHART / "crds").is_symlink()
    assert shipped == generated
    stale = [n for n in generated if (CHART / "crds" / n).read_bytes() != (ROOT / "crds" / n).read_bytes()]
    assert not stale, f"charts/llm-operator/crds/{stale} differ from crds/: cp crds/*.yaml charts/llm-operator/crds/"


# ------------------------------------------------------------------------------------------------- RBAC


def defined_rules() -> dict[str, list[dict[str, Any]]]:
    """The rule lists templates/_rbac.tpl defines (plain YAML), by name ("watcher.cluster", ...)."""
    text = (CHART / "templates" / "_rbac.tpl").read_text()
    pattern = r'\{\{- define "llm-operator\.rules\.([\w.]+)" -\}\}\n(.*?)\n\{\{- end \}\}'
    return {name: yaml.safe_load(body) for name, body in re.findall(pattern, text, re.S)}


NAMESPACES_READ = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}


def cluster_roles() -> dict[str, list[dict[str, Any]]]:
    """The ClusterRoles templates/rbac.yaml renders with the default values (all namespaces, a tenant policy that
    creates none): the defined lists, and the applier's read of namespaces. tests/e2e/test_helm.py renders the
    other cases with helm."""
    rules = defined_rules()
    rbac = (CHART / "templates" / "rbac.yaml").read_text()
    for name in rules:
        assert f'"llm-operator.rules.{name}"' in rbac or name.endswith(".namespaced"), name
    assert '"llm-operator.rules.%s.namespaced"' in rbac  # the Roles of watchNamespaces
    return {
        "watcher": rules["watcher.cluster"] + rules["watcher.namespaced"],
        "applier": [NAMESPACES_READ, *rules["applier.namespaced"]],
    }


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def key(kind: str) -> tuple[str, str]:
    return RESOURCES[kind].group, RESOURCES[kind].plural


def reference_roles() -> dict[str, list[dict[str, Any]]]:
    """docs/rbac.md's reference ClusterRoles (derived from the code, and run as a ServiceAccount by
    tests/e2e/test_applier.py)."""
    text = (ROOT / "docs" / "rbac.md").read_text()
    block = text.split("<!-- rbac-reference: begin -->", 1)[1].split("<!-- rbac-reference: end -->", 1)[0]
    body = block.strip().removeprefix("```yaml").removesuffix("```")
    return {d["metadata"]["name"].removeprefix("llm-operator-"): d["rules"] for d in yaml.safe_load_all(body) if d}


def test_chart_roles_are_the_reference_roles() -> None:
    chart, reference = cluster_roles(), reference_roles()
    assert set(chart) == set(reference) == {"watcher", "applier"}
    for name in chart:
        assert grants(chart[name]) == grants(reference[name]), name


def test_watcher_role_reads_what_the_watcher_observes_and_writes_nothing() -> None:
    watcher = grants(cluster_roles()["watcher"])
    observed = ("LLMModel", "LLMDeployment", "Node", "Pod", "Deployment", "Service")  # watcher/service.py
    assert set(watcher) == {key(kind) for kind in observed}
    assert all(verbs == {"list", "watch"} for verbs in watcher.values()), watcher


def test_applier_role_writes_only_the_managed_kinds() -> None:
    applier = grants(cluster_roles()["applier"])
    for kind in MANAGED_KINDS:  # server-side apply (patch, + create when new), prune (list, delete)
        assert applier.get(key(kind)) == {"get", "list", "create", "patch", "delete"}, kind
    extra = {k: v for k, v in applier.items() if k not in {key(kind) for kind in MANAGED_KINDS}}
    assert extra == {
        key("Namespace"): {"get"},  # + create only when the tenant policy creates namespaces
        key("LLMDeployment"): {"get", "patch"},
        ("llm.example.com", "llmdeployments/status"): {"patch"},
        ("llm.example.com", "llmdeployments/scale"): {"patch"},  # the fleet autoscaler's spec.replicas
        key("LLMModel"): {"get"},  # a refused model's status (applier.status.execute_model_status)
        ("llm.example.com", "llmmodels/status"): {"patch"},
        key("Event"): {"create"},
        # applier/endpoints.py: listed by label, applied, pruned (never read one by one)
        key("EndpointSlice"): {"list", "create", "patch", "delete"},
        key("ServiceExport"): {"list", "create", "patch", "delete"},
    }
    assert not any(verbs & {"watch", "update", "deletecollection", "*"} for verbs in applier.values())


def test_the_charts_default_tenant_policy_is_the_operators_default() -> None:
    values = load_values()
    assert TenantPolicy.model_validate(values["tenantPolicy"]) == TenantPolicy()
    keys = load_values("ci/member-values.yaml")["planSigning"]["publicKeys"]
    assert list(trusted_keys(keys)) != []  # the schema's pattern admits what the operator parses
