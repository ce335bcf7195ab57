"""Timestamp columns as aware UTC datetimes, for the bulk encoders (COPY binary, Arrow)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import repeat
from operator import attrgetter
from typing import Any

from loader.rules.messages import parse_timestamp

_PARSED = frozenset({datetime, type(None)})


def aware_datetimes(values: Iterable[Any]) -> Sequence[datetime | None]:
    """ISO-8601 text (validated or coerced already) as aware datetimes, column-wise;
    a column the reader parsed already (common times: aware datetimes) as it is."""
    values = values if isinstance(values, (list, tuple)) else list(values)
    kinds = set(map(type, values))
    if kinds <= _PARSED:
        return values
    if datetime in kinds:  # parsed and text together: only a re-laid-out chunk
        return [v if v is None or type(v) is datetime else parse_timestamp(v) for v in values]
    try:
        parsed: list[datetime | None] = list(map(datetime.fromisoformat, values))
    except (TypeError, ValueError):  # NULLs, or a form only parse_timestamp reads
        return [None if v is None else parse_timestamp(v) for v in values]
    if None in set(map(attrgetter("tzinfo"), parsed)):
        return [parse_timestamp(v) for v in values]  # offset-less text is UTC
    return parsed


def timestamp_column(column: Iterable[Any], rows: int) -> Iterable[datetime | None]:
    """A timestamp column as aware datetimes; `uuid_ts` (one value repeated for every
    row) parsed once."""
    if isinstance(column, repeat):
        return repeat(parse_timestamp(next(column, None)), rows)
    return aware_datetimes(column)
