"""Changing a column's type after its first value decided it (`sluice schema set-type`).
Pure: which values move into the retyped column, which leave it. No I/O.

The rule is the loader's own (loader.rules.schema.coerce): after a retype, every value sits
where a load with the new type would have put it. A value in `_rescued_data` under the
column's name (where a misfit is kept) moves into the column when it now fits; a
value in the column that does not fit the new type moves to `_rescued_data` under the
column's name, so nothing is ever lost and a retype back restores it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from loader.rules.normalize import fixed_columns, rescue_value
from loader.rules.schema import ColumnType, coerce, fits, json_text

# Layout columns Sluice types itself: a retype would break what it writes into them.
NOT_RETYPABLE = frozenset({"id", "received_at", "uuid_ts", "_rescued_data"})


# Profile tables and the event table their traits come from (loader.sync.pipeline.PROFILES):
# a trait column has one type in both, or rebuilding the profile would fail.
_PROFILE_SOURCES = {"users": "identifies", "accounts": "groups"}


def linked_tables(table: str) -> list[str]:
    """The tables whose column of the same name must change type with `table`'s."""
    if table in _PROFILE_SOURCES:
        return [_PROFILE_SOURCES[table]]
    return [p for p, source in _PROFILE_SOURCES.items() if source == table]


def is_layout_column(table: str, column: str) -> bool:
    """A column Sluice types itself (ids, times, context...): the loader writes those
    without a type check, so their type is not the user's to change."""
    return column in NOT_RETYPABLE or column in fixed_columns(table)


@dataclass(frozen=True)
class RowChange:
    """One row's new state: the column's value (of the new type; None for NULL) and,
    when `rescued_changed`, its `_rescued_data` JSON text (None: no rescued values)."""

    id: str
    value: Any
    rescued_changed: bool
    rescued: str | None


@dataclass
class RetypePlan:
    """What a retype does, counted for the dry run, and the rows it writes."""

    schema: str
    table: str
    column: str
    old_type: ColumnType
    new_type: ColumnType
    moved_in: int = 0  # rescued values that now fit the column
    moved_out: int = 0  # column values that do not fit the new type (to _rescued_data)
    kept: int = 0  # column values that stay in the column, converted
    applied: bool = False
    changes: list[RowChange] = field(default_factory=list, repr=False)

    @property
    def needs_rescued_column(self) -> bool:
        return self.moved_out > 0


def stored_value(value: Any, old_type: ColumnType, new_type: ColumnType) -> Any:
    """A value read from the column, as the archive's JSON would have given it.

    A timestamp is its ISO text; text that is the JSON of a number or boolean (what a
    text column makes of one) is that number or boolean again, so `"42"` fits a bigint."""
    if isinstance(value, datetime):
        return value.isoformat()
    if (
        old_type is ColumnType.TEXT
        and isinstance(value, str)
        and new_type in (ColumnType.BIGINT, ColumnType.DOUBLE, ColumnType.BOOLEAN)
    ):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if isinstance(parsed, (bool, int, float)):
            return parsed
    return value


def _rescued_object(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    parsed = orjson.loads(value) if isinstance(value, (str, bytes)) else value
    return parsed if isinstance(parsed, dict) else None


def _as_written(value: Any, new_type: ColumnType) -> Any:
    """coerce() keeps timestamps as ISO text; drivers take a datetime without guessing."""
    if new_type is ColumnType.TIMESTAMP and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def plan_retype(
    plan: RetypePlan,
    rows: Iterable[Sequence[Any]],
    max_text_chars: int | None = None,
) -> RetypePlan:
    """Fill `plan` from the table's rows (id, the column's value, `_rescued_data`): the
    rows whose column becomes non-NULL or whose rescued values change.

    A rescued value moves in only into a row whose column is empty once retyped (a
    row never holds two values for one column)."""
    column, old, new = plan.column, plan.old_type, plan.new_type
    for row_id, current, rescued_raw in rows:
        rescued = _rescued_object(rescued_raw)
        value: Any = None
        changed = False
        out: dict[str, Any] = dict(rescued) if rescued else {}
        if current is not None:
            original = stored_value(current, old, new)
            converted = coerce(original, new, max_text_chars)
            if fits(converted):
                value = converted
                plan.kept += 1
            else:
                rescue_value(out, column, original)
                changed = True
                plan.moved_out += 1
        if value is None and rescued and column in rescued:
            converted = coerce(rescued[column], new, max_text_chars)
            if fits(converted) and converted is not None:
                value = converted
                del out[column]
                changed = True
                plan.moved_in += 1
        if value is None and not changed:
            continue
        text = json_text(out) if changed and out else None
        plan.changes.append(RowChange(str(row_id), _as_written(value, new), changed, text))
    return plan


def describe(plan: RetypePlan) -> str:
    """The dry run's (or the applied run's) sentence."""
    where = f"{plan.schema}.{plan.table}.{plan.column}"
    verb = "changed" if plan.applied else "would change"
    moved = (
        f"{plan.moved_in} value(s) {'moved' if plan.applied else 'would move'} out of "
        f"_rescued_data into the column, {plan.moved_out} existing value(s) "
        f"{'moved' if plan.applied else 'would move'} to _rescued_data (never lost), "
        f"{plan.kept} kept"
    )
    return f"{where} {verb} from {plan.old_type.value} to {plan.new_type.value}: {moved}"
