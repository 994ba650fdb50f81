"""`llm-operator`: the one command. Every subcommand composes the components from `Settings`.

Guarantees: user-facing failures (unreachable NATS/Postgres/cluster, missing kubeconfig context, missing Go) print
one line naming the problem and the fix and exit with status 1, without a traceback; Ctrl-C stops cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from api.network import ClusterNetwork
from bus.connection import redact_url
from llm_operator import logs
from llm_operator.gc_tuning import tune_gc
from llm_operator.runtime import Member, OperatorError, hub_urls, run_components
from llm_operator.settings import Settings, parse_cluster, parse_labels
from store.engine import describe

app = typer.Typer(
    name="llm-operator",
    help="Deploy and run LLMs across a fleet of Kubernetes clusters: place them where the GPUs are free, "
    "keep them running, and record every change and decision.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)
out = Console()
logger = logging.getLogger("llm_operator")


def _load_fleet_app() -> None:
    try:
        from llm_operator.fleet.cli import fleet_app
    except ImportError:  # pragma: no cover - the fleet package ships with the operator
        return
    app.add_typer(fleet_app, name="fleet", help="Build and run the local kwok test fleet (real Kubernetes).")


_load_fleet_app()


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def settings_from(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        fail(str(exc).replace("\n", " "))
        raise  # unreachable; fail() raised


def run_async(fn: Callable[[], Awaitable[None]]) -> None:
    """Run until done or until SIGINT/SIGTERM, then stop everything cleanly."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        logger.info("received %s: stopping", signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await fn()
            tg.cancel_scope.cancel()

    tune_gc()
    try:
        anyio.run(main, backend_options={"use_uvloop": _has_uvloop()})
    except* OperatorError as group:
        # Task groups wrap errors; a user-facing one is reported alone, as one line.
        fail(str(_first(group)))


def _has_uvloop() -> bool:
    # uvloop makes the NATS client and the database driver markedly faster; it is optional (Linux and macOS).
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# Shared options -----------------------------------------------------------------------------------------------

NatsUrl = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="LLMOP_NATS_URL", help="NATS URL; unset: embedded NATS with JetStream."),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="LLMOP_DATABASE_URL", help="Postgres URL; unset: embedded Postgres."),
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="LLMOP_DATA_DIR", help="Data directory of the embedded NATS and Postgres."),
]
Kubeconfig = Annotated[
    Path | None,
    typer.Option("--kubeconfig", envvar="LLMOP_KUBECONFIG", help="Kubeconfig with the member clusters' contexts."),
]
Prefix = Annotated[
    str | None,
    typer.Option("--subject-prefix", envvar="LLMOP_SUBJECT_PREFIX", help="Prefix of NATS subjects and streams."),
]
LogFormat = Annotated[str, typer.Option("--log-format", envvar="LLMOP_LOG_FORMAT", help="text or json.")]
LogLevel = Annotated[str, typer.Option("--log-level", envvar="LLMOP_LOG_LEVEL")]
Namespaces = Annotated[
    list[str] | None,
    typer.Option("--namespace", "-n", help="Watch only this namespace (repeat for more); default: all namespaces."),
]


def _members(clusters: list[str] | None, labels: list[str] | None) -> list[Member]:
    parsed_labels: dict[str, dict[str, str]] = {}
    for item in labels or []:
        name, sep, rest = item.partition(":")
        if not sep:
            fail(f"--cluster-labels {item!r}: expected NAME:key=value,key=value")
        try:
            parsed_labels[name] = parse_labels(rest)
        except ValueError as exc:
            fail(str(exc))
    members = []
    for item in clusters or []:
        try:
            name, context = parse_cluster(item)
        except ValueError as exc:
            fail(str(exc))
            raise
        members.append(Member(name=name, context=context, labels=parsed_labels.get(name, {})))
    return members


# Commands -----------------------------------------------------------------------------------------------------


