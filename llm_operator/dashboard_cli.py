"""`llm-operator dashboard`: serve the read-only web dashboard (`dashboard/`), or make its database role.

Guarantees:
- It reads Postgres only, through `store.browse` (every transaction READ ONLY); it opens no NATS connection and
  no Kubernetes client.
- It binds 127.0.0.1 unless told otherwise, and refuses to listen on any other address without an access token or
  a trusted reverse-proxy header (or an explicit `--insecure-no-auth`).
- `--grant ROLE` makes the read-only login role the dashboard should use (SELECT on every table and view, now and
  later) with the URL given (an owner's), prints the role's URL, and exits.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console

from llm_operator.runtime import OperatorError, hub_urls
from store.errors import StoreError

err = Console(stderr=True)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer, *, settings_for: Any, fail: Any) -> None:
    @app.command("dashboard")
    def dashboard_command(
        host: Annotated[
            str, typer.Option(envvar="LLMOP_DASHBOARD_HOST", help="Address to listen on (loopback by default).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(envvar="LLMOP_DASHBOARD_PORT", help="Port to listen on.")] = 8080,
        database_url: Annotated[
            str | None,
            typer.Option(
                "--database-url",
                envvar=["LLMOP_DASHBOARD_DATABASE_URL", "LLMOP_DATABASE_URL"],
                help="Postgres URL, best the read-only role's (see --grant); unset: the embedded Postgres.",
            ),
        ] = None,
        token_file: Annotated[
            Path | None,
            typer.Option(
                envvar="LLMOP_DASHBOARD_TOKEN_FILE",
                help="File holding the access token: requests need `Authorization: Bearer <token>` or one visit "
                "with ?token=<token> (then a cookie). The env LLMOP_DASHBOARD_TOKEN may hold the token instead.",
            ),
        ] = None,
        trusted_header: Annotated[
            str | None,
            typer.Option(
                envvar="LLMOP_DASHBOARD_TRUSTED_HEADER",
                help="A header your authenticating reverse proxy sets (e.g. X-Forwarded-User): requests carrying it "
                "pass. Only for a dashboard reachable through that proxy alone.",
            ),
        ] = None,
        insecure_no_auth: Annotated[
            bool, typer.Option(help="Allow a non-loopback address with no token and no trusted header.")
        ] = False,
        grant: Annotated[
            str | None,
            typer.Option(
                metavar="ROLE",
                help="Create/update the read-only login ROLE (password from LLMOP_DASHBOARD_DB_PASSWORD, if set) "
                "with --database-url as an owner, print the dashboard's URL, and exit.",
            ),
        ] = None,
    ) -> None:
        """Serve the read-only fleet dashboard: clusters and GPUs, deployments and every decision, the audit log."""
        settings = settings_for(database_url=database_url)
        token = os.environ.get("LLMOP_DASHBOARD_TOKEN") or None
        if token_file is not None:
            token = token_file.read_text().strip() or None
        if grant is None and not _loopback(host) and token is None and not trusted_header and not insecure_no_auth:
            fail(
                f"refusing to serve on {host} without access control: set a token (LLMOP_DASHBOARD_TOKEN or "
                "--token-file) or --trusted-header, or pass --insecure-no-auth"
            )

        async def run() -> None:
            async with hub_urls(settings, need_nats=False) as (_, url):
                if grant is not None:
                    await _grant(url, grant)
                    return
                await _serve(url, host=host, port=port, token=token, trusted_header=trusted_header)

        try:
            anyio.run(run)
        except (OperatorError, StoreError, ValueError) as exc:
            fail(str(exc))


async def _grant(url: str, role: str) -> None:
    from store.browse import grant_read_only, role_url
    from store.engine import open_engine

    password = os.environ.get("LLMOP_DASHBOARD_DB_PASSWORD") or None
    engine = open_engine(url)
    try:
        await grant_read_only(engine, role, password=password)
    finally:
        await engine.dispose()
    err.print(f"role {role} may now read this database (SELECT only; every transaction read-only). Its URL:")
    print(role_url(url, role, password=password))


async def _serve(url: str, *, host: str, port: int, token: str | None, trusted_header: str | None) -> None:
    import uvicorn

    from dashboard.app import create_app
    from llm_operator.audit import fleet_capacity
    from store.browse import can_write, open_browse
    from store.engine import describe

    async with open_browse(url) as browse:
        if await can_write(browse.engine):
            err.print(
                f"[yellow]warning:[/yellow] {describe(url)} logs in as a role that may write the event log; the "
                "dashboard's transactions are read-only anyway, but give it its own role: "
                "`llm-operator dashboard --grant llmop_dashboard`"
            )
        app = create_app(browse=browse, capacity_as_of=fleet_capacity, token=token, trusted_header=trusted_header)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        err.print(f"dashboard on http://{host}:{port}/ (reading {describe(url)})")
        await uvicorn.Server(config).serve()
