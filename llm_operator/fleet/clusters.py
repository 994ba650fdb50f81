"""Run the local fleet: kwok clusters with a real control plane each, and GPU machines as Node objects.

Guarantees:
- ``fleet_up`` is idempotent and converges: it creates missing clusters (``kwokctl create cluster --runtime
  binary``, prebuilt binaries only, never a download), starts stopped ones, recreates the ones it made with
  other binaries or flags, and returns only when every apiserver is ready, the controller-manager and
  scheduler answer /healthz, the ``default`` ServiceAccount exists (pods can be created), and every node is
  Ready, free of not-ready taints and heartbeated by the running kwok. Fleet nodes no longer in the spec are
  deleted. On a running fleet it only checks and re-applies, which takes a few seconds.
- Restarts are fast: kube-scheduler and kube-controller-manager run without leader election (one instance
  each; a killed leader would otherwise block its successor for the 15 s lease), and kwok's node leases last
  10 s (kwokctl's default, 200 s, keeps a restarted kwok from managing its nodes for minutes).
- Components listen on 127.0.0.1 only (kwokctl's default, 0.0.0.0, would expose an unauthenticated etcd).
- Clusters are created one after another: each ``kwokctl create`` returns once its apiserver serves, so the
  CPU-heavy apiserver starts never overlap on a small machine.
- The caller's kubeconfig keeps its current-context (kwokctl would switch it to the cluster it just created).
- Callers serialize on a lock in the kwok workdir; every subprocess has a timeout; failures are FleetError.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from api.labels import GPU_PRODUCT_LABEL, GPU_RESOURCE, LABEL_MANAGED_BY
from llm_operator.fleet.build import FleetError, Toolchain, elapsed, file_lock
from llm_operator.fleet.spec import (
    DEFAULT_FLEET,
    MANAGED_BY,
    VOLUME_POOL,
    ClusterSpec,
    NodeSpec,
    node_manifest,
    volume_manifest,
)
from llm_operator.fleet.versions import ETCD_VERSION, KUBERNETES_VERSION, KWOK_VERSION

Progress = Callable[[str], None]

FIELD_MANAGER = "llm-operator-fleet"
POD_CIDR_MANAGER = "llm-operator-fleet-podcidr"
MARKER = "llm-operator-fleet.json"  # written into kwokctl's directory of each cluster fleet_up manages
KWOKCTL_CONFIG = "llm-operator-kwokctl.yaml"
LOCK = ".llm-operator-fleet.lock"
NOT_READY_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})
NODE_LEASE_S = 10

# Everything that shapes a created cluster; a cluster made with another recipe is recreated by fleet_up.
CREATE_FLAGS: tuple[str, ...] = (
    # Tests create pods in bursts; the default client QPS of kcm and the scheduler would throttle them.
    "--disable-qps-limits",
    # Real-Kubernetes heartbeat timings (kwokctl multiplies them by 5 by default): kcm marks nodes NotReady
    # 40 s after kwok stops heartbeating, so "the nodes died" can be simulated by stopping kwok-controller.
    "--heartbeat-factor=1",
    f"--node-lease-duration-seconds={NODE_LEASE_S}",
    "--extra-args=kube-scheduler=leader-elect=false",
    "--extra-args=kube-controller-manager=leader-elect=false",
)
RECIPE = " ".join((f"k8s={KUBERNETES_VERSION} etcd={ETCD_VERSION} kwok={KWOK_VERSION}", *CREATE_FLAGS))

CREATE_TIMEOUT_S = 300.0
START_TIMEOUT_S = 180.0
DELETE_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 180.0
NODES_TIMEOUT_S = 120.0
KUBECTL_TIMEOUT_S = 60.0
QUICK_TIMEOUT_S = 20.0
POLL_S = 0.25
# A reused, running cluster must show node-lease renewals this recent (kwok renews every NODE_LEASE_S / 4).
RUNNING_LEASE_AGE_S = 3.0 * NODE_LEASE_S
FLEET_LOCK_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class MemberCluster:
    """How to reach one fleet cluster."""

    name: str
    context: str
    kubeconfig: Path
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


@dataclass(frozen=True)
class ClusterStatus:
    """One kwok cluster found in the workdir (whether or not fleet_up created it)."""

    name: str
    context: str
    kubeconfig: Path
    directory: Path  # kwokctl's files for it: logs/, pki/, pids/, etcd/, kwok.yaml, kubeconfig.yaml
    components: Mapping[str, str]  # component -> kwokctl's status: Ready (= process alive), Stopped, ...
    running: bool
    managed: bool  # created by fleet_up
    labels: Mapping[str, str]
    nodes: int
    ready_nodes: int
    gpus: Mapping[str, int]  # GPU product -> nvidia.com/gpu capacity in the cluster


def kwok_workdir(workdir: Path | None = None) -> Path:
    """The kwokctl workdir: ``workdir``, else ``$KWOK_WORKDIR``, else kwokctl's own default ``~/.kwok``."""
    if workdir is not None:
        return workdir
    env = os.environ.get("KWOK_WORKDIR")
    return Path(env) if env else Path.home() / ".kwok"


