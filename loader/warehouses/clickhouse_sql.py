"""ClickHouse's SQL (pure, no I/O): its SqlDialect, how parameters become literals, and
the statements only ClickHouse needs. It has no UPDATE ... FROM, so what other
warehouses update is written here as new versions of rows (INSERT ... SELECT) into
ReplacingMergeTree tables, read with FINAL (the `final` setting of every connection).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from loader.rules.schema import ColumnType
from loader.warehouses import statements as st
from loader.warehouses.base import Capabilities, ProfileSpec, type_names
from loader.warehouses.dialect import SqlDialect

TS = "DateTime64(6, 'UTC')"
# Bare types: every connection sets data_type_default_nullable, so a column is Nullable
# unless declared NOT NULL (the keys), as in SQL.
CAPABILITIES = Capabilities(
    max_identifier_bytes=63,
    type_names=type_names("Bool", "Int64", "Float64", TS, "String"),
    json_type="String",  # JSON text, as written (ClickHouse's JSON type reorders keys)
    key_type="String NOT NULL",
    max_columns=2_000,
)
# FINAL on every read; SQL's NULLs in outer joins and IN; a column's name before a
# same-named alias; bare types Nullable; CREATE TABLE ... AS SELECT (reverse ETL's work
# tables) in memory; ISO 8601 text as timestamps; deletes done when they return.
SETTINGS: dict[str, Any] = {
    "final": 1,
    "join_use_nulls": 1,
    "transform_null_in": 1,
    "prefer_column_name_to_alias": 1,
    "data_type_default_nullable": 1,
    "default_table_engine": "Memory",
    "date_time_input_format": "best_effort",
    "cast_string_to_date_time_mode": "best_effort",
    "mutations_sync": 2,
    "lightweight_deletes_sync": 2,
    "max_query_size": 256 * 1024 * 1024,
}
# A retried INSERT carrying the same deduplication token is dropped if the first landed.
# Stages (Memory tables in _sluice) a crashed run left.
LEFT_STAGES = (
    "SELECT name FROM system.tables WHERE database = '_sluice' AND startsWith(name, '_stage_')"
)
TABLE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 1000, allow_nullable_key = 1"
_PARAM = re.compile(r"%\((\w+)\)s")


def sql_value(value: Any) -> str:
    """A Python value as a ClickHouse literal: parameters are bound here, the same way
    for chdb and a server. A list is a tuple, for IN."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        text = value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"toDateTime64('{text}', 6, 'UTC')"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(sql_value(v) for v in value) + ")" if value else "(NULL)"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def bind(sql: str, params: Mapping[str, Any] | None) -> str:
    return _PARAM.sub(lambda m: sql_value((params or {})[m.group(1)]), sql)


def unwrap(data_type: str) -> str:
    while data_type.startswith(("Nullable(", "LowCardinality(")):
        data_type = data_type.split("(", 1)[1][:-1]
    return data_type


class ClickHouseDialect(SqlDialect):
    sqlglot_name = "clickhouse"
    text_type = "String"
    now = "now64(6)"
    alters_column_type = False

    def __init__(self) -> None:
        c = CAPABILITIES
        super().__init__(c.type_names, c.json_type, c.key_type)

    def literal(self, text: str) -> str:
        return sql_value(text)  # a backslash is an escape in ClickHouse's strings

    def in_list(self, expr: str, name: str) -> str:
        return f"{expr} IN {self.param(name)}"

    def column_type(self, name: str, kind: ColumnType) -> str:
        # Spelled out: ALTER TABLE ... ADD COLUMN ignores data_type_default_nullable.
        sql = super().column_type(name, kind)
        return sql if sql.endswith("NOT NULL") else f"Nullable({sql})"

    def read_type(self, data_type: str) -> ColumnType:
        return super().read_type(unwrap(data_type))

    def model_type(self, data_type: str) -> ColumnType:
        t = unwrap(data_type)
        return ColumnType.TIMESTAMP if t.startswith("DateTime") else super().model_type(t)

    def whole_row_hash(self, alias: str) -> str | None:
        return f"lower(hex(MD5(formatRow('JSONEachRow', {alias}.*))))"

    def table_options(self, keys: Sequence[str], bookkeeping: str = "") -> str:
        return engine(self, keys, bookkeeping)

    def lease_expiry(self, minutes: int) -> str:
        return f"{self.now} + INTERVAL {int(minutes)} MINUTE"

    def schemas_sql(self) -> str:
        return (
            "SELECT name FROM system.databases WHERE name NOT IN "
            "('system', 'INFORMATION_SCHEMA', 'information_schema', 'default')"
        )


