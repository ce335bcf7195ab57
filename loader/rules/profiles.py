"""The latest-per-trait rule of the profile tables (`users`, `accounts`), for the keys
whose history holds rescued values. Pure: no I/O.

The SQL every warehouse runs (statements.profile_rows) takes a trait's newest non-NULL
column value; a value rescued into `_rescued_data` has no column value, so the keys that
hold one are rebuilt here, where the rule can follow a trait into the rescued JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loader.rules.schema import json_text


def _newest_first(row: Sequence[Any]) -> tuple[Any, ...]:
    ts, received = row[1], row[2]
    return (ts is not None, ts if ts is not None else 0, received is not None, received or 0)


def _as_object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    # The standard library keeps integers past 64 bits exact (orjson reads them as floats).
    parsed = json.loads(value) if isinstance(value, (str, bytes)) else value
    return parsed if isinstance(parsed, dict) else {}


def rescued_profile_rows(
    history: Sequence[Sequence[Any]],
    current: Sequence[Sequence[Any]],
    traits: Sequence[str],
    uuid_ts: str,
) -> list[tuple[Any, ...]]:
    """Profile rows rebuilt in Python, for the keys whose history holds rescued values
    (rare; the adapters whose SQL has no JSON lookup to share take this path).

    `history`: (key, timestamp, received_at, *traits, rescued JSON) per source row;
    `current`: (id, *traits, received_at, rescued JSON) per profile row. A trait takes
    its value from the newest row that has it, in its column or rescued: rescued, the
    column is NULL and the value goes to the profile's rescued JSON. Returns rows
    (id, *traits, received_at, uuid_ts, rescued JSON text) only for profiles that are
    new or differ from `current`, so an unchanged profile keeps its uuid_ts."""
    by_key: dict[Any, list[Sequence[Any]]] = {}
    for row in history:
        by_key.setdefault(row[0], []).append(row)
    have = {row[0]: row for row in current}
    out: list[tuple[Any, ...]] = []
    n = len(traits)
    for key, rows in by_key.items():
        rows = sorted(rows, key=_newest_first, reverse=True)
        values: list[Any] = []
        rescued: dict[str, Any] = {}
        for i, trait in enumerate(traits):
            for row in rows:
                kept = _as_object(row[3 + n])
                if row[3 + i] is not None or trait in kept:
                    values.append(row[3 + i])
                    if row[3 + i] is None:
                        rescued[trait] = kept[trait]
                    break
            else:
                values.append(None)
        received = max((r[2] for r in rows if r[2] is not None), default=None)
        old = have.get(key)
        if (
            old is not None
            and list(old[1 : 1 + n]) == values
            and old[1 + n] == received
            and _as_object(old[2 + n]) == rescued
        ):
            continue
        text = json_text(rescued) if rescued else None
        out.append((key, *values, received, uuid_ts, text))
    return out


def extendable_keys(
    evidence: Iterable[Sequence[Any]],
    marks: Mapping[str, Any],
    profiles: Mapping[str, bool],
) -> list[str]:
    """The keys whose profile their new rows alone may update: the profile exists and
    holds nothing rescued, every new row has an event time, none holds a rescued value,
    and the first of them follows the key's mark (the newest event time the profile has
    seen). Any other key is rebuilt from all its rows.

    `evidence`: (key, first event time, last, rows without one, rows with a rescued
    value) over each key's new rows; `marks`: key -> mark; `profiles`: key -> whether
    the profile holds a rescued value."""
    out = []
    for key, first, _last, untimed, rescued in evidence:
        mark = marks.get(key)
        if (
            not untimed
            and not rescued
            and key in profiles
            and not profiles[key]
            and mark is not None
            and first is not None
            and mark < first
        ):
            out.append(key)
    return out
