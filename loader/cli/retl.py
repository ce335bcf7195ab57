"""`sluice retl plan|run MODEL`: reverse ETL from the command line.

Exit codes follow the CLI contract: 0 success, 1 a run that failed or left records
unsent (or a busy lock / unreachable warehouse), 2 a bad model file or configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loader.cli.common import (
    CliContext,
    console,
    err_console,
    fail,
    open_target,
    project_option,
)
from loader.config.errors import ConfigError
from loader.config.profiles import find_profiles, load_profiles
from loader.reverse_etl.model import DEFAULT_MODELS_DIR, MODES, SEND_KINDS, Model, load_model
from loader.reverse_etl.runner import RetlReport, plan_model, run_model
from loader.sync.project import PROJECT_FILE, find_project, load_project
from loader.warehouses.base import LockBusy, WarehouseError
from loader.warehouses.warehouse import Warehouse


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.argument("model_name", metavar="MODEL"),
            click.option("--target", default=None, help="Target in profiles.yml."),
            click.option("--profiles", default=None, help="Path to profiles.yml."),
            click.option(
                "--models-dir",
                default=None,
                type=click.Path(file_okay=False),
                help="Folder holding <model>.sql and <model>.yml (default: `models:` of "
                f"./sluice.yml, else {DEFAULT_MODELS_DIR}).",
            ),
            click.option("--schema", default=None, help="Value of {{ schema }} (default: yml)."),
            project_option,
        ]
    ):
        func = option(func)
    return func


def _project_defaults(
    models_dir: str | None, profiles: str | None, target: str | None, project_path: str | None
) -> tuple[Path, str | None, str | None]:
    """Models folder, profiles and target from the project (--project, $SLUICE_PROJECT,
    ./sluice.yml) when not given."""
    import os

    if not (project_path or os.environ.get("SLUICE_PROJECT") or Path(PROJECT_FILE).exists()):
        return Path(models_dir or DEFAULT_MODELS_DIR), profiles, target
    project = load_project(find_project(project_path))
    folder = Path(models_dir) if models_dir else project.models_dir() or Path(DEFAULT_MODELS_DIR)
    if profiles is None and project.profiles is not None:
        profiles = str(project.profiles_path())
    return folder, profiles, target or project.models_target


def _setup(
    model_name: str,
    target: str | None,
    profiles: str | None,
    models_dir: str | None,
    schema: str | None,
    project: str | None,
) -> tuple[Model, Warehouse, Callable[[str], Warehouse]]:
    try:
        folder, profiles, target = _project_defaults(models_dir, profiles, target, project)
        model = load_model(folder, model_name, schema)
        loaded = load_profiles(find_profiles(profiles))
        warehouse = open_target(*loaded.target(target))
    except ConfigError as exc:
        fail(str(exc), 2)
    except WarehouseError as exc:
        fail(str(exc), 1)
    return model, warehouse, lambda name: open_target(*loaded.target(name))


def _fail_run(ctx: CliContext, model: Model, exc: Exception) -> None:
    if isinstance(exc, ConfigError):
        fail(str(exc), 2)
    if isinstance(exc, LockBusy | WarehouseError):
        fail(str(exc), 1)
    if ctx.verbose:
        raise exc
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    fail(f"model '{model.name}' failed in the warehouse or destination: {first}", 1)


@click.group()
def retl() -> None:
    """Reverse ETL: sync SQL models in the warehouse out to destinations, by diff."""


@retl.command("plan")
@_options
@click.option("--sample", "sample_size", default=5, show_default=True, help="Records shown.")
@click.pass_obj
def plan(
    obj: CliContext,
    model_name: str,
    target: str | None,
    profiles: str | None,
    models_dir: str | None,
    schema: str | None,
    project: str | None,
    sample_size: int,
) -> None:
    """Show what `sluice retl run MODEL` would send: counts per change and mode, and a
    sample of the records. Sends nothing and leaves the snapshot as it is."""
    model, warehouse, _ = _setup(model_name, target, profiles, models_dir, schema, project)
    try:
        result = plan_model(warehouse, model, sample_size=max(0, sample_size))
    except Exception as exc:  # noqa: BLE001 - one sentence; traceback with --verbose
        _fail_run(obj, model, exc)
    finally:
        warehouse.close()
    changes = result.changes
    counts = changes.counts
    console.print(
        f"[bold]{model.name}[/] -> {result.destination} (mode {model.mode}): "
        f"{changes.staged} rows in the model; {counts['added']} added, {counts['changed']} "
        f"changed, {counts['removed']} removed, {counts['unchanged']} unchanged since the "
        "last sync",
        highlight=False,
    )
    table = Table("mode", "sends", "records", title="what each sync mode would send")
    per_mode = changes.sends_per_mode()
    for mode in MODES:
        what = " + ".join(SEND_KINDS[mode])
        if mode == "update":
            what += f" (added: {counts['added']} recorded as baseline, not sent)"
        marker = " (this model)" if mode == model.mode else ""
        table.add_row(f"{mode}{marker}", what, str(per_mode[mode]))
    console.print(table)
    if result.sample:
        view = Table(
            "op", "key", "fields", title=f"first {len(result.sample)} of {changes.to_send}"
        )
        for record in result.sample:
            fields = orjson.dumps(record.fields, default=str).decode()
            view.add_row(
                record.op, record.key, fields if len(fields) < 160 else fields[:157] + "..."
            )
        console.print(view)
    else:
        console.print("nothing to send")


@retl.command("run")
@_options
@click.pass_obj
def run(
    obj: CliContext,
    model_name: str,
    target: str | None,
    profiles: str | None,
    models_dir: str | None,
    schema: str | None,
    project: str | None,
) -> None:
    """Send MODEL's changes since the last sync to its destination; print and store
    (in _sluice.retl_runs) the report. Failed records are retried by the next run."""
    model, warehouse, open_other = _setup(model_name, target, profiles, models_dir, schema, project)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    task: list[Any] = []

    def on_start(report: RetlReport) -> None:
        task.append(
            progress.add_task(f"{model.name} -> {report.destination}", total=report.to_send)
        )

    def on_batch(report: RetlReport, done: int) -> None:
        progress.update(task[0], completed=done)

    try:
        with progress:
            report = run_model(warehouse, model, open_other, on_start, on_batch)
    except Exception as exc:  # noqa: BLE001 - one sentence; traceback with --verbose
        _fail_run(obj, model, exc)
    finally:
        warehouse.close()
    print_retl_report(report.to_dict())
    if report.status != "success":
        sys.exit(1)


def print_retl_report(report: dict[str, Any]) -> None:
    status = report["status"]
    colour = {"success": "green", "partial": "yellow"}.get(status, "red")
    counts = report["counts"]
    console.print(
        f"[bold {colour}]{status}[/]: {report['model']} ({report['mode']}) -> "
        f"{report['destination']} in {report['duration_s']:.2f}s",
        highlight=False,
    )
    sent = ", ".join(f"{n} {kind}" for kind, n in report["sent"].items()) or "nothing"
    console.print(
        f"changes: {counts.get('added', 0)} added, {counts.get('changed', 0)} changed, "
        f"{counts.get('removed', 0)} removed, {counts.get('unchanged', 0)} unchanged; "
        f"sent: {sent}; failed: {report['failed']}; not reached: {report['unsent']}"
        + (f"; recorded as baseline: {report['baseline']}" if report["baseline"] else ""),
        highlight=False,
    )
    for failure in report["failures"]:
        console.print(
            f"[yellow]failed[/] {failure['op']} {failure['key']}: {failure['reason']}",
            highlight=False,
        )
    if report["failed"] > len(report["failures"]):
        console.print(f"... and {report['failed'] - len(report['failures'])} more")
    if report["failed"] or report["unsent"]:
        console.print("records not delivered are retried by the next run", highlight=False)
    if report["error"]:
        console.print(f"[red]error:[/] {report['error']}", highlight=False)