@app.command()
def up(
    cluster: Annotated[
        list[str] | None,
        typer.Option(
            "--cluster",
            "-c",
            help="Member cluster as NAME=CONTEXT (or just CONTEXT); repeat. "
            "Default: the local kwok fleet, created if needed.",
        ),
    ] = None,
    cluster_labels: Annotated[
        list[str] | None,
        typer.Option("--cluster-labels", help="Labels of a member cluster as NAME:key=value,key=value; repeat."),
    ] = None,
    namespace: Namespaces = None,
    nats_url: NatsUrl = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    kubeconfig: Kubeconfig = None,
    subject_prefix: Prefix = None,
    log_format: LogFormat = "text",
    log_level: LogLevel = "INFO",
    serve_pods: Annotated[
        bool,
        typer.Option(
            "--serve-pods",
            help="Local fleet only, as root: make its pods answer (a pod network namespace and the model-server "
            "emulator, as `fleet serve`) and scrape their metrics every 10 s, so spec.autoscaling works.",
        ),
    ] = False,
) -> None:
    """Run everything in the foreground: hub (planner, NATS, Postgres) and a watcher + applier per cluster."""
    settings = settings_from(
        nats_url=nats_url,
        database_url=database_url,
        data_dir=data_dir,
        kubeconfig=kubeconfig,
        subject_prefix=subject_prefix,
        log_format=log_format,
        log_level=log_level,
        namespaces=namespace,
    )
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    members = [dataclasses.replace(m, network=settings.cluster_network()) for m in _members(cluster, cluster_labels)]
    if serve_pods and members:
        fail("--serve-pods serves the local fleet's pods: leave --cluster out")
    if serve_pods:
        from llm_operator.fleet import podnet

        if (reason := podnet.unavailable_reason()) is not None:
            fail(f"--serve-pods: {reason}")
    if not members:
        members, kubeconfig_path = _local_fleet(settings)
        update: dict[str, object] = {"kubeconfig": settings.kubeconfig or kubeconfig_path}
        if "LLMOP_LOAD_INTERVAL_SECONDS" not in os.environ:
            # kwok pods serve no HTTP unless --serve-pods: scraping their made-up addresses would only send
            # packets off this machine.
            update["load_interval_seconds"] = 10.0 if serve_pods else 0.0
        settings = settings.model_copy(update=update)

    async def run() -> None:
        async with hub_urls(settings, clusters=[m.name for m in members]) as (nats, db):
            logger.info("hub: NATS %s, Postgres %s", redact_url(nats), describe(db))
            logger.info("members: %s", ", ".join(f"{m.name} ({m.context})" for m in members))
            await run_components(
                settings=settings,
                members=members,
                nats_url=nats,
                database_url=db,
                run_planner_too=True,
                install=True,
                migrate=True,
            )

    if not serve_pods:
        run_async(run)
        return
    with _serving_pods(members, settings):
        run_async(run)


@contextlib.contextmanager
def _serving_pods(members: list[Member], settings: Settings) -> Iterator[None]:
    """The local fleet's pod network and the model-server emulator for every running pod, while inside."""
    from llm_operator.fleet import DEFAULT_FLEET, cache_dir, default_kubeconfig, podnet
    from llm_operator.fleet.emulator import EmulatorError, running

    net = podnet.PodNetwork(ranges=podnet.pod_ranges([c.pod_cidr for c in DEFAULT_FLEET]))
    try:
        with (
            podnet.shared(net, lock_dir=cache_dir()),
            running(
                netns=net.name,
                ranges=net.ranges,
                kubeconfig=settings.kubeconfig or default_kubeconfig(),
                clusters={m.name: m.context or m.name for m in members},
                namespaces=settings.namespaces or (),
                workdir=settings.data_dir / "emulator",
            ) as emulator,
        ):
            logger.info(
                "serving pods: %s reachable from this machine, emulator log %s; agents scrape every %g s",
                ", ".join(net.ranges),
                emulator.log,
                settings.load_interval_seconds,
            )
            yield
    except (podnet.PodNetError, EmulatorError) as exc:
        fail(f"--serve-pods: {exc}")


