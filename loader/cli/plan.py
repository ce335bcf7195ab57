"""`sluice plan`: check a source's tracking_plan.yml, write a starting one from the
warehouse, and summarise the violations the loads recorded."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from loader.cli.common import (
    console,
    fail,
    load_project_and_profiles,
    open_target,
    profiles_option,
    project_option,
)
from loader.config.errors import ConfigError
from loader.rules.normalize import CORE_COLUMNS, FIXED_TABLES
from loader.rules.tracking_plan import infer_plan
from loader.sync.project import Project
from loader.warehouses.base import WarehouseError
from loader.warehouses.registry import holds_nothing_yet


def _planned_sources(project: Project, sources: tuple[str, ...]) -> list[str]:
    try:
        names = list(sources) or [
            n for n in project.event_sources() if project.tracking_plan_path(n) is not None
        ]
        for name in names:
            project.source(name)
    except ConfigError as exc:
        fail(str(exc), 2)
    return names


@click.group()
def plan() -> None:
    """Tracking plans: check them, start one from the warehouse, report violations."""


@plan.command("check")
@click.argument("sources", nargs=-1)
@project_option
@profiles_option
def check(sources: tuple[str, ...], project: str | None, profiles: str | None) -> None:
    """Validate each source's tracking plan (exit 2 naming the file, line and field)."""
    proj, _ = load_project_and_profiles(project, profiles)
    names = _planned_sources(proj, sources)
    if not names:
        fail(f"{proj.path}: no source has a tracking_plan (add `tracking_plan:` to one)", 2)
    for name in names:
        if proj.tracking_plan_path(name) is None:
            fail(f"{proj.where('sources', name)}: source '{name}' has no tracking_plan", 2)
        try:
            loaded = proj.load_tracking_plan(name)
        except ConfigError as exc:
            fail(str(exc), 2)
        assert loaded is not None
        properties = sum(len(e.properties) for e in loaded.events)
        traits = sum(len(e.properties) for e in (loaded.identify, loaded.group) if e)
        console.print(
            f"{escape(loaded.path)}: {name}: {len(loaded.events)} event(s), "
            f"{properties} propert(ies), {traits} trait(s); violations: {loaded.action}"
        )


@plan.command("infer")
@click.argument("source")
@click.option("--target", default=None, help="Target to read (default: the source's first).")
@click.option(
    "--output",
    "-o",
    default=None,
    type=click.Path(dir_okay=False),
    help="File to write (default: the source's tracking_plan, or tracking_plan.yml).",
)
@project_option
@profiles_option
def infer(
    source: str,
    target: str | None,
    output: str | None,
    project: str | None,
    profiles: str | None,
) -> None:
    """Write a starting tracking plan from the warehouse's tables and column types; an
    existing file is never overwritten."""
    proj, prof = load_project_and_profiles(project, profiles)
    try:
        if not proj.is_archive(source):
            fail(f"{source} is a {proj.source(source).kind} source: plans are for events", 2)
        target_name = target or proj.targets_of(source, prof)[0]
        name, spec = prof.target(target_name)
    except ConfigError as exc:
        fail(str(exc), 2)
    path = Path(output) if output else proj.tracking_plan_path(source)
    if path is None:
        path = proj.root / "tracking_plan.yml"
    if path.exists():
        fail(f"{path} already exists: not overwritten (pass --output for another file)", 2)
    schema = proj.schema_of(source)
    tables: dict = {}
    events: dict[str, str] = {}
    if not holds_nothing_yet(spec):
        try:
            warehouse = open_target(name, spec, read_only=True)
        except WarehouseError as exc:
            fail(str(exc), 1)
        try:
            tables = warehouse.read_schema(schema)
            for table in tables:
                if table in FIXED_TABLES or "event_text" not in tables[table]:
                    continue
                ref = warehouse.table_ref(schema, table)
                first = next(iter(warehouse.query(f"SELECT event_text FROM {ref} LIMIT 1")), None)
                events[table] = str(first[0]) if first and first[0] is not None else table
        finally:
            warehouse.close()
    skip = frozenset(CORE_COLUMNS | {"event", "event_text"})
    text = infer_plan(tables, events, skip)
    try:
        with path.open("x", encoding="utf-8") as out:
            out.write(text)
    except FileExistsError:
        fail(f"{path} already exists: not overwritten (pass --output for another file)", 2)
    except OSError as exc:
        fail(f"{path}: cannot be written: {exc.strerror or exc}", 2)
    console.print(
        f"wrote {escape(str(path))}: {len(events)} event(s) of '{schema}' on "
        f"{target_name}; review it, then point `tracking_plan:` at it"
    )


@plan.command("report")
@click.argument("sources", nargs=-1)
@click.option("--target", default=None, help="Target to read (default: each source's first).")
@project_option
@profiles_option
def report(
    sources: tuple[str, ...], target: str | None, project: str | None, profiles: str | None
) -> None:
    """Violations recorded by the loads, per source, event, property and kind."""
    proj, prof = load_project_and_profiles(project, profiles)
    names = _planned_sources(proj, sources)
    table = Table(title="tracking plan violations")
    for column in ("source", "event", "property", "kind", "count", "example", "last seen"):
        table.add_column(column, justify="right" if column == "count" else "left")
    total = 0
    for source in names:
        try:
            target_name = target or proj.targets_of(source, prof)[0]
            name, spec = prof.target(target_name)
        except ConfigError as exc:
            fail(str(exc), 2)
        if holds_nothing_yet(spec):
            continue
        try:
            warehouse = open_target(name, spec, read_only=True)
        except WarehouseError as exc:
            fail(str(exc), 1)
        try:
            rows = warehouse.violation_summary(proj.schema_of(source))
        finally:
            warehouse.close()
        for row in rows:
            total += row["count"]
            table.add_row(
                escape(source),
                escape(row["event"]),
                escape(row["property"] or "-"),
                row["kind"],
                str(row["count"]),
                escape(str(row["example"] or "")),
                escape(str(row["last_seen"] or "")),
            )
    if total == 0:
        console.print("no tracking plan violations recorded")
        return
    console.print(table)
    console.print(f"{total} violation(s) in all")
