"""A table's batch laid out for a bulk path: every value coerced to its column's type
or rescued, plus `uuid_ts` and `_rescued_data`. Pure: no I/O.

One implementation for both places that lay rows out: the loading process (tuples for
an adapter's bulk path) and the reader processes (rows they encode for COPY themselves).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

from loader.normalize import RESCUED_COLUMN
from loader.schema import ColumnType, coerce_column, json_text


def lay_out_columns(
    names: Sequence[str],
    types: Mapping[str, ColumnType],
    batch_columns: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, ColumnType],
    rescued: list[dict[str, Any] | None],
    uuid_ts: str,
    width: int | None,
    trust_text: bool = False,
) -> tuple[list[str], list[Iterable[Any]], list[int]]:
    """(column names, their values, rows' indexes with rescued values, once per value).

    `names` are the columns to emit (not uuid_ts / _rescued_data, which are added);
    a name the batch lacks is NULL throughout. `rescued` (one slot per row) receives the
    values that do not fit their column and is written as `_rescued_data` when the table
    has that column. Layout columns are typed by normalisation already; only data columns
    are coerced, and a layout text column (but the id) still obeys the text `width`.
    `trust_text` leaves text columns as they are, for an encoder that refuses a non-str
    in them (loader.encoded.encode_table checks again when it does)."""
    count = len(rescued)
    data: list[Iterable[Any]] = []
    rescued_at: list[int] = []
    for name in names:
        column = batch_columns.get(name)
        if column is None:
            data.append(repeat(None, count))
            continue
        kind: ColumnType | None = None
        if name not in fixed:
            kind = types[name]
        elif width is not None and name != "id" and types[name] is ColumnType.TEXT:
            kind = ColumnType.TEXT
        if kind is not None and not (trust_text and kind is ColumnType.TEXT):
            column, misfits = coerce_column(column, kind, width)
            for index, original in misfits:
                slot = rescued[index]
                if slot is None:
                    slot = rescued[index] = {}
                slot[name] = original
        data.append(column)
    data.append(repeat(uuid_ts, count))
    out_names = [*names, "uuid_ts"]
    if RESCUED_COLUMN in types:
        out_names.append(RESCUED_COLUMN)
        texts: list[str | None] = []
        for index, slot in enumerate(rescued):
            if slot:
                rescued_at.extend(repeat(index, len(slot)))
                texts.append(json_text(slot))
            else:
                texts.append(None)
        data.append(texts)
    return out_names, data, rescued_at
