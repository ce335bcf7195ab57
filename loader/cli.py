"""The `sluice` command. Exit codes: 0 success, 1 failed sync, 2 bad usage or config."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
from rich.table import Table

from loader.cli_common import (
    CliContext,
    console,
    fail,
    incomplete,
    open_target,
    progress,
    run_sync,
)
from loader.cli_project import catalog, replay, selective_sync, sync
from loader.cli_retl import retl
from loader.config import ConfigError, find_profiles, load_profiles
from loader.naming import snake_case
from loader.pipeline import DEFAULT_BATCH_LINES, Loader
from loader.report_view import print_report
from loader.selective_sync import SyncFilter
from loader.selective_sync import load_file as load_selective_sync
from loader.warehouses.base import Warehouse, WarehouseError


def _open(profiles: str | None, target: str | None, read_only: bool = False) -> Warehouse:
    path = find_profiles(profiles)
    name, spec = load_profiles(path).target(target)
    return open_target(name, spec, read_only=read_only)


@click.group()
@click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Sluice: Segment event archives into Segment-faithful warehouse tables."""
    ctx.obj = CliContext(verbose)


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--events", default=20_000, show_default=True, help="Sample events to generate.")
def init(directory: str, events: int) -> None:
    """Write a starter sluice.yml, profiles.yml, selective_sync.yml, dagster.yaml and a
    sample archive in DIRECTORY (existing files are kept)."""
    from importlib.resources import files as package_files

    from loader.sample import write_archive

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    templates = package_files("loader") / "templates"
    written = []
    for name in ("sluice.yml", "profiles.yml", "selective_sync.yml", "dagster.yaml"):
        path = root / name
        if not path.exists():
            path.write_text((templates / name).read_text())
            written.append(name)
    examples = Path(__file__).resolve().parent.parent / "sql" / "models"
    models = root / "sql" / "models"
    if examples.is_dir() and not models.exists():
        # The example reverse-ETL models, from a source checkout (pip install -e .).
        shutil.copytree(examples, models)
        written.append("sql/models/")
    files = write_archive(root / "archive", events)
    console.print(
        f"wrote {', '.join(written) or 'no new config files'} and a sample archive of "
        f"{events} events in {len(files)} files under {root / 'archive'}"
    )
    console.print(f"next: cd {root} && sluice sync")


@cli.command()
@click.argument("archive_url")
@click.option("--schema", "schema_name", required=True, help="Warehouse schema (source name).")
@click.option("--target", default=None, help="Target in profiles.yml (default_target if unset).")
@click.option("--profiles", default=None, help="Path to profiles.yml.")
@click.option("--batch-lines", default=DEFAULT_BATCH_LINES, show_default=True)
@click.option(
    "--readers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes that parse files while this one loads (default: one per core; 0: none).",
)
@click.option(
    "--selective-sync",
    "selective_sync",
    default=None,
    type=click.Path(dir_okay=False),
    help="Apply this selective_sync.yml (source = the schema name).",
)
@click.pass_obj
def load(
    obj: CliContext,
    archive_url: str,
    schema_name: str,
    target: str | None,
    profiles: str | None,
    batch_lines: int,
    readers: int | None,
    selective_sync: str | None,
) -> None:
    """Load an archive (a file, a folder, or an s3:// / gs:// prefix) into SCHEMA."""
    schema = snake_case(schema_name)
    try:
        path = find_profiles(profiles)
        target_name, spec = load_profiles(path).target(target)
        rules = load_selective_sync(Path(selective_sync)) if selective_sync else None
        warehouse = open_target(target_name, spec)
    except (ConfigError, WarehouseError) as exc:
        fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
    sync_filter = rules.filter_for(target_name, schema_name) if rules else SyncFilter(None)
    loader = Loader(
        warehouse,
        batch_lines=batch_lines,
        on_batch=progress,
        sync_filter=sync_filter,
        readers=readers,
    )
    try:
        report = run_sync(
            obj,
            loader,
            f"sync of {archive_url} into {schema}",
            lambda ld: ld.load(archive_url, schema),
        )
    finally:
        warehouse.close()
    if incomplete(report):
        sys.exit(1)


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
        fail("give a schema name: sluice schema show SCHEMA[.TABLE]", 2)
        return
    schema_name, _, table_name = name.partition(".")
    try:
        warehouse = _open(profiles, target, read_only=True)
    except (ConfigError, WarehouseError) as exc:
        fail(str(exc), 2)
        return
    try:
        tables = warehouse.read_schema(schema_name)
    finally:
        warehouse.close()
    if table_name:
        tables = {k: v for k, v in tables.items() if k == table_name}
    if not tables:
        fail(f"no tables found for {name}", 1)
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
        warehouse = _open(profiles, target, read_only=True)
    except (ConfigError, WarehouseError) as exc:
        fail(str(exc), 2)
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


cli.add_command(sync)
cli.add_command(catalog)
cli.add_command(replay)
cli.add_command(selective_sync)
cli.add_command(retl)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ConfigError as exc:
        fail(str(exc), 2)


if __name__ == "__main__":
    main()
