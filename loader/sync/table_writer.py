"""Rows of one table -> the warehouse's bulk path: evolve the table (new table, new
columns), coerce each value to its column or rescue it, and lay the batch out as
columns for staging. Shared by event and object loads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, repeat
from typing import Any, Protocol

from loader.encode.row_layout import lay_out_columns
from loader.rules.normalize import RESCUED_COLUMN, TableChunk, rescue_value
from loader.rules.schema import ColumnEvidence, ColumnType, first_evidence, plan_from_evidence
from loader.warehouses.warehouse import Warehouse


class EvolutionReport(Protocol):
    new_tables: list[str]
    new_columns: list[str]
    rescued_values: int
    rescued_by_table: dict[str, int]
    rescued_cut: int
    warnings: list[str]


class TableWriter:
    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self.known: dict[str, dict[str, ColumnType]] = {}
        # Types a user set (`sluice schema set-type`): they, not first values, type a
        # column of that name when a batch creates it.
        self.decided: dict[str, dict[str, ColumnType]] = {}

    def refresh(self, schema: str) -> None:
        """Re-read the schema (at the start of a sync, and after a failed batch)."""
        self.known = self.warehouse.read_schema(schema)
        self.decided = self.warehouse.decided_types(schema)

    def ensure_columns(
        self,
        schema: str,
        table: str,
        files_columns: Iterable[Mapping[str, Sequence[Any]]],
        fixed: dict[str, ColumnType],
        report: EvolutionReport,
    ) -> dict[str, ColumnType]:
        """The table with the columns the batch brings, each new one typed by the first
        file (`files_columns`: each file's rows as read, as columns, in archive order)
        where it has a value."""
        existing = self.known.get(table)
        evidence = first_evidence(files_columns, existing, fixed)
        return self._plan_and_evolve(schema, table, existing, evidence, fixed, report)

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
        return self._plan_and_evolve(schema, table, existing, merged, fixed, report)

    def _plan_and_evolve(
        self,
        schema: str,
        table: str,
        existing: dict[str, ColumnType] | None,
        evidence: Mapping[str, ColumnEvidence],
        fixed: dict[str, ColumnType],
        report: EvolutionReport,
    ) -> dict[str, ColumnType]:
        limit = self.warehouse.capabilities.max_columns
        decided = self.decided.get(table)
        if decided:
            evidence = {
                name: ColumnEvidence(decided[name], False) if name in decided else found
                for name, found in evidence.items()
            }
        columns, added = plan_from_evidence(existing, evidence, fixed, limit)
        left_out = [n for n in evidence if n not in columns]
        # Said once per table and sync (each later batch meets the same limit).
        if left_out and not any(w.startswith(f"{table}: ") for w in report.warnings):
            shown = ", ".join(left_out[:5]) + (
                f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
            )
            report.warnings.append(
                f"{table}: the warehouse's limit of {limit} columns per table is reached; "
                f"{len(left_out)} new column(s) ({shown}) kept in _rescued_data instead"
            )
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
        # New columns are typed from each file as read (before duplicates of other
        # files were dropped from it, even all its rows): what batching cannot change.
        files = [c.as_read if c.as_read is not None else c for c in chunks]
        chunks = [c for c in chunks if c.rows]
        per_chunk = [c.columns() for c in chunks]
        by_id = {id(c): columns for c, columns in zip(chunks, per_chunk, strict=True)}
        files_columns = (by_id.get(id(f)) or f.columns() for f in files if f.rows)
        columns = self.ensure_columns(schema, table, files_columns, fixed, report)
        count = sum(len(c.rows) for c in chunks)
        batch_columns = _concatenated_columns(chunks, per_chunk, count)
        names = [c for c in columns if c != RESCUED_COLUMN and c != "uuid_ts"]
        rescued: list[dict[str, Any] | None] = [r for c in chunks for r in c.rescued]
        _rescue_columns_left_out(batch_columns, columns, rescued)
        capabilities = self.warehouse.capabilities
        out_names, values, rescued_at, cut = lay_out_columns(
            names,
            columns,
            batch_columns,
            fixed,
            rescued,
            uuid_ts,
            capabilities.max_text_chars,
            row_bytes=capabilities.max_row_bytes,
            rescued_bytes=capabilities.max_rescued_bytes,
        )
        rows = list(zip(*values, strict=True)) if rescued else []
        count_rescued(report, table, len(rescued_at), cut)
        return out_names, rows


def _rescue_columns_left_out(
    batch_columns: Mapping[str, Sequence[Any]],
    columns: Mapping[str, ColumnType],
    rescued: list[dict[str, Any] | None],
) -> None:
    """Values of columns the table does not have (past the warehouse's column limit)
    into their rows' rescued values, under the column's name."""
    for name, values in batch_columns.items():
        if name in columns or name == "uuid_ts":
            continue
        for index, value in enumerate(values):
            if value is not None:
                slot = rescued[index]
                if slot is None:
                    slot = rescued[index] = {}
                rescue_value(slot, name, value)


def count_rescued(report: EvolutionReport, table: str, values: int, cut: int = 0) -> None:
    """`cut`: of the rescued values, those cut to fit the warehouse (row_layout.fit_rescued)."""
    report.rescued_cut += cut
    if values:
        report.rescued_values += values
        report.rescued_by_table[table] = report.rescued_by_table.get(table, 0) + values


def _concatenated_columns(
    chunks: Sequence[TableChunk], per_chunk: Sequence[Mapping[str, Sequence[Any]]], count: int
) -> dict[str, Sequence[Any]]:
    """name -> values over all chunks in order (None where a chunk lacks the name)."""
    if len(chunks) == 1:
        return dict(per_chunk[0])
    names = dict.fromkeys(chain.from_iterable(c.names for c in chunks))
    out: dict[str, Sequence[Any]] = {}
    for name in names:
        values: list[Any] = []
        for chunk, columns in zip(chunks, per_chunk, strict=True):
            column = columns.get(name)
            values.extend(column if column is not None else repeat(None, len(chunk.rows)))
        out[name] = values
    return out
