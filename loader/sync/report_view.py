"""Rendering sync reports for people (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_report(report: dict[str, Any], console: Console, source: str | None = None) -> None:
    """`source`: what to pass to `sluice rejects` for this run's rejects (default: the
    schema). Every part is its own print, so each ends its line whatever follows."""
    status = report["status"]
    colour = {"success": "green", "partial": "yellow"}.get(status, "red")
    console.print(
        f"[bold {colour}]{status}[/]: {report['source_url']} -> "
        f"{report['target']}.{report['schema']} in {report['duration_s']:.2f}s"
    )
    console.print(
        f"files: {report['files_loaded']} loaded, {report['files_skipped']} already loaded, "
        f"{len(report['files_failed'])} failed; lines read: {report['lines_read']}; "
        f"duplicates skipped: {report['duplicates']}; rejects: {report['rejects']}; "
        f"rescued values: {report['rescued_values']}",
        highlight=False,
    )
    if report["rejects"]:
        console.print(
            f"see the rejected lines with: sluice rejects {source or report['schema']}",
            highlight=False,
        )
    violations = sum((report.get("violations") or {}).values())
    if violations or report.get("blocked_events"):
        console.print(
            f"[yellow]tracking plan: {violations} violation(s), "
            f"{report.get('blocked_events', 0)} event(s) blocked (kept in "
            "_sluice.blocked_events; a replay after a plan change loads them); "
            "see: sluice plan report[/]",
            highlight=False,
        )
    if report.get("replay"):
        r = report["replay"]
        console.print(f"replay of files received {r['from']} to {r['to']}")
    staged = report.get("staged")
    if staged:
        share = staged["lock_held_s"] / report["duration_s"] if report["duration_s"] else 0.0
        console.print(
            f"staged {staged['partitions']} day(s) in {staged['workers']} worker(s); "
            f"the lock was held {staged['lock_held_s']:.1f}s ({share:.0%} of the run)"
        )
        if report.get("files_undated"):
            console.print(
                f"[yellow]{report['files_undated']} file(s) name no received day in their "
                "path and were not replayed[/]"
            )
    if report.get("source_turned_off"):
        console.print(
            f"[yellow]source turned off by selective sync ({report['source_turned_off']}); "
            "its new files were passed over[/]"
        )
    if report["rows_loaded"]:
        table = Table("table", "rows loaded")
        for name, rows in sorted(report["rows_loaded"].items()):
            table.add_row(name, str(rows))
        console.print(table)
    if report["new_tables"]:
        console.print(f"new tables: {', '.join(report['new_tables'])}", highlight=False)
    if report["new_columns"]:
        console.print(f"new columns: {', '.join(report['new_columns'])}", highlight=False)
    if report.get("deleted_objects"):
        console.print(f"objects marked deleted: {report['deleted_objects']}")
    if report.get("turned_off"):
        shown = report["turned_off"][:20]
        more = len(report["turned_off"]) - len(shown)
        console.print(
            "kept out by selective sync (first seen): "
            + ", ".join(shown)
            + (f" and {more} more" if more > 0 else "")
        )
    if report.get("rescued_cut"):
        console.print(
            f"[yellow]{report['rescued_cut']} rescued value(s) wider than the warehouse's "
            "_rescued_data were cut, with their length and SHA-256 kept[/]"
        )
    for warning in report.get("warnings") or ():
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for failure in report["files_failed"]:
        if failure.get("partial"):
            # Loaded up to the break and recorded; the break is a reject.
            what = f"loaded up to line {failure['line']}, where its data breaks:"
        else:
            what = "not loaded (read again next run):"
        console.print(
            f"[yellow]file {escape(failure['file'])}[/] {what} {escape(failure['error'])}",
            highlight=False,
        )
    if report.get("error"):
        console.print(f"[red]error:[/] {escape(report['error'])}", highlight=False)


def report_warnings(report: dict[str, Any]) -> list[str]:
    """What a person should notice about a run that succeeded."""
    out = []
    replay = report.get("replay")
    if replay and report["files_seen"] == 0:
        days = (
            replay["from"]
            if replay["from"] == replay["to"]
            else f"any day from {replay['from']} to {replay['to']}"
        )
        out.append(
            f"no archive files were received on {days} (UTC) in {report['source_url']}: "
            "nothing was replayed"
        )
    return out
