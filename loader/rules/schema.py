"""Type inference, coercion and the evolution plan. Pure: no I/O.

A column's type is fixed when it is created; later values that convert losslessly are
converted, the rest go to the row's `_rescued_data` so nothing is ever lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import chain
from typing import Any

import orjson

from loader.rules.messages import parse_date_time

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Integers up to this magnitude are all exact as doubles (53-bit significand).
_EXACT_IN_DOUBLE = 2**53


class ColumnType(str, Enum):
    BOOLEAN = "boolean"
    BIGINT = "bigint"
    DOUBLE = "double"
    TIMESTAMP = "timestamp"
    TEXT = "text"


_MISSING = object()


def infer_type(value: Any) -> ColumnType | None:
    """The type a first-seen value gives its column; None for a null.

    Every integer types a bigint, even one beyond 64 bits (that value is then rescued):
    a double would keep neither it nor the integers after it exactly."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ColumnType.BOOLEAN
    if isinstance(value, int):
        return ColumnType.BIGINT
    if isinstance(value, float):
        return ColumnType.DOUBLE
    if isinstance(value, str) and parse_date_time(value) is not None:
        return ColumnType.TIMESTAMP
    return ColumnType.TEXT


# Python types that need no conversion for a column type (a str in a timestamp column does).
_FAST: dict[type, ColumnType] = {
    str: ColumnType.TEXT,
    bool: ColumnType.BOOLEAN,
    float: ColumnType.DOUBLE,
}


