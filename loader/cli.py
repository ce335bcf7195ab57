"""The `sluice` command. Exit codes: 0 success, 1 failed sync, 2 bad usage or config."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from loader.config import ConfigError, find_profiles, load_profiles
from loader.naming import snake_case
from loader.pipeline import DEFAULT_BATCH_LINES, Loader, SyncReport
from loader.report_view import print_report
from loader.warehouses.base import LockBusy, Warehouse, WarehouseError

console = Console()
err_console = Console(stderr=True)

STARTER_PROFILES = """\
# Sluice profiles: named warehouse targets. See profiles.example.yml for every field.
default_target: local
targets:
  local:
    type: duckdb
    path: sluice.duckdb
  postgres:
    type: postgres
    host: ${PGHOST:-127.0.0.1}
    port: 5432
    user: ${PGUSER:-postgres}
    password: ${PGPASSWORD:-}
    dbname: ${PGDATABASE:-postgres}
"""


class _Context:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose


def _fail(message: str, code: int) -> None:
    err_console.print(f"[red]error:[/] {message}")
    sys.exit(code)


def _open(profiles: str | None, target: str | None) -> Warehouse:
    from loader.warehouses.registry import open_warehouse

    path = find_profiles(profiles)
    name, spec = load_profiles(path).target(target)
    return open_warehouse(name, spec)


@click.group()
@click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Sluice: Segment event archives into Segment-faithful warehouse tables."""
    ctx.obj = _Context(verbose)


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--events", default=20_000, show_default=True, help="Sample events to generate.")
def init(directory: str, events: int) -> None:
    """Write a starter profiles.yml and a sample archive in DIRECTORY."""
    from loader.sample import write_archive

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    profiles = root / "profiles.yml"
    if not profiles.exists():
        profiles.write_text(STARTER_PROFILES)
    files = write_archive(root / "archive", events)
    console.print(
        f"wrote {profiles} and a sample archive of {events} events in {len(files)} files "
        f"under {root / 'archive'}"
    )
    console.print(f"next: cd {root} && sluice load archive --schema javascript_production")


@cli.command()
@click.argument("archive_url")
@click.option("--schema", "schema_name", required=True, help="Warehouse schema (source name).")
@click.option("--target", default=None, help="Target in profiles.yml (default_target if unset).")
@click.option("--profiles", default=None, help="Path to profiles.yml.")
@click.option("--batch-lines", default=DEFAULT_BATCH_LINES, show_default=True)
@click.pass_obj
def load(
    obj: _Context,
    archive_url: str,
    schema_name: str,
    target: str | None,
    profiles: str | None,
    batch_lines: int,
) -> None:
    """Load an archive (a file, a folder, or an s3:// / gs:// prefix) into SCHEMA."""
    schema = snake_case(schema_name)
    try:
        warehouse = _open(profiles, target)
    except (ConfigError, WarehouseError) as exc:
        _fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
        return

    def progress(report: SyncReport) -> None:
        # One line per committed batch: what a watcher (or a killed run) has for certain.
        err_console.print(
            f"[dim]committed: {report.files_loaded} of "
            f"{report.files_seen - report.files_skipped} files, "
            f"{sum(report.rows_loaded.values())} rows[/]",
            highlight=False,
        )

    loader = Loader(warehouse, batch_lines=batch_lines, on_batch=progress)
    try:
        report = loader.load(archive_url, schema)
    except LockBusy as exc:
        _fail(str(exc), 1)
        return
    except FileNotFoundError as exc:
        _fail(f"archive not found: {exc}", 2)
        return
    except Exception as exc:  # noqa: BLE001 - one sentence, traceback with --verbose
        if obj.verbose:
            raise
        _fail(f"sync of {archive_url} into {schema} failed: {exc}", 1)
        return
    finally:
        warehouse.close()
    print_report(report.to_dict(), console)


@cli.group()
def schema() -> None:
    """Inspect the generated tables."""


@schema.command("show")
@click.argument("name", required=False)
@click.option("--target", default=None)
@click.option("--profiles", default=None)
def schema_show(name: str | None, target: str | None, profiles: str | None) -> None:
    """List tables, columns and types of SCHEMA[.TABLE]."""
    if not name:
        _fail("give a schema name: sluice schema show SCHEMA[.TABLE]", 2)
        return
    schema_name, _, table_name = name.partition(".")
    try:
        warehouse = _open(profiles, target)
    except (ConfigError, WarehouseError) as exc:
        _fail(str(exc), 2)
        return
    try:
        tables = warehouse.read_schema(schema_name)
    finally:
        warehouse.close()
    if table_name:
        tables = {k: v for k, v in tables.items() if k == table_name}
    if not tables:
        _fail(f"no tables found for {name}", 1)
    for table, columns in sorted(tables.items()):
        view = Table("column", "type", title=f"{schema_name}.{table}")
        for column, kind in columns.items():
            view.add_row(column, kind.value)
        console.print(view)


@cli.command()
@click.option("--target", default=None)
@click.option("--profiles", default=None)
@click.option("--limit", default=10, show_default=True)
def runs(target: str | None, profiles: str | None, limit: int) -> None:
    """Show the most recent sync reports."""
    try:
        warehouse = _open(profiles, target)
    except (ConfigError, WarehouseError) as exc:
        _fail(str(exc), 2)
        return
    try:
        warehouse.ensure_bookkeeping()
        reports = warehouse.recent_runs(limit)
    finally:
        warehouse.close()
    if not reports:
        console.print("no sync runs recorded yet")
    for report in reports:
        console.print(f"[dim]{report['started_at']} run {report['run_id']}[/]")
        print_report(report, console)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigError as exc:
        _fail(str(exc), 2)


if __name__ == "__main__":
    main()