# --- statements ----------------------------------------------------------------------------
# A new version of a row is a whole row: `every` is the target's columns, in order.
def engine(d: SqlDialect, keys: Sequence[str], table: str = "") -> str:
    """The clause after CREATE TABLE (...): ReplacingMergeTree ordered by the key. A
    lock's claims must not replace each other: the locks table keeps every claim."""
    keys = (*keys, "holder") if table == "locks" else keys
    order = ", ".join(map(d.ident, keys)) or "tuple()"
    kind = "MergeTree" if table == "locks" else "ReplacingMergeTree"
    return f" ENGINE = {kind} ORDER BY ({order}) {TABLE_SETTINGS}"


def versions(
    d: SqlDialect, target: str, every: Sequence[str], select: Sequence[str], tail: str
) -> str:
    return (
        f"INSERT INTO {target} ({', '.join(map(d.ident, every))}) SELECT {', '.join(select)} {tail}"
    )


def insert_new(d: SqlDialect, target: str, stage: str, columns: Sequence[str]) -> str:
    """The staged rows whose id is not in the target: a hash anti-join over the target's
    ids among the staged ones (the primary key skips the rest), any version counting
    (no FINAL needed to know an id is there)."""
    there = f"SELECT id FROM {target} WHERE id IN (SELECT id FROM {stage})"
    tail = f"FROM {stage} AS s WHERE s.id NOT IN ({there}) SETTINGS final = 0"
    return versions(d, target, columns, [f"s.{d.ident(c)}" for c in columns], tail)


def fill_versions(
    d: SqlDialect, target: str, stage: str, every: Sequence[str], columns: Sequence[str]
) -> str:
    """Replay: a new version of each row there with a NULL the staged row fills; nothing
    non-NULL is overwritten, a row with nothing to fill gets no version."""
    i, fill = d.ident, st.fillable(columns)
    select = [f"coalesce(t.{i(c)}, s.{i(c)})" if c in fill else f"t.{i(c)}" for c in every]
    gaps = " OR ".join(f"(t.{i(c)} IS NULL AND s.{i(c)} IS NOT NULL)" for c in fill)
    return versions(
        d,
        target,
        every,
        select,
        f"FROM {target} AS t INNER JOIN {stage} AS s ON s.id = t.id WHERE {gaps}",
    )


def upsert_versions(
    d: SqlDialect, target: str, stage: str, every: Sequence[str], columns: Sequence[str]
) -> str:
    """New ids, and a new version of rows that differ; a column not staged (turned off)
    keeps the current version's value."""
    i = d.ident
    select = [f"s.{i(c)}" if c in columns else f"t.{i(c)}" for c in every]
    differs = [d.distinct(f"s.{i(c)}", f"t.{i(c)}") for c in columns if c not in ("id", "uuid_ts")]
    where = " OR ".join(["t.id IS NULL", *differs])
    return versions(
        d,
        target,
        every,
        select,
        f"FROM {stage} AS s LEFT JOIN {target} AS t ON t.id = s.id WHERE {where}",
    )


def deleted_versions(d: SqlDialect, target: str, every: Sequence[str]) -> str:
    """A version with `_deleted_at` = %(at)s of the rows %(ids)s not marked yet."""
    select = [d.param("at") if c == "_deleted_at" else d.ident(c) for c in every]
    where = f"WHERE _deleted_at IS NULL AND {d.in_list('id', 'ids')}"
    return versions(d, target, every, select, f"FROM {target} {where}")