def json_text(value: Any) -> str:
    """A value as compact JSON text. orjson refuses integers beyond 64 bits, which API
    payloads parsed by the standard json module can carry; those take the slow path."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def coerce(value: Any, column_type: ColumnType, max_text_chars: int | None = None) -> Any:
    """The value converted losslessly to the column's type, or _MISSING when it cannot be.

    `max_text_chars` is the warehouse's text width (Capabilities.max_text_chars): a text
    value longer than that does not fit its column either."""
    if value is None:
        return None
    if column_type is ColumnType.TEXT:
        text = value if isinstance(value, str) else json_text(value)
        if max_text_chars is not None and len(text) > max_text_chars:
            return _MISSING
        return text
    if _FAST.get(type(value)) is column_type:
        return value
    if column_type is ColumnType.BOOLEAN:
        return value if isinstance(value, bool) else _MISSING
    if isinstance(value, bool):
        return _MISSING
    if column_type is ColumnType.BIGINT:
        if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            return value
        if isinstance(value, float) and value.is_integer():
            # Compared as integers: compiled, a float against an int is compared as two
            # doubles, and 2.0**63 would pass for INT64_MAX.
            as_int = int(value)
            if INT64_MIN <= as_int <= INT64_MAX:
                return as_int
        return _MISSING
    if column_type is ColumnType.DOUBLE:
        if isinstance(value, float):
            return value
        if isinstance(value, int):
            # Only an integer a double holds exactly (any up to 2^53, some beyond):
            # 2^53 + 1 would be stored as 2^53.
            if -_EXACT_IN_DOUBLE <= value <= _EXACT_IN_DOUBLE:
                return float(value)
            try:
                as_double = float(value)
            except OverflowError:
                return _MISSING
            # Back to an integer to compare exactly (compiled, `as_double == value`
            # would compare two doubles).
            return as_double if int(as_double) == value else _MISSING
        return _MISSING
    # timestamp
    if isinstance(value, str):
        parsed = parse_date_time(value)
        return parsed.isoformat() if parsed is not None else _MISSING
    return _MISSING


def coerce_column(
    values: Sequence[Any], column_type: ColumnType, max_text_chars: int | None = None
) -> tuple[Sequence[Any], list[tuple[int, Any]]]:
    """A whole column coerced; misfits (index, original value) become NULL for rescue.
    Text longer than `max_text_chars` (when given) is a misfit too.

    Most columns already hold their type: that is found with C-level passes (the set of
    value types, then min/max/len) before falling back to per-value conversion."""
    if _already_fits(values, column_type, max_text_chars):
        return values, []
    out: list[Any] = []
    misfits: list[tuple[int, Any]] = []
    for index, value in enumerate(values):
        converted = coerce(value, column_type, max_text_chars)
        if converted is _MISSING:
            misfits.append((index, value))
            out.append(None)
        else:
            out.append(converted)
    return out, misfits


_NONE_TYPE = type(None)
# Value types a column takes as they are (a str in a timestamp column needs parsing).
_AS_IS: dict[ColumnType, frozenset[type]] = {
    ColumnType.TEXT: frozenset({str}),
    ColumnType.BOOLEAN: frozenset({bool}),
    ColumnType.DOUBLE: frozenset({float}),
    ColumnType.BIGINT: frozenset({int}),
    ColumnType.TIMESTAMP: frozenset(),
}


def _already_fits(values: Sequence[Any], column_type: ColumnType, width: int | None) -> bool:
    kinds = set(map(type, values))
    kinds.discard(_NONE_TYPE)
    if not kinds <= _AS_IS[column_type]:
        return False
    if not kinds:
        return True
    if column_type is ColumnType.TEXT:
        return width is None or max(map(len, filter(None, values)), default=0) <= width
    if column_type is ColumnType.BIGINT:
        present = [v for v in values if v is not None]
        return INT64_MIN <= min(present) and max(present) <= INT64_MAX
    return True


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
    rows = rows if isinstance(rows, list) else list(rows)
    names = list(dict.fromkeys(chain.from_iterable(rows)))
    tuples = [tuple(map(row.get, names)) for row in rows]
    by_name = dict(zip(names, zip(*tuples, strict=True), strict=True))
    return plan_table_columns(existing, by_name, fixed)


@dataclass(frozen=True, slots=True)
class ColumnEvidence:
    """What one file's values say about the type of a column that does not exist yet:
    its first non-null value's type, and whether fractions were among the numbers.

    A column is typed by the first file (in archive order) where it has a value, so
    reader processes can each look at their own files and the loader decides from the
    first of them, whatever the batch."""

    first: ColumnType
    saw_double: bool

    def then(self, later: ColumnEvidence) -> ColumnEvidence:
        """The evidence of two files in archive order: the first file's, whole. Only the
        file a column first has a value in decides its type, so where a load's batches
        begin and end (`--batch-lines`, a restart) never changes it."""
        return self

    def __reduce__(self) -> tuple[type[ColumnEvidence], tuple[ColumnType, bool]]:
        # Rebuilt through the constructor: compiled by mypyc, a frozen class cannot
        # take its fields back one by one as pickle's default would set them.
        return ColumnEvidence, (self.first, self.saw_double)

    @property
    def column_type(self) -> ColumnType:
        """First type wins, except integers and floats together in the creating batch."""
        if self.first is ColumnType.BIGINT and self.saw_double:
            return ColumnType.DOUBLE
        return self.first


def column_evidence(values: Sequence[Any]) -> ColumnEvidence | None:
    """None when every value is null: the column waits until a value shows its type.

    An integer beyond 64 bits is no fraction: it does not make its column a double (it
    is rescued from the bigint column with its digits)."""
    first = next((v for v in values if v is not None), None)
    kind = infer_type(first)
    if kind is None:
        return None
    return ColumnEvidence(kind, float in set(map(type, values)))


def first_evidence(
    parts: Iterable[Mapping[str, Sequence[Any]]],
    skip: Mapping[str, Any] | None,
    fixed: Mapping[str, ColumnType],
) -> dict[str, ColumnEvidence]:
    """The evidence of each column not in `skip` or `fixed`, from the first part (a
    file's rows, as columns) in which it has a value; in order of first appearance."""
    evidence: dict[str, ColumnEvidence] = {}
    for part in parts:
        for name, values in part.items():
            if name in evidence or name in fixed or (skip is not None and name in skip):
                continue
            found = column_evidence(values)
            if found is not None:
                evidence[name] = found
    return evidence


def plan_table_columns(
    existing: dict[str, ColumnType] | None,
    columns: Mapping[str, Sequence[Any]],
    fixed: dict[str, ColumnType],
) -> tuple[dict[str, ColumnType], dict[str, ColumnType]]:
    """plan_columns for a batch already laid out as columns (name -> values in row order,
    names in order of first appearance)."""
    evidence: dict[str, ColumnEvidence] = {}
    for name, values in columns.items():
        if existing is not None and name in existing or name in fixed:
            continue
        found = column_evidence(values)
        if found is not None:
            evidence[name] = found
    return plan_from_evidence(existing, evidence, fixed)


def plan_from_evidence(
    existing: dict[str, ColumnType] | None,
    evidence: Mapping[str, ColumnEvidence],
    fixed: dict[str, ColumnType],
    max_columns: int | None = None,
) -> tuple[dict[str, ColumnType], dict[str, ColumnType]]:
    """(full column set, columns to add): layout columns first, then each column the
    evidence names that the table lacks, typed by it, in the evidence's order (of first
    appearance in the archive) while the table has fewer than `max_columns` (the
    warehouse's limit): the columns past it are not created, their values are rescued."""
    known = dict(existing or {})
    added: dict[str, ColumnType] = {}
    for name, kind in fixed.items():
        if name not in known:
            added[name] = kind
    room = None if max_columns is None else max_columns - len(known) - len(added)
    for name, found in evidence.items():
        if name not in known and name not in fixed:
            if room is not None:
                if room <= 0:
                    continue
                room -= 1
            added[name] = found.column_type
    known.update(added)
    return known, added
