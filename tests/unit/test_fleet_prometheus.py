"""Prometheus as a fleet component: the release <-> module version mapping, the build recipe (Kubernetes service
discovery only, no web UI, version stamped), and that commands which do not need it never wait for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_operator.fleet import build
from llm_operator.fleet.versions import COMPONENTS, PROMETHEUS, prometheus_module_version


@pytest.mark.parametrize(
    ("release", "module"), [("v3.16.0", "v0.316.0"), ("v3.5.0", "v0.305.0"), ("v3.15.1", "v0.315.1")]
)
def test_a_release_maps_to_its_module_version(release: str, module: str) -> None:
    assert prometheus_module_version(release) == module


@pytest.mark.parametrize("release", ["v2.53.0", "3.16.0", "v3.16", "v3.100.0", "v3.16.0-rc.0", "", "v0.316.0"])
def test_anything_but_a_3x_release_is_refused(release: str) -> None:
    with pytest.raises(ValueError, match=r"not a Prometheus 3\.x release"):
        prometheus_module_version(release)


def test_the_pinned_release_has_a_module_version_and_is_built_with_the_fleet() -> None:
    assert prometheus_module_version(PROMETHEUS.version).startswith("v0.3")
    assert PROMETHEUS in COMPONENTS
    assert PROMETHEUS.binaries == ("prometheus", "promtool")


def test_the_recipe_builds_both_commands_with_kubernetes_sd_only_and_stamps_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "_module_dir", lambda *_a, **_k: tmp_path / "module")
    go = build._Go("/usr/bin/go", "go1.26.8")
    recipe = build._recipe(PROMETHEUS, go=go, out=tmp_path / "out", scratch=tmp_path)
    argv = list(recipe.argv)
    module = prometheus_module_version(PROMETHEUS.version)
    assert argv[0] == "install"
    assert argv[-2:] == [f"github.com/prometheus/prometheus/cmd/{b}@{module}" for b in ("prometheus", "promtool")]
    tags = argv[argv.index("-tags") + 1].split(",")
    assert {"remove_all_sd", "enable_kubernetes_sd"} <= set(tags)
    assert "builtinassets" not in tags  # the UI assets need a node build; the API is all the tests use
    ldflags = argv[argv.index("-ldflags") + 1]
    assert f"github.com/prometheus/common/version.Version={PROMETHEUS.version.removeprefix('v')}" in ldflags
    # `go list` counts the packages of the same tagged graph, in the module's own directory.
    assert recipe.list_flags == ("-tags", ",".join(tags))
    assert recipe.list_cwd == tmp_path / "module"
    assert recipe.list_pkgs == ("./cmd/prometheus", "./cmd/promtool")
    assert recipe.env["GOBIN"] == str(tmp_path / "out") and recipe.env["CGO_ENABLED"] == "0"


def _complete(root: Path, component: build.Component) -> None:
    d = root / component.dirname
    d.mkdir(parents=True)
    for b in component.binaries:
        (d / b).write_text("#!/bin/sh\n")
        (d / b).chmod(0o755)
    (d / build.STAMP).write_text(json.dumps({"component": component.name}))


def test_without_prometheus_a_cache_lacking_it_is_ready_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_OPERATOR_CACHE", str(tmp_path))

    def no_go() -> build._Go:
        raise AssertionError("nothing should be built")

    monkeypatch.setattr(build._Go, "find", staticmethod(no_go))
    for component in COMPONENTS:
        if component is not PROMETHEUS:
            _complete(tmp_path / "bin", component)
    toolchain = build.ensure_toolchain(with_prometheus=False)
    assert toolchain.promtool == tmp_path / "bin" / PROMETHEUS.dirname / "promtool"
    assert not build.is_complete(PROMETHEUS, tmp_path / "bin")
    # Wanted and missing: the build starts (and here, finds no Go).
    with pytest.raises(AssertionError, match="nothing should be built"):
        build.ensure_toolchain()
    _complete(tmp_path / "bin", PROMETHEUS)
    assert build.ensure_toolchain().prometheus.is_file()
