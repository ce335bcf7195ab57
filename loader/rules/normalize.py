"""Message -> rows for each Segment table. Pure: no I/O, no warehouse knowledge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, Protocol

from loader.rules.messages import Envelope, envelope_of
from loader.rules.naming import snake_case
from loader.rules.schema import ColumnType, json_text

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
EVENT_TABLE_COLUMNS = ("event", "event_text")
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

_COMMON_TYPES: dict[str, ColumnType] = {
    "id": ColumnType.TEXT,
    "anonymous_id": ColumnType.TEXT,
    "user_id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "sent_at": ColumnType.TIMESTAMP,
    "timestamp": ColumnType.TIMESTAMP,
    "original_timestamp": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
    RESCUED_COLUMN: ColumnType.TEXT,
}
# users and accounts: rebuilt from identifies/groups, keyed by user/group id.
PROFILE_FIXED: dict[str, ColumnType] = {
    "id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
}


def fixed_columns(table: str) -> dict[str, ColumnType]:
    """Columns whose type the layout fixes, in table order."""
    if table in ("users", "accounts"):
        return dict(PROFILE_FIXED)
    extra = TABLE_COLUMNS.get(table, EVENT_TABLE_COLUMNS)
    return {**_COMMON_TYPES, **{c: ColumnType.TEXT for c in extra}}


def event_table_name(event: str) -> str:
    """Event slug as a table name; never one of Segment's own tables."""
    slug = snake_case(event)
    return "_" + slug if slug in FIXED_TABLES else slug


