"""What every `sluice` command shares: consoles, one-sentence failures, running a load."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from rich.console import Console

from loader.pipeline import SyncReport
from loader.report_view import print_report
from loader.sources.cloud.engine import SourceError
from loader.warehouses.base import LockBusy, Warehouse

console = Console()
err_console = Console(stderr=True)


class CliContext:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose


def fail(message: str, code: int) -> NoReturn:
    err_console.print(f"[red]error:[/] {message}", highlight=False)
    sys.exit(code)


def open_target(name: str, spec: Any, read_only: bool = False) -> Warehouse:
    from loader.warehouses.registry import open_warehouse

    return open_warehouse(name, spec, read_only=read_only)


def progress(report: SyncReport) -> None:
    """One line per committed batch: what a watcher (or a killed run) has for certain."""
    err_console.print(
        f"[dim]committed: {report.files_loaded} of "
        f"{report.files_seen - report.files_skipped} files, "
        f"{sum(report.rows_loaded.values())} rows[/]",
        highlight=False,
    )


def run_sync(
    ctx: CliContext,
    loader: Any,
    what: str,
    run: Callable[[Any], SyncReport],
) -> SyncReport | None:
    """Run one load/replay with the CLI's error contract; None when it failed (exit 1
    is the caller's, so several syncs can run before the process exits)."""
    try:
        report = run(loader)
    except LockBusy as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        return None
    except FileNotFoundError as exc:
        fail(f"archive not found: {exc}", 2)
    except SourceError as exc:
        err_console.print(f"[red]error:[/] {what} failed: {exc}", highlight=False)
        return None
    except Exception as exc:  # noqa: BLE001 - one sentence, traceback with --verbose
        if ctx.verbose:
            raise
        err_console.print(f"[red]error:[/] {what} failed: {exc}", highlight=False)
        return None
    print_report(report.to_dict(), console)
    if incomplete(report):
        failed = report.files_failed
        err_console.print(
            f"[red]error:[/] {what} is partial: {len(failed)} file(s) not loaded to the "
            f"end (first: {failed[0]['file']}: {failed[0]['error']}); everything else is "
            "loaded",
            highlight=False,
        )
    return report


def incomplete(report: SyncReport | None) -> bool:
    """Whether a sync did not load all it was asked to (exit 1): it failed, or a file
    broke part way or could not be read (`partial`)."""
    return report is None or report.status == "partial"
