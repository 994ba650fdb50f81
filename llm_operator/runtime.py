"""Building the clients and running the components: the one place that knows every package.

Guarantees:
- Every connection failure becomes `OperatorError` with one line naming what could not be reached and how to fix
  it; callers print it and exit non-zero (no traceback).
- `run_components` runs the planner (optional) and a watcher + applier per member cluster in one anyio task
  group; cancelling it (Ctrl-C) stops everything and closes every client.
- Each identity has its own NATS connection: the planner connects as "hub", each member cluster's watcher and
  applier as that cluster, so the server's permissions confine each to its own subjects. The embedded NATS of
  `hub_urls` requires identities (made for the local fleet on first use) unless `nats_auth` is off.
- No credential reaches a log line or an error: URLs are redacted (`redact_url`, `describe`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

import anyio
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from api.network import ClusterNetwork
from applier.service import ApplierSettings, run_applier
from bus.auth import PLANNER, inbox_prefix
from bus.connection import Client, JetStream, Tls, redact_url
from bus.connection import connect as bus_connect
from bus.errors import BusUnavailable
from bus.streams import ensure_streams
from bus.subjects import Subjects
from kubeapi import Kube, KubeError
from llm_operator import health, trust
from llm_operator.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres, asyncpg_url
from llm_operator.identities import SEED_FILE, BusIdentities, IdentityError
from llm_operator.install import install_crds
from llm_operator.settings import Settings
from planner.service import PlannerSettings, Retention, SnapshotPolicy, run_planner
from store import schema
from store.engine import DatabaseTls, Engine, describe
from store.engine import open_engine as new_engine
from store.errors import StoreError
from watcher.load import LoadSettings
from watcher.service import WatcherSettings, run_watcher

logger = logging.getLogger(__name__)


class OperatorError(Exception):
    """A problem the user must fix; the message says what and how."""


@dataclass(frozen=True)
class Member:
    """A member cluster: its name in the fleet and how to reach its apiserver."""

    name: str
    context: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    in_cluster: bool = False
    network: ClusterNetwork | None = None
    """How other clusters reach replicas here (api.network), reported with its heartbeats; None: undeclared."""


# ------------------------------------------------------------------------------------------------ the hub


@contextlib.asynccontextmanager
async def hub_urls(
    settings: Settings, *, need_nats: bool = True, need_db: bool = True, clusters: Sequence[str] = ()
) -> AsyncIterator[tuple[str, str]]:
    """(nats url, database url): the configured ones, or embedded servers started for the duration. The embedded
    NATS requires identities: the planner's and `clusters`' are made on first use (see `identity_seed`)."""
    started_nats: EmbeddedNats | None = None
    started_pg: EmbeddedPostgres | None = None
    try:
        nats_url = settings.nats_url or ""
        db_url = asyncpg_url(settings.database_url) if settings.database_url else ""
        if need_nats and not nats_url:
            auth_config = None
            if settings.nats_auth:
                identities = embedded_identities(settings)
                identities.ensure(settings.subject_prefix, list(clusters))
                auth_config = identities.server_config_path
            server = EmbeddedNats(settings.data_dir / "nats", auth_config=auth_config)
            started_nats = await anyio.to_thread.run_sync(server.start)
            nats_url = started_nats.url
        if need_db and not db_url:
            started_pg = await anyio.to_thread.run_sync(EmbeddedPostgres(settings.data_dir / "postgres").start)
            db_url = started_pg.url()
        yield nats_url, db_url
    except (EmbeddedError, IdentityError) as exc:
        raise OperatorError(str(exc)) from exc
    finally:
        with anyio.CancelScope(shield=True):
            if started_nats is not None:
                await anyio.to_thread.run_sync(started_nats.stop)
            if started_pg is not None:
                await anyio.to_thread.run_sync(started_pg.stop)


def embedded_identities(settings: Settings) -> BusIdentities:
    """The identities of this data directory (what the embedded NATS trusts)."""
    return BusIdentities(settings.data_dir / "bus")


def identity_seed(settings: Settings, identity: str) -> Path | None:
    """The nkey seed file `identity` ("hub" for the planner, else a cluster) connects with, or None (no nkey)."""
    if settings.nats_nkey_seed is not None:
        return settings.nats_nkey_seed
    if settings.nats_identities_dir is not None:
        directory = settings.nats_identities_dir
    elif settings.nats_url is None and settings.nats_auth:
        directory = embedded_identities(settings).seeds_dir(settings.subject_prefix)
    else:
        return None
    path = directory / identity / SEED_FILE
    if not path.exists():
        what = "the planner" if identity == PLANNER else f"cluster {identity}"
        command = "llm-operator bus init" if identity == PLANNER else f"llm-operator bus add-cluster {identity}"
        raise OperatorError(f"no NATS identity for {what}: {path} does not exist (run `{command}`)")
    return path


def nats_tls(settings: Settings) -> Tls | None:
    if not (settings.nats_tls_ca or settings.nats_tls_cert):
        return None
    return Tls(
        ca=settings.nats_tls_ca,
        cert=settings.nats_tls_cert,
        key=settings.nats_tls_key,
        hostname=settings.nats_tls_hostname,
    )


def database_tls(settings: Settings) -> DatabaseTls | None:
    if not (settings.database_tls_ca or settings.database_tls_cert):
        return None
    return DatabaseTls(ca=settings.database_tls_ca, cert=settings.database_tls_cert, key=settings.database_tls_key)


async def connect_nats(
    url: str,
    *,
    name: str,
    credentials: Path | None = None,
    nkey_seed: Path | None = None,
    inbox_prefix: str | None = None,
    tls: Tls | None = None,
    wait_seconds: float = 30.0,
) -> Client:
    """The bus client, or `OperatorError` with the fix when no server answers within `wait_seconds`."""
    try:
        return await bus_connect(
            url,
            name=name,
            credentials=credentials,
            nkey_seed=nkey_seed,
            inbox_prefix=inbox_prefix,
            tls=tls,
            wait_seconds=wait_seconds,
        )
    except BusUnavailable as exc:
        if "refused" in str(exc):
            raise OperatorError(f"{exc}: check the identity (nkey seed / .creds) and the TLS settings") from exc
        raise OperatorError(f"{exc}: start NATS, fix LLMOP_NATS_URL, or unset it to use the embedded server") from exc


async def connect_as(settings: Settings, url: str, identity: str) -> Client:
    """The bus client of one identity: its seed, its own inbox prefix, TLS as configured."""
    return await connect_nats(
        url,
        name=f"llm-operator-{identity}-{socket.gethostname()}",
        credentials=settings.nats_credentials,
        nkey_seed=identity_seed(settings, identity),
        inbox_prefix=inbox_prefix(Subjects(settings.subject_prefix), identity),
        tls=nats_tls(settings),
        wait_seconds=settings.connect_wait_seconds,
    )


async def open_engine(url: str, *, migrate: bool, tls: DatabaseTls | None = None) -> Engine:
    engine = new_engine(url, tls=tls)
    try:
        if migrate:
            await schema.upgrade(engine)
        else:
            await schema.require_current(engine)
    except (StoreError, OSError) as exc:
        await engine.dispose()
        raise OperatorError(f"database {describe(engine)}: {exc}") from exc
    return engine


# -------------------------------------------------------------------------------------------- member clusters


def _kubeconfig_for(member: Member, kubeconfig: Path | None) -> Path:
    """The kubeconfig file to use, checked: it exists and has the member's context."""
    config_file = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or None
    path = Path(config_file or Path.home() / ".kube" / "config").expanduser()
    if not path.exists():
        raise OperatorError(f"cluster {member.name}: kubeconfig {path} does not exist (set LLMOP_KUBECONFIG)")
    contexts, _ = k8s_config.list_kube_config_contexts(config_file=str(path))
    names = [c["name"] for c in contexts or []]
    if member.context and member.context not in names:
        raise OperatorError(
            f"cluster {member.name}: kubeconfig {path} has no context {member.context!r} "
            f"(it has: {', '.join(names) or 'none'})"
        )
    return path


