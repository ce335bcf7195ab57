"""`sluice sync`, `sluice replay` and `sluice selective-sync`: commands that work from
the project file (sluice.yml) rather than from arguments."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from loader.cli.common import (
    CliContext,
    console,
    err_console,
    error,
    fail,
    incomplete,
    load_project_and_profiles,
    open_target,
    profiles_option,
    project_option,
    warn,
)
from loader.cli.common import run_sync as run_one
from loader.config.errors import ConfigError
from loader.config.profiles import Profiles
from loader.native.loader import loader_class
from loader.rules.selective_sync import Issue, SelectiveSync, check_names, parse
from loader.sources.cloud.registry import connector_for
from loader.sync.backfill import run_backfill
from loader.sync.catalog import update_catalog
from loader.sync.object_pipeline import DEFAULT_BATCH_OBJECTS, ObjectLoader
from loader.sync.pipeline import Loader, SyncReport
from loader.sync.project import Project
from loader.sync.staging import StagingArea
from loader.warehouses.base import WarehouseError
from loader.warehouses.registry import holds_nothing_yet

_project_option = project_option
_profiles_option = profiles_option


def _pairs(
    project: Project, profiles: Profiles, sources: tuple[str, ...], target: str | None
) -> list[tuple[str, str]]:
    """(source, target) pairs to run, in file order."""
    names = list(sources) or list(project.sources)
    pairs = []
    for name in names:
        if project.is_archive(name):
            project.archive_url(name)  # a missing local archive fails before any target opens
        project.check_secrets(name)
        targets = [target] if target else project.targets_of(name, profiles)
        for t in targets:
            profiles.target(t)
            pairs.append((name, t))
    return pairs


def _run_pairs(
    ctx: CliContext,
    project: Project,
    profiles: Profiles,
    pairs: list[tuple[str, str]],
    days: tuple[date, date] | None,
    workers: int | None = None,
) -> None:
    try:
        rules = project.load_selective_sync()
        plans = {
            name: project.load_tracking_plan(name)
            for name in {s for s, _ in pairs}
            if project.is_archive(name)
        }
    except ConfigError as exc:
        fail(str(exc), 2)
    failures = 0
    for source_name, target_name in pairs:
        source = project.source(source_name)
        schema = project.schema_of(source_name)
        if days is not None and not project.is_archive(source_name):
            fail(f"{source_name} is a {source.kind} source: replay is for archives", 2)
        try:
            warehouse = open_target(*profiles.target(target_name))
        except WarehouseError as exc:
            error(f"{exc}")
            failures += 1
            continue
        sync_filter = rules.filter_for(target_name, source_name)
        what = f"{'replay' if days else 'sync'} of {source_name} into {target_name}"
        try:
            if project.is_archive(source_name):
                url = project.archive_url(source_name)
                loader = loader_class(source.mode)(
                    warehouse,
                    batch_lines=source.batch_lines,
                    storage_options=source.storage_options or None,
                    sync_filter=sync_filter,
                    readers=source.readers,
                    tracking_plan=plans.get(source_name),
                )
                runner = _runner(url, schema, days)
                if workers is not None and days is not None:
                    area = StagingArea(project.staging_url(source_name), source.storage_options)
                    runner = _backfill_runner(url, schema, days, area, workers)
                report = run_one(ctx, loader, what, runner, source_name)
            else:
                objects = ObjectLoader(
                    warehouse,
                    sync_filter=sync_filter,
                    batch_objects=source.batch_lines or DEFAULT_BATCH_OBJECTS,
                )
                report = run_one(
                    ctx, objects, what, _object_runner(project, source, schema), source_name
                )
            if report is not None:
                update_catalog(project.root, target_name, schema, warehouse.read_schema(schema))
        finally:
            warehouse.close()
        failures += incomplete(report)
    _warn_selective_sync(project, profiles, pairs)
    if failures:
        sys.exit(1)


def _warn_selective_sync(
    project: Project, profiles: Profiles, pairs: list[tuple[str, str]]
) -> None:
    """After a sync, the warnings `selective-sync check` gives for the pairs it ran (a
    pattern that matches nothing the warehouse or archive has shown, with the closest
    names): a typo in selective_sync.yml turns nothing off, silently otherwise."""
    path = project.selective_sync_path()
    if path is None or not path.exists():
        return
    rules, issues = parse(path.read_text(), str(path))
    if any(i.error for i in issues):
        return
    ran = {(t, s) for s, t in pairs}
    known, _ = _known_tables(project, profiles, pairs)
    for issue in check_names(rules, profiles.targets, project.sources, known):
        if issue.error:
            continue
        # Only the pairs this sync ran: another target's rules are that sync's business.
        if not any((t, s) in ran and issue.line in _rule_lines(rules, t, s) for t, s in ran):
            continue
        warn(issue.render(str(path)))


def _rule_lines(rules: SelectiveSync, target: str, source: str) -> set[int]:
    r = rules.rules(target, source)
    if r is None:
        return set()
    lines = {line for _, line in r.collections}
    lines.update(r.properties_lines.values())
    lines.update(line for patterns in r.properties.values() for _, line in patterns)
    return lines


def _runner(
    url: str, schema: str, days: tuple[date, date] | None
) -> Callable[[Loader], SyncReport]:
    if days is None:
        return lambda loader: loader.load(url, schema)
    return lambda loader: loader.replay(url, schema, *days)


def _backfill_runner(
    url: str, schema: str, days: tuple[date, date], area: StagingArea, workers: int
) -> Callable[[Loader], SyncReport]:
    return lambda loader: run_backfill(loader, url, schema, days, area, workers)


def _object_runner(project: Project, source: Any, schema: str) -> Callable[[Any], SyncReport]:
    def run(objects: ObjectLoader) -> SyncReport:
        connector = connector_for(source, project.root)
        return objects.sync(connector, schema, source.collections)

    return run


@click.command()
@click.argument("sources", nargs=-1)
@click.option("--target", default=None, help="Only this target (default: each source's).")
@_project_option
@_profiles_option
@click.pass_obj
def sync(
    obj: CliContext,
    sources: tuple[str, ...],
    target: str | None,
    project: str | None,
    profiles: str | None,
) -> None:
    """Run the sources of sluice.yml now (all of them, or those named), into their targets."""
    proj, prof = load_project_and_profiles(project, profiles)
    try:
        pairs = _pairs(proj, prof, sources, target)
    except ConfigError as exc:
        fail(str(exc), 2)
    _run_pairs(obj, proj, prof, pairs, None)


@click.command()
@click.argument("source")
@click.option(
    "--from",
    "first",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="First received day (UTC), YYYY-MM-DD.",
)
@click.option(
    "--to",
    "last",
    required=True,
    type=click.DateTime(["%Y-%m-%d"]),
    help="Last received day (UTC), YYYY-MM-DD, inclusive.",
)
@click.option("--target", default=None, help="Only this target (default: the source's).")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(min=1),
    help=(
        "Stage the days in N processes at once (each day read, normalised and encoded into "
        "the source's staging folder), committing them in day order; the tables come out "
        "as without it."
    ),
)
@_project_option
@_profiles_option
@click.pass_obj
def replay(
    obj: CliContext,
    source: str,
    first,
    last,
    target: str | None,
    workers: int | None,
    project: str | None,
    profiles: str | None,
) -> None:
    """Reload SOURCE's archive files received FROM..TO (inclusive, UTC days), honouring
    the current selective sync and deduped against what the target has."""
    if last < first:
        fail("--to is before --from", 2)
    proj, prof = load_project_and_profiles(project, profiles)
    try:
        pairs = _pairs(proj, prof, (source,), target)
    except ConfigError as exc:
        fail(str(exc), 2)
    _run_pairs(obj, proj, prof, pairs, (first.date(), last.date()), workers)


@click.group("selective-sync")
def selective_sync() -> None:
    """Check and explain selective_sync.yml."""


def _read_rules(project: Project) -> tuple[str, SelectiveSync, list[Issue]]:
    path = project.selective_sync_path()
    if path is None:
        fail(f"{project.path}: no selective_sync file is configured (key: selective_sync)", 2)
    if not path.exists():
        fail(f"{project.path}: selective_sync file '{path}' does not exist", 2)
    rules, issues = parse(path.read_text(), str(path))
    return str(path), rules, issues


def _known_tables(
    project: Project, profiles: Profiles, pairs: list[tuple[str, str]]
) -> tuple[dict[tuple[str, str], dict[str, set[str]]], list[str]]:
    """{(target, source): {table: columns}} from each warehouse and the names the
    archive showed that selective sync kept out; plus targets that could not be read."""
    known: dict[tuple[str, str], dict[str, set[str]]] = {}
    unreadable: list[str] = []
    by_target: dict[str, list[str]] = {}
    for source, target in pairs:
        by_target.setdefault(target, []).append(source)
    for target, sources in by_target.items():
        try:
            name, spec = profiles.target(target)
            if holds_nothing_yet(spec):  # reading must not create the database
                known.update({(target, source): {} for source in sources})
                continue
            warehouse = open_target(name, spec, missing_driver_ends=False, read_only=True)
        except (WarehouseError, ConfigError) as exc:
            unreadable.append(f"{target}: {exc}")
            continue
        try:
            warehouse.ensure_bookkeeping()
            for source in sources:
                schema = project.schema_of(source)
                tables: dict[str, set[str]] = {
                    t: set(cols) for t, cols in warehouse.read_schema(schema).items()
                }
                for table, columns in warehouse.turned_off_names(schema).items():
                    tables.setdefault(table, set()).update(c for c in columns if c)
                known[(target, source)] = tables
        finally:
            warehouse.close()
    return known, unreadable


def _all_pairs(project: Project, profiles: Profiles) -> list[tuple[str, str]]:
    return [(s, t) for s in project.sources for t in project.targets_of(s, profiles)]


@selective_sync.command("check")
@_project_option
@_profiles_option
def check(project: str | None, profiles: str | None) -> None:
    """Validate selective_sync.yml: exit 2 on an error, warnings for patterns that match
    nothing known yet."""
    proj, prof = load_project_and_profiles(project, profiles)
    path, rules, issues = _read_rules(proj)
    if not any(i.error for i in issues):
        pairs = [p for p in _all_pairs(proj, prof) if p[1] in prof.targets]
        known, unreadable = _known_tables(proj, prof, pairs)
        issues += check_names(rules, prof.targets, proj.sources, known)
        for note in unreadable:
            issues.append(Issue(None, f"patterns not checked for target {note}", False))
    errors = [i for i in issues if i.error]
    for issue in sorted(issues, key=lambda i: i.line or 0):
        label = "[red]error[/]" if issue.error else "[yellow]warning[/]"
        err_console.print(f"{label}: {escape(issue.render(path))}", highlight=False)
    if errors:
        sys.exit(2)
    console.print(f"{path}: OK ({len(issues)} warning(s))", highlight=False)


@selective_sync.command("show")
@click.option("--target", default=None, help="Only this target.")
@click.option("--source", default=None, help="Only this source.")
@click.option("--off-only", is_flag=True, help="List only what is turned off.")
@_project_option
@_profiles_option
def show(
    target: str | None,
    source: str | None,
    off_only: bool,
    project: str | None,
    profiles: str | None,
) -> None:
    """For every known table and column, whether it is synced and which line decided."""
    proj, prof = load_project_and_profiles(project, profiles)
    path, rules, issues = _read_rules(proj)
    errors = [i for i in issues if i.error]
    if errors:
        fail("; ".join(i.render(path) for i in errors), 2)
    pairs = [
        (s, t)
        for s, t in _all_pairs(proj, prof)
        if (target is None or t == target) and (source is None or s == source)
    ]
    if not pairs:
        fail("no source is configured for that target/source in sluice.yml", 2)
    known, unreadable = _known_tables(proj, prof, pairs)
    for note in unreadable:
        warn(f"cannot read target {note}")
    for (t, s), tables in sorted(known.items()):
        sync_filter = rules.filter_for(t, s)
        view = Table("table", "column", "synced", "decided by", title=f"{t} / {s}")
        for table in sorted(tables):
            decision = sync_filter.table_decision(table)
            if not (off_only and decision.synced):
                view.add_row(table, "", _yes(decision.synced), _why(path, decision))
            for column in sorted(tables[table]):
                cd = sync_filter.column_decision(table, column)
                if off_only and cd.synced:
                    continue
                # The table on every row: with --off-only (or a long table) a row would
                # otherwise not say which table its column belongs to.
                view.add_row(table, column, _yes(cd.synced), _why(path, cd))
        if not tables:
            console.print(f"{t} / {s}: nothing loaded or seen yet; run a sync first")
        else:
            console.print(view)


def _yes(synced: bool) -> str:
    return "[green]yes[/]" if synced else "[red]no[/]"


def _why(path: str, decision) -> str:
    if decision.line is None:
        return decision.reason
    return f"{path}:{decision.line} ({decision.reason})"


@click.group()
def catalog() -> None:
    """The tables Dagster declares as assets (.sluice/catalog.json beside sluice.yml)."""


@catalog.command("refresh")
@_project_option
@_profiles_option
def catalog_refresh(project: str | None, profiles: str | None) -> None:
    """Rebuild the catalog from every source's targets (each sync also refreshes it)."""
    proj, prof = load_project_and_profiles(project, profiles)
    failures = 0
    for source, target in _all_pairs(proj, prof):
        schema = proj.schema_of(source)
        try:
            warehouse = open_target(*prof.target(target))
        except (WarehouseError, ConfigError) as exc:
            error(f"{exc}")
            failures += 1
            continue
        try:
            tables = warehouse.read_schema(schema)
        finally:
            warehouse.close()
        update_catalog(proj.root, target, schema, tables)
        console.print(f"{target}.{schema}: {len(tables)} table(s)", highlight=False)
    if failures:
        sys.exit(1)