class RowFilter(Protocol):
    """Selective sync as normalisation sees it: which tables and columns to build."""

    def table_synced(self, table: str) -> bool: ...

    def columns_kept(self, table: str) -> dict[str, bool]:
        """column -> synced for one table (decided on first lookup)."""

    def decided_names(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Tables and (table, column) pairs decided so far."""


@dataclass(slots=True)
class Row:
    table: str
    values: dict[str, Any]
    rescued: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TableChunk:
    """Rows of one table laid out for bulk work: tuples aligned to `names` (a name a row
    lacks is None there). Cheaper to ship between processes than dicts (no keys per
    row), and zip turns it into columns in one C loop."""

    names: list[str]
    rows: list[tuple[Any, ...]]
    rescued: list[dict[str, Any] | None]
    # The chunk as its file was read, when rows were dropped since (duplicates of an
    # earlier file): new columns are typed from a file as read, whatever else the
    # batch holds, so that batching never changes a type.
    as_read: TableChunk | None = None

    @classmethod
    def of_rows(cls, rows: Sequence[Row]) -> TableChunk:
        return cls.of_values([r.values for r in rows], [r.rescued or None for r in rows])

    @classmethod
    def of_values(
        cls, values: list[dict[str, Any]], rescued: list[dict[str, Any] | None]
    ) -> TableChunk:
        # Most rows of a table carry the same names in the same order (one code path
        # built them): such a row's values are its tuple as they are. Names are learnt as
        # rows bring new ones (appended, so earlier tuples stay aligned as a prefix) in
        # the same pass, rather than by a first pass over every key of every row.
        names: list[str] = list(values[0]) if values else []
        known = set(names)
        width = len(names)
        grew = False
        rows: list[tuple[Any, ...]] = []
        for v in values:
            if len(v) == width and list(v) == names:
                rows.append(tuple(v.values()))
                continue
            for name in v:
                if name not in known:
                    known.add(name)
                    names.append(name)
                    grew = True
            width = len(names)
            rows.append(tuple(map(v.get, names)))
        if grew:
            pad = (None,) * width
            rows = [r if len(r) == width else r + pad[len(r) :] for r in rows]
        return cls(names, rows, rescued)

    def columns(self) -> dict[str, tuple[Any, ...]]:
        """name -> the column's values in row order."""
        if not self.rows:
            return {name: () for name in self.names}
        return dict(zip(self.names, zip(*self.rows, strict=True), strict=True))

    def without_ids(self, ids: set[str]) -> TableChunk:
        """The chunk minus rows whose id is in `ids` (duplicates of an earlier file)."""
        at = self.names.index("id")
        keep = [i for i, row in enumerate(self.rows) if row[at] not in ids]
        return TableChunk(
            self.names,
            [self.rows[i] for i in keep],
            [self.rescued[i] for i in keep],
            self.as_read if self.as_read is not None else self,
        )


def id_text(value: Any) -> str | None:
    """An id (or event name) as the text it is stored as: a number or boolean as its
    JSON text (`42`, `true`), as Segment stores them, never Python's spelling (`True`)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Column names by parent name and key: most keys recur in every message, so the naming
# function runs once per distinct path rather than once per value. Bounded, because keys
# can be data (ids used as object keys) and a long sync must not grow without limit.
_NAMES_UNDER: dict[str, dict[Any, str]] = {}
_MAX_NAMES_PER_PARENT = 4096
_MAX_PARENTS = 16384


def _names_under(prefix: str) -> dict[Any, str]:
    names = _NAMES_UNDER.get(prefix)
    if names is None:
        names = {}
        if len(_NAMES_UNDER) < _MAX_PARENTS:
            _NAMES_UNDER[prefix] = names
    return names


def _new_name(names: dict[Any, str], prefix: str, key: Any) -> str:
    name = snake_case(f"{prefix}_{key}" if prefix else str(key))
    if len(names) < _MAX_NAMES_PER_PARENT:
        names[key] = name
    return name


def flatten_into(
    out: dict[str, Any],
    obj: dict[str, Any],
    prefix: str,
    reserved: frozenset[str] | set[str],
    rescued: dict[str, Any],
    keep: dict[str, bool] | None = None,
    guard_context: bool = False,
) -> None:
    """Nested objects joined with `_`; arrays as their JSON text; a name that is
    `reserved` (or, with `guard_context`, a `context_` name: properties and traits never
    write into context columns) goes to `rescued` under its original key.

    Two keys that name one column (`orderId`, `order_id`, `Order ID`; `a.b` and `a_b`)
    are resolved by `_resolve_collisions`: one wins the column, the others are rescued
    under their original keys. Found as a name already in `out` while writing, so only
    a message that has a collision pays for it. `keep` (selective sync) is asked per
    leaf column before its value is converted."""
    written = len(out)
    kept = len(rescued)
    if _flatten(out, obj, prefix, reserved, rescued, keep, guard_context, True):
        return
    # A collision, or a reserved name below the top level: undo and resolve slowly.
    # The fast pass only ever added keys, so what it wrote is what follows `written`.
    for name in list(out)[written:]:
        del out[name]
    for key in list(rescued)[kept:]:
        del rescued[key]
    _resolve_collisions(out, obj, prefix, reserved, rescued, keep, guard_context)


def _flatten(
    out: dict[str, Any],
    obj: dict[str, Any],
    prefix: str,
    reserved: frozenset[str] | set[str],
    rescued: dict[str, Any],
    keep: dict[str, bool] | None,
    guard_context: bool,
    top: bool,
) -> bool:
    """The common case of flatten_into; False (part written) when the slow path must
    take over: a name met twice, or a reserved one whose original key is a path."""
    names = _NAMES_UNDER.get(prefix)
    if names is None:
        names = _names_under(prefix)
    for key, value in obj.items():
        name = names.get(key)
        if name is None:
            name = _new_name(names, prefix, key)
        kind = type(value)
        if kind is dict:
            if value and not _flatten(
                out, value, name, reserved, rescued, keep, guard_context, False
            ):
                return False
            continue
        if keep is not None and not keep[name]:
            continue
        if kind is list:
            value = json_text(value)
        if name in reserved or (guard_context and name.startswith("context_")):
            if not top or key in rescued:
                return False
            rescued[key] = value
        elif name in out:
            return False
        else:
            out[name] = value
    return True


def _leaves(
    obj: dict[str, Any],
    prefix: str,
    path: str,
    keep: dict[str, bool] | None,
    into: list[tuple[str, str, Any, bool]],
    top: bool,
) -> None:
    """(column name, original key path, value, whether the key is the name already)
    for every leaf, in message order. Paths join keys with `.`; a nested key is never
    the column's name already (`a.b` is not `a_b`)."""
    names = _names_under(prefix)
    for key, value in obj.items():
        name = names.get(key)
        if name is None:
            name = _new_name(names, prefix, key)
        where = f"{path}.{key}" if path else str(key)
        if type(value) is dict:
            if value:
                _leaves(value, name, where, keep, into, False)
            continue
        if keep is not None and not keep[name]:
            continue
        if type(value) is list:
            value = json_text(value)
        exact = top and (f"{prefix}_{key}" if prefix else key) == name
        into.append((name, where, value, exact))


def _resolve_collisions(
    out: dict[str, Any],
    obj: dict[str, Any],
    prefix: str,
    reserved: frozenset[str] | set[str],
    rescued: dict[str, Any],
    keep: dict[str, bool] | None,
    guard_context: bool,
) -> None:
    """flatten_into's rule for keys that share a column: the key that is already the
    column's name (directly in `obj`: `order_id` for `order_id`) wins, else the first
    in the message; a null never takes the column from a value. The others are rescued
    under their original key paths (`orderId`, `Order ID`, `a.b`); a null loser carries
    nothing and is left out."""
    leaves: list[tuple[str, str, Any, bool]] = []
    _leaves(obj, prefix, prefix, keep, leaves, True)
    # Leaves by column name, as indexes into `leaves` (no identity tests: compiled,
    # a tuple is a value, not an object).
    by_name: dict[str, list[int]] = {}
    for at, leaf in enumerate(leaves):
        name = leaf[0]
        if name in reserved or (guard_context and name.startswith("context_")) or name in out:
            rescue_value(rescued, leaf[1], leaf[2])
            continue
        group = by_name.get(name)
        if group is None:
            by_name[name] = [at]
        else:
            group.append(at)
    for name, group in by_name.items():
        if len(group) == 1:
            out[name] = leaves[group[0]][2]
            continue
        present = [at for at in group if leaves[at][2] is not None]
        pool = present if present else group
        winner = pool[0]
        for at in pool:
            if leaves[at][3]:
                winner = at
                break
        out[name] = leaves[winner][2]
        for at in present:
            if at != winner:
                rescue_value(rescued, leaves[at][1], leaves[at][2])


def rescue_value(rescued: dict[str, Any], key: str, value: Any) -> None:
    """`value` into a row's rescued values under `key`, never over another value: a
    second one under the same key is `key#2`, then `key#3`..."""
    if key not in rescued:
        rescued[key] = value
        return
    n = 2
    while f"{key}#{n}" in rescued:
        n += 1
    rescued[f"{key}#{n}"] = value


def _common(body: Envelope, as_datetimes: bool, rescued: dict[str, Any]) -> dict[str, Any]:
    """The common columns; a context key that loses its column to another (`userAgent`
    and `user_agent`) goes to `rescued` as `context.<key>`."""
    anonymous_id = body.anonymous_id
    user_id = body.user_id
    # Parsed datetimes or their text, by the bulk path's wants.
    received_at: Any
    sent_at: Any
    timestamp: Any
    original: Any
    if as_datetimes:
        received_at, sent_at, timestamp, original = (
            body.received,
            body.sent,
            body.event_time,
            body.original,
        )
    else:
        # Validated ISO-8601 already (messages._check); the warehouse parses them in bulk.
        received_at, sent_at, timestamp, original = (
            body.received_at,
            body.sent_at,
            body.timestamp,
            body.original_timestamp,
        )
        if timestamp is None and body.event_time is not None:
            timestamp = body.event_time.astimezone(timezone.utc).isoformat()
    row: dict[str, Any] = {
        "id": body.message_id,
        "anonymous_id": anonymous_id
        if type(anonymous_id) is str and anonymous_id
        else id_text(anonymous_id),
        "user_id": user_id if type(user_id) is str and user_id else id_text(user_id),
        "received_at": received_at,
        "sent_at": sent_at,
        "timestamp": timestamp,
        "original_timestamp": original,
    }
    context = body.context
    if context:
        # Every name made here starts with `context_`: none is reserved or taken.
        flatten_into(row, context, "context", _NO_NAMES, rescued)
    return row


def rows_for(
    body: Envelope | dict[str, Any],
    row_filter: RowFilter | None = None,
    as_datetimes: bool = False,
) -> list[Row]:
    """Every row one validated message produces, by table (a dict is a message parsed
    elsewhere, taken as valid).

    With a row_filter, turned-off tables are never built and turned-off columns never
    enter a row. `as_datetimes` writes the common timestamp columns as the datetimes
    messages._check parsed (for a bulk format that wants them) instead of their text.
    """
    if not isinstance(body, Envelope):
        body = envelope_of(body)
        as_datetimes = False  # only the event time was parsed
    tables: TableRows = {}
    rows_into(tables, body, row_filter, as_datetimes)
    return [Row(table, values[0], rescued[0] or {}) for table, (values, rescued) in tables.items()]


def _only(values: dict[str, Any], table: str, f: RowFilter) -> dict[str, Any]:
    keep = f.columns_kept(table)
    return {k: v for k, v in values.items() if keep[k]}


def _keep(table: str, f: RowFilter | None) -> dict[str, bool] | None:
    return None if f is None else f.columns_kept(table)


TableRows = dict[str, tuple[list[dict[str, Any]], list[dict[str, Any] | None]]]


def rows_into(tables: TableRows, body: Envelope, f: RowFilter | None, as_datetimes: bool) -> None:
    """rows_for, appending each row to `tables` (table -> (values, rescued or None)):
    a reader's per-message loop, without a Row per row."""
    kind = body.type
    if kind == "track":
        event = body.event
        event_text = event if type(event) is str else str(id_text(event))
        table = event_table_name(event_text)
        tracks_on = f is None or f.table_synced("tracks")
        event_on = f is None or f.table_synced(table)
        if not (tracks_on or event_on):
            return
        # The common columns plus the event's: the `tracks` row as it is (a row is never
        # changed once built), and the start of the event table's row.
        context_rescued: dict[str, Any] = {}
        base = _common(body, as_datetimes, context_rescued)
        base["event"] = snake_case(event_text)
        base["event_text"] = event_text
        if tracks_on:
            tracks_rescued = dict(context_rescued) if context_rescued else None
            _append(
                tables, "tracks", base if f is None else _only(base, "tracks", f), tracks_rescued
            )
        if event_on:
            values = dict(base) if f is None else _only(base, table, f)
            rescued: dict[str, Any] = context_rescued
            properties = body.properties or {}
            flatten_into(values, properties, "", _TRACK_RESERVED, rescued, _keep(table, f), True)
            _append(tables, table, values, rescued)
        return
    table = _TABLE_OF_KIND[kind]
    if f is not None and not f.table_synced(table):
        return
    rescued = {}
    common = _common(body, as_datetimes, rescued)
    if f is not None:
        common = _only(common, table, f)
    keep = _keep(table, f)
    if kind in ("page", "screen"):
        name, category = body.name, body.category
        values = {
            **common,
            "name": name if name is None or type(name) is str else id_text(name),
            "category": category
            if category is None or type(category) is str
            else id_text(category),
        }
        properties = body.properties or {}
        # Segment stores the page name once; a `name` property duplicating it is not data.
        if "name" in properties and properties["name"] == values["name"]:
            properties = {k: v for k, v in properties.items() if k != "name"}
        flatten_into(values, properties, "", _PAGE_RESERVED, rescued, keep, True)
        if f is not None:
            values = _only(values, table, f)
    elif kind == "identify":
        values = dict(common)
        flatten_into(values, body.traits or {}, "", CORE_COLUMNS, rescued, keep, True)
    elif kind == "group":
        values = {**common, "group_id": id_text(body.group_id)}
        traits = body.traits or {}
        flatten_into(values, traits, "", _GROUP_RESERVED, rescued, keep, True)
    else:  # alias
        values = {**common, "previous_id": id_text(body.previous_id)}
        if f is not None:
            values = _only(values, table, f)
    _append(tables, table, values, rescued)


def _append(
    tables: TableRows, table: str, values: dict[str, Any], rescued: dict[str, Any] | None
) -> None:
    rows = tables.get(table)
    if rows is None:
        rows = tables[table] = ([], [])
    rows[0].append(values)
    rows[1].append(rescued or None)


_NO_NAMES: frozenset[str] = frozenset()
_TRACK_RESERVED = CORE_COLUMNS | frozenset(EVENT_TABLE_COLUMNS)
_PAGE_RESERVED = CORE_COLUMNS | frozenset({"name", "category"})
_GROUP_RESERVED = CORE_COLUMNS | frozenset({"group_id"})

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
