"""Rows of one table -> the warehouse's bulk path: evolve the table (new table, new
columns), coerce each value to its column or rescue it, and lay the batch out as
columns for staging. Shared by event and object loads."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from loader.normalize import RESCUED_COLUMN, Row
from loader.schema import ColumnType, coerce_column, plan_columns
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
        rows: Iterable[dict[str, Any]],
        fixed: dict[str, ColumnType],
        report: EvolutionReport,
    ) -> dict[str, ColumnType]:
        existing = self.known.get(table)
        columns, added = plan_columns(existing, rows, fixed)
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
        rows: list[Row],
        fixed: dict[str, ColumnType],
        uuid_ts: str,
        report: EvolutionReport,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(column names, row tuples) ready for the adapter's bulk path."""
        columns = self.ensure_columns(schema, table, (r.values for r in rows), fixed, report)
        names = [c for c in columns if c != RESCUED_COLUMN and c != "uuid_ts"]
        has_rescue = RESCUED_COLUMN in columns
        # Column-wise: one pass per column is far cheaper in Python than per-value calls.
        rescued: list[dict[str, Any] | None] = [r.rescued or None for r in rows]
        data: list[list[Any]] = []
        for name in names:
            column = [r.values.get(name) for r in rows]
            # Layout columns are typed by normalisation already; data columns are coerced.
            if name not in fixed:
                column, misfits = coerce_column(column, columns[name])
                for index, original in misfits:
                    slot = rescued[index]
                    if slot is None:
                        slot = rescued[index] = {}
                    slot[name] = original
            data.append(column)
        data.append([uuid_ts] * len(rows))
        if has_rescue:
            count = sum(len(r) for r in rescued if r)
            report.rescued_values += count
            if count:
                report.rescued_by_table[table] = report.rescued_by_table.get(table, 0) + count
            data.append([orjson.dumps(r).decode() if r else None for r in rescued])
        out = list(zip(*data, strict=True))
        return [*names, "uuid_ts"] + ([RESCUED_COLUMN] if has_rescue else []), out