async def connect_kube(member: Member, *, kubeconfig: Path | None) -> Kube:
    try:
        if member.in_cluster:
            configuration = k8s_client.Configuration()
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            api = k8s_client.ApiClient(configuration)
        else:
            path = _kubeconfig_for(member, kubeconfig)
            api = await k8s_config.new_client_from_config(config_file=str(path), context=member.context)
    except (k8s_config.ConfigException, FileNotFoundError, OSError) as exc:
        where = "the in-cluster service account" if member.in_cluster else f"kubeconfig context {member.context!r}"
        raise OperatorError(f"cluster {member.name}: cannot use {where}: {exc}") from exc
    kube = Kube(api, name=member.name)
    try:
        await kube.version()
    except KubeError as exc:
        await kube.close()
        raise OperatorError(f"cluster {member.name}: apiserver unreachable ({exc}); is the cluster running?") from exc
    return kube


# ----------------------------------------------------------------------------------------------- running


async def run_components(
    *,
    settings: Settings,
    members: Sequence[Member],
    nats_url: str,
    database_url: str | None,
    run_planner_too: bool,
    install: bool,
    migrate: bool,
    started: anyio.Event | None = None,
    parts: frozenset[str] = frozenset({"watcher", "applier"}),
) -> None:
    """Run the planner (optional) and, for each member, the `parts` ("watcher", "applier") until cancelled."""
    subjects = Subjects(settings.subject_prefix)
    try:
        signer = trust.planner_signer(settings) if run_planner_too else None
        keys = trust.applier_keys(settings, signer) if "applier" in parts and members else {}
        policy = trust.tenant_policy(settings)
    except trust.TrustError as exc:
        raise OperatorError(str(exc)) from exc
    clients: list[Client] = []
    engine: Engine | None = None
    kubes: list[Kube] = []
    try:
        planner_js: JetStream | None = None
        if run_planner_too:
            assert database_url
            planner_nc = await connect_as(settings, nats_url, PLANNER)
            clients.append(planner_nc)
            planner_js = planner_nc.jetstream()
            engine = await open_engine(database_url, migrate=migrate, tls=database_tls(settings))
            try:
                await ensure_streams(
                    planner_js, subjects, limits={role: lim.limits() for role, lim in settings.stream_limits.items()}
                )
            except BusUnavailable as exc:
                raise OperatorError(
                    f"NATS at {redact_url(nats_url)}: {exc} (is JetStream enabled? run nats-server -js)"
                ) from exc
        member_js: list[JetStream] = []
        for member in members:
            member_nc = await connect_as(settings, nats_url, member.name)
            clients.append(member_nc)
            member_js.append(member_nc.jetstream())
            kubes.append(await connect_kube(member, kubeconfig=settings.kubeconfig))
        if install:
            for member, kube in zip(members, kubes, strict=True):
                try:
                    await install_crds(kube)
                except (KubeError, TimeoutError) as exc:
                    raise OperatorError(f"cluster {member.name}: installing the CRDs failed: {exc}") from exc
                logger.info("cluster %s: CRDs installed", member.name)
        async with anyio.create_task_group() as tg:
            if settings.metrics_port:
                app = health.application(nc=clients, checks=health.checks_for(nc=clients, engine=engine, kubes=kubes))
                tg.start_soon(partial(health.serve, app, port=settings.metrics_port, host=settings.metrics_host))
            if planner_js is not None and engine is not None and signer is not None:
                planner_settings = PlannerSettings(
                    signer=signer,
                    tenant_policy=policy,
                    holder=f"{socket.gethostname()}-{os.getpid()}",
                    heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
                    recovery_hold_seconds=settings.recovery_hold_seconds,
                    unschedulable_seconds=settings.unschedulable_seconds,
                    retention=Retention(
                        observations=timedelta(days=settings.observation_retention_days)
                        if settings.observation_retention_days
                        else None,
                        check_seconds=settings.retention_check_seconds,
                        days_ahead=settings.partition_days_ahead,
                    ),
                    snapshots=SnapshotPolicy(
                        every_events=settings.projection_snapshot_events,
                        every_seconds=settings.projection_snapshot_seconds,
                    )
                    if settings.projection_snapshot_seconds
                    else None,
                )
                tg.start_soon(
                    partial(run_planner, engine=engine, js=planner_js, subjects=subjects, settings=planner_settings)
                )
            for member, kube, js in zip(members, kubes, member_js, strict=True):
                watcher_settings = WatcherSettings(
                    cluster=member.name,
                    labels=dict(member.labels),
                    namespaces=settings.namespaces,
                    heartbeat_seconds=settings.heartbeat_seconds,
                    resync_seconds=settings.resync_seconds,
                    network=member.network,
                    load=LoadSettings(
                        interval_seconds=settings.load_interval_seconds, prometheus_url=settings.prometheus_url
                    )
                    if settings.load_interval_seconds
                    else None,
                )
                if "watcher" in parts:
                    tg.start_soon(partial(run_watcher, kube=kube, js=js, subjects=subjects, settings=watcher_settings))
                if "applier" in parts:
                    applier_settings = ApplierSettings(
                        cluster=member.name,
                        workers=settings.applier_workers,
                        max_attempts=settings.applier_max_attempts,
                        trusted_keys=keys,
                        max_epoch_jump=settings.plan_max_epoch_jump,
                        policy=policy,
                        exposed=member.network is not None and member.network.mode == "exposed",
                    )
                    tg.start_soon(partial(run_applier, kube=kube, js=js, subjects=subjects, settings=applier_settings))
            if started is not None:
                started.set()
    finally:
        with anyio.CancelScope(shield=True):
            for kube in kubes:
                await kube.close()
            if engine is not None:
                await engine.dispose()
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()
