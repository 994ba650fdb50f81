"""Build and cache the fleet's binaries (Kubernetes control plane, etcd, kwok, helm, Prometheus) from Go modules.

Guarantees:
- ``ensure_toolchain`` builds only what is missing. The cache is keyed by version
  (``<cache>/bin/<component>-<version>/``), so bumping one version in ``versions.py`` rebuilds only that
  component.
- A component directory is trusted only if it holds every binary and a ``.complete.json`` stamp. Builds go
  into a temporary sibling directory that is renamed into place only after every binary reported the expected
  version, so an interrupted or failed build never leaves a half-built binary that a later call would trust.
- Concurrent callers (the CLI and a test session, say) serialize on a file lock; a warm call takes no lock,
  runs no subprocess and returns in milliseconds.
- Every failure is a ``FleetError`` whose one-line message names the step and the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_operator.fleet.versions import (
    COMPONENTS,
    ETCD,
    ETCD_VERSION,
    HELM,
    KUBERNETES,
    KUBERNETES_VERSION,
    KWOK,
    MIN_GO_VERSION,
    PROMETHEUS,
    Component,
    prometheus_module_version,
)

Progress = Callable[[str], None]

STAMP = ".complete.json"
BUILD_TIMEOUT_S = 3600.0  # cold k8s build is ~9 min on 2 cores; leave room for slow CI machines
LIST_TIMEOUT_S = 900.0  # `go list -deps` downloads every module on a cold module cache
LOCK_TIMEOUT_S = 2 * BUILD_TIMEOUT_S
VERSION_TIMEOUT_S = 30.0
PROGRESS_INTERVAL_S = 0.5
ERROR_TAIL_LINES = 12


class FleetError(Exception):
    """A fleet step failed; the message is one actionable line naming the step and the fix."""


def cache_dir() -> Path:
    """``$LLM_OPERATOR_CACHE`` or ``~/.cache/llm-operator``."""
    env = os.environ.get("LLM_OPERATOR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llm-operator"


def bin_root() -> Path:
    return cache_dir() / "bin"


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of every fleet binary."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    kwokctl: Path
    helm: Path
    prometheus: Path
    promtool: Path

    def env(self) -> dict[str, str]:
        """A complete environment (the current one plus overrides) for running kwokctl, kubectl and helm.

        kubectl comes first on PATH because kwokctl's readiness probes run whatever `kubectl` it finds (and
        download one when there is none). The KWOK_* variables make `kwokctl create cluster` use only these
        binaries, so it never downloads anything.
        """
        env = dict(os.environ)
        dirs: list[str] = []
        for d in (self.kubectl.parent, self.kwokctl.parent, self.helm.parent, self.etcd.parent):
            if str(d) not in dirs:
                dirs.append(str(d))
        env["PATH"] = os.pathsep.join([*dirs, env.get("PATH", "")])
        env.update(
            KWOK_RUNTIME="binary",
            KWOK_KUBE_BINARY_PREFIX=str(self.kube_apiserver.parent),
            KWOK_KUBE_APISERVER_BINARY=str(self.kube_apiserver),
            KWOK_KUBE_CONTROLLER_MANAGER_BINARY=str(self.kube_controller_manager),
            KWOK_KUBE_SCHEDULER_BINARY=str(self.kube_scheduler),
            KWOK_KUBECTL_BINARY=str(self.kubectl),
            KWOK_ETCD_BINARY=str(self.etcd),
            KWOK_CONTROLLER_BINARY=str(self.kwok),
            KWOK_KUBE_VERSION=KUBERNETES_VERSION,
            # kwokctl picks etcd flags by this version; its default (3.6.10) is not what we built.
            KWOK_ETCD_VERSION=ETCD_VERSION.removeprefix("v"),
        )
        return env


def toolchain_paths(root: Path | None = None) -> Toolchain:
    """Where each binary lives in the cache (whether or not it has been built yet)."""
    root = root or bin_root()
    k8s, etcd, kwok, helm, prom = (root / c.dirname for c in (KUBERNETES, ETCD, KWOK, HELM, PROMETHEUS))
    return Toolchain(
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=k8s / "kubectl",
        etcd=etcd / "etcd",
        kwok=kwok / "kwok",
        kwokctl=kwok / "kwokctl",
        helm=helm / "helm",
        prometheus=prom / "prometheus",
        promtool=prom / "promtool",
    )


def is_complete(component: Component, root: Path | None = None) -> bool:
    """True if the component's directory holds its stamp and every binary (no subprocess: the warm path)."""
    d = (root or bin_root()) / component.dirname
    if not (d / STAMP).is_file():
        return False
    return all((d / b).is_file() and os.access(d / b, os.X_OK) for b in component.binaries)


