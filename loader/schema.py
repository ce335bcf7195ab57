"""Type inference, coercion and the evolution plan. Pure: no I/O.

A column's type is fixed when it is created; later values that convert losslessly are
converted, the rest go to the row's `_rescued_data` so nothing is ever lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from loader.messages import parse_timestamp

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class ColumnType(str, Enum):
    BOOLEAN = "boolean"
    BIGINT = "bigint"
    DOUBLE = "double"
    TIMESTAMP = "timestamp"
    TEXT = "text"


_MISSING = object()


def infer_type(value: Any) -> ColumnType | None:
    """The type a first-seen value gives its column; None for a null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ColumnType.BOOLEAN
    if isinstance(value, int):
        return ColumnType.BIGINT if INT64_MIN <= value <= INT64_MAX else ColumnType.DOUBLE
    if isinstance(value, float):
        return ColumnType.DOUBLE
    if isinstance(value, str) and parse_timestamp(value) is not None:
        return ColumnType.TIMESTAMP
    return ColumnType.TEXT


def merge_new_column_types(first: ColumnType, seen: set[ColumnType]) -> ColumnType:
    """First type wins, except integers and floats together in the creating batch."""
    if first is ColumnType.BIGINT and ColumnType.DOUBLE in seen:
        return ColumnType.DOUBLE
    return first


# Python types that need no conversion for a column type (a str in a timestamp column does).
_FAST: dict[type, ColumnType] = {
    str: ColumnType.TEXT,
    bool: ColumnType.BOOLEAN,
    float: ColumnType.DOUBLE,
}


def coerce(value: Any, column_type: ColumnType) -> Any:
    """The value converted losslessly to the column's type, or _MISSING when it cannot be."""
    if value is None:
        return None
    if _FAST.get(type(value)) is column_type:
        return value
    if column_type is ColumnType.TEXT:
        if isinstance(value, str):
            return value
        return orjson.dumps(value).decode()
    if column_type is ColumnType.BOOLEAN:
        return value if isinstance(value, bool) else _MISSING
    if isinstance(value, bool):
        return _MISSING
    if column_type is ColumnType.BIGINT:
        if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            return value
        if isinstance(value, float) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
            return int(value)
        return _MISSING
    if column_type is ColumnType.DOUBLE:
        if isinstance(value, (int, float)):
            return float(value)
        return _MISSING
    # timestamp
    if isinstance(value, str):
        parsed = parse_timestamp(value)
        return parsed.isoformat() if parsed is not None else _MISSING
    return _MISSING


def coerce_column(
    values: list[Any], column_type: ColumnType
) -> tuple[list[Any], list[tuple[int, Any]]]:
    """A whole column coerced; misfits (index, original value) become NULL for rescue."""
    fast = _FAST_TYPE.get(column_type)
    if fast is not None and all(v is None or type(v) is fast for v in values):
        return values, []
    out: list[Any] = []
    misfits: list[tuple[int, Any]] = []
    for index, value in enumerate(values):
        converted = coerce(value, column_type)
        if converted is _MISSING:
            misfits.append((index, value))
            out.append(None)
        else:
            out.append(converted)
    return out, misfits


_FAST_TYPE: dict[ColumnType, type] = {kind: t for t, kind in _FAST.items()}


def fits(coerced: Any) -> bool:
    return coerced is not _MISSING


@dataclass
class TableSchema:
    name: str
    columns: dict[str, ColumnType] = field(default_factory=dict)


@dataclass
class SchemaPlan:
    """What a batch needs before it can be loaded: new tables and new columns."""

    new_tables: dict[str, dict[str, ColumnType]] = field(default_factory=dict)
    new_columns: dict[str, dict[str, ColumnType]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.new_tables and not self.new_columns

    def count_new_columns(self) -> int:
        return sum(len(c) for c in self.new_columns.values())


def plan_columns(
    existing: dict[str, ColumnType] | None,
    rows: Iterable[dict[str, Any]],
    fixed: dict[str, ColumnType],
) -> tuple[dict[str, ColumnType], dict[str, ColumnType]]:
    """(full column set, columns to add) for one table given the batch's rows in order.

    `fixed` are the columns whose type the table layout fixes (common columns).
    """
    known = dict(existing or {})
    first: dict[str, ColumnType] = {}
    seen: dict[str, set[ColumnType]] = {}
    for row in rows:
        for name, value in row.items():
            if name in known or name in fixed:
                continue
            if name in first and first[name] is not ColumnType.BIGINT:
                continue
            kind = infer_type(value)
            if kind is None:
                continue
            if name not in first:
                first[name] = kind
                seen[name] = {kind}
            elif first[name] is ColumnType.BIGINT:
                # Only an integer column can still change type (to double) in this batch.
                seen[name].add(kind)
    added: dict[str, ColumnType] = {}
    for name, kind in fixed.items():
        if name not in known:
            added[name] = kind
    for name, kind in first.items():
        added[name] = merge_new_column_types(kind, seen[name])
    known.update(added)
    return known, added
