"""``llm-operator fleet ...``: build the toolchain, bring the local kwok fleet up or down, show its status.

Guarantees: every command fails with one red line and exit code 1 on a ``FleetError`` (no traceback), and
nothing runs at import time. ``env`` prints only shell assignments, for ``eval "$(llm-operator fleet env)"``.
"""

from __future__ import annotations

import functools
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llm_operator.fleet.build import (
    FleetError,
    Toolchain,
    describe,
    ensure_toolchain,
    is_complete,
    toolchain_paths,
)
from llm_operator.fleet.clusters import default_kubeconfig, fleet_down, fleet_status, fleet_up
from llm_operator.fleet.spec import DEFAULT_FLEET
from llm_operator.fleet.versions import KUBERNETES, KWOK

fleet_app = typer.Typer(
    help="The local test fleet: real Kubernetes control planes (kwok) with simulated GPU nodes.",
    no_args_is_help=True,
)

P = ParamSpec("P")
R = TypeVar("R")

KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(help="kubeconfig file that receives the contexts (default ~/.kube/config)."),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option(help="kwokctl workdir (default $KWOK_WORKDIR or ~/.kwok)."),
]


def _console() -> Console:
    return Console(stderr=True)


def _fails_cleanly(fn: Callable[P, R]) -> Callable[P, R]:
    """FleetError -> one red line on stderr, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except FleetError as e:
            _console().print(f"[red]error: {escape(str(e))}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@contextmanager
def _live_progress(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner showing the latest progress message; finished steps stay printed with their time."""
    console = _console()
    t0 = time.monotonic()
    with console.status(title) as status:

        def progress(msg: str) -> None:
            status.update(f"{msg}  [dim]({time.monotonic() - t0:.0f}s total)[/dim]")
            # Package counters only move the spinner; every other message is a step worth keeping on screen.
            if "packages" not in msg:
                console.print(f"[dim]{time.monotonic() - t0:6.1f}s[/dim] {escape(msg)}", highlight=False)

        yield progress


def _toolchain(*, with_helm: bool = False) -> Toolchain:
    with _live_progress("checking the toolchain") as progress:
        return ensure_toolchain(progress=progress, with_helm=with_helm, with_prometheus=False)


def _built_toolchain() -> Toolchain:
    """The toolchain for commands that only inspect or delete: never start a long build for those."""
    toolchain = toolchain_paths()
    if not all(is_complete(c) for c in (KUBERNETES, KWOK)):
        raise FleetError("the fleet toolchain is not built: run `llm-operator fleet build` (or `fleet up`)")
    return toolchain


def _path_line(toolchain: Toolchain) -> str:
    """PATH with the fleet's kubectl, and helm when it has been built (`fleet build` builds it; `up` does not)."""
    dirs = []
    for d in (toolchain.kubectl.parent, *([toolchain.helm.parent] if toolchain.helm.exists() else [])):
        if str(d) not in dirs:
            dirs.append(str(d))
    return f"export PATH={shlex.quote(':'.join(dirs))}:$PATH"


@fleet_app.command()
@_fails_cleanly
def build(
    helm: Annotated[bool, typer.Option(help="Also build helm (for chart tests).")] = True,
    prometheus: Annotated[
        bool, typer.Option(help="Also build prometheus and promtool (for the Prometheus-path tests).")
    ] = True,
) -> None:
    """Build (or verify) every fleet binary into the cache; only missing versions are built."""
    t0 = time.monotonic()
    with _live_progress("checking the toolchain") as progress:
        toolchain = ensure_toolchain(progress=progress, with_helm=helm, with_prometheus=prometheus)
    out = Console(soft_wrap=True)
    for name, path in describe(toolchain):
        if path.exists():
            out.print(f"{name:<24} {path}", highlight=False)
    out.print(f"[dim]toolchain ready in {time.monotonic() - t0:.1f}s[/dim]")