def ensure_toolchain(
    *, progress: Progress | None = None, with_helm: bool = True, with_prometheus: bool = True
) -> Toolchain:
    """Return the toolchain, building whatever is missing first (see the module docstring).

    ``progress`` receives one-line messages: each step with its elapsed time, and package counts while
    compiling. With ``with_helm=False`` helm is neither built nor checked, and ``Toolchain.helm`` may not exist;
    likewise ``with_prometheus=False`` for ``Toolchain.prometheus`` and ``Toolchain.promtool``.
    Go (>= 1.26) is only needed when something has to be built.
    """
    say = progress or (lambda _msg: None)
    root = bin_root()
    skipped = {c for c, wanted in ((HELM, with_helm), (PROMETHEUS, with_prometheus)) if not wanted}
    wanted = [c for c in COMPONENTS if c not in skipped]
    if all(is_complete(c, root) for c in wanted):
        return toolchain_paths(root)

    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock", say=say, what="build", timeout_s=LOCK_TIMEOUT_S):
        _remove_leftovers(root)
        go: _Go | None = None
        for component in wanted:
            if is_complete(component, root):
                continue
            target = root / component.dirname
            if target.is_dir() and _adopt(component, target):
                say(f"{component.name} {component.version}: found complete binaries, verified their versions")
                continue
            if go is None:
                go = _Go.find()
            _build(component, root=root, go=go, say=say)
    return toolchain_paths(root)


# ----------------------------------------------------------------------------------------------------
# Building