@app.command()
def load(
    deployment: Annotated[str, typer.Argument(help="The LLMDeployment's name.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Its namespace.")] = "default",
    concurrency: Annotated[int, typer.Option(help="Requests in flight (closed loop), 1 to 1024.", min=1)] = 16,
    duration: Annotated[float, typer.Option(help="Seconds to run; 0: until Ctrl-C.", min=0)] = 0,
    cluster: Annotated[
        list[str] | None,
        typer.Option("--cluster", "-c", help="Member cluster as NAME=CONTEXT (repeat). Default: the local kwok fleet."),
    ] = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Send completions to an LLMDeployment's ready replicas in every cluster (round robin, `concurrency`
    requests in flight) and print, every 5 s, the replicas per cluster, requests/s and latency. On the local
    fleet the pods answer under `up --serve-pods` (or `fleet serve`)."""
    from llm_operator.loadgen import LoadGenerator, kube_replicas
    from llm_operator.runtime import connect_kube

    members = _members(cluster, None)
    if not members:
        from llm_operator.fleet import DEFAULT_FLEET, default_kubeconfig

        members = [Member(name=c.name, context=c.context) for c in DEFAULT_FLEET]
        kubeconfig = kubeconfig or default_kubeconfig()

    async def run() -> None:
        kubes = {m.name: await connect_kube(m, kubeconfig=kubeconfig) for m in members}
        generator = LoadGenerator(
            resolve=lambda: kube_replicas(kubes, namespace=namespace, name=deployment), concurrency=concurrency
        )
        started = time.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(generator.run)
                while not duration or time.monotonic() - started < duration:
                    await anyio.sleep(5)
                    s = generator.summary(5)
                    where: dict[str, int] = {}
                    for r in generator.replicas:
                        where[r.cluster] = where.get(r.cluster, 0) + 1
                    p50 = f"{s.latency_p50_s * 1000:.0f} ms" if s.latency_p50_s is not None else "-"
                    p90 = f"{s.latency_p90_s * 1000:.0f} ms" if s.latency_p90_s is not None else "-"
                    out.print(
                        f"{time.strftime('%H:%M:%S')}  replicas "
                        + (", ".join(f"{c}={n}" for c, n in sorted(where.items())) or "none")
                        + f"  {s.requests_per_second:.1f} req/s  latency p50 {p50} p90 {p90}  errors {s.errors}",
                        highlight=False,
                        soft_wrap=True,
                    )
                tg.cancel_scope.cancel()
        finally:
            for kube in kubes.values():
                await kube.close()

    run_async(run)


def _local_fleet(settings: Settings) -> tuple[list[Member], Path | None]:
    from llm_operator.fleet import FleetError, ensure_toolchain, fleet_up
    from llm_operator.fleet.spec import DEFAULT_FLEET

    def progress(message: str) -> None:
        err.print(f"[dim]fleet:[/dim] {escape(message)}", highlight=False)

    try:
        toolchain = ensure_toolchain(progress=progress, with_helm=False, with_prometheus=False)
        clusters = fleet_up(toolchain=toolchain, progress=progress)
    except FleetError as exc:
        fail(str(exc))
        raise
    # Each local cluster declares its own pod range (the pod network routes all of them from this machine: a flat
    # network, unless LLMOP_NETWORK_MODE says otherwise).
    ranges = {s.name: s.pod_cidr for s in DEFAULT_FLEET}
    members = [
        Member(
            name=c.name,
            context=c.context,
            labels=dict(c.labels),
            network=ClusterNetwork(
                mode=settings.network_mode or "flat", pod_cidrs=[r] if (r := ranges.get(c.name)) else []
            ),
        )
        for c in clusters
    ]
    return members, clusters[0].kubeconfig if clusters else None


@app.command()
def planner(
    nats_url: NatsUrl = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    subject_prefix: Prefix = None,
    migrate: Annotated[bool, typer.Option(help="Run database migrations first.")] = False,
    log_format: LogFormat = "text",
    log_level: LogLevel = "INFO",
) -> None:
    """Run the planner only (the hub). Several may run: one leads, the others stand by."""
    settings = settings_from(
        nats_url=nats_url,
        database_url=database_url,
        data_dir=data_dir,
        subject_prefix=subject_prefix,
        log_format=log_format,
        log_level=log_level,
    )
    logs.configure(level=settings.log_level, fmt=settings.log_format)

    async def run() -> None:
        async with hub_urls(settings) as (nats, db):
            await run_components(
                settings=settings,
                members=[],
                nats_url=nats,
                database_url=db,
                run_planner_too=True,
                install=False,
                migrate=migrate,
            )

    run_async(run)


@app.command()
def agent(
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="This member cluster's name in the fleet.")],
    context: Annotated[
        str | None, typer.Option(help="Kubeconfig context (default: in-cluster service account).")
    ] = None,
    labels: Annotated[str, typer.Option(help="Cluster labels, key=value,key=value.")] = "",
    install_crds: Annotated[bool, typer.Option(help="Install the CRDs into this cluster first.")] = False,
    only: Annotated[
        str | None,
        typer.Option(
            help="Run only the watcher or only the applier (to give each its own, least-privileged identity)."
        ),
    ] = None,
    namespace: Namespaces = None,
    nats_url: NatsUrl = None,
    kubeconfig: Kubeconfig = None,
    subject_prefix: Prefix = None,
    log_format: LogFormat = "text",
    log_level: LogLevel = "INFO",
) -> None:
    """Run one cluster's watcher and applier (what the Helm chart runs in each member cluster)."""
    settings = settings_from(
        nats_url=nats_url,
        kubeconfig=kubeconfig,
        subject_prefix=subject_prefix,
        log_format=log_format,
        log_level=log_level,
        namespaces=namespace,
    )
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    if not settings.nats_url:
        fail("agent needs the hub's NATS: set --nats-url or LLMOP_NATS_URL")
    if only not in (None, "watcher", "applier"):
        fail(f"--only {only!r}: choose watcher or applier")
    parts = frozenset({only}) if only else frozenset({"watcher", "applier"})
    try:
        member = Member(
            name=parse_cluster(f"{cluster}=x")[0],
            context=context,
            labels=parse_labels(labels),
            in_cluster=context is None,
            network=settings.cluster_network(),
        )
    except ValueError as exc:
        fail(str(exc))
        raise

    async def run() -> None:
        assert settings.nats_url
        await run_components(
            settings=settings,
            members=[member],
            nats_url=settings.nats_url,
            database_url=None,
            run_planner_too=False,
            install=install_crds,
            migrate=False,
            parts=parts,
        )

    run_async(run)


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    downgrade: Annotated[
        str | None,
        typer.Option(help="Downgrade to this revision instead (e.g. -1, or base) — for rolling back a release."),
    ] = None,
) -> None:
    """Apply database migrations (the schema changes only through these)."""
    settings = settings_from(database_url=database_url, data_dir=data_dir)
    logs.configure(level="INFO")

    async def run() -> None:
        from llm_operator.runtime import database_tls
        from store import schema
        from store.engine import open_engine
        from store.errors import StoreError

        async with hub_urls(settings, need_nats=False) as (_, db):
            engine = open_engine(db, tls=database_tls(settings))
            try:
                if downgrade:
                    await schema.downgrade(engine, downgrade)
                else:
                    await schema.upgrade(engine)
                out.print(f"database at revision {await schema.current_revision(engine) or 'base'}")
            except StoreError as exc:
                raise OperatorError(f"migration failed: {exc}") from exc
            finally:
                await engine.dispose()

    run_async(run)