def profile_versions(
    d: SqlDialect, source: str, target: str, spec: ProfileSpec, every: Sequence[str]
) -> str:
    """The profiles of %(keys)s rebuilt from all their rows, each trait's newest value
    (event time, then received_at, then id) by argMaxIf; a version only where a profile
    differs, so a replay writes nothing. A trait whose newest value was rescued is NULL,
    the value in the profile's _rescued_data; traits not synced keep their values."""
    i, lit, r = d.ident, d.literal, spec.rescued_column
    zero = "toDateTime64(0, 6, 'UTC')"
    order = (
        f'(isNotNull("timestamp"), ifNull("timestamp", {zero}), '
        f"isNotNull(received_at), ifNull(received_at, {zero}), id)"
    )
    values, pairs = [], []
    for c in spec.trait_columns:
        q = i(c)
        if r is None:
            values.append(f"argMaxIf({q}, {order}, {q} IS NOT NULL) AS {q}")
            continue
        doc = f"ifNull({i(r)}, '{{}}')"
        has = f"JSONHas({doc}, {lit(c)})"
        kept = f"argMaxIf({q} IS NULL, {order}, {q} IS NOT NULL OR {has})"
        values.append(f"if({kept}, NULL, argMaxIf({q}, {order}, {q} IS NOT NULL)) AS {q}")
        raw = f"argMaxIf(JSONExtractRaw({doc}, {lit(c)}), {order}, {has})"
        pairs.append(f"if({kept}, concat(toJSONString({lit(c)}), ':', {raw}), '')")
    if r is not None:
        kept_pairs = ", ".join(pairs) or "''"
        body = f"arrayStringConcat(arrayFilter(x -> x != '', [{kept_pairs}]), ',')"
        values.append(f"nullIf(concat('{{', {body}, '}}'), '{{}}') AS {i(r)}")
    k = i(spec.key_column)
    new = (
        f"(SELECT {k} AS id, {', '.join([*values, 'max(received_at) AS received_at'])} "
        f"FROM {source} WHERE {d.in_list(k, 'keys')} GROUP BY {k})"
    )
    compared = [*spec.trait_columns, "received_at", *([r] if r else [])]
    select = [
        d.now if c == "uuid_ts" else f"n.{i(c)}" if c in (*compared, "id") else f"c.{i(c)}"
        for c in every
    ]
    differs = " OR ".join(d.distinct(f"n.{i(c)}", f"c.{i(c)}") for c in compared)
    tail = f"FROM {new} AS n LEFT JOIN {target} AS c ON c.id = n.id WHERE c.id IS NULL OR "
    return versions(d, target, every, select, tail + differs)


def snapshot_versions(d: SqlDialect, snapshots: str, changes: str, where: str) -> str:
    """Reverse ETL: the change-set rows matching `where`, as snapshot versions."""
    return (
        f"INSERT INTO {snapshots} (model, key, row_hash, synced_at) SELECT %(model)s, "
        f"_sluice_key, _sluice_hash, {d.now} FROM {changes} "
        f"WHERE {where} AND _sluice_kind <> 'removed'"
    )


def snapshot_removals(snapshots: str, changes: str, where: str) -> str:
    return (
        f"DELETE FROM {snapshots} WHERE model = %(model)s AND key IN (SELECT _sluice_key FROM "
        f"{changes} WHERE {where} AND _sluice_kind = 'removed')"
    )


def claim(d: SqlDialect, locks: str, minutes: int) -> str:
    return (
        f"INSERT INTO {locks} (name, holder, acquired_at, expires_at) SELECT %(name)s, %(me)s, "
        f"{d.now}, {d.lease_expiry(minutes)}"
    )


def first_claim(d: SqlDialect, locks: str) -> str:
    """The earliest live claim of %(name)s: its holder has the lock."""
    return (
        f"SELECT holder FROM {locks} WHERE name = %(name)s AND expires_at > {d.now} "
        "ORDER BY acquired_at, holder LIMIT 1"
    )