@dataclass(frozen=True)
class _Go:
    path: str
    version: str

    @classmethod
    def find(cls) -> _Go:
        # /usr/local/go is where the official tarball installs, and it is often missing from non-login PATHs.
        go = shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if os.access(p, os.X_OK)), None)
        minimum = ".".join(map(str, MIN_GO_VERSION))
        hint = f"install Go >= {minimum} from https://go.dev/dl/ and put it on PATH"
        if go is None:
            raise FleetError(f"Go toolchain not found: {hint}")
        try:
            out = subprocess.run(
                [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise FleetError(f"Go toolchain at {go} does not run ({e}): {hint}") from e
        m = re.match(r"go(\d+)\.(\d+)", out)
        if m is None or (int(m[1]), int(m[2])) < MIN_GO_VERSION:
            raise FleetError(f"Go toolchain at {go} is {out or 'of unknown version'}, too old: {hint}")
        return cls(go, out)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        # Static binaries, as upstream ships them; no go.work from some parent directory hijacking the build.
        env.update(CGO_ENABLED="0", GOWORK="off", **extra)
        return env


@dataclass(frozen=True)
class _Recipe:
    cwd: Path
    list_cwd: Path | None  # where `go list -deps` resolves the same build (None: count unknown)
    list_pkgs: tuple[str, ...]
    argv: tuple[str, ...]  # after `go`
    env: dict[str, str]
    list_flags: tuple[str, ...] = ()  # build flags that change the package graph (-tags), for `go list`


def gobuild_dir() -> Path:
    """The wrapper modules: ``$LLM_OPERATOR_GOBUILD``, else ``gobuild/`` of the source checkout."""
    env = os.environ.get("LLM_OPERATOR_GOBUILD")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "gobuild"


def _wrapper_module(component: Component, module: str) -> Path:
    d = gobuild_dir() / component.name
    gomod = d / "go.mod"
    if not gomod.is_file():
        raise FleetError(
            f"building {component.name} {component.version} failed: wrapper module {gomod} not found: "
            "run from a source checkout or set LLM_OPERATOR_GOBUILD to its gobuild/ directory"
        )
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(\S+)", gomod.read_text(), re.MULTILINE)
    if m is None or m[1] != component.version:
        found = m[1] if m else "nothing"
        raise FleetError(
            f"building {component.name} {component.version} failed: {gomod} requires {module} {found}, "
            f"but versions.py pins {component.version}: update the wrapper "
            f"(go get {module}@{component.version}, then go mod tidy) or versions.py so they agree"
        )
    return d


def _recipe(component: Component, *, go: _Go, out: Path, scratch: Path) -> _Recipe:
    trim = ("-trimpath",)
    if component is KUBERNETES:
        version = component.version
        major, minor = version.removeprefix("v").split(".")[:2]
        stamp = " ".join(
            f"-X k8s.io/component-base/version.{k}={v}"
            for k, v in (
                ("gitVersion", version),
                ("gitMajor", major),
                ("gitMinor", minor),
                ("gitTreeState", "clean"),
            )
        )
        pkgs = tuple(f"k8s.io/kubernetes/cmd/{b}" for b in component.binaries)
        cwd = _wrapper_module(component, "k8s.io/kubernetes")
        # One invocation: the four commands share most packages, which are then compiled once.
        argv = ("build", "-v", *trim, "-ldflags", f"-s -w {stamp}", "-o", f"{out}{os.sep}", *pkgs)
        return _Recipe(cwd, cwd, pkgs, argv, go.env())
    if component is ETCD:
        pkg = "go.etcd.io/etcd/server/v3"
        # `go install etcd@version` refuses etcd's replace directives, hence the wrapper module.
        cwd = _wrapper_module(component, pkg)
        argv = ("build", "-v", *trim, "-ldflags", "-s -w", "-o", str(out / "etcd"), pkg)
        return _Recipe(cwd, cwd, (pkg,), argv, go.env())
    if component in (KWOK, HELM):
        module, cmds = (
            ("sigs.k8s.io/kwok", ("cmd/kwok", "cmd/kwokctl"))
            if component is KWOK
            else ("helm.sh/helm/v4", ("cmd/helm",))
        )
        # These modules have no replace directives, so `go install pkg@version` builds exactly their graph.
        targets = tuple(f"{module}/{c}@{component.version}" for c in cmds)
        ldflags = "-s -w"
        if component is HELM:
            # As helm's Makefile does: unstamped, `helm version` says only "v4.3", and helm compares that
            # version against charts' requirements.
            v = "helm.sh/helm/v4/internal/version"
            ldflags += f" -X {v}.version={component.version} -X {v}.gitTreeState=clean"
        argv = ("install", "-v", *trim, "-ldflags", ldflags, *targets)
        list_cwd = _module_dir(go, module, component.version, scratch)
        return _Recipe(scratch, list_cwd, tuple(f"./{c}" for c in cmds), argv, go.env(GOBIN=str(out)))
    if component is PROMETHEUS:
        module = "github.com/prometheus/prometheus"
        mod_version = prometheus_module_version(component.version)
        pkgs = tuple(f"cmd/{b}" for b in component.binaries)
        # Its go.mod has no replace or exclude directives, so `go install pkg@version` builds upstream's own
        # graph (and checks upstream's go.sum); no wrapper module needed.
        # Tags: only the Kubernetes service discovery (file and http are always in), which drops the cloud
        # SDKs of the other 20-odd mechanisms from the build; no `builtinassets`, so no web UI is embedded
        # (the UI needs a node build) and the binary serves the HTTP API only, which is all the tests use.
        tags = ("-tags", "netgo,remove_all_sd,enable_kubernetes_sd")
        v = "github.com/prometheus/common/version"
        # Stamped as upstream's .promu.yml does; unstamped, `prometheus --version` reports no version.
        ldflags = (
            f"-s -w -X {v}.Version={component.version.removeprefix('v')} -X {v}.Branch=HEAD"
            f" -X {v}.Revision={mod_version} -X {v}.BuildUser=llm-operator"
        )
        targets = tuple(f"{module}/{c}@{mod_version}" for c in pkgs)
        argv = ("install", "-v", *trim, *tags, "-ldflags", ldflags, *targets)
        list_cwd = _module_dir(go, module, mod_version, scratch)
        return _Recipe(scratch, list_cwd, tuple(f"./{c}" for c in pkgs), argv, go.env(GOBIN=str(out)), list_flags=tags)
    raise AssertionError(component)


def _module_dir(go: _Go, module: str, version: str, scratch: Path) -> Path | None:
    """The module's directory in GOMODCACHE (downloading it), to count its packages; None if unknown."""
    try:
        res = subprocess.run(
            [go.path, "mod", "download", "-json", f"{module}@{version}"],
            cwd=scratch,
            env=go.env(),
            capture_output=True,
            text=True,
            timeout=LIST_TIMEOUT_S,
            check=True,
        )
        d = json.loads(res.stdout).get("Dir")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None  # the build itself will report the real problem
    return Path(d) if isinstance(d, str) else None


def _count_packages(go: _Go, recipe: _Recipe) -> set[str] | None:
    if recipe.list_cwd is None:
        return None
    try:
        res = subprocess.run(
            [go.path, "list", "-mod=readonly", *recipe.list_flags, "-deps", *recipe.list_pkgs],
            cwd=recipe.list_cwd,
            env=recipe.env,
            capture_output=True,
            text=True,
            timeout=LIST_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # progress is then shown without a total; the build reports real errors
    return {line.strip() for line in res.stdout.splitlines() if line.strip()}


def _build(component: Component, *, root: Path, go: _Go, say: Progress) -> None:
    step = f"building {component.name} {component.version}"
    t0 = time.monotonic()
    tmp = root / f".tmp-{component.dirname}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "out").mkdir(parents=True)
    try:
        recipe = _recipe(component, go=go, out=tmp / "out", scratch=tmp)
        say(f"{step}: resolving packages ({elapsed(t0)})")
        deps = _count_packages(go, recipe)
        total = len(deps) if deps is not None else None
        say(f"{step}: compiling{f' up to {total} packages' if total else ''} ({elapsed(t0)})")
        _run_go_build(go, recipe, step=step, deps=deps, t0=t0, say=say)
        out = tmp / "out"
        for b in component.binaries:
            if not (out / b).is_file():
                raise FleetError(f"{step} failed: go finished but produced no {b}: check {recipe.cwd}")
            problem = _version_problem(component, out / b)
            if problem:
                raise FleetError(f"{step} failed: {problem}")
        _write_stamp(out, component, {"go": go.version, "go_argv": list(recipe.argv), "cwd": str(recipe.cwd)})
        target = root / component.dirname
        if target.exists():
            # An old, untrusted directory (no stamp): move it aside, since rename cannot replace a directory.
            aside = root / f".stale-{component.dirname}-{os.getpid()}"
            target.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        (tmp / "out").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{step}: done in {elapsed(t0)}")


def _run_go_build(go: _Go, recipe: _Recipe, *, step: str, deps: set[str] | None, t0: float, say: Progress) -> None:
    total = len(deps) if deps is not None else None
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    built = 0
    last = 0.0
    # Own session, so a timeout or Ctrl-C can kill go *and* its compile/link children.
    proc = subprocess.Popen(
        [go.path, *recipe.argv],
        cwd=recipe.cwd,
        env=recipe.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        _killpg(proc)

    watchdog = threading.Timer(BUILD_TIMEOUT_S, kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if (deps is not None and line in deps) or (deps is None and not line.startswith("go: ")):
                built += 1
            elif line.startswith("go: downloading"):
                tail.pop()  # not useful in an error message
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL_S:
                last = now
                if total:
                    pct = min(100, 100 * built // total)
                    say(f"{step}: {built}/{total} packages compiled ({pct}%, {elapsed(t0)})")
                else:
                    say(f"{step}: {built} packages compiled ({elapsed(t0)})")
        rc = proc.wait()
    except BaseException:
        _killpg(proc)
        raise
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        raise FleetError(
            f"{step} failed: no result after {BUILD_TIMEOUT_S:.0f}s: check CPU/memory and GOCACHE, then retry"
        )
    if rc != 0:
        detail = " | ".join(tail) or f"go exited with {rc}"
        raise FleetError(f"{step} failed: {detail}")


def _killpg(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


# ----------------------------------------------------------------------------------------------------
# Verification and cache bookkeeping


def _version_argv(binary: Path) -> list[str]:
    if binary.name == "kubectl":
        return [str(binary), "version", "--client"]
    if binary.name == "helm":
        return [str(binary), "version", "--short"]
    return [str(binary), "--version"]


def _version_problem(component: Component, binary: Path) -> str | None:
    """None if ``binary`` runs and reports the component's version; otherwise what is wrong."""
    try:
        res = subprocess.run(
            _version_argv(binary), capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"{binary} does not run ({e})"
    text = res.stdout + res.stderr
    if res.returncode != 0 or component.version.removeprefix("v") not in text:
        first = text.strip().splitlines()[0] if text.strip() else f"exit code {res.returncode}"
        return f"{binary} reports {first!r}, expected version {component.version}"
    return None


def _adopt(component: Component, target: Path) -> bool:
    """Trust a stamp-less directory (built by hand, or by an older release of this code) if it checks out."""
    for b in component.binaries:
        p = target / b
        if not (p.is_file() and os.access(p, os.X_OK)) or _version_problem(component, p):
            return False
    _write_stamp(target, component, {"adopted": True})
    return True


def _write_stamp(directory: Path, component: Component, extra: dict[str, object]) -> None:
    data = {
        "component": component.name,
        "version": component.version,
        "binaries": list(component.binaries),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    tmp = directory / f"{STAMP}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(directory / STAMP)


def _remove_leftovers(root: Path) -> None:
    # Only called under the build lock, so no other process is using these.
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".stale-")):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path, *, say: Progress, what: str, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released by the kernel if this process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another {what} to finish (lock {path})")
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise FleetError(
                            f"waiting for the {what} lock {path} timed out after {timeout_s:.0f}s: another "
                            f"process holds it (see `fuser {path}`); stop it and retry"
                        ) from None
                    time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def elapsed(t0: float) -> str:
    s = int(time.monotonic() - t0)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(toolchain: Toolchain) -> Sequence[tuple[str, Path]]:
    """(name, path) of every binary, for display."""
    return [(name.replace("_", "-"), getattr(toolchain, name)) for name in Toolchain.__dataclass_fields__]
