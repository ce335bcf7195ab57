"""The reference path for the lines native SQL hands back: the same parse, validation
and normalisation as file_reader.read_file, over chosen lines of one file, keeping
each row's line so its evidence merges with the warehouse's in line order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loader.encode.file_reader import FileRead, ReadOptions, take_line
from loader.native.plan import Seen
from loader.rules.normalize import TableChunk, TableRows


@dataclass
class LineRows:
    """One file's rows per table with the line each came from."""

    read: FileRead
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)


def read_lines(url: str, lines: Iterable[tuple[int, bytes]], options: ReadOptions) -> LineRows:
    """Rows and rejects of `lines` (line number, raw bytes; in line order) of `url`."""
    read = FileRead(url)
    out = LineRows(read)
    seen: set[str] = set()
    pending: TableRows = {}
    for line_no, raw in lines:
        tables: TableRows = {}
        if not take_line(read, seen, tables, raw, line_no, options, False):
            continue
        for table, (values, rescued) in tables.items():
            out.rows.setdefault(table, []).append((line_no, values[0]))
            into = pending.setdefault(table, ([], []))
            into[0].append(values[0])
            into[1].append(rescued[0])
    read.tables = {t: TableChunk.of_values(v, r) for t, (v, r) in pending.items()}
    return out


def seen_in(rows: list[tuple[int, dict[str, Any]]]) -> dict[str, Seen]:
    """Per column, what these rows (one file's, of one table) show of it."""
    out: dict[str, Seen] = {}
    for line_no, values in rows:
        for at, (name, value) in enumerate(values.items()):
            s = out.get(name)
            if s is None:
                s = out[name] = Seen(line_no, at)
            if value is None:
                continue
            if s.value_line is None:
                s.value_line, s.value = line_no, value
            if type(value) is float:
                s.saw_double = True
    return out
