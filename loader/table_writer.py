"""Rows of one table -> the warehouse's bulk path: evolve the table (new table, new
columns), coerce each value to its column or rescue it, and lay the batch out as
columns for staging. Shared by event and object loads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Any, Protocol

import orjson

from loader.normalize import RESCUED_COLUMN, TableChunk
from loader.schema import ColumnType, coerce_column, plan_table_columns
from loader.warehouses.base import Warehouse


class EvolutionReport(Protocol):
    new_tables: list[str]
    new_columns: list[str]
    rescued_values: int
    rescued_by_table: dict[str, int]


class TableWriter:
    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.known: dict[str, dict[str, ColumnType]] = {}

    def refresh(self, schema: str) -> None:
        """Re-read the schema (at the start of a sync, and after a failed batch)."""
        self.known = self.warehouse.read_schema(schema)

    def ensure_columns(
        self,
        schema: str,
        table: str,
        batch_columns: Mapping[str, Sequence[Any]],
        fixed: dict[str, ColumnType],
        report: EvolutionReport,
    ) -> dict[str, ColumnType]:
        existing = self.known.get(table)
        columns, added = plan_table_columns(existing, batch_columns, fixed)
        if existing is None:
            self.warehouse.create_table(schema, table, columns)
            report.new_tables.append(table)
        elif added:
            self.warehouse.add_columns(schema, table, added)
            report.new_columns.extend(f"{table}.{c}" for c in added)
        self.known[table] = columns
        return columns

    def prepare(
        self,
        schema: str,
        table: str,
        chunks: Sequence[TableChunk],
        fixed: dict[str, ColumnType],
        uuid_ts: str,
        report: EvolutionReport,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, row tuples) ready for the adapter's bulk path.

        Work is column-wise with C loops (zip, map, set): a column is only walked value
        by value when it holds something that does not already fit its type."""
        chunks = [c for c in chunks if c.rows]
        count = sum(len(c.rows) for c in chunks)
        batch_columns = _concatenated_columns(chunks, count)
        columns = self.ensure_columns(schema, table, batch_columns, fixed, report)
        names = [c for c in columns if c != RESCUED_COLUMN and c != "uuid_ts"]
        has_rescue = RESCUED_COLUMN in columns
        width = self.warehouse.capabilities.max_text_chars
        rescued: list[dict[str, Any] | None] = [r for c in chunks for r in c.rescued]
        data: list[Iterable[Any]] = []
        for name in names:
            column = batch_columns.get(name)
            if column is None:  # a known column this batch does not have
                data.append(repeat(None, count))
                continue
            # Layout columns are typed by normalisation already; data columns are coerced.
            # A layout text column (but the id) still obeys the warehouse's text width.
            kind: ColumnType | None = None
            if name not in fixed:
                kind = columns[name]
            elif width is not None and name != "id" and columns[name] is ColumnType.TEXT:
                kind = ColumnType.TEXT
            if kind is not None:
                column, misfits = coerce_column(column, kind, width)
                for index, original in misfits:
                    slot = rescued[index]
                    if slot is None:
                        slot = rescued[index] = {}
                    slot[name] = original
            data.append(column)
        data.append(repeat(uuid_ts, count))
        if has_rescue:
            total = sum(len(r) for r in rescued if r)
            report.rescued_values += total
            if total:
                report.rescued_by_table[table] = report.rescued_by_table.get(table, 0) + total
            data.append([orjson.dumps(r).decode() if r else None for r in rescued])
        out = list(zip(*data, strict=True)) if count else []
        return [*names, "uuid_ts"] + ([RESCUED_COLUMN] if has_rescue else []), out


def _concatenated_columns(chunks: Sequence[TableChunk], count: int) -> dict[str, Sequence[Any]]:
    """name -> values over all chunks in order (None where a chunk lacks the name)."""
    if len(chunks) == 1:
        return dict(chunks[0].columns())
    per_chunk = [c.columns() for c in chunks]
    names = dict.fromkeys(chain.from_iterable(c.names for c in chunks))
    out: dict[str, Sequence[Any]] = {}
    for name in names:
        values: list[Any] = []
        for chunk, columns in zip(chunks, per_chunk, strict=True):
            column = columns.get(name)
            values.extend(column if column is not None else repeat(None, len(chunk.rows)))
        out[name] = values
    return out
