"""What every `sluice` command shares: consoles, one-sentence failures, options that
read a project, opening targets, and running a load with its progress display."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from loader.config.errors import ConfigError
from loader.config.profiles import Profiles, find_profiles, load_profiles
from loader.sources.cloud.engine import SourceError
from loader.sync.pipeline import LoadProgress, SyncReport, stop_requested
from loader.sync.report_view import print_report, report_warnings
from loader.warehouses.base import LockBusy
from loader.warehouses.warehouse import Warehouse

if TYPE_CHECKING:
    from loader.sync.project import Project

console = Console()
# Errors and warnings are one line each, however long (a path, a sentence): never wrapped.
err_console = Console(stderr=True, soft_wrap=True)

INTERRUPTED = "interrupted; the last committed batch stands; rerun to finish"


class CliContext:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose


def error(message: str) -> None:
    """One line on stderr; the message is text, never markup (a '[postgres]' or a glob's
    '[abc]' stays as written)."""
    err_console.print(f"[red]error:[/] {escape(message)}", highlight=False)


def fail(message: str, code: int) -> NoReturn:
    error(message)
    sys.exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`--verbose` wherever it is given (before or after the subcommand)."""
    if value:
        root = ctx.find_root()
        if root.obj is None:
            root.obj = CliContext(True)
        root.obj.verbose = True


