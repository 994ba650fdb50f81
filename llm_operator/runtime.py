"""Building the clients and running the components: the one place that knows every package.

Guarantees:
- Every connection failure becomes `OperatorError` with one line naming what could not be reached and how to fix
  it; callers print it and exit non-zero (no traceback).
- `run_components` runs the planner (optional) and a watcher + applier per member cluster in one anyio task
  group; cancelling it (Ctrl-C) stops everything and closes every client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import nats
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from applier.service import ApplierSettings, run_applier
from kubeapi import Kube, KubeError
from llm_operator import health
from llm_operator.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres, asyncpg_url
from llm_operator.install import install_crds
from llm_operator.settings import Settings
from planner.service import PlannerSettings, run_planner
from store import schema
from store.bus import BusUnavailable, ensure_streams
from store.errors import StoreError
from store.subjects import Subjects
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


# ------------------------------------------------------------------------------------------------ the hub


@contextlib.asynccontextmanager
async def hub_urls(
    settings: Settings, *, need_nats: bool = True, need_db: bool = True
) -> AsyncIterator[tuple[str, str]]:
    """(nats url, database url): the configured ones, or embedded servers started for the duration."""
    started_nats: EmbeddedNats | None = None
    started_pg: EmbeddedPostgres | None = None
    try:
        nats_url = settings.nats_url or ""
        db_url = asyncpg_url(settings.database_url) if settings.database_url else ""
        if need_nats and not nats_url:
            started_nats = await anyio.to_thread.run_sync(EmbeddedNats(settings.data_dir / "nats").start)
            nats_url = started_nats.url
        if need_db and not db_url:
            started_pg = await anyio.to_thread.run_sync(EmbeddedPostgres(settings.data_dir / "postgres").start)
            db_url = started_pg.url()
        yield nats_url, db_url
    except EmbeddedError as exc:
        raise OperatorError(str(exc)) from exc
    finally:
        with anyio.CancelScope(shield=True):
            if started_nats is not None:
                await anyio.to_thread.run_sync(started_nats.stop)
            if started_pg is not None:
                await anyio.to_thread.run_sync(started_pg.stop)


async def _reachable(url: str, timeout: float = 5.0) -> str | None:
    """None if some server of the (comma-separated) NATS URL accepts TCP connections, else why not."""
    problems = []
    for server in url.split(","):
        parsed = urlsplit(server.strip() if "://" in server else f"nats://{server.strip()}")
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(parsed.hostname or "127.0.0.1", parsed.port or 4222)
            await stream.aclose()
            return None
        except (OSError, TimeoutError) as exc:
            problems.append(f"{parsed.hostname}:{parsed.port or 4222}: {exc or 'timed out'}")
    return "; ".join(problems)


async def connect_nats(
    url: str, *, name: str, credentials: Path | None = None, wait_seconds: float = 30.0
) -> NatsClient:
    """Connect; once connected, reconnect forever. If no server answers, keep trying for `wait_seconds` (NATS
    restarting while we start is normal), then fail with a message naming the URL and the fix."""
    deadline = time.monotonic() + wait_seconds
    while problem := await _reachable(url):
        left = deadline - time.monotonic()
        if left <= 0:
            raise OperatorError(
                f"cannot reach NATS at {url} ({problem}): start NATS, fix LLMOP_NATS_URL, or unset it to use the "
                "embedded server"
            )
        logger.warning("NATS at %s not reachable (%s); retrying for another %.0fs", url, problem, left)
        await anyio.sleep(min(1.0, left))

    async def on_error(exc: Exception) -> None:
        logger.warning("NATS: %s", exc)

    closing: list[NatsClient] = []

    async def on_disconnect() -> None:
        if closing and (closing[0].is_closed or closing[0].is_draining):
            return  # our own shutdown
        logger.warning("NATS: disconnected from %s; reconnecting", url)

    async def on_reconnect() -> None:
        logger.info("NATS: reconnected to %s", url)

    try:
        client = await nats.connect(
            url,
            name=name,
            connect_timeout=5,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            user_credentials=str(credentials) if credentials else None,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            allow_reconnect=True,
        )
    except Exception as exc:  # nats raises several unrelated types for "cannot connect"
        raise OperatorError(
            f"cannot reach NATS at {url}: {exc or type(exc).__name__} "
            "(start NATS, fix LLMOP_NATS_URL, or unset it to use the embedded server)"
        ) from exc
    closing.append(client)
    return client


async def open_engine(url: str, *, migrate: bool) -> AsyncEngine:
    engine = create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    try:
        if migrate:
            await schema.upgrade(engine)
        else:
            await schema.require_current(engine)
    except StoreError as exc:
        await engine.dispose()
        raise OperatorError(f"database {engine.url.render_as_string(hide_password=True)}: {exc}") from exc
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
    nc = await connect_nats(
        nats_url,
        name=f"llm-operator-{socket.gethostname()}",
        credentials=settings.nats_credentials,
        wait_seconds=settings.connect_wait_seconds,
    )
    engine: AsyncEngine | None = None
    kubes: list[Kube] = []
    try:
        js: JetStreamContext = nc.jetstream()
        if run_planner_too:
            assert database_url
            engine = await open_engine(database_url, migrate=migrate)
            try:
                await ensure_streams(js, subjects)
            except BusUnavailable as exc:
                raise OperatorError(f"NATS at {nats_url}: {exc} (is JetStream enabled? run nats-server -js)") from exc
        for member in members:
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
                app = health.application(nc=nc, checks=health.checks_for(nc=nc, engine=engine, kubes=kubes))
                tg.start_soon(partial(health.serve, app, port=settings.metrics_port))
            if run_planner_too and engine is not None:
                planner_settings = PlannerSettings(
                    holder=f"{socket.gethostname()}-{os.getpid()}",
                    heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
                    recovery_hold_seconds=settings.recovery_hold_seconds,
                    unschedulable_seconds=settings.unschedulable_seconds,
                )
                tg.start_soon(partial(run_planner, engine=engine, js=js, subjects=subjects, settings=planner_settings))
            for member, kube in zip(members, kubes, strict=True):
                watcher_settings = WatcherSettings(
                    cluster=member.name,
                    labels=dict(member.labels),
                    namespaces=settings.namespaces,
                    heartbeat_seconds=settings.heartbeat_seconds,
                    resync_seconds=settings.resync_seconds,
                )
                if "watcher" in parts:
                    tg.start_soon(partial(run_watcher, kube=kube, js=js, subjects=subjects, settings=watcher_settings))
                if "applier" in parts:
                    applier_settings = ApplierSettings(cluster=member.name, workers=settings.applier_workers)
                    tg.start_soon(partial(run_applier, kube=kube, js=js, subjects=subjects, settings=applier_settings))
            if started is not None:
                started.set()
    finally:
        with anyio.CancelScope(shield=True):
            for kube in kubes:
                await kube.close()
            if engine is not None:
                await engine.dispose()
            with contextlib.suppress(Exception):
                await nc.close()
