"""The `sluice` command. Exit codes: 0 success, 1 failed sync, 2 bad usage or config,
130 interrupted (Ctrl-C)."""

from __future__ import annotations

import contextlib
import difflib
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from loader.cli.common import (
    INTERRUPTED,
    CliContext,
    busy_message,
    console,
    err_console,
    fail,
    incomplete,
    open_target,
    profiles_option,
    project_option,
    project_profiles,
    run_sync,
    target_option,
    verbose_option,
)
from loader.cli.plan import plan
from loader.cli.project import catalog, replay, selective_sync, sync
from loader.cli.retl import retl
from loader.config.errors import ConfigError
from loader.native.loader import NATIVE_BATCH_LINES, loader_class
from loader.rules.naming import snake_case
from loader.rules.selective_sync import SyncFilter
from loader.rules.selective_sync import load_file as load_selective_sync
from loader.sync.pipeline import DEFAULT_BATCH_LINES, request_stop, stop_requested
from loader.sync.report_view import print_report
from loader.warehouses.base import BOOKKEEPING_SCHEMA, WarehouseError
from loader.warehouses.warehouse import Warehouse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sluice")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _open(
    project: str | None, profiles: str | None, target: str | None, read_only: bool = False
) -> Warehouse:
    """`read_only`: the command only reads (a DuckDB file is then opened read-only)."""
    _, loaded = project_profiles(project, profiles)
    try:
        name, spec = loaded.target(target)
        return open_target(name, spec, read_only=read_only)
    except ConfigError as exc:
        fail(str(exc), 2)
    except WarehouseError as exc:
        fail(str(exc), 1)


class _Sluice(click.Group):
    """The root group: Ctrl-C anywhere below ends in one line and exit 130; an error no
    command words itself is one line too (exit 1), its traceback with --verbose."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print(f"[yellow]{INTERRUPTED}[/]", highlight=False)
            ctx.exit(130)
        except ConfigError as exc:
            fail(str(exc), 2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - one sentence; the traceback with --verbose
            if stop_requested():  # Ctrl-C, reported by a driver as its own error
                err_console.print(f"[yellow]{INTERRUPTED}[/]", highlight=False)
                ctx.exit(130)
            if isinstance(ctx.obj, CliContext) and ctx.obj.verbose:
                raise
            text = str(exc).strip()
            first = text.splitlines()[0] if text else ""
            fail(f"{type(exc).__name__}: {first} (rerun with --verbose for the traceback)", 1)


@click.group(cls=_Sluice, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    _version(), "--version", "-V", prog_name="sluice", message="%(prog)s %(version)s"
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Sluice: Segment event archives into Segment-faithful warehouse tables."""
    if ctx.obj is None:
        ctx.obj = CliContext(False)


# What `sluice init` writes; none of it may exist beforehand (init never overwrites or
# adds to a project's config or archive: a loaded archive must stay byte for byte).
INIT_FILES = ("sluice.yml", "profiles.yml", "selective_sync.yml", "dagster.yaml")
INIT_FOLDERS = ("archive", "sql/models")
GITIGNORE = """\
# Written by `sluice init`: local state that does not belong in version control.
# The DuckDB warehouse (profiles.yml, target local) and its write-ahead log
*.duckdb
*.duckdb.wal
# Sluice's catalog of loaded tables (rebuilt by `sluice catalog refresh`)
.sluice/
# Dagster's instance state under DAGSTER_HOME
history/
storage/
schedules/
.logs_queue/
.nux/
.telemetry/
"""


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--events", default=20_000, show_default=True, help="Sample events to generate.")
def init(directory: str, events: int) -> None:
    """Write a starter sluice.yml, profiles.yml, selective_sync.yml, dagster.yaml,
    .gitignore and a sample archive into DIRECTORY, which must not hold a project yet."""
    from importlib.resources import files as package_files

    from loader.sources.sample import write_archive

    root = Path(directory)
    taken = [n for n in INIT_FILES if (root / n).exists()]
    taken += [f"{n}/" for n in INIT_FOLDERS if (root / n).exists()]
    if taken:
        fail(
            f"{root} already holds {', '.join(taken)}; sluice init never overwrites or adds "
            "to a project: give a new folder (sluice init NEW_DIR)",
            2,
        )
    if events < 1:
        fail("--events must be at least 1", 2)
    root.mkdir(parents=True, exist_ok=True)
    templates = package_files("loader") / "templates"
    written = []
    for name in INIT_FILES:
        (root / name).write_text((templates / name).read_text())
        written.append(name)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE)
        written.append(".gitignore")
    examples = Path(__file__).resolve().parents[2] / "sql" / "models"
    if examples.is_dir():
        # The example reverse-ETL models, from a source checkout (pip install -e .).
        shutil.copytree(examples, root / "sql" / "models")
        written.append("sql/models/")
    files = write_archive(root / "archive", events)
    console.print(
        f"wrote {', '.join(written)} and a sample archive of {events} events in "
        f"{len(files)} files under {root / 'archive'}",
        highlight=False,
    )
    if ".gitignore" not in written:
        console.print(
            f"kept the existing {gitignore}; add *.duckdb, .sluice/, history/, storage/ "
            "and schedules/ to it",
            highlight=False,
        )
    console.print(f"next: cd {root} && sluice sync", highlight=False)