CRD_DIRECTORIES = (Path("crds"), Path("charts/llm-operator/crds"))


@app.command()
def crds(
    write: Annotated[bool, typer.Option("--write", help="Write crds/*.yaml and the chart's copy.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Fail if either copy differs from the models.")] = False,
) -> None:
    """Print the CRDs generated from the API models; --write or --check the committed files (run from the repo)."""
    from api.crd import all_crds, render_yaml

    rendered = {name: render_yaml(manifest) for name, manifest in all_crds().items()}
    if write:
        for directory in CRD_DIRECTORIES:
            directory.mkdir(parents=True, exist_ok=True)
            for name, text in rendered.items():
                (directory / name).write_text(text)
        out.print(f"wrote {len(rendered)} CRDs to {' and '.join(f'{d}/' for d in CRD_DIRECTORIES)}")
        return
    if check:
        stale = [
            str(directory / name)
            for directory in CRD_DIRECTORIES
            for name, text in rendered.items()
            if not (directory / name).exists() or (directory / name).read_text() != text
        ]
        if stale:
            fail(f"{', '.join(stale)} differ from api/models.py: run `llm-operator crds --write`")
        out.print("CRDs are up to date")
        return
    sys.stdout.write("---\n".join(rendered.values()))


@app.command("install-crds")
def install_crds_command(
    context: Annotated[list[str], typer.Option("--context", help="Kubeconfig context; repeat.")],
    kubeconfig: Kubeconfig = None,
) -> None:
    """Install or update the CRDs in member clusters."""
    settings = settings_from(kubeconfig=kubeconfig)

    async def run() -> None:
        from llm_operator.install import install_crds
        from llm_operator.runtime import connect_kube

        for ctx in context:
            kube = await connect_kube(Member(name=parse_cluster(ctx)[0], context=ctx), kubeconfig=settings.kubeconfig)
            try:
                await install_crds(kube)
                out.print(f"{escape(ctx)}: CRDs installed")
            finally:
                await kube.close()

    run_async(run)


