"""The API models (api/models.py) at the pydantic level: every sample in examples/ parses, the seed's YAML keeps
its meaning, defaults are what docs/api.md says, and the string rules pydantic shares with the CRD's CEL reject
what they should (the apiserver side is tested in tests/e2e/test_api.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from api.models import (
    GPU_TYPE_PATTERN,
    LLMDeployment,
    LLMDeploymentSpec,
    LLMModel,
    LLMModelSpec,
    cel_string,
    gpu_count,
    gpu_min_memory_bytes,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS: dict[str, type[LLMModel] | type[LLMDeployment]] = {"LLMModel": LLMModel, "LLMDeployment": LLMDeployment}


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def sample_files() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.yaml"))


def test_examples_exist_for_the_seed_and_the_full_story() -> None:
    names = {str(p.relative_to(EXAMPLES)) for p in sample_files()}
    assert {"seed/model.yaml", "seed/deployment.yaml", "full/model.yaml", "full/deployment.yaml"} <= names


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_parses_and_round_trips(path: Path) -> None:
    document = load(path)
    assert document["apiVersion"] == "llm.example.com/v1alpha1"
    model = KINDS[document["kind"]].model_validate(document)
    # What the user wrote survives a round trip: wire() adds defaults but never drops or renames a field.
    wire = model.spec.wire()
    assert _subset(document["spec"], wire), (document["spec"], wire)


def _subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(_subset, small, big))
    return bool(small == big)


def test_seed_model_means_what_the_seed_says() -> None:
    model = LLMModel.model_validate(load(EXAMPLES / "seed" / "model.yaml"))
    assert model.metadata["name"] == "gpt-small"
    assert model.spec.model_name == "GPT-Small"
    assert model.spec.image == "your-registry/gpt-small:v1"
    assert (model.spec.resources.cpu, model.spec.resources.memory) == ("2", "4Gi")
    assert model.spec.resources.gpu is None
    assert gpu_count(model.spec) == 0
    assert model.spec.source is None
    assert model.spec.storage is None


def test_seed_deployment_means_what_the_seed_says() -> None:
    deployment = LLMDeployment.model_validate(load(EXAMPLES / "seed" / "deployment.yaml"))
    spec = deployment.spec
    assert (spec.model_ref, spec.replicas, spec.port) == ("gpt-small", 2, 8080)


def test_deployment_defaults() -> None:
    spec = LLMDeploymentSpec.model_validate({"modelRef": "m", "replicas": 1})
    assert spec.port == 8080
    assert spec.suspend is False
    assert spec.service_type == "ClusterIP"
    assert spec.autoscaling is None
    placement = spec.placement
    assert placement.cluster_selector is None
    assert placement.clusters == []
    assert placement.prefer_origin is True
    assert placement.strategy == "Pack"
    assert placement.allow_split is True
    assert placement.max_clusters is None
    assert spec.security.profile == "Restricted"
    assert spec.security.run_as_user is None
    assert spec.network_policy.enabled is True
    assert spec.network_policy.allowed_sources == []


def test_autoscaling_defaults() -> None:
    spec = LLMDeploymentSpec.model_validate(
        {"modelRef": "m", "replicas": 1, "autoscaling": {"maxReplicas": 4, "target": {"queueDepth": 4}}}
    )
    scaling = spec.autoscaling
    assert scaling is not None
    assert scaling.min_replicas == 1
    assert scaling.scale_up_stabilization_seconds == 0
    assert scaling.scale_down_stabilization_seconds == 300


def test_model_defaults() -> None:
    spec = LLMModelSpec.model_validate(
        {"modelName": "m", "image": "i", "source": {"uri": "hf://org/model"}, "storage": {"size": "10Gi"}}
    )
    assert spec.startup.timeout_seconds == 600
    assert spec.startup.health_path == "/health"
    assert spec.storage is not None
    assert spec.storage.mount_path == "/models"
    assert spec.storage.read_only is True
    assert spec.storage.access_mode is None
    assert spec.args == []
    assert spec.env == []


def test_full_example_tells_the_story() -> None:
    model = LLMModel.model_validate(load(EXAMPLES / "full" / "model.yaml")).spec
    gpu = model.resources.gpu
    assert gpu is not None
    assert gpu.count == 4
    assert gpu.types[0] == "NVIDIA-A100-SXM4-80GB"
    # "at least 80GB" admits the A100 80GB (81920 MiB) and the H100 80GB (81559 MiB), not the A100 40GB.
    assert 40960 * 2**20 < gpu_min_memory_bytes(model) <= 81559 * 2**20
    assert model.source is not None
    assert model.source.uri.startswith("hf://")
    assert model.storage is not None
    assert model.storage.size == "60Gi"
    assert model.startup.timeout_seconds >= 900
    deployment = LLMDeployment.model_validate(load(EXAMPLES / "full" / "deployment.yaml")).spec
    assert deployment.autoscaling is not None
    assert deployment.autoscaling.target.time_to_first_token_p90_ms == 800
    assert deployment.security.profile == "Restricted"
    assert deployment.network_policy.enabled
    assert deployment.network_policy.allowed_sources


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        pytest.param({"modelRef": "Bad_Name", "replicas": 1}, "modelRef", id="modelRef-not-a-name"),
        pytest.param({"modelRef": "", "replicas": 1}, "modelRef", id="modelRef-empty"),
        pytest.param({"modelRef": "m", "replicas": -1}, "replicas", id="replicas-negative"),
        pytest.param({"modelRef": "m", "replicas": 1, "port": 0}, "port", id="port-zero"),
        pytest.param({"modelRef": "m", "replicas": 1, "placement": {"clusters": ["A B"]}}, "clusters", id="cluster"),
        pytest.param({"modelRef": "m", "replicas": 1, "placement": {"strategy": "Random"}}, "strategy", id="strategy"),
    ],
)
def test_pydantic_rejects_what_the_schema_rejects_field_by_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        LLMDeploymentSpec.model_validate(spec)
    assert field in str(error.value)


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        pytest.param({"cpu": "two"}, "cpu", id="cpu-not-a-quantity"),
        pytest.param({"memory": "4GB"}, "memory", id="memory-4GB"),
        pytest.param({"memory": "0"}, "memory", id="memory-zero"),
        pytest.param({"sharedMemory": "-1Gi"}, "sharedMemory", id="shm-negative"),
        pytest.param({"gpu": {"count": 0}}, "count", id="gpu-count-zero"),
        pytest.param({"gpu": {"count": 17}}, "count", id="gpu-count-17"),
        pytest.param({"gpu": {"count": 1, "types": ["A100 80GB"]}}, "types", id="gpu-type-space"),
    ],
)
def test_pydantic_rejects_bad_resources(resources: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        LLMModelSpec.model_validate({"modelName": "m", "image": "i", "resources": resources})
    assert field in str(error.value)


@pytest.mark.parametrize("value", ["2", 2, "500m", "4Gi", "80G", "1e3", "0.5"])
def test_quantities_in_every_canonical_form_are_accepted(value: str | int) -> None:
    spec = LLMModelSpec.model_validate({"modelName": "m", "image": "i", "resources": {"cpu": value}})
    assert spec.resources.cpu == value


@pytest.mark.parametrize(
    ("gpu_type", "ok"),
    [
        ("NVIDIA-A100-SXM4-80GB", True),
        ("NVIDIA-H100-80GB-HBM3", True),
        ("NVIDIA-A100-*", True),
        ("Tesla-T4", True),
        ("NVIDIA-*-80GB", False),
        ("*", False),
        ("-leading-dash", False),
        ("A100 80GB", False),
    ],
)
def test_gpu_type_syntax(gpu_type: str, ok: bool) -> None:
    import re

    assert bool(re.search(GPU_TYPE_PATTERN, gpu_type)) is ok


def test_cel_string_literals_escape_quotes_and_backslashes() -> None:
    assert cel_string("a'b") == "'a\\'b'"
    assert cel_string("\\.") == "'\\\\.'"


def test_unknown_fields_are_ignored_by_the_models() -> None:
    # The apiserver prunes (or, with kubectl's strict validation, rejects) unknown fields; the planner must not
    # fail on an object stored by a newer schema.
    spec = LLMDeploymentSpec.model_validate({"modelRef": "m", "replicas": 1, "futureField": True})
    assert spec.model_ref == "m"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"modelName": "a\x00b"}, "modelName", id="model-name-nul"),
        pytest.param({"modelName": "ok\n"}, "modelName", id="model-name-trailing-newline"),
        pytest.param({"image": "r/x:v1\x00"}, "image", id="image-nul"),
        pytest.param({"args": ["x\x1b[31m"]}, "args", id="args-escape"),
        pytest.param({"env": [{"name": "A", "value": "\x00"}]}, "value", id="env-value-nul"),
        pytest.param({"env": [{"name": "A", "secretKeyRef": {"name": "s", "key": "a\x00"}}]}, "key", id="secret-key"),
        pytest.param({"storage": {"size": "1Gi", "mountPath": "/m\x00"}}, "mountPath", id="mount-path-nul"),
        pytest.param({"source": {"uri": "pvc://claim/a\x00"}}, "uri", id="uri-nul"),
    ],
)
def test_pydantic_rejects_control_characters(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        LLMModelSpec.model_validate({"modelName": "m", "image": "i", **changes})
    assert field in str(error.value)


def test_env_values_may_hold_tabs_and_newlines() -> None:
    spec = LLMModelSpec.model_validate({"modelName": "m", "image": "i", "env": [{"name": "PEM", "value": "a\n\tb"}]})
    assert spec.env[0].value == "a\n\tb"
