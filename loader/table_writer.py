"""Rows of one table -> the warehouse's bulk path: evolve the table (new table, new
columns), coerce each value to its column or rescue it, and lay the batch out as
columns for staging. Shared by event and object loads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Any, Protocol

from loader.normalize import RESCUED_COLUMN, TableChunk
from loader.row_layout import lay_out_columns
from loader.schema import ColumnEvidence, ColumnType, plan_from_evidence, plan_table_columns
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
        return self._evolve(schema, table, existing, columns, added, report)

    def ensure_from_evidence(
        self,
        schema: str,
        table: str,
        evidence_in_order: Iterable[Mapping[str, ColumnEvidence]],
        fixed: dict[str, ColumnType],
        report: EvolutionReport,
    ) -> dict[str, ColumnType]:
        """ensure_columns for a batch whose parts each described its new columns."""
        merged: dict[str, ColumnEvidence] = {}
        for evidence in evidence_in_order:
            for name, found in evidence.items():
                prior = merged.get(name)
                merged[name] = found if prior is None else prior.then(found)
        existing = self.known.get(table)
        columns, added = plan_from_evidence(existing, merged, fixed)
        return self._evolve(schema, table, existing, columns, added, report)

    def _evolve(
        self,
        schema: str,
        table: str,
        existing: dict[str, ColumnType] | None,
        columns: dict[str, ColumnType],
        added: dict[str, ColumnType],
        report: EvolutionReport,
    ) -> dict[str, ColumnType]:
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
        rescued: list[dict[str, Any] | None] = [r for c in chunks for r in c.rescued]
        out_names, values, rescued_at = lay_out_columns(
            names,
            columns,
            batch_columns,
            fixed,
            rescued,
            uuid_ts,
            self.warehouse.capabilities.max_text_chars,
        )
        rows = list(zip(*values, strict=True)) if rescued else []
        count_rescued(report, table, len(rescued_at))
        return out_names, rows


def count_rescued(report: EvolutionReport, table: str, values: int) -> None:
    if values:
        report.rescued_values += values
        report.rescued_by_table[table] = report.rescued_by_table.get(table, 0) + values


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
