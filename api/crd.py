"""CustomResourceDefinitions generated from the API models in `api.models`.

Guarantees: the output is a structural schema the apiserver accepts (no $ref, no nullable unions, every level
typed); descriptions come from the models' docstrings; CEL rules and int-or-string markers declared on the models
are carried over; the result is deterministic, so ``crds/*.yaml`` can be compared byte for byte (see
``llm-operator crds --check``). Pure: no I/O besides what the caller does with the text.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from api.models import CATEGORY, DNS_1035_LABEL, DNS_SUBDOMAIN, GROUP, VERSION, LLMDeployment, LLMModel, cel, cel_string

HEADER = "# Generated from api/models.py by `llm-operator crds --write`. Do not edit by hand.\n"

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


def _name_schema(pattern: str, message: str) -> dict[str, Any]:
    """metadata.name restrictions: the only part of metadata a CRD schema may constrain. The name ends up in
    label values and object names in member clusters, so it must fit those at admission, not fail at apply time."""
    return {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": 63,
                "x-kubernetes-validations": [cel(f"self.matches({cel_string(pattern)})", message)],
            }
        },
    }


def openapi_schema(model: type[BaseModel], *, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = _clean_defaults(_inline(raw, defs))
    props = schema["properties"]
    # apiVersion/kind/metadata belong to the apiserver; the schema only declares their types.
    props["apiVersion"] = {"type": "string", "description": "APIVersion of this object."}
    props["kind"] = {"type": "string", "description": "Kind of this object."}
    props["metadata"] = metadata or {"type": "object"}
    schema.pop("x-kubernetes-preserve-unknown-fields", None)
    schema["required"] = ["spec"]
    return dict(schema)


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    model: type[BaseModel],
    columns: list[dict[str, Any]],
    scale: bool,
    metadata: dict[str, Any],
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
                    "schema": {"openAPIV3Schema": openapi_schema(model, metadata=metadata)},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _column(name: str, type_: str, path: str, description: str, *, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since the object was created.")

# The READY condition's reason, read with a JSONPath filter (the apiserver's table printer evaluates filters).
# A list of clusters cannot be read that way: for `[*]` the printer shows only the first match, hence the
# comma-separated status.clusters field.
READY_REASON = '.status.conditions[?(@.type=="Ready")].reason'


def llmmodel_crd() -> dict[str, Any]:
    return _crd(
        kind="LLMModel",
        plural="llmmodels",
        short_names=["llmm"],
        model=LLMModel,
        scale=False,
        metadata=_name_schema(
            DNS_SUBDOMAIN,
            "an LLMModel's name must be at most 63 lowercase letters, digits, '-' and '.', starting and ending with "
            "a letter or digit (deployments carry it in a label)",
        ),
        columns=[
            _column("Model", "string", ".spec.modelName", "Name of the LLM model."),
            _column("Image", "string", ".spec.image", "Container image of the model server."),
            _column("GPUs", "integer", ".spec.resources.gpu.count", "GPUs per instance."),
            _column("GPU-Types", "string", ".spec.resources.gpu.types", "Acceptable GPU products.", priority=1),
            _column("Source", "string", ".spec.source.uri", "Where the weights come from.", priority=1),
            _AGE,
        ],
    )


def llmdeployment_crd() -> dict[str, Any]:
    return _crd(
        kind="LLMDeployment",
        plural="llmdeployments",
        short_names=["llmd"],
        model=LLMDeployment,
        scale=True,
        metadata=_name_schema(
            DNS_1035_LABEL,
            "an LLMDeployment's name must be at most 63 lowercase letters, digits and '-', starting with a letter "
            "and ending with a letter or digit (it names the Service in each cluster)",
        ),
        columns=[
            _column("Model", "string", ".spec.modelRef", "The LLMModel deployed."),
            _column("Replicas", "integer", ".spec.replicas", "Replicas asked for across the fleet."),
            _column("Ready", "integer", ".status.readyReplicas", "Replicas ready across the fleet."),
            _column("Clusters", "string", ".status.clusters", "Member clusters that run replicas."),
            _column("Status", "string", READY_REASON, "Reason of the Ready condition."),
            _column("Endpoint", "string", ".status.endpoints[0].url", "URL of the Service.", priority=1),
            _column("Traffic", "string", ".status.traffic", "Where requests to the origin's Service go.", priority=1),
            _AGE,
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