keys_app = typer.Typer(help="The planner's plan-signing keys (Ed25519): generate, show the public key.")
app.add_typer(keys_app, name="keys")


def _register_bus() -> None:
    from llm_operator.buscli import bus_app

    app.add_typer(bus_app, name="bus", help="Identities on the bus: add or revoke a cluster, the server's auth config.")


_register_bus()


@keys_app.command("generate")
def keys_generate(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Private key file to create (0600; never overwritten); - for stdout.")
    ],
) -> None:
    """Create a new signing key for the planner and print its public key (for the appliers' planSigning.publicKeys).

    Rotation: generate a new key, add its public key to every applier next to the old one, point the planner at
    the new key, and drop the old public key once no plan signed with it is still waiting."""
    from api.signing import generate_private_key, load_signer
    from llm_operator import trust

    if str(out) == "-":  # e.g. from the container image: docker run --rm IMAGE keys generate -o - > hub.pem
        pem = generate_private_key()
        sys.stdout.buffer.write(pem)
        err.print(f"public key: {load_signer(pem).public_key}", highlight=False)
        return
    try:
        signer = trust.write_private_key(out)
    except (trust.TrustError, OSError) as exc:
        fail(str(exc))
        raise
    err.print(f"wrote {out} (key id {signer.kid}); keep it on the hub only. Public key:", highlight=False)
    typer.echo(signer.public_key)  # plain stdout: capturable into a values file


@keys_app.command("public")
def keys_public(key: Annotated[Path, typer.Argument(help="Private key file; - for stdin.")]) -> None:
    """Print the public key of a signing key (what appliers pin)."""
    from api.signing import InvalidKey, load_signer
    from llm_operator import trust

    try:
        signer = load_signer(sys.stdin.buffer.read()) if str(key) == "-" else trust.read_signer(key)
    except (trust.TrustError, InvalidKey) as exc:
        fail(str(exc))
        raise
    typer.echo(signer.public_key)  # plain stdout: capturable into a values file


def _register_audit() -> None:
    from llm_operator import audit_cli, store_cli

    audit_cli.register(app, settings_for=settings_from, run_async=run_async)
    store_cli.register(app, settings_for=settings_from, run_async=run_async)


_register_audit()


def _register_dashboard() -> None:
    from llm_operator import dashboard_cli

    dashboard_cli.register(app, settings_for=settings_from, fail=fail)


_register_dashboard()


def main() -> None:
    app()