def default_kubeconfig() -> Path:
    return Path.home() / ".kube" / "config"


def cluster_dir(name: str, *, workdir: Path | None = None) -> Path:
    """kwokctl's directory for cluster ``name``: its logs/, pki/, pids/<component>.pid, etcd/ data."""
    return kwok_workdir(workdir) / "clusters" / name


# ----------------------------------------------------------------------------------------------------
# Public operations


def fleet_up(
    *,
    toolchain: Toolchain,
    clusters: Sequence[ClusterSpec] = DEFAULT_FLEET,
    kubeconfig: Path | None = None,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> list[MemberCluster]:
    """Create or start ``clusters``, apply their nodes, and wait until all is ready (see the module doc)."""
    say = progress or _quiet
    wd, kc = kwok_workdir(workdir), kubeconfig or default_kubeconfig()
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise FleetError(f"fleet up: duplicate cluster names in {names}: give every cluster its own name")
    wd.mkdir(parents=True, exist_ok=True)
    kc.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with file_lock(wd / LOCK, say=say, what="fleet up/down", timeout_s=FLEET_LOCK_TIMEOUT_S):
        existing = set(_list_clusters(toolchain, wd))
        previous_context = _current_context(toolchain, kc)
        since: dict[str, float] = {}  # wall-clock time after which node leases must have been renewed
        for spec in clusters:
            ts = time.monotonic()
            if spec.name in existing:
                marker = _read_marker(wd, spec.name)
                if marker is None:
                    raise FleetError(
                        f"fleet up: a kwok cluster named {spec.name} exists in {wd} but was not created by "
                        f"llm-operator: delete it (`kwokctl delete cluster --name {spec.name}`) or use another "
                        "workdir"
                    )
                if marker.get("recipe") != RECIPE:
                    say(f"{spec.name}: recreating (made with other binaries or flags)")
                    _delete(toolchain, wd, kc, spec.name)
                    existing.discard(spec.name)
            if spec.name in existing:
                comps = _components(toolchain, wd, spec.name)
                if not comps or any(s != "Ready" for s in comps.values()):
                    say(f"{spec.name}: starting the stopped cluster")
                    since[spec.name] = time.time()
                    _kwokctl(toolchain, wd, ["start", "cluster", "--name", spec.name], timeout=START_TIMEOUT_S)
                else:
                    say(f"{spec.name}: already running")
                    since[spec.name] = time.time() - RUNNING_LEASE_AGE_S
                _ensure_context(toolchain, wd, kc, spec.name)
            else:
                say(f"{spec.name}: creating (kwokctl create cluster --runtime binary)")
                since[spec.name] = time.time()
                _create(toolchain, wd, kc, spec.name)
            _write_marker(wd, spec)
            # kwokctl picks the next cluster's ports among those not listened on yet: wait until every
            # component of this one has bound its ports, or the next cluster may be handed the same ones.
            _wait_ports_bound(wd, spec.name)
            say(f"{spec.name}: apiserver serving ({elapsed(ts)})")
        if previous_context and _current_context(toolchain, kc) != previous_context:
            _kubectl_config(toolchain, kc, ["use-context", previous_context])

        members = [MemberCluster(s.name, s.context, kc, s.labels) for s in clusters]

        def converge(spec: ClusterSpec, member: MemberCluster) -> None:
            _wait_control_plane(toolchain, member, wd)
            _converge_nodes(toolchain, member, spec.nodes)
            names = [n.name for n in spec.nodes]
            _wait_nodes_ready(toolchain, member, names, since=since[spec.name], timeout=NODES_TIMEOUT_S)
            _converge_volumes(toolchain, member)
            say(f"{spec.name}: {len(spec.nodes)} nodes Ready, {VOLUME_POOL} volumes, context {member.context}")

        # The control planes already run; what remains is mostly waiting on kubectl, so do it side by side.
        with ThreadPoolExecutor(max_workers=len(clusters) or 1, thread_name_prefix="fleet-up") as pool:
            for future in [pool.submit(converge, s, m) for s, m in zip(clusters, members, strict=True)]:
                future.result()
    say(f"fleet of {len(members)} clusters ready in {elapsed(t0)}")
    return members


def fleet_down(
    *,
    toolchain: Toolchain,
    names: Sequence[str] | None = None,
    kubeconfig: Path | None = None,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> None:
    """Delete the named clusters (default: all that fleet_up created in this workdir), processes and data.

    Clusters that do not exist are ignored, so this is idempotent. kwokctl also removes their kubeconfig
    entries.
    """
    say = progress or _quiet
    wd, kc = kwok_workdir(workdir), kubeconfig or default_kubeconfig()
    if not (wd / "clusters").is_dir():
        return
    with file_lock(wd / LOCK, say=say, what="fleet up/down", timeout_s=FLEET_LOCK_TIMEOUT_S):
        existing = _list_clusters(toolchain, wd)
        if names is None:
            names = [n for n in existing if _read_marker(wd, n) is not None]
        for name in names:
            if name in existing:
                t0 = time.monotonic()
                _delete(toolchain, wd, kc, name)
                say(f"{name}: deleted ({elapsed(t0)})")


def fleet_status(
    *, toolchain: Toolchain, kubeconfig: Path | None = None, workdir: Path | None = None
) -> list[ClusterStatus]:
    """Every kwok cluster in the workdir: whether it runs, whether fleet_up manages it, its nodes and GPUs."""
    wd, kc = kwok_workdir(workdir), kubeconfig or default_kubeconfig()
    if not (wd / "clusters").is_dir():
        return []
    out: list[ClusterStatus] = []
    for name in _list_clusters(toolchain, wd):
        comps = _components(toolchain, wd, name)
        running = bool(comps) and all(s == "Ready" for s in comps.values())
        marker = _read_marker(wd, name)
        member = MemberCluster(name, f"kwok-{name}", kc)
        nodes: list[dict[str, Any]] = []
        if running:
            res = kubectl(toolchain, member, "get", "nodes", "-o", "json", check=False, timeout=QUICK_TIMEOUT_S)
            if res.returncode == 0:
                nodes = json.loads(res.stdout).get("items", [])
        gpus: dict[str, int] = {}
        for n in nodes:
            count = _int(n.get("status", {}).get("capacity", {}).get(GPU_RESOURCE))
            if count:
                product = n["metadata"].get("labels", {}).get(GPU_PRODUCT_LABEL, "unknown")
                gpus[product] = gpus.get(product, 0) + count
        out.append(
            ClusterStatus(
                name=name,
                context=member.context,
                kubeconfig=kc,
                directory=wd / "clusters" / name,
                components=MappingProxyType(comps),
                running=running,
                managed=marker is not None,
                labels=MappingProxyType(dict((marker or {}).get("labels", {}))),
                nodes=len(nodes),
                ready_nodes=sum(1 for n in nodes if _node_ready(n)),
                gpus=MappingProxyType(gpus),
            )
        )
    return out


def _converge_volumes(toolchain: Toolchain, cluster: MemberCluster) -> None:
    """Keep the pool of static volumes full: volumes whose claim is gone (Released) are recreated Available."""
    listed = kubectl(toolchain, cluster, "get", "pv", "-l", f"{LABEL_MANAGED_BY}={MANAGED_BY}", "-o", "json")
    released = [
        v["metadata"]["name"]
        for v in json.loads(listed.stdout)["items"]
        if v.get("status", {}).get("phase") in ("Released", "Failed")
    ]
    if released:
        kubectl(toolchain, cluster, "delete", "pv", *released, "--ignore-not-found", "--wait=true", "--timeout=60s")
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": [volume_manifest(i) for i in range(VOLUME_POOL)]})
    kubectl(
        toolchain,
        cluster,
        "apply",
        "--server-side",
        "--force-conflicts",
        f"--field-manager={FIELD_MANAGER}",
        "-f",
        "-",
        input=doc,
    )


def apply_nodes(
    *,
    toolchain: Toolchain,
    cluster: MemberCluster,
    nodes: Sequence[NodeSpec],
    wait: bool = True,
    timeout: float = NODES_TIMEOUT_S,
) -> None:
    """Create or update ``nodes`` (labels, taints and capacity) and, with ``wait``, wait until they are Ready.

    Server-side apply twice: a Node's status is kept on create but ignored on update, so capacity changes go
    through the status subresource.
    """
    if not nodes:
        return
    since = time.time()
    manifests = [node_manifest(n) for n in nodes]
    # spec.podCIDR is set once and never changed: it has a field manager of its own, so that an apply of the
    # rest (by this or an older version of this code, which knows no podCIDR) never tries to remove it.
    cidrs = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": m["metadata"]["name"]}, "spec": {"podCIDR": cidr}}
        for m in manifests
        if (cidr := m["spec"].pop("podCIDR", None))
    ]
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    ssa = ("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-")
    kubectl(toolchain, cluster, *ssa, input=doc)
    if cidrs:
        cidr_ssa = ("apply", "--server-side", "--force-conflicts", f"--field-manager={POD_CIDR_MANAGER}", "-f", "-")
        kubectl(toolchain, cluster, *cidr_ssa, input=json.dumps({"apiVersion": "v1", "kind": "List", "items": cidrs}))
    kubectl(toolchain, cluster, *ssa, "--subresource=status", input=doc)
    if wait:
        _wait_nodes_ready(
            toolchain, cluster, [n.name for n in nodes], since=since - RUNNING_LEASE_AGE_S, timeout=timeout
        )


def delete_nodes(*, toolchain: Toolchain, cluster: MemberCluster, names: Sequence[str]) -> None:
    """Delete nodes by name (missing ones are ignored) and wait until they are gone.

    Pods bound to them are not deleted here: kube-controller-manager's pod GC removes them later.
    """
    if names:
        args = ("delete", "node", *names, "--ignore-not-found", "--wait=true", "--timeout=60s")
        kubectl(toolchain, cluster, *args, timeout=KUBECTL_TIMEOUT_S + 10)


def stop_cluster(*, toolchain: Toolchain, name: str, workdir: Path | None = None) -> None:
    """Kill every component of cluster ``name`` (kwokctl SIGKILLs them; etcd data and ports are kept)."""
    _kwokctl(toolchain, kwok_workdir(workdir), ["stop", "cluster", "--name", name], timeout=START_TIMEOUT_S)


def start_cluster(
    *, toolchain: Toolchain, cluster: MemberCluster, workdir: Path | None = None, wait: bool = True
) -> None:
    """Start the stopped components of ``cluster`` and, with ``wait``, wait until it works again: control
    plane ready and every node heartbeated by the new kwok-controller (so pods progress again)."""
    wd = kwok_workdir(workdir)
    since = time.time()
    _kwokctl(toolchain, wd, ["start", "cluster", "--name", cluster.name], timeout=START_TIMEOUT_S)
    if wait:
        _wait_control_plane(toolchain, cluster, wd)
        names = [
            n.removeprefix("node/") for n in kubectl(toolchain, cluster, "get", "nodes", "-o", "name").stdout.split()
        ]
        _wait_nodes_ready(toolchain, cluster, names, since=since, timeout=NODES_TIMEOUT_S)


def component_pid(name: str, component: str, *, workdir: Path | None = None) -> int | None:
    """PID of one component (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok-controller),
    or None when it is not running. For fault tests: SIGSTOP/SIGCONT it, or SIGKILL it and start_cluster."""
    pidfile = cluster_dir(name, workdir=workdir) / "pids" / f"{component}.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def kubectl(
    toolchain: Toolchain,
    cluster: MemberCluster,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = KUBECTL_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run the built kubectl against ``cluster``; with ``check``, a non-zero exit raises FleetError."""
    argv = [str(toolchain.kubectl), "--kubeconfig", str(cluster.kubeconfig), "--context", cluster.context]
    verb = " ".join(a for a in args[:2] if not a.startswith("-"))
    step = f"kubectl {verb} on cluster {cluster.name}"
    return _run([*argv, *args], env=toolchain.env(), step=step, timeout=timeout, input=input, check=check)


# ----------------------------------------------------------------------------------------------------
# Internals


def _quiet(_msg: str) -> None:
    pass


def _run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    step: str,
    timeout: float,
    input: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(
            list(argv), env=dict(env), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        msg = f"{step} failed: no answer after {timeout:.0f}s: check `llm-operator fleet status`"
        raise FleetError(msg) from None
    except OSError as e:
        raise FleetError(f"{step} failed: cannot run {argv[0]} ({e}): run `llm-operator fleet build`") from e
    if check and res.returncode != 0:
        raise FleetError(f"{step} failed: {_error_text(res)}")
    return res


def _error_text(res: subprocess.CompletedProcess[str]) -> str:
    """The useful part of a failed command's output; kwokctl logs JSON lines when not on a terminal."""
    lines: list[str] = []
    for raw in (res.stderr + "\n" + res.stdout).splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict):
                if rec.get("level") in ("ERROR", "WARN"):
                    lines.append(f"{rec.get('msg', '')}: {rec.get('err', '')}".rstrip(": "))
                continue
        lines.append(line)
    return " | ".join(lines[-5:]) or f"exit code {res.returncode}"


