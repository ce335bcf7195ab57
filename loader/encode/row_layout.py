"""A table's batch laid out for a bulk path: every value coerced to its column's type
or rescued, plus `uuid_ts` and `_rescued_data`. Pure: no I/O.

One implementation for both places that lay rows out: the loading process (tuples for
an adapter's bulk path) and the reader processes (rows they encode for COPY themselves).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

from loader.rules.normalize import RESCUED_COLUMN, rescue_value
from loader.rules.schema import ColumnType, coerce_column, json_text


def lay_out_columns(
    names: Sequence[str],
    types: Mapping[str, ColumnType],
    batch_columns: Mapping[str, Sequence[Any]],
    fixed: Mapping[str, ColumnType],
    rescued: list[dict[str, Any] | None],
    uuid_ts: str,
    width: int | None,
    trust_text: bool = False,
    row_bytes: int | None = None,
    rescued_bytes: int | None = None,
) -> tuple[list[str], list[Iterable[Any]], list[int], int]:
    """(column names, their values, rows' indexes with rescued values, once per value,
    how many rescued values were cut to fit `rescued_bytes`).

    `names` are the columns to emit (not uuid_ts / _rescued_data, which are added);
    a name the batch lacks is NULL throughout. `rescued` (one slot per row) receives the
    values that do not fit their column and is written as `_rescued_data` when the table
    has that column. Layout columns are typed by normalisation already; only data columns
    are coerced, and a layout text column (but the id) still obeys the text `width`.
    `trust_text` leaves text columns as they are, for an encoder that refuses a non-str
    in them (loader.encode.encoded.encode_table checks again when it does).

    `row_bytes` (Capabilities.max_row_bytes) is what one stored row may take: a row
    estimated wider has its last data columns' values rescued until it fits (only a
    table wide enough to reach it is estimated). `rescued_bytes`
    (Capabilities.max_rescued_bytes) bounds a row's `_rescued_data` text: see
    fit_rescued."""
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
                rescue_value(slot, name, original)
        data.append(column)
    if row_bytes is not None and _may_exceed(len(names), row_bytes):
        _fit_rows(names, fixed, data, rescued, row_bytes)
    data.append(repeat(uuid_ts, count))
    out_names = [*names, "uuid_ts"]
    cut = 0
    if RESCUED_COLUMN in types:
        out_names.append(RESCUED_COLUMN)
        texts: list[str | None] = []
        for index, slot in enumerate(rescued):
            if slot:
                rescued_at.extend(repeat(index, len(slot)))
                if rescued_bytes is None:
                    texts.append(json_text(slot))
                else:
                    text, cut_here = fit_rescued(slot, rescued_bytes)
                    cut += cut_here
                    texts.append(text)
            else:
                texts.append(None)
        data.append(texts)
    return out_names, data, rescued_at, cut


# A stored row's estimate, after PostgreSQL's heap layout: a tuple header and null
# bitmap, 8-byte values aligned to 8, booleans 1 byte, text inline with a 1-byte header
# while short and otherwise (compressed or moved out of line by TOAST) at most a pointer;
# _rescued_data and uuid_ts are counted as the widest values.
_ROW_HEADER = 24
_WIDEST_VALUE = 32


def _may_exceed(columns: int, row_bytes: int) -> bool:
    return _ROW_HEADER + (columns + 9) // 8 + (columns + 2) * _WIDEST_VALUE > row_bytes


def _value_bytes(value: Any, offset: int) -> int:
    """The offset after `value` stored at `offset`."""
    kind = type(value)
    if kind is bool:
        return offset + 1
    if kind is str:
        size = len(value)
        if size < _WIDEST_VALUE:
            size = len(value.encode("utf-8"))
        return offset + min(size + 1, _WIDEST_VALUE)
    return ((offset + 7) & ~7) + 8  # bigint, double, timestamp


def _fit_rows(
    names: Sequence[str],
    fixed: Mapping[str, ColumnType],
    data: list[Iterable[Any]],
    rescued: list[dict[str, Any] | None],
    row_bytes: int,
) -> None:
    """Rescue the last data columns' values of each row estimated wider than
    `row_bytes`, until it fits: rows never fail their batch for being too wide."""
    count = len(rescued)
    columns: list[list[Any] | None] = []
    for given in data:
        columns.append(None if isinstance(given, repeat) else list(given))
    start = _ROW_HEADER + (len(names) + 9) // 8 + 2 * _WIDEST_VALUE
    for index in range(count):
        offset = start
        after: list[int] = []  # the offset after each column
        for column in columns:
            if column is not None and column[index] is not None:
                offset = _value_bytes(column[index], offset)
            after.append(offset)
        if offset <= row_bytes:
            continue
        kept_tail: list[Any] = []  # layout columns' values after the cut, kept
        at = len(names) - 1
        while at >= 0 and offset > row_bytes:
            column = columns[at]
            value = column[index] if column is not None else None
            if column is not None and value is not None:
                if names[at] in fixed:
                    kept_tail.insert(0, value)
                else:
                    slot = rescued[index]
                    if slot is None:
                        slot = rescued[index] = {}
                    rescue_value(slot, names[at], value)
                    column[index] = None
            at -= 1
            offset = after[at] if at >= 0 else start
            for value in kept_tail:
                offset = _value_bytes(value, offset)
    for at, column in enumerate(columns):
        if column is not None:
            data[at] = column


CUT_MARKER = "$sluice_cut"


def fit_rescued(slot: dict[str, Any], limit_bytes: int) -> tuple[str, int]:
    """A row's rescued values as JSON text of at most `limit_bytes` UTF-8 bytes (the
    warehouse's width for `_rescued_data`), and how many values were cut to get there.

    The widest values are replaced, one by one, by a marker object that keeps what a
    user needs to find and check the original: `{"$sluice_cut": true, "length": <chars
    of the value's JSON text>, "sha256": <of that text>, "head": <its start>}`, the
    head as long as the limit allows. The text stays valid JSON; the archive keeps the
    whole value. Should even that not do (thousands of small values), the whole object
    becomes one such marker, with `keys` the number of values it held."""
    text = json_text(slot)
    if len(text) * 4 <= limit_bytes or len(text.encode("utf-8")) <= limit_bytes:
        return text, 0
    out = dict(slot)
    whole = {key: json_text(value) for key, value in slot.items()}
    sizes = {key: len(value.encode("utf-8")) for key, value in whole.items()}
    cut = 0
    for key in sorted(whole, key=lambda k: -sizes[k]):
        if sizes[key] <= _MARKER_BYTES:
            break  # a marker would be no shorter than the value
        marker = out[key] = _marker(whole[key])
        cut += 1
        fitted = _with_head(out, marker, whole[key], limit_bytes)
        if fitted is not None:
            return fitted, cut
    marker = _marker(text)
    marker["keys"] = len(slot)
    fitted = _with_head(marker, marker, text, limit_bytes)
    return (fitted if fitted is not None else json_text(marker)), len(slot)


# What a marker takes without its head, about: beyond this a value is worth cutting.
_MARKER_BYTES = 160


def _marker(value_text: str) -> dict[str, Any]:
    return {
        CUT_MARKER: True,
        "length": len(value_text),
        "sha256": hashlib.sha256(value_text.encode("utf-8")).hexdigest(),
        "head": "",
    }


def _with_head(
    out: dict[str, Any], marker: dict[str, Any], value_text: str, limit_bytes: int
) -> str | None:
    """`out` (holding `marker`, or the marker itself) as JSON text within the limit,
    the marker's head as much of the value's start as fits; None when even an empty
    head does not fit."""
    marker["head"] = ""
    room = limit_bytes - len(json_text(out).encode("utf-8"))
    if room < 0:
        return None
    # The head's JSON escapes can make it longer than its characters: shrink it until
    # the whole text fits.
    head = value_text[:room]
    while head:
        marker["head"] = head
        text = json_text(out)
        over = len(text.encode("utf-8")) - limit_bytes
        if over <= 0:
            return text
        head = head[: max(0, len(head) - max(over, len(head) // 8, 1))]
    marker["head"] = ""
    return json_text(out)