@fleet_app.command()
@_fails_cleanly
def up(
    clusters: Annotated[
        int, typer.Option(min=1, max=len(DEFAULT_FLEET), help="How many of the default clusters to run.")
    ] = len(DEFAULT_FLEET),
    kubeconfig: KubeconfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Create (or start) the fleet and wait until every cluster and node is ready."""
    toolchain = _toolchain(with_helm=False)
    specs = DEFAULT_FLEET[:clusters]
    with _live_progress("bringing the fleet up") as progress:
        members = fleet_up(
            toolchain=toolchain, clusters=specs, kubeconfig=kubeconfig, workdir=workdir, progress=progress
        )
    out = Console(soft_wrap=True)
    table = Table("cluster", "context", "labels", "nodes", "GPUs")
    for spec, member in zip(specs, members, strict=True):
        labels = ",".join(f"{k}={v}" for k, v in member.labels.items())
        table.add_row(member.name, member.context, labels, str(len(spec.nodes)), str(spec.gpus))
    out.print(table)
    out.print(f"kubeconfig: {members[0].kubeconfig}", highlight=False)
    out.print("Use the fleet's kubectl:", highlight=False)
    out.print(f"  {_path_line(toolchain)}", highlight=False)
    if kubeconfig is not None:
        out.print(f"  export KUBECONFIG={shlex.quote(str(kubeconfig))}", highlight=False)
    out.print(f"  kubectl --context {members[0].context} get nodes", highlight=False)


@fleet_app.command()
@_fails_cleanly
def down(
    name: Annotated[
        list[str] | None, typer.Option("--name", help="Cluster to delete (repeatable; default: whole fleet).")
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Delete the fleet's clusters (processes, data and kubeconfig contexts)."""
    toolchain = _built_toolchain()
    with _live_progress("deleting the fleet") as progress:
        fleet_down(toolchain=toolchain, names=name or None, kubeconfig=kubeconfig, workdir=workdir, progress=progress)
    Console().print("fleet is down")


@fleet_app.command()
@_fails_cleanly
def status(kubeconfig: KubeconfigOpt = None, workdir: WorkdirOpt = None) -> None:
    """Show which kwok clusters exist, whether they run, their nodes and GPUs."""
    toolchain = _built_toolchain()
    rows = fleet_status(toolchain=toolchain, kubeconfig=kubeconfig, workdir=workdir)
    out = Console(soft_wrap=True)
    if not rows:
        out.print("no kwok clusters (run `llm-operator fleet up`)")
        return
    table = Table("cluster", "state", "context", "fleet", "labels", "nodes Ready", "GPUs")
    for row in rows:
        if row.running:
            state = "[green]running[/green]"
        elif all(s == "Stopped" for s in row.components.values()):
            state = "[yellow]stopped[/yellow]"
        else:
            broken = ", ".join(f"{c}={s}" for c, s in row.components.items() if s != "Ready")
            state = f"[red]{broken or 'unknown'}[/red]"
        gpus = ", ".join(f"{n}x {p}" for p, n in sorted(row.gpus.items())) or "-"
        labels = ",".join(f"{k}={v}" for k, v in row.labels.items())
        nodes = f"{row.ready_nodes}/{row.nodes}" if row.running else "-"
        table.add_row(row.name, state, row.context, "yes" if row.managed else "no", labels, nodes, gpus)
    out.print(table)
    out.print(f"kubeconfig: {rows[0].kubeconfig}", highlight=False)


@fleet_app.command()
@_fails_cleanly
def env(kubeconfig: KubeconfigOpt = None) -> None:
    """Print shell exports for the fleet's kubectl (and helm, once `fleet build` built it):
    eval "$(llm-operator fleet env)"."""
    toolchain = _toolchain(with_helm=False)  # progress goes to stderr; stdout stays eval-able
    print(_path_line(toolchain))
    if kubeconfig is not None and kubeconfig != default_kubeconfig():
        print(f"export KUBECONFIG={shlex.quote(str(kubeconfig.resolve()))}")


@fleet_app.command()
@_fails_cleanly
def serve(
    namespace: Annotated[
        list[str] | None, typer.Option("--namespace", help="Serve pods of this namespace only (repeatable).")
    ] = None,
    selector: Annotated[str | None, typer.Option(help="Label selector of the pods to serve.")] = None,
    kubeconfig: KubeconfigOpt = None,
) -> None:
    """Make the fleet's pods answer HTTP: a pod network namespace for the clusters' pod ranges (needs root) and
    a model-server emulator (OpenAI-compatible completions, vLLM /metrics) for every running pod; until Ctrl-C."""
    from llm_operator.fleet import podnet
    from llm_operator.fleet.build import cache_dir
    from llm_operator.fleet.emulator import main as emulator_main

    net = podnet.PodNetwork(ranges=podnet.pod_ranges([c.pod_cidr for c in DEFAULT_FLEET]))
    try:
        with podnet.shared(net, lock_dir=cache_dir()):
            Console(stderr=True).print(
                f"pod network {net.name}: {', '.join(net.ranges)} reachable from this machine; serving pods (Ctrl-C)"
            )
            argv = ["--netns", net.name, "--kubeconfig", str(kubeconfig or default_kubeconfig())]
            argv += [a for r in net.ranges for a in ("--range", r)]
            argv += [a for c in DEFAULT_FLEET for a in ("--cluster", f"{c.name}={c.context}")]
            argv += [a for ns in namespace or [] for a in ("--namespace", ns)]
            argv += ["--selector", selector] if selector else []
            emulator_main(argv)
    except podnet.PodNetError as e:
        raise FleetError(f"the pod network cannot be set up: {e}") from e