def _kwokctl(
    toolchain: Toolchain, wd: Path, args: Sequence[str], *, timeout: float, step: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = toolchain.env()
    env["KWOK_WORKDIR"] = str(wd)
    step = step or f"kwokctl {' '.join(args)}"
    return _run([str(toolchain.kwokctl), *args], env=env, step=step, timeout=timeout)


def _kubectl_config(toolchain: Toolchain, kc: Path, args: Sequence[str], *, check: bool = True) -> str:
    res = _run(
        [str(toolchain.kubectl), "config", *args, "--kubeconfig", str(kc)],
        env=toolchain.env(),
        step=f"kubectl config {args[0]} ({kc})",
        timeout=QUICK_TIMEOUT_S,
        check=check,
    )
    return res.stdout.strip() if res.returncode == 0 else ""


def _list_clusters(toolchain: Toolchain, wd: Path) -> list[str]:
    res = _kwokctl(toolchain, wd, ["get", "clusters"], timeout=QUICK_TIMEOUT_S)
    return [line.strip() for line in res.stdout.splitlines() if line.strip()]


def _components(toolchain: Toolchain, wd: Path, name: str) -> dict[str, str]:
    res = _kwokctl(toolchain, wd, ["get", "components", "--name", name, "-o", "wide"], timeout=QUICK_TIMEOUT_S)
    comps: dict[str, str] = {}
    for line in res.stdout.splitlines()[1:]:  # first line is the NAME STATUS header
        parts = line.split()
        if len(parts) == 2:
            comps[parts[0]] = parts[1]
    return comps


def _kwokctl_config(wd: Path) -> Path:
    # kwokctl binds every component to 0.0.0.0 unless told otherwise; etcd has no authentication.
    path = wd / KWOKCTL_CONFIG
    text = "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokctlConfiguration\noptions:\n  bindAddress: 127.0.0.1\n"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(path)
    return path


def _create(toolchain: Toolchain, wd: Path, kc: Path, name: str) -> None:
    args = ["create", "cluster", "--name", name, "--runtime", "binary", "--kubeconfig", str(kc)]
    args += ["--config", str(_kwokctl_config(wd)), *CREATE_FLAGS]
    try:
        _kwokctl(toolchain, wd, args, timeout=CREATE_TIMEOUT_S, step=f"creating cluster {name}")
    except FleetError:
        # Leave nothing half-created behind, so that the next fleet_up starts clean instead of reusing it.
        with contextlib.suppress(FleetError):
            _delete(toolchain, wd, kc, name)
        raise


def _delete(toolchain: Toolchain, wd: Path, kc: Path, name: str) -> None:
    args = ["delete", "cluster", "--name", name, "--kubeconfig", str(kc)]
    _kwokctl(toolchain, wd, args, timeout=DELETE_TIMEOUT_S, step=f"deleting cluster {name}")


def _current_context(toolchain: Toolchain, kc: Path) -> str | None:
    if not kc.is_file():
        return None
    return _kubectl_config(toolchain, kc, ["current-context"], check=False) or None


def _ensure_context(toolchain: Toolchain, wd: Path, kc: Path, name: str) -> None:
    """Re-add the cluster's context to ``kc`` if it is missing (e.g. the kubeconfig file was removed)."""
    ctx = f"kwok-{name}"
    if _kubectl_config(toolchain, kc, ["get-contexts", ctx, "-o", "name"], check=False) == ctx:
        return
    # kwokctl's per-cluster kubeconfig references the cluster's pki/ files; copy those references over.
    own = wd / "clusters" / name / "kubeconfig.yaml"
    cfg = json.loads(_kubectl_config(toolchain, own, ["view", "--raw", "-o", "json"]))
    try:
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        server, ca = cluster["server"], cluster["certificate-authority"]
        cert, key = user["client-certificate"], user["client-key"]
    except (KeyError, IndexError, TypeError) as e:
        raise FleetError(
            f"repairing the kubeconfig context {ctx} failed: {own} lacks {e}: delete the cluster "
            "(`llm-operator fleet down`) and run `llm-operator fleet up` again"
        ) from e
    _kubectl_config(toolchain, kc, ["set-cluster", ctx, f"--server={server}", f"--certificate-authority={ca}"])
    _kubectl_config(toolchain, kc, ["set-credentials", ctx, f"--client-certificate={cert}", f"--client-key={key}"])
    _kubectl_config(toolchain, kc, ["set-context", ctx, f"--cluster={ctx}", f"--user={ctx}"])


def _write_marker(wd: Path, spec: ClusterSpec) -> None:
    path = wd / "clusters" / spec.name / MARKER
    data = {"name": spec.name, "labels": dict(spec.labels), "nodes": [n.name for n in spec.nodes], "recipe": RECIPE}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(path)


def _read_marker(wd: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((wd / "clusters" / name / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _poll(check: Callable[[], str | None], *, timeout: float, failure: Callable[[str], FleetError]) -> None:
    """Call ``check`` until it returns None (done); it returns what is still missing otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        missing = check()
        if missing is None:
            return
        if time.monotonic() > deadline:
            raise failure(missing)
        time.sleep(POLL_S)


def _saved_components(wd: Path, name: str) -> list[dict[str, Any]]:
    """The components of the configuration kwokctl saved for the cluster ([] when it cannot be read)."""
    path = wd / "clusters" / name / "kwok.yaml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        # The KwokctlConfiguration comes first; the Stage documents after it are large and not needed.
        doc = next(yaml.load_all(path.read_text(), Loader=loader), None)
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(doc, dict) or doc.get("kind") != "KwokctlConfiguration":
        return []
    return [c for c in doc.get("components") or [] if isinstance(c, dict)]


def _component_ports(wd: Path, name: str) -> dict[str, int]:
    """The first port of each component."""
    ports: dict[str, int] = {}
    for comp in _saved_components(wd, name):
        comp_ports = comp.get("ports") or []
        if comp_ports and isinstance(comp_ports[0].get("port"), int):
            ports[comp["name"]] = comp_ports[0]["port"]
    return ports


def _wait_ports_bound(wd: Path, name: str) -> None:
    def failure(missing: str) -> FleetError:
        return FleetError(
            f"cluster {name}: {missing} after {READY_TIMEOUT_S:.0f}s: see the logs in "
            f"{wd / 'clusters' / name / 'logs'}, or recreate it (`llm-operator fleet down` then `up`)"
        )

    _poll(lambda: _unbound_ports(wd, name), timeout=READY_TIMEOUT_S, failure=failure)


def _unbound_ports(wd: Path, name: str) -> str | None:
    """None when every port of every component accepts connections, else which do not."""
    closed = []
    for comp in _saved_components(wd, name):
        for entry in comp.get("ports") or []:
            port = entry.get("port")
            if not isinstance(port, int):
                continue
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                closed.append(f"{comp.get('name')}:{port}")
    return f"ports not listening yet: {', '.join(closed)}" if closed else None


def _healthz(port: int) -> bool:
    # Self-signed serving certs on 127.0.0.1, and kwokctl allows /healthz without credentials.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=5, context=ctx) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _wait_control_plane(toolchain: Toolchain, cluster: MemberCluster, wd: Path) -> None:
    logs = wd / "clusters" / cluster.name / "logs"

    def failure(missing: str) -> FleetError:
        return FleetError(
            f"waiting for cluster {cluster.name} failed: {missing} after {READY_TIMEOUT_S:.0f}s: "
            f"see the logs in {logs}, or recreate it (`llm-operator fleet down` then `up`)"
        )

    def readyz() -> str | None:
        res = kubectl(toolchain, cluster, "get", "--raw", "/readyz", check=False, timeout=QUICK_TIMEOUT_S)
        return None if res.returncode == 0 else "apiserver not ready (/readyz)"

    def controllers() -> str | None:
        ports = _component_ports(wd, cluster.name)
        down = [c for c in ("kube-controller-manager", "kube-scheduler") if c in ports and not _healthz(ports[c])]
        return f"{' and '.join(down)} not healthy (/healthz)" if down else None

    def service_account() -> str | None:
        args = ("get", "serviceaccount", "default", "-n", "default", "-o", "name")
        res = kubectl(toolchain, cluster, *args, check=False, timeout=QUICK_TIMEOUT_S)
        return None if res.returncode == 0 else "no default ServiceAccount yet (kube-controller-manager)"

    for check in (readyz, controllers, service_account):
        _poll(check, timeout=READY_TIMEOUT_S, failure=failure)


def _wait_nodes_ready(
    toolchain: Toolchain, cluster: MemberCluster, names: Iterable[str], *, since: float, timeout: float
) -> None:
    """Wait until the nodes are Ready, not tainted not-ready, and their kwok leases renewed after ``since``
    (a restarted kwok-controller manages a node, and so moves its pods, only once it holds its lease)."""
    wanted = set(names)
    if not wanted:
        return

    def check() -> str | None:
        res = kubectl(
            toolchain,
            cluster,
            "get",
            "nodes,leases.coordination.k8s.io",
            "-n",
            "kube-node-lease",
            "-o",
            "json",
            check=False,
            timeout=QUICK_TIMEOUT_S,
        )
        if res.returncode != 0:
            return "nodes not readable"
        items = json.loads(res.stdout).get("items", [])
        ready = {i["metadata"]["name"] for i in items if i.get("kind") == "Node" and _node_ready(i)}
        fresh = {
            i["metadata"]["name"]
            for i in items
            if i.get("kind") == "Lease" and (_timestamp(i.get("spec", {}).get("renewTime")) or 0) >= since - 1
        }
        missing = sorted(wanted - (ready & fresh))
        return f"nodes not Ready (or not heartbeated by kwok): {', '.join(missing)}" if missing else None

    _poll(
        check,
        timeout=timeout,
        failure=lambda missing: FleetError(
            f"waiting for nodes in cluster {cluster.name} failed: {missing} after {timeout:.0f}s: is its "
            f"kwok-controller running? (`llm-operator fleet status`)"
        ),
    )


def _converge_nodes(toolchain: Toolchain, cluster: MemberCluster, nodes: Sequence[NodeSpec]) -> None:
    """Apply the nodes that differ from their spec, and delete fleet nodes that are no longer in it."""
    live = {
        n["metadata"]["name"]: n
        for n in json.loads(kubectl(toolchain, cluster, "get", "nodes", "-o", "json").stdout)["items"]
    }
    wanted = {n.name for n in nodes}
    stale = [
        name
        for name, n in live.items()
        if name not in wanted and n["metadata"].get("labels", {}).get(LABEL_MANAGED_BY) == MANAGED_BY
    ]
    # spec.podCIDR can be set once but never changed: a node whose range moved is made again.
    moved = [
        n.name
        for n in nodes
        if n.name in live and (live[n.name].get("spec", {}).get("podCIDR") or n.pod_cidr) != n.pod_cidr
    ]
    for name in moved:
        live.pop(name)
    delete_nodes(toolchain=toolchain, cluster=cluster, names=stale + moved)
    # Applying costs two kubectl round trips per cluster; on a reused fleet nothing has changed.
    changed = [n for n in nodes if not _node_matches(live.get(n.name), node_manifest(n))]
    apply_nodes(toolchain=toolchain, cluster=cluster, nodes=changed, wait=False)


def _node_matches(live: Mapping[str, Any] | None, want: Mapping[str, Any]) -> bool:
    if live is None:
        return False
    meta, want_meta = live["metadata"], want["metadata"]
    annotations = meta.get("annotations", {})
    taints = {
        (t["key"], t.get("value"), t["effect"])
        for t in live.get("spec", {}).get("taints", []) or []
        if t["key"] not in NOT_READY_TAINTS
    }
    want_taints = {(t["key"], t.get("value"), t["effect"]) for t in want["spec"]["taints"]}
    status = live.get("status", {})
    # kube-controller-manager mirrors kubernetes.io/{os,arch} into the deprecated beta.kubernetes.io/ labels.
    labels = {k: v for k, v in meta.get("labels", {}).items() if not k.startswith("beta.kubernetes.io/")}
    return (
        labels == want_meta["labels"]
        and all(annotations.get(k) == v for k, v in want_meta["annotations"].items())
        and taints == want_taints
        and live.get("spec", {}).get("podCIDR") == want["spec"].get("podCIDR")
        and status.get("capacity") == want["status"]["capacity"]
        and status.get("allocatable") == want["status"]["allocatable"]
    )


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    tainted = any(t.get("key") in NOT_READY_TAINTS for t in node.get("spec", {}).get("taints", []) or [])
    return ready and not tainted


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
