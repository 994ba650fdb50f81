"""Pinned versions of every binary in the local test fleet (Prometheus included), and where each is built from.

Guarantees: this is the single place a version is chosen. Each component is cached under
``<cache>/bin/<component>-<version>/``, so bumping one version here rebuilds only that component. The wrapper
modules under ``gobuild/`` must require the same versions; ``build.py`` checks that before building.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"
# Prometheus 3.x publishes its Go module as v0.3XX.Y for release v3.XX.Y (its v3 tags are not valid module
# versions of a module without a /v3 suffix); the cache and `prometheus --version` use the release number.
PROMETHEUS_VERSION = "v3.16.0"

# Every wrapper go.mod says `go 1.26.0`; an older go would try to download a toolchain (or fail offline).
MIN_GO_VERSION = (1, 26)


@dataclass(frozen=True)
class Component:
    """One cache entry: a set of binaries built together at one version."""

    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"


KUBERNETES = Component(
    "kubernetes",
    KUBERNETES_VERSION,
    ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
)
ETCD = Component("etcd", ETCD_VERSION, ("etcd",))
KWOK = Component("kwok", KWOK_VERSION, ("kwok", "kwokctl"))
HELM = Component("helm", HELM_VERSION, ("helm",))
PROMETHEUS = Component("prometheus", PROMETHEUS_VERSION, ("prometheus", "promtool"))


def prometheus_module_version(release: str) -> str:
    """The ``github.com/prometheus/prometheus`` module version of a 3.x release: v3.16.0 -> v0.316.0."""
    m = re.fullmatch(r"v3\.(\d+)\.(\d+)", release)
    if m is None or int(m[1]) > 99:
        raise ValueError(f"not a Prometheus 3.x release: {release!r}")
    return f"v0.{300 + int(m[1])}.{m[2]}"


# Build order: cheapest first, so a broken Go setup is reported after seconds rather than after the k8s build.
COMPONENTS: tuple[Component, ...] = (ETCD, KWOK, KUBERNETES, HELM, PROMETHEUS)
