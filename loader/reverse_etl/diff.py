"""The change set of one model run, computed in the warehouse and paged out.

`prepare` stages the model (row hash in SQL) and joins it against the snapshot; `pages`
streams the rows to send as `Record`s, one destination batch at a time, so memory is
bounded by the batch size whatever the model's size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from loader.reverse_etl.destinations import Record
from loader.reverse_etl.ids import SentChange, record_id
from loader.reverse_etl.model import SEND_KINDS, Model, ModelError
from loader.rules.schema import ColumnType
from loader.warehouses.warehouse import Warehouse


@dataclass
class ChangeSet:
    """What the warehouse found for one model: counts per kind and the columns sent."""

    model: Model
    staged: int
    counts: dict[str, int]  # added, changed, removed, unchanged
    columns: dict[str, ColumnType]  # model column -> type, for the columns sent
    fields: dict[str, str]  # model column -> destination field

    @property
    def to_send(self) -> int:
        return sum(self.counts[k] for k in self.model.send_kinds)

    @property
    def to_baseline(self) -> int:
        return sum(self.counts[k] for k in self.model.baseline_kinds)

    def sends_per_mode(self) -> dict[str, int]:
        return {mode: sum(self.counts[k] for k in kinds) for mode, kinds in SEND_KINDS.items()}

    @property
    def field_types(self) -> dict[str, ColumnType]:
        return {self.fields[c]: t for c, t in self.columns.items()}

    @property
    def key_field(self) -> str:
        return self.fields[self.model.key]


def prepare(warehouse: Warehouse, model: Model) -> ChangeSet:
    """Stage the model and diff it against its snapshot (call under retl_lock)."""
    all_columns = warehouse.retl_model_columns(model.name, model.sql)
    model.check_columns(list(all_columns))
    fields = model.fields(list(all_columns))
    columns = {c: all_columns[c] for c in all_columns if c in fields}
    staged = warehouse.retl_stage(model.name, model.sql, model.key, list(columns))
    nulls, dupes = warehouse.retl_key_problems(model.name)
    if nulls:
        raise ModelError(
            f"{model.where('key')}: {nulls} row(s) of model '{model.name}' have a NULL "
            f"'{model.key}'; filter them out in {model.sql_path} (WHERE {model.key} IS NOT NULL)"
        )
    if dupes:
        raise ModelError(
            f"{model.where('key')}: {dupes} value(s) of key '{model.key}' occur more than "
            f"once in model '{model.name}'; the key must be unique (GROUP BY it in the SQL)"
        )
    counts = warehouse.retl_diff(model.name, list(columns))
    return ChangeSet(model, staged, counts, columns, fields)


def to_record(
    changes: ChangeSet, row: Sequence[Any], run_id: str, last_sent: dict[str, SentChange]
) -> Record:
    model = changes.model
    seq, kind, key, row_hash, *values = row
    op = model.op(str(kind))
    if op == "delete":
        fields: dict[str, Any] = {changes.key_field: key}
    else:
        fields = {changes.fields[c]: v for c, v in zip(changes.columns, values, strict=True)}
    rid, new = record_id(model.name, str(key), op, row_hash, run_id, last_sent.get(str(key)))
    return Record(
        int(seq), str(kind), op, str(key), rid, fields, row_hash=str(row_hash or ""), new_id=new
    )


def pages(
    warehouse: Warehouse,
    changes: ChangeSet,
    batch_size: int,
    run_id: str,
    limit: int | None = None,
    known_ids: bool = True,
) -> Iterator[list[Record]]:
    """The records to send, in batches (keyset pages over the change set's seq), each
    with its id: kept from the last send of the same change (looked up unless
    `known_ids` is off), else new for `run_id`."""
    after, left = 0, limit
    kinds = changes.model.send_kinds
    while left is None or left > 0:
        size = batch_size if left is None else min(batch_size, left)
        rows = warehouse.retl_changes(changes.model.name, kinds, list(changes.columns), after, size)
        if not rows:
            return
        last_sent = (
            warehouse.retl_sent_ids(changes.model.name, [str(r[2]) for r in rows])
            if known_ids
            else {}
        )
        yield [to_record(changes, row, run_id, last_sent) for row in rows]
        after = int(rows[-1][0])
        if left is not None:
            left -= len(rows)
