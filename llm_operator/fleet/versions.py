"""Pinned versions of every binary in the local test fleet, and where each one is built from.

Guarantees: this is the single place a version is chosen. Each component is cached under
``<cache>/bin/<component>-<version>/``, so bumping one version here rebuilds only that component. The wrapper
modules under ``gobuild/`` must require the same versions; ``build.py`` checks that before building.
"""

from __future__ import annotations

from dataclasses import dataclass

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v4.3.1"

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

# Build order: cheapest first, so a broken Go setup is reported after seconds rather than after the k8s build.
COMPONENTS: tuple[Component, ...] = (ETCD, KWOK, KUBERNETES, HELM)