def verbose_option() -> click.Option:
    return click.Option(
        ["--verbose"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=set_verbose,
        help="Show tracebacks on errors and one line per committed batch.",
    )


project_option = click.option(
    "--project",
    default=None,
    help="Path to sluice.yml (or its folder); default $SLUICE_PROJECT, then ./sluice.yml.",
)
profiles_option = click.option(
    "--profiles",
    default=None,
    help="Path to profiles.yml; default the project's, $SLUICE_PROFILES, then ./profiles.yml.",
)
target_option = click.option(
    "--target", default=None, help="Target in profiles.yml (default_target if unset)."
)


def project_profiles(project: str | None, profiles: str | None) -> tuple[Any, Profiles]:
    """(project or None, profiles) for commands that can run with or without sluice.yml:
    the project named (--project, $SLUICE_PROJECT) or found here decides where
    profiles.yml is, unless --profiles says."""
    from loader.sync.project import PROJECT_FILE, find_project, load_project

    try:
        if project or os.environ.get("SLUICE_PROJECT") or Path(PROJECT_FILE).exists():
            proj = load_project(find_project(project))
            return proj, proj.load_profiles(profiles)
        return None, load_profiles(find_profiles(profiles))
    except ConfigError as exc:
        fail(str(exc), 2)


def load_project_and_profiles(
    project: str | None, profiles: str | None
) -> tuple[Project, Profiles]:
    """For commands that need sluice.yml: it and its profiles, or exit 2 in one sentence."""
    from loader.sync.project import find_project, load_project

    try:
        proj = load_project(find_project(project))
        return proj, proj.load_profiles(profiles)
    except ConfigError as exc:
        fail(str(exc), 2)


def busy_message(exc: Any) -> str:
    """The DuckDB file is locked: which file, which process, what to do."""
    holder = ""
    if exc.holder:
        program, _, pid = exc.holder.rpartition(" (")
        holder = f" ({os.path.basename(program)}, {pid.rstrip(')')})"
    if getattr(exc, "read_only", False):
        # DuckDB lets no other process even read a file while one writes to it.
        return (
            f"the DuckDB file {exc.path} of target '{exc.target_name}' is open for writing "
            f"by another process{holder}; this command only reads and can run when that "
            "process finishes"
        )
    return (
        f"the DuckDB file {exc.path} of target '{exc.target_name}' is open in another "
        f"process{holder}: a sync, or a reader such as a notebook or the duckdb shell; "
        "close that connection or let the sync finish, then rerun"
    )


def open_target(
    name: str, spec: Any, missing_driver_ends: bool = True, read_only: bool = False
) -> Warehouse:
    """The target's adapter; a missing driver ends the command (exit 2) unless the
    caller can do without the target, a DuckDB file held by another process is a
    WarehouseError in the CLI's words. `read_only`: the command only reads."""
    from loader.warehouses.duckdb import DatabaseInUse
    from loader.warehouses.registry import MissingDriver, open_warehouse

    try:
        return open_warehouse(name, spec, read_only=read_only)
    except MissingDriver as exc:
        if not missing_driver_ends:
            raise
        fail(str(exc), 2)
    except DatabaseInUse as exc:
        raise LockBusy(busy_message(exc)) from None


class LoadDisplay:
    """A load's progress on stderr: a live line (files and events done of total,
    events/s, elapsed, ETA) when stderr is a terminal, nothing when it is not (cron,
    pipes), except one plain line per committed batch with --verbose."""

    def __init__(self, ctx: CliContext, what: str, live: bool | None = None) -> None:
        self.verbose = ctx.verbose
        self.live = err_console.is_terminal if live is None else live
        self.what = what
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("files {task.fields[files]}"),
            TextColumn("events {task.fields[events]}"),
            TextColumn("{task.fields[rate]} events/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=err_console,
            transient=True,
            disable=not self.live,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> LoadDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def on_progress(self, p: LoadProgress) -> None:
        if not self.live:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        # Events in all pending files, estimated from the bytes read so far.
        total = round(p.lines_read * p.bytes_total / p.bytes_read) if p.bytes_read else 0
        total = max(total, p.lines_read)
        left = (p.bytes_total - p.bytes_read) * elapsed / p.bytes_read if p.bytes_read else None
        fields = {
            "files": f"{p.files_read:,}/{p.files_total:,}",
            "events": f"{p.lines_read:,}/~{total:,}" if total else "0",
            "rate": f"{p.lines_read / elapsed:,.0f}",
            "eta": "-:--:--" if left is None else _clock(left),
        }
        if self.task is None:
            self.task = self.progress.add_task(self.what, total=p.bytes_total or 1, **fields)
        self.progress.update(self.task, completed=p.bytes_read, **fields)

    def on_batch(self, report: SyncReport) -> None:
        """One line per committed batch with --verbose off a terminal: what a watcher
        (or a killed run) has for certain."""
        if self.live or not self.verbose:
            return
        err_console.print(
            f"[dim]committed: {report.files_loaded} of "
            f"{report.files_seen - report.files_skipped} files, "
            f"{sum(report.rows_loaded.values())} rows[/]",
            highlight=False,
        )


def _clock(seconds: float) -> str:
    """H:MM:SS, as rich's elapsed column prints it."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def run_sync(
    ctx: CliContext,
    loader: Any,
    what: str,
    run: Callable[[Any], SyncReport],
    source: str | None = None,
) -> SyncReport | None:
    """Run one load/replay with the CLI's error contract and progress display; None when
    it failed (exit 1 is the caller's, so several syncs can run before the process
    exits). `source` is what `sluice rejects` takes for this run (default: the schema)."""
    display = LoadDisplay(ctx, what)
    if hasattr(loader, "on_progress"):
        loader.on_progress = display.on_progress
    if hasattr(loader, "on_batch"):
        loader.on_batch = display.on_batch
    try:
        with display:
            report = run(loader)
    except LockBusy as exc:
        error(f"{exc}")
        return None
    except FileNotFoundError as exc:
        fail(f"archive not found: {exc}", 2)
    except SourceError as exc:
        error(f"{what} failed: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - one sentence, traceback with --verbose
        if stop_requested():
            raise KeyboardInterrupt from None  # Ctrl-C, worded by the caller (exit 130)
        if ctx.verbose:
            raise
        error(f"{what} failed: {exc}")
        return None
    print_report(report.to_dict(), console, source)
    for warning in report_warnings(report.to_dict()):
        warn(warning)
    if incomplete(report):
        failed = report.files_failed
        error(
            f"{what} is partial: {len(failed)} file(s) not loaded to the end (first: "
            f"{failed[0]['file']}: {failed[0]['error']}); everything else is loaded"
        )
    return report


def incomplete(report: SyncReport | None) -> bool:
    """Whether a sync did not load all it was asked to (exit 1): it failed, or a file
    broke part way or could not be read (`partial`)."""
    return report is None or report.status == "partial"