@cli.command()
@click.argument("archive_url")
@click.option("--schema", "schema_name", required=True, help="Warehouse schema (source name).")
@target_option
@profiles_option
@project_option
@click.option(
    "--batch-lines",
    default=None,
    type=click.IntRange(min=1),
    help=f"Lines per committed batch (one transaction each; memory grows with it) "
    f"[default: {DEFAULT_BATCH_LINES:,}; {NATIVE_BATCH_LINES:,} in native mode].",
)
@click.option(
    "--readers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes that parse files while this one loads (default: one per core; 0: none).",
)
@click.option(
    "--mode",
    type=click.Choice(["python", "native"]),
    default="python",
    show_default=True,
    help="native: the warehouse reads the lines and runs the rules as SQL (DuckDB).",
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
    project: str | None,
    batch_lines: int | None,
    readers: int | None,
    mode: str,
    selective_sync: str | None,
) -> None:
    """Load an archive (a file, a folder, or an s3:// / gs:// prefix) into SCHEMA."""
    schema = snake_case(schema_name)
    _, loaded = project_profiles(project, profiles)
    try:
        target_name, spec = loaded.target(target)
        rules = load_selective_sync(Path(selective_sync)) if selective_sync else None
        warehouse = open_target(target_name, spec)
    except (ConfigError, WarehouseError) as exc:
        fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
    sync_filter = rules.filter_for(target_name, schema_name) if rules else SyncFilter(None)
    try:
        loader = loader_class(mode)(
            warehouse,
            batch_lines=batch_lines,
            sync_filter=sync_filter,
            readers=readers,
        )
    except WarehouseError as exc:
        warehouse.close()
        fail(str(exc), 2)
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
@target_option
@profiles_option
@project_option
def schema_show(
    name: str | None, target: str | None, profiles: str | None, project: str | None
) -> None:
    """List tables, columns and types of SCHEMA[.TABLE]."""
    if not name:
        fail("give a schema name: sluice schema show SCHEMA[.TABLE]", 2)
    schema_name, _, table_name = name.partition(".")
    warehouse = _open(project, profiles, target, read_only=True)
    try:
        tables = warehouse.read_schema(schema_name)
    finally:
        warehouse.close()
    if not tables:
        fail(f"no tables found in schema '{schema_name}' of this target", 1)
    if table_name:
        if table_name not in tables:
            close = difflib.get_close_matches(table_name, sorted(tables), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            fail(
                f"no table '{table_name}' in schema '{schema_name}' ({len(tables)} tables: "
                f"sluice schema show {schema_name} lists them){hint}",
                1,
            )
        tables = {table_name: tables[table_name]}
    for table, columns in sorted(tables.items()):
        view = Table("column", "type", title=f"{schema_name}.{table}")
        for column, kind in columns.items():
            view.add_row(column, kind.value)
        console.print(view)


@schema.command("set-type")
@click.argument("name", metavar="SCHEMA.TABLE.COLUMN")
@click.argument("type_name", metavar="TYPE")
@click.option(
    "--apply", "apply_", is_flag=True, help="Change the column (default: show what would change)."
)
@target_option
@profiles_option
@project_option
def schema_set_type(
    name: str,
    type_name: str,
    apply_: bool,
    target: str | None,
    profiles: str | None,
    project: str | None,
) -> None:
    """Change a column's type (first value decided it): values that now fit move out of
    _rescued_data into the column, values that no longer fit move to _rescued_data, and
    later loads keep the type. A dry run unless --apply."""
    from loader.config.suggest import did_you_mean
    from loader.rules.retype import describe, is_layout_column, linked_tables
    from loader.rules.schema import ColumnType

    allowed = [t.value for t in ColumnType]
    if type_name.lower() not in allowed:
        fail(f"unknown type '{type_name}': use one of {', '.join(allowed)}", 2)
    new_type = ColumnType(type_name.lower())
    parts = name.split(".")
    if len(parts) != 3 or not all(parts):
        fail(f"name the column as SCHEMA.TABLE.COLUMN, not '{name}'", 2)
    schema_name, table_name, column_name = parts
    warehouse = _open(project, profiles, target, read_only=not apply_)
    try:
        tables = warehouse.read_schema(schema_name)
        if not tables:
            hint = did_you_mean(schema_name, warehouse.schema_names() - {BOOKKEEPING_SCHEMA})
            fail(f"no schema '{schema_name}' in target '{warehouse.target_name}'{hint}", 2)
        if table_name not in tables:
            hint = did_you_mean(table_name, tables)
            fail(f"no table '{table_name}' in schema '{schema_name}'{hint}", 2)
        columns = tables[table_name]
        if column_name not in columns:
            hint = did_you_mean(column_name, columns)
            fail(f"no column '{column_name}' in {schema_name}.{table_name}{hint}", 2)
        if is_layout_column(table_name, column_name):
            fail(
                f"{schema_name}.{table_name}.{column_name} is a column Sluice types itself; "
                "only property and trait columns can change type",
                2,
            )
        if columns[column_name] is new_type:
            console.print(
                f"{schema_name}.{table_name}.{column_name} is {new_type.value} already; "
                "nothing to change"
            )
            return
        # A trait column changes with its profile's (identifies and users...).
        changing = [table_name] + [
            t
            for t in linked_tables(table_name)
            if column_name in tables.get(t, {}) and tables[t][column_name] is not new_type
        ]
        try:
            # --apply takes the lock syncs take: no load writes the table meanwhile.
            with warehouse.lock(schema_name) if apply_ else contextlib.nullcontext():
                plans = [
                    warehouse.retype_column(schema_name, t, column_name, new_type, apply=apply_)
                    for t in changing
                ]
        except WarehouseError as exc:
            fail(str(exc), 1)
    finally:
        warehouse.close()
    for retype_plan in plans:
        console.print(escape(describe(retype_plan)))
    if not apply_:
        console.print(
            "dry run, nothing changed: add --apply to change the column in one transaction "
            "and record the type for later loads"
        )


@cli.command()
@target_option
@profiles_option
@project_option
@click.option(
    "--limit", default=10, show_default=True, type=click.IntRange(min=1), help="Runs shown."
)
def runs(target: str | None, profiles: str | None, project: str | None, limit: int) -> None:
    """Show the most recent sync reports."""
    warehouse = _open(project, profiles, target, read_only=True)
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


@cli.command()
@click.argument("source", required=False)
@target_option
@profiles_option
@project_option
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rejected lines shown, newest first.",
)
@click.option(
    "--width",
    default=100,
    show_default=True,
    type=click.IntRange(min=10),
    help="Characters of each raw line shown.",
)
def rejects(
    source: str | None,
    target: str | None,
    profiles: str | None,
    project: str | None,
    limit: int,
    width: int,
) -> None:
    """Show recent rejected lines (file, line, reason, the raw text cut short) of SOURCE
    (a source of sluice.yml or a schema name; default: every schema)."""
    proj, loaded = project_profiles(project, profiles)
    schema_name = None
    if source is not None:
        schema_name = proj.schema_of(source) if proj and source in proj.sources else source
        if proj is not None and target is None and source in proj.sources:
            target = proj.targets_of(source, loaded)[0]
    try:
        name, spec = loaded.target(target)
        warehouse = open_target(name, spec)
    except ConfigError as exc:
        fail(str(exc), 2)
    except WarehouseError as exc:
        fail(str(exc), 1)
    try:
        if "rejected_events" not in warehouse.read_schema(BOOKKEEPING_SCHEMA):
            rows = []
        else:
            rows = warehouse.recent_rejects(schema_name, limit)
    finally:
        warehouse.close()
    where = f"schema '{schema_name}'" if schema_name else "any schema"
    if not rows:
        console.print(f"no rejected lines recorded for {where} in target '{name}'")
        return
    console.print(f"newest {len(rows)} rejected line(s) of {where}:", highlight=False)
    for row in rows:
        raw = " ".join((row["raw"] or "").split())
        cut = raw if len(raw) <= width else raw[: width - 3] + "..."
        prefix = "" if schema_name else f"{row['schema']}: "
        console.print(
            f"{prefix}{row['file']}, line {row['line']}: {row['reason']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        console.print(f"    {cut}", highlight=False, soft_wrap=True, markup=False)


@cli.command()
@target_option
@profiles_option
@project_option
def debug(target: str | None, profiles: str | None, project: str | None) -> None:
    """Check the project, its files and each target's connection, loading nothing:
    one line per check, OK or the problem; exit 1 if any check fails."""
    proj, loaded = project_profiles(project, profiles)
    problems = 0

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal problems
        problems += not ok
        mark = "[green]OK[/]   " if ok else "[red]FAIL[/] "
        console.print(f"{mark} {escape(what)}: {escape(detail)}", highlight=False, soft_wrap=True)

    console.print(f"sluice {_version()}", highlight=False)
    if proj is not None:
        line(True, "project", f"{proj.path} ({len(proj.sources)} source(s))")
        try:
            proj.load_selective_sync()
            if proj.selective_sync:
                line(True, "selective sync", str(proj.selective_sync_path()))
        except ConfigError as exc:
            line(False, "selective sync", str(exc))
        for source_name in proj.sources:
            if proj.is_archive(source_name):
                url = proj.archive_url(source_name)
                if "://" in url or Path(url).exists():
                    shown = url if "://" in url else str(Path(url).resolve())
                    line(True, f"source {source_name}", f"archive {shown}")
                else:
                    line(
                        False,
                        f"source {source_name}",
                        f"archive {Path(url).resolve()} does not exist",
                    )
    names = [target] if target else list(loaded.targets)
    from loader.warehouses.duckdb import DatabaseInUse
    from loader.warehouses.registry import check_target

    for target_name in names:
        try:
            found = check_target(*loaded.target(target_name))
        except (ConfigError, WarehouseError) as exc:
            message = str(exc)
            if isinstance(exc, DatabaseInUse):
                message = busy_message(exc)
            line(False, f"target {target_name}", message)
            continue
        line(True, f"target {target_name}", found)
    if problems:
        console.print(f"{problems} problem(s) found", highlight=False)
        sys.exit(1)
    console.print("all checks passed", highlight=False)


cli.add_command(sync)
cli.add_command(catalog)
cli.add_command(replay)
cli.add_command(selective_sync)
cli.add_command(retl)
cli.add_command(plan)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"sluice {_version()}")
        ctx.exit()


def _add_common(command: click.Command, root: bool = True) -> None:
    """`--verbose` (and `--version`) on every command too, so they work after the
    subcommand as before it."""
    command.params.append(verbose_option())
    if not root:
        command.params.append(
            click.Option(
                ["--version"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_print_version,
                help="Show the version and exit.",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_common(sub, root=False)


_add_common(cli)


def _on_sigint(_signum: int, _frame: Any) -> None:
    """Ctrl-C: a load stops at its next file or batch boundary (its connection clean,
    its run recorded as interrupted); anything else, or a second Ctrl-C, stops at once.
    Further presses while it unwinds are ignored, so the cleanup is not cut short."""
    if not stop_requested() and request_stop():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        cli(standalone_mode=True, obj=CliContext(False))
    except ConfigError as exc:
        fail(str(exc), 2)


if __name__ == "__main__":
    main()
