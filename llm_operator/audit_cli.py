"""The audit commands' options and help (history, explain, status, report, replay, dead-letters).

Guarantees: only argument parsing and help text live here; what each command reads and prints is in
`llm_operator.audit`.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llm_operator.audit import REPORTS, dead_letters, explain, history, rebuild, report, status

Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", envvar="LLMOP_DATABASE_URL", help="Postgres URL; unset: the embedded Postgres."),
]


def register(app: typer.Typer, *, settings_for: Any, run_async: Any) -> None:
    """Add the audit commands to the main CLI (`settings_for(**options)` builds Settings)."""

    @app.command("history")
    def history_command(
        target: Annotated[
            str, typer.Argument(help="llmdeployment/<namespace>/<name> (or cluster/<name>, fleet with --as-of)")
        ],
        cluster: Annotated[str | None, typer.Option(help="Origin cluster, if the name exists in several.")] = None,
        since: Annotated[str | None, typer.Option(help="Only events recorded at or after (ISO 8601).")] = None,
        until: Annotated[str | None, typer.Option(help="Only events recorded at or before (ISO 8601).")] = None,
        as_of: Annotated[str | None, typer.Option("--as-of", help="Show the state as it was at this time.")] = None,
        as_json: Json = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """The timeline of a deployment: spec changes and who made them, decisions and reasons, plans, applies,
        status — or, with --as-of, the state of a deployment, a cluster or the fleet at a past moment."""
        settings = settings_for(database_url=database_url)
        run_async(
            lambda: history(settings, target, cluster=cluster, since=since, until=until, as_json=as_json, as_of=as_of)
        )

    @app.command("explain")
    def explain_command(
        target: Annotated[str, typer.Argument(help="llmdeployment/<namespace>/<name>")],
        cluster: Annotated[str | None, typer.Option(help="Origin cluster, if the name exists in several.")] = None,
        as_json: Json = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Why a deployment runs where it runs: the last placement decision and its inputs."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: explain(settings, target, cluster=cluster, as_json=as_json))

    @app.command("status")
    def status_command(as_json: Json = False, database_url: DatabaseUrl = None) -> None:
        """The fleet at a glance: clusters and health, free GPUs by type, deployments and where they run."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: status(settings, as_json=as_json))

    @app.command("report")
    def report_command(
        view: Annotated[str, typer.Argument(help=f"One of: {', '.join(REPORTS)}.")],
        as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
        limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Fleet reports from the SQL views (the same views any SQL client can query)."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: report(settings, view, as_csv=as_csv, limit=limit))

    @app.command("replay")
    def replay_command(
        do_rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop and refold every projection.")] = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Rebuild the projections from the event log (the log itself is never changed)."""
        if not do_rebuild:
            raise typer.BadParameter("pass --rebuild to rebuild the projections")
        settings = settings_for(database_url=database_url)
        run_async(lambda: rebuild(settings))

    @app.command("dead-letters")
    def dead_letters_command(
        limit: Annotated[int, typer.Option(help="Newest N.")] = 50,
        as_json: Json = False,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Messages the planner could not use, with the reason (they are kept; consumption went on)."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: dead_letters(settings, limit=limit, as_json=as_json))
