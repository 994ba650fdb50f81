"""CustomResourceDefinitions generated from the API models in `store.api`.

Guarantees: the output is a structural schema the apiserver accepts (no $ref, no nullable unions, every level
typed); descriptions come from the models' docstrings; CEL rules and int-or-string markers declared on the models
are carried over; the result is deterministic, so ``crds/*.yaml`` can be compared byte for byte (see
``llm-operator crds --check``). Pure: no I/O besides what the caller does with the text.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from store.api import CATEGORY, GROUP, VERSION, LLMDeployment, LLMModel

HEADER = "# Generated from store/api.py by `llm-operator crds --write`. Do not edit by hand.\n"

_DROP = {"title", "$defs"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve $ref, collapse Optional unions, drop null defaults and titles: the structural-schema rules."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**target, **extra}, defs)
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) == 1:
            merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **options[0]}
            # The outer description wins over the referenced model's docstring: it says what the field means here.
            if "description" in node:
                merged["description"] = node["description"]
            return _inline(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
        else:
            out[key] = _inline(value, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    return out


def _clean_defaults(node: Any) -> Any:
    """Drop empty-collection defaults: the apiserver would write `[]`/`{}` into every object for nothing."""
    if isinstance(node, list):
        return [_clean_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _clean_defaults(v) for k, v in node.items()}
    if out.get("default") in ([], {}):
        del out["default"]
    if out.get("type") == "object" and isinstance(out.get("default"), dict):
        # Object defaults are applied by the planner (pydantic), not the apiserver: defaulting a whole nested
        # object into every stored resource would make `kubectl get -o yaml` noisy and freeze today's defaults.
        del out["default"]
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = _clean_defaults(_inline(raw, defs))
    props = schema["properties"]
    # apiVersion/kind/metadata belong to the apiserver; the schema only declares their types.
    props["apiVersion"] = {"type": "string", "description": "APIVersion of this object."}
    props["kind"] = {"type": "string", "description": "Kind of this object."}
    props["metadata"] = {"type": "object"}
    schema.pop("x-kubernetes-preserve-unknown-fields", None)
    schema["required"] = ["spec"]
    status = props.get("status")
    if status is not None:
        _map_list(status["properties"]["conditions"], key="type")
        if "placements" in status["properties"]:
            _map_list(status["properties"]["placements"], key="cluster")
            _map_list(status["properties"]["endpoints"], key="cluster")
    return dict(schema)


def _map_list(node: dict[str, Any], *, key: str) -> None:
    node["x-kubernetes-list-type"] = "map"
    node["x-kubernetes-list-map-keys"] = [key]
    node["items"].setdefault("required", [])
    if key not in node["items"]["required"]:
        node["items"]["required"].append(key)


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    model: type[BaseModel],
    columns: list[dict[str, Any]],
    scale: bool,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "llm-operator", "app.kubernetes.io/part-of": "llm-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(model)},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def llmmodel_crd() -> dict[str, Any]:
    return _crd(
        kind="LLMModel",
        plural="llmmodels",
        short_names=["llmm"],
        model=LLMModel,
        scale=False,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.modelName"},
            {"name": "Image", "type": "string", "jsonPath": ".spec.image"},
            {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpu.count"},
            {"name": "GPU-Types", "type": "string", "jsonPath": ".spec.resources.gpu.types", "priority": 1},
            {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def llmdeployment_crd() -> dict[str, Any]:
    return _crd(
        kind="LLMDeployment",
        plural="llmdeployments",
        short_names=["llmd"],
        model=LLMDeployment,
        scale=True,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.modelRef"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Clusters", "type": "string", "jsonPath": ".status.clusters"},
            {"name": "Status", "type": "string", "jsonPath": ".status.ready"},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoints[0].url", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name in crds/ -> manifest."""
    return {
        f"{GROUP}_llmmodels.yaml": llmmodel_crd(),
        f"{GROUP}_llmdeployments.yaml": llmdeployment_crd(),
    }


def render_yaml(manifest: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(manifest, sort_keys=False, width=120, allow_unicode=True)
