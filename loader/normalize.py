"""Message -> rows for each Segment table. Pure: no I/O, no warehouse knowledge."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from loader.messages import corrected_timestamp
from loader.naming import snake_case

# Segment's common columns, as one rules table: column -> how it is read from a message.
COMMON_COLUMNS: tuple[str, ...] = (
    "id",
    "anonymous_id",
    "user_id",
    "received_at",
    "sent_at",
    "timestamp",
    "original_timestamp",
    "uuid_ts",
)
RESCUED_COLUMN = "_rescued_data"
CORE_COLUMNS: frozenset[str] = frozenset(COMMON_COLUMNS) | {RESCUED_COLUMN}
# Columns specific to a table: they are not overwritten by a property/trait of that name.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "tracks": ("event", "event_text"),
    "pages": ("name", "category"),
    "screens": ("name", "category"),
    "identifies": (),
    "groups": ("group_id",),
    "aliases": ("previous_id",),
    "users": (),
    "accounts": (),
}
FIXED_TABLES = frozenset(TABLE_COLUMNS)
EVENT_TABLE_COLUMNS = ("event", "event_text")


def event_table_name(event: str) -> str:
    """Event slug as a table name; never one of Segment's own tables."""
    slug = snake_case(event)
    return "_" + slug if slug in FIXED_TABLES else slug


class RowFilter(Protocol):
    """Selective sync as normalisation sees it: which tables and columns to build."""

    def table_synced(self, table: str) -> bool: ...

    def columns_kept(self, table: str) -> dict[str, bool]:
        """column -> synced for one table (decided on first lookup)."""


@dataclass(slots=True)
class Row:
    table: str
    values: dict[str, Any]
    rescued: dict[str, Any] = field(default_factory=dict)


def _iso_dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _id_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def flatten_into(
    out: dict[str, Any],
    obj: dict[str, Any],
    prefix: str,
    reserved: frozenset[str] | set[str],
    rescued: dict[str, Any],
    keep: dict[str, bool] | None = None,
) -> None:
    """Nested objects joined with `_`; arrays as their JSON text; reserved names rescued.

    `keep` (selective sync) is asked per leaf column before its value is converted.
    """
    for key, value in obj.items():
        name = snake_case(f"{prefix}_{key}" if prefix else str(key))
        if isinstance(value, dict):
            if value:
                flatten_into(out, value, name, reserved, rescued, keep)
            continue
        if keep is not None and not keep[name]:
            continue
        if isinstance(value, list):
            value = orjson.dumps(value).decode()
        if name in reserved:
            rescued[name] = value
            continue
        out[name] = value


def _common(body: dict[str, Any]) -> dict[str, Any]:
    ts = corrected_timestamp(body) if body.get("timestamp") is None else None
    row: dict[str, Any] = {
        "id": body["messageId"],
        "anonymous_id": _id_text(body.get("anonymousId")),
        "user_id": _id_text(body.get("userId")),
        # Validated ISO-8601 already (messages._check); the warehouse parses them in bulk.
        "received_at": body.get("receivedAt"),
        "sent_at": body.get("sentAt"),
        "timestamp": body["timestamp"] if body.get("timestamp") is not None else _iso_dt(ts),
        "original_timestamp": body.get("originalTimestamp"),
    }
    context = body.get("context")
    if context:
        flatten_into(row, {"context": context}, "", CORE_COLUMNS, {})
    return row


def rows_for(body: dict[str, Any], row_filter: RowFilter | None = None) -> list[Row]:
    """Every row one validated message produces, by table.

    With a row_filter, turned-off tables are never built and turned-off columns never
    enter a row.
    """
    if row_filter is None:
        return _rows(body, None)
    return _rows(body, row_filter)


def _only(values: dict[str, Any], table: str, f: RowFilter) -> dict[str, Any]:
    keep = f.columns_kept(table)
    return {k: v for k, v in values.items() if keep[k]}


def _keep(table: str, f: RowFilter | None) -> dict[str, bool] | None:
    return None if f is None else f.columns_kept(table)


def _rows(body: dict[str, Any], f: RowFilter | None) -> list[Row]:
    kind = body["type"].lower()
    if kind == "track":
        event_text = str(body["event"])
        table = event_table_name(event_text)
        tracks_on = f is None or f.table_synced("tracks")
        event_on = f is None or f.table_synced(table)
        if not (tracks_on or event_on):
            return []
        common = _common(body)
        base = {**common, "event": snake_case(event_text), "event_text": event_text}
        out = []
        if tracks_on:
            out.append(Row("tracks", base if f is None else _only(base, "tracks", f)))
        if event_on:
            reserved = CORE_COLUMNS | set(EVENT_TABLE_COLUMNS) | set(common)
            values = dict(base) if f is None else _only(base, table, f)
            rescued: dict[str, Any] = {}
            properties = body.get("properties") or {}
            flatten_into(values, properties, "", reserved, rescued, _keep(table, f))
            out.append(Row(table, values, rescued))
        return out
    table = _TABLE_OF_KIND[kind]
    if f is not None and not f.table_synced(table):
        return []
    common = _common(body)
    if f is not None:
        common = _only(common, table, f)
    keep = _keep(table, f)
    rescued = {}
    if kind in ("page", "screen"):
        values = {**common, "name": body.get("name"), "category": body.get("category")}
        reserved = CORE_COLUMNS | {"name", "category"} | set(common)
        properties = dict(body.get("properties") or {})
        # Segment stores the page name once; a `name` property duplicating it is not data.
        if properties.get("name") == values["name"]:
            properties.pop("name", None)
        flatten_into(values, properties, "", reserved, rescued, keep)
        if f is not None:
            values = _only(values, table, f)
        return [Row(table, values, rescued)]
    if kind == "identify":
        values = dict(common)
        flatten_into(
            values, body.get("traits") or {}, "", CORE_COLUMNS | set(common), rescued, keep
        )
        return [Row(table, values, rescued)]
    if kind == "group":
        values = {**common, "group_id": _id_text(body.get("groupId"))}
        reserved = CORE_COLUMNS | {"group_id"} | set(common)
        flatten_into(values, body.get("traits") or {}, "", reserved, rescued, keep)
        return [Row(table, values, rescued)]
    # alias
    values = {**common, "previous_id": _id_text(body.get("previousId"))}
    if f is not None:
        values = _only(values, table, f)
    return [Row(table, values)]


_TABLE_OF_KIND = {
    "page": "pages",
    "screen": "screens",
    "identify": "identifies",
    "group": "groups",
    "alias": "aliases",
}


# Columns every object table has besides the object's own fields.
DELETED_COLUMN = "_deleted_at"
OBJECT_RESERVED = CORE_COLUMNS | {DELETED_COLUMN}


def object_id(obj: dict[str, Any]) -> str:
    value = obj.get("id", obj.get("Id"))
    return str(value)


def object_row(
    table: str,
    obj: dict[str, Any],
    fetched_at: str,
    deleted: bool,
    keep: dict[str, bool] | None = None,
) -> Row:
    """One upstream object as a row: its fields flattened by the event rules, plus when
    Sluice fetched it and, if deleted upstream, since when."""
    values: dict[str, Any] = {
        "id": object_id(obj),
        "received_at": fetched_at,
        DELETED_COLUMN: fetched_at if deleted else None,
    }
    rescued: dict[str, Any] = {}
    fields = {k: v for k, v in obj.items() if k not in ("id", "Id")}
    flatten_into(values, fields, "", OBJECT_RESERVED, rescued, keep)
    return Row(table, values, rescued)
