"""`llm-operator bus ...`: the identities NATS accepts — one per member cluster, one for the planner.

Guarantees: each command changes the identities directory (default ``<data_dir>/bus``; files 0600) and rewrites
the server's ``auth.conf`` (public keys and permissions only). When the embedded NATS of this data directory runs,
it is reloaded at once; any other server needs a reload (``nats-server --signal reload``, SIGHUP) — a reload
applies the change without restarting the server or disconnecting the other clients.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bus.auth import PLANNER, Role
from llm_operator.embedded import EmbeddedError, EmbeddedNats, _pid_alive
from llm_operator.identities import BusIdentities, IdentityError
from llm_operator.settings import Settings

bus_app = typer.Typer(no_args_is_help=True)
out = Console()
err = Console(stderr=True)

Directory = Annotated[
    Path | None,
    typer.Option("--dir", envvar="LLMOP_BUS_DIR", help="Identities directory (default: <data dir>/bus)."),
]
DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="LLMOP_DATA_DIR", help="Data directory.")]
Prefix = Annotated[
    str | None,
    typer.Option("--subject-prefix", envvar="LLMOP_SUBJECT_PREFIX", help="Prefix of NATS subjects and streams."),
]


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _open(directory: Path | None, data_dir: Path | None, prefix: str | None) -> tuple[BusIdentities, str, Path]:
    try:
        overrides: dict[str, object] = {"data_dir": data_dir, "subject_prefix": prefix}
        settings = Settings(**{k: v for k, v in overrides.items() if v})  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(str(exc).replace("\n", " "))
        raise
    return BusIdentities(directory or settings.data_dir / "bus"), settings.subject_prefix, settings.data_dir


def _reload(data_dir: Path) -> None:
    """Reload the embedded NATS of this data directory if it runs; otherwise say how to reload a server."""
    server = EmbeddedNats(data_dir / "nats")
    pid_file = server.data_dir / "nats.pid"
    if pid_file.exists() and _pid_alive(int(pid_file.read_text() or 0)):
        try:
            server.reload()
        except EmbeddedError as exc:
            _fail(str(exc))
        out.print("embedded NATS reloaded")
        return
    out.print(
        "reload the NATS server to apply it (nothing restarts): `nats-server --signal reload`, "
        "`docker compose kill -s HUP nats`, or SIGHUP to its process",
        highlight=False,
    )


@bus_app.command("init")
def init(
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", "-c", help="Also make this cluster's identity; repeat.")
    ] = None,
    directory: Directory = None,
    data_dir: DataDir = None,
    subject_prefix: Prefix = None,
) -> None:
    """Make the planner's identity (hub/nats.nk), any --cluster's, and the server's auth.conf (idempotent)."""
    identities, prefix, data = _open(directory, data_dir, subject_prefix)
    try:
        identities.ensure(prefix, list(cluster or []))
    except IdentityError as exc:
        _fail(str(exc))
    for name in [PLANNER, *(cluster or [])]:
        out.print(f"{name}: seed {identities.seed_path(prefix, name)}", highlight=False)
    out.print(f"server auth config: {identities.server_config_path}", highlight=False)
    _reload(data)


@bus_app.command("add-cluster")
def add_cluster(
    name: Annotated[str, typer.Argument(help="The cluster's name in the fleet (a DNS label).")],
    directory: Directory = None,
    data_dir: DataDir = None,
    subject_prefix: Prefix = None,
) -> None:
    """Make a member cluster's identity: it may publish only its own events and consume only its own plans."""
    identities, prefix, data = _open(directory, data_dir, subject_prefix)
    try:
        path = identities.add(prefix, name, Role.CLUSTER)
    except IdentityError as exc:
        _fail(str(exc))
        raise
    out.print(
        f"cluster {name}: seed {path} (give it to that cluster's agent only, e.g. "
        f"kubectl create secret generic llm-operator-nats --from-file=nats.nk={path})",
        highlight=False,
    )
    _reload(data)


@bus_app.command("revoke-cluster")
def revoke_cluster(
    name: Annotated[str, typer.Argument(help="The cluster to cut off.")],
    directory: Directory = None,
    data_dir: DataDir = None,
    subject_prefix: Prefix = None,
) -> None:
    """Remove a cluster's identity: after the reload, its connection is closed and it cannot reconnect."""
    identities, prefix, data = _open(directory, data_dir, subject_prefix)
    if not identities.revoke(prefix, name):
        _fail(f"no identity {name!r} under prefix {prefix!r}")
    out.print(f"cluster {name}: revoked", highlight=False)
    _reload(data)


@bus_app.command("list")
def list_identities(directory: Directory = None, data_dir: DataDir = None, subject_prefix: Prefix = None) -> None:
    """The identities NATS accepts (public keys only)."""
    identities, _, _ = _open(directory, data_dir, subject_prefix)
    for identity in identities.all():
        out.print(f"{identity.prefix}\t{identity.name}\t{identity.role.value}\t{identity.public_key}", highlight=False)


@bus_app.command("server-config")
def server_config(
    directory: Directory = None,
    data_dir: DataDir = None,
    subject_prefix: Prefix = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """The `authorization` block for nats-server (include it: `include ./auth.conf`)."""
    identities, _, _ = _open(directory, data_dir, subject_prefix)
    path = identities.write_server_config()
    if output is not None:
        output.write_text(path.read_text())
        output.chmod(0o600)
        out.print(f"wrote {output}", highlight=False)
    else:
        sys.stdout.write(path.read_text())
