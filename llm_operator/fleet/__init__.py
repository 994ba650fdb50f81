"""The local test fleet: real Kubernetes control planes (kwokctl's binary runtime) built from Go modules.

Guarantees: importing this package has no side effects; the public API below is what the operator's
``llm-operator fleet`` commands and the pytest ``fleet`` fixture use. See ``build`` (binaries), ``spec`` (what
the fleet looks like) and ``clusters`` (running it).
"""

from llm_operator.fleet.build import FleetError, Toolchain, cache_dir, ensure_toolchain
from llm_operator.fleet.clusters import (
    ClusterStatus,
    MemberCluster,
    apply_nodes,
    cluster_dir,
    component_pid,
    default_kubeconfig,
    delete_nodes,
    fleet_down,
    fleet_status,
    fleet_up,
    kubectl,
    kwok_workdir,
    start_cluster,
    stop_cluster,
)
from llm_operator.fleet.spec import DEFAULT_FLEET, ClusterSpec, NodeSpec, node_manifest

__all__ = [
    "DEFAULT_FLEET",
    "ClusterSpec",
    "ClusterStatus",
    "FleetError",
    "MemberCluster",
    "NodeSpec",
    "Toolchain",
    "apply_nodes",
    "cache_dir",
    "cluster_dir",
    "component_pid",
    "default_kubeconfig",
    "delete_nodes",
    "ensure_toolchain",
    "fleet_down",
    "fleet_status",
    "fleet_up",
    "kubectl",
    "kwok_workdir",
    "node_manifest",
    "start_cluster",
    "stop_cluster",
]
