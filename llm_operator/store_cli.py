"""`llm-operator store`: the event log's partitions, its retention policy and projection snapshots (prune,
partitions, snapshot, snapshots).

Guarantees: `prune` only ever drops observation partitions (store.retention), never audit events, and prints what
it dropped and from when observations are now kept; `snapshot` adds a projection snapshot (store.snapshots) and
thins old ones, never touching the log; `partitions` and `snapshots` are read-only. The planner does the same
upkeep while it leads (planner/service.py); these commands are for running it by hand or from a cron job.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llm_operator.audit import database
from llm_operator.audit_cli import DatabaseUrl
from llm_operator.settings import Settings

out = Console()

store_app = typer.Typer(help="The event store: partitions of the log and the retention policy.", no_args_is_help=True)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)  # pragma: no cover


async def prune(settings: Settings, *, keep_days: float | None, max_partitions: int) -> None:
    days = settings.observation_retention_days if keep_days is None else keep_days
    if not days:
        out.print("observation retention is 0 (keep forever): nothing to prune")
        return
    async with database(settings) as reports:
        created, pruned = await reports.prune(
            now=datetime.now(UTC),
            keep=timedelta(days=days),
            max_partitions=max_partitions,
            days_ahead=settings.partition_days_ahead,
        )
        kept_from = await reports.horizon()
    for name in created:
        out.print(f"created partition {name}")
    for p in pruned:
        out.print(
            f"dropped {p.partition}: {p.rows} observations, {p.kept_as_snapshot} kept as the last observation "
            "of their object"
        )
    if not pruned:
        out.print(f"no observation partition older than {days:g} day(s)")
    if kept_from is not None:
        out.print(f"observations are kept from {kept_from.isoformat()}; audit events are complete")


async def partitions(settings: Settings) -> None:
    async with database(settings) as reports:
        found = await reports.log_partitions()
        kept_from = await reports.horizon()
    table = Table(title=Text("event log partitions"), header_style="bold", title_justify="left")
    for column in ("PARTITION", "CLASS", "FROM", "TO", "ROWS (est.)", "SIZE"):
        table.add_column(column)
    for p in found:
        table.add_row(
            *(
                Text(v)
                for v in (
                    p.name,
                    p.retention,
                    p.start.isoformat() if p.start else "",
                    p.end.isoformat() if p.end else "",
                    str(p.rows),
                    _size(p.bytes),
                )
            )
        )
    out.print(table)
    out.print(f"observations kept from {kept_from.isoformat()}" if kept_from else "nothing pruned: the log is complete")


async def snapshot(settings: Settings) -> None:
    async with database(settings) as reports:
        taken, thinned = await reports.take_snapshot(now=datetime.now(UTC))
    if taken is None:
        out.print("nothing recorded since the last projection snapshot: none taken")
    else:
        out.print(
            f"projection snapshot at position {taken.position}: {taken.rows} rows, {_size(taken.bytes)}, "
            f"{taken.seconds:.2f}s; looks at {taken.recorded_until.isoformat()} or later start from it"
        )
    if thinned:
        out.print(f"removed {thinned} older snapshot(s) (the last day's are kept, then the first of each hour)")


async def list_snapshots(settings: Settings) -> None:
    async with database(settings) as reports:
        found = await reports.snapshots()
    table = Table(title=Text("projection snapshots"), header_style="bold", title_justify="left")
    for column in ("POSITION", "TAKEN", "USED FROM", "ROWS", "SIZE"):
        table.add_column(column)
    for s in found:
        table.add_row(
            *(
                Text(v)
                for v in (
                    str(s.position),
                    s.taken_at.isoformat(),
                    s.recorded_until.isoformat(),
                    str(s.rows),
                    _size(s.bytes),
                )
            )
        )
    out.print(table)


def register(app: typer.Typer, *, settings_for: Any, run_async: Any) -> None:
    """Add `store prune`, `partitions`, `snapshot` and `snapshots` to the main CLI."""

    @store_app.command("prune")
    def prune_command(
        keep_days: Annotated[
            float | None,
            typer.Option(help="Keep observations this many days (default: observation_retention_days)."),
        ] = None,
        max_partitions: Annotated[int, typer.Option(help="Drop at most this many day partitions.", min=1)] = 30,
        database_url: DatabaseUrl = None,
    ) -> None:
        """Drop whole days of raw observations older than the retention policy keeps (audit events stay)."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: prune(settings, keep_days=keep_days, max_partitions=max_partitions))

    @store_app.command("partitions")
    def partitions_command(database_url: DatabaseUrl = None) -> None:
        """The event log's partitions: class, time range, rows and size."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: partitions(settings))

    @store_app.command("snapshot")
    def snapshot_command(database_url: DatabaseUrl = None) -> None:
        """Copy the projections into a projection snapshot now, so looks at the past start from it."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: snapshot(settings))

    @store_app.command("snapshots")
    def snapshots_command(database_url: DatabaseUrl = None) -> None:
        """The projection snapshots: position, when taken, from when they are used, rows and size."""
        settings = settings_for(database_url=database_url)
        run_async(lambda: list_snapshots(settings))

    app.add_typer(store_app, name="store")
