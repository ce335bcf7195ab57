"""Message -> rows for each Segment table. Pure: no I/O, no warehouse knowledge."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
) -> None:
    """Nested objects joined with `_`; arrays as their JSON text; reserved names rescued."""
    for key, value in obj.items():
        name = snake_case(f"{prefix}_{key}" if prefix else str(key))
        if isinstance(value, dict):
            if value:
                flatten_into(out, value, name, reserved, rescued)
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


def rows_for(body: dict[str, Any]) -> list[Row]:
    """Every row one validated message produces, by table."""
    kind = body["type"].lower()
    common = _common(body)
    if kind == "track":
        event_text = str(body["event"])
        base = {**common, "event": snake_case(event_text), "event_text": event_text}
        reserved = CORE_COLUMNS | set(EVENT_TABLE_COLUMNS) | set(common)
        values = dict(base)
        rescued: dict[str, Any] = {}
        flatten_into(values, body.get("properties") or {}, "", reserved, rescued)
        return [Row("tracks", base), Row(event_table_name(event_text), values, rescued)]
    if kind in ("page", "screen"):
        table = kind + "s"
        values = {**common, "name": body.get("name"), "category": body.get("category")}
        rescued = {}
        reserved = CORE_COLUMNS | {"name", "category"} | set(common)
        properties = dict(body.get("properties") or {})
        # Segment stores the page name once; a `name` property duplicating it is not data.
        if properties.get("name") == values["name"]:
            properties.pop("name", None)
        flatten_into(values, properties, "", reserved, rescued)
        return [Row(table, values, rescued)]
    if kind == "identify":
        values = dict(common)
        rescued = {}
        flatten_into(values, body.get("traits") or {}, "", CORE_COLUMNS | set(common), rescued)
        return [Row("identifies", values, rescued)]
    if kind == "group":
        values = {**common, "group_id": _id_text(body.get("groupId"))}
        rescued = {}
        reserved = CORE_COLUMNS | {"group_id"} | set(common)
        flatten_into(values, body.get("traits") or {}, "", reserved, rescued)
        return [Row("groups", values, rescued)]
    # alias
    return [Row("aliases", {**common, "previous_id": _id_text(body.get("previousId"))})]
