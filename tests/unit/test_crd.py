"""The CRDs: the committed crds/*.yaml are exactly what api/models.py generates (the drift test), and the generated
schemas obey the apiserver's structural-schema rules and our own conventions (descriptions everywhere, CEL rules
bounded in cost, printer columns and /scale paths that point at real fields)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.crd import all_crds, render_yaml

CRDS = Path(__file__).resolve().parents[2] / "crds"
CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "llm-operator" / "crds"
GENERATED = all_crds()
ALLOWED_KEYS = {
    "type",
    "description",
    "properties",
    "items",
    "required",
    "default",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "format",
    "pattern",
    "additionalProperties",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
}


def schema_of(name: str) -> dict[str, Any]:
    schema = GENERATED[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{*}}")


def resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    """The schema node at a simple JSONPath such as .spec.resources.gpu.count or .status.endpoints[0].url."""
    node = schema
    for part in json_path.strip(".").split("."):
        name, _, index = part.partition("[")
        node = node["properties"][name]
        if index:
            node = node["items"]
    return node


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_committed_crds_match_the_models_byte_for_byte(name: str) -> None:
    committed = CRDS / name
    assert committed.exists(), f"crds/{name} is missing: run `llm-operator crds --write`"
    assert committed.read_text() == render_yaml(GENERATED[name]), (
        f"crds/{name} differs from api/models.py: run `llm-operator crds --write`"
    )


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_the_charts_copy_is_the_same_file(name: str) -> None:
    """The Helm chart installs the same CRDs (Helm only reads a chart's own crds/ directory, hence a copy)."""
    copy = CHART_CRDS / name
    assert copy.exists(), f"charts/llm-operator/crds/{name} is missing: run `llm-operator crds --write`"
    assert copy.read_text() == render_yaml(GENERATED[name]), (
        f"charts/llm-operator/crds/{name} differs from api/models.py: run `llm-operator crds --write`"
    )


def test_no_stray_files_in_crds() -> None:
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(GENERATED)


def test_rendering_is_deterministic() -> None:
    assert {n: render_yaml(m) for n, m in all_crds().items()} == {n: render_yaml(m) for n, m in GENERATED.items()}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_schema_is_structural(name: str) -> None:
    for path, node in walk(schema_of(name)):
        unknown = set(node) - ALLOWED_KEYS
        assert not unknown, f"{path}: {unknown}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
            continue
        assert "anyOf" not in node, f"{path}: unions other than int-or-string are not structural"
        assert node.get("type") in {"object", "array", "string", "integer", "boolean", "number"}, path
        if node["type"] == "object" and "properties" not in node:
            assert "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "default" in node:
            assert not isinstance(node["default"], dict | list), f"{path}: object/list defaults are not written"
        if path.startswith(".spec"):
            # Users meet spec errors: a CEL rule with a message says what is expected, a pattern only quotes a regex.
            assert "pattern" not in node, f"{path}: use Matches (a CEL rule with a message) instead of a pattern"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_field_has_a_description(name: str) -> None:
    schema = schema_of(name)
    for path, node in walk(schema):
        if path.startswith(".metadata") or path.endswith("[*]") or path.endswith("{*}"):
            continue
        assert node.get("description"), f"{path} has no description for kubectl explain"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_cel_rules_are_bounded_in_cost(name: str) -> None:
    """Every string a rule reads and every list on the way to a rule has a maximum size, so the apiserver can
    bound the rule's cost."""
    schema = schema_of(name)
    for path, node in walk(schema):
        if node.get("type") == "array" and any("x-kubernetes-validations" in n for _, n in walk(node)):
            assert "maxItems" in node, f"{path}: a list with CEL rules inside needs maxItems"
        if node.get("type") == "string" and "x-kubernetes-validations" in node:
            assert "maxLength" in node, f"{path}: a string with a CEL rule needs maxLength"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{path}: rule {rule['rule']!r} has no message"
            if "fieldPath" in rule:
                resolve(node, rule["fieldPath"])


def test_seed_contract() -> None:
    model = schema_of("llm.example.com_llmmodels.yaml")["properties"]["spec"]
    assert sorted(model["required"]) == ["image", "modelName"]
    assert {"cpu", "memory"} <= set(model["properties"]["resources"]["properties"])
    deployment = schema_of("llm.example.com_llmdeployments.yaml")["properties"]["spec"]
    assert sorted(deployment["required"]) == ["modelRef", "replicas"]
    assert deployment["properties"]["port"]["default"] == 8080
    for crd in GENERATED.values():
        assert crd["spec"]["group"] == "llm.example.com"
        [version] = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert "status" in version["subresources"]
        assert crd["spec"]["names"]["categories"] == ["llm"]


def test_names_and_scale_subresource() -> None:
    model = GENERATED["llm.example.com_llmmodels.yaml"]
    deployment = GENERATED["llm.example.com_llmdeployments.yaml"]
    assert model["spec"]["names"]["shortNames"] == ["llmm"]
    assert deployment["spec"]["names"]["shortNames"] == ["llmd"]
    scale = deployment["spec"]["versions"][0]["subresources"]["scale"]
    schema = schema_of("llm.example.com_llmdeployments.yaml")
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    for path in scale.values():
        assert resolve(schema, path)["type"] in {"integer", "string"}


@pytest.mark.parametrize(
    ("name", "columns"),
    [
        ("llm.example.com_llmmodels.yaml", ["Model", "Image", "GPUs", "Age"]),
        ("llm.example.com_llmdeployments.yaml", ["Model", "Replicas", "Ready", "Clusters", "Status", "Age"]),
    ],
)
def test_printer_columns_point_at_real_fields(name: str, columns: list[str]) -> None:
    version = GENERATED[name]["spec"]["versions"][0]
    printed = version["additionalPrinterColumns"]
    assert [c["name"] for c in printed if not c.get("priority")] == columns
    schema = version["schema"]["openAPIV3Schema"]
    for column in printed:
        path = column["jsonPath"]
        if path.startswith(".metadata"):
            continue
        if "[?(" in path:  # a filter: check the list it filters
            path = path.split("[?(")[0]
        resolve(schema, path)


def test_status_lists_are_maps_keyed_by_identity() -> None:
    status = schema_of("llm.example.com_llmdeployments.yaml")["properties"]["status"]["properties"]
    for field, key in (("conditions", "type"), ("placements", "cluster"), ("endpoints", "cluster")):
        assert status[field]["x-kubernetes-list-type"] == "map"
        assert status[field]["x-kubernetes-list-map-keys"] == [key]
        assert key in status[field]["items"]["required"]
    assert "phase" not in status


def test_committed_files_are_valid_yaml_with_the_header() -> None:
    for path in CRDS.glob("*.yaml"):
        text = path.read_text()
        assert text.startswith("# Generated from api/models.py")
        assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"


# Strings a rule on the enclosing object checks with a function that refuses control characters (matchLabels
# values: LabelSelector's rule matches them against LABEL_VALUE).
_CHECKED_ELSEWHERE = {
    ".spec.networkPolicy.allowedSources[*].ipBlock.cidr": "IPBlock: isCIDR(self.cidr)",
    ".spec.networkPolicy.allowedSources[*].ipBlock.except[*]": "IPBlock: self.except.all(e, isCIDR(e))",
}


def _string_rules(node: dict[str, Any]) -> list[str]:
    """The regular expressions of `self.matches('...')` rules on a string node (unescaped as CEL reads them)."""
    out = []
    for rule in node.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if text.startswith("self.matches('") and text.endswith("')"):
            out.append(text[len("self.matches('") : -2].replace("\\\\", "\\").replace("\\'", "'"))
    return out


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_spec_string_is_bounded_and_refuses_nul_and_control_characters(name: str) -> None:
    """A NUL cannot be stored anywhere downstream and control characters garble logs and terminals: every string
    a user writes in a spec has a maximum length and a rule that refuses them at admission."""
    import re

    for path, node in walk(schema_of(name)):
        if node.get("type") != "string" or not path.startswith(".spec") or "enum" in node:
            continue
        if path.endswith("matchLabels{*}") or path in _CHECKED_ELSEWHERE:
            continue
        assert "maxLength" in node, f"{path}: a string needs maxLength"
        patterns = _string_rules(node)
        assert patterns, f"{path}: no rule refuses control characters"
        for bad in ("a\x00b", "a\x1bb", "a\x7fb"):
            assert any(not re.search(p, bad) for p in patterns), f"{path} accepts {bad!r}"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_spec_list_and_map_has_a_maximum_size(name: str) -> None:
    for path, node in walk(schema_of(name)):
        if not path.startswith(".spec"):
            continue
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: a list needs maxItems"
        if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, f"{path}: a map needs maxProperties"


def _scanned(node: dict[str, Any], cardinality: int = 1, path: str = "") -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Every node with how many times a rule on it may run per object (the product of the enclosing maxItems)."""
    yield path, cardinality, node
    for name, child in node.get("properties", {}).items():
        yield from _scanned(child, cardinality, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _scanned(node["items"], cardinality * node.get("maxItems", 10**6), f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _scanned(
            node["additionalProperties"], cardinality * node.get("maxProperties", 10**6), f"{path}{{*}}"
        )


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_string_rules_stay_within_the_apiservers_cost_budget(name: str) -> None:
    """The apiserver refuses a CRD whose rule's estimated cost (about the characters scanned, times how often the
    rule may run) exceeds its budget: 8 Mi characters (a 32768-character env value in 256 variables) was 3x too
    much on Kubernetes 1.36. Keep every matches() rule at 2.5 M characters or fewer."""
    for path, cardinality, node in _scanned(schema_of(name)):
        if node.get("type") == "string" and _string_rules(node):
            assert node["maxLength"] * cardinality <= 2_500_000, f"{path}: {node['maxLength']} x {cardinality}"
