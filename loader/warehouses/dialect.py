"""How a warehouse's SQL writes names, types, parameters and the few functions that differ.

Pure: no connection, no I/O. `statements.py` writes every operation once in terms of
these facts; an adapter subclasses SqlDialect and overrides only what its warehouse
writes differently. The defaults are PostgreSQL's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from loader.rules.schema import ColumnType

# Statements carry pyformat parameters (`%(name)s`); drivers whose client takes another
# style convert them with rename_params.
_PARAM = re.compile(r"%\((\w+)\)s")


def rename_params(sql: str, render: Any) -> str:
    """Every `%(name)s` replaced by render(name) (`$name`, `@name`...)."""
    return _PARAM.sub(lambda m: render(m.group(1)), sql)


def positional(sql: str, params: Mapping[str, Any], mark: str = "%s") -> tuple[str, list[Any]]:
    """pyformat -> positional parameters, a list-valued one expanded into one mark per
    item (an empty list matches nothing: NULL). For clients without array parameters."""
    values: list[Any] = []

    def one(match: re.Match[str]) -> str:
        value = params[match.group(1)]
        if isinstance(value, (list, tuple)):
            values.extend(value)
            return ", ".join([mark] * len(value)) if value else "NULL"
        values.append(value)
        return mark

    return _PARAM.sub(one, sql), values


class SqlDialect:
    sqlglot_name = "postgres"
    # Text columns of bookkeeping tables and keys compared as text (a dialect whose plain
    # text type is short widens these).
    text_type = "text"
    now = "current_timestamp"
    # Keys bound in one list parameter at most (statements over more run in chunks).
    max_list = 50_000

    def __init__(
        self,
        type_names: Mapping[ColumnType, str],
        json_type: str,
        key_type: str | None = None,
    ) -> None:
        self.type_names = dict(type_names)
        self.json_type = json_type
        self.key_type = key_type

    # --- names -------------------------------------------------------------------------
    def ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def schema_ref(self, schema: str) -> str:
        return self.ident(schema)

    def table_ref(self, schema: str, table: str) -> str:
        return f"{self.schema_ref(schema)}.{self.ident(table)}"

    def literal(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    # --- parameters --------------------------------------------------------------------
    def param(self, name: str) -> str:
        return f"%({name})s"

    def equals(self, *columns: str) -> str:
        """Each column equal to the parameter of its name."""
        return " AND ".join(f"{self.ident(c)} = {self.param(c)}" for c in columns)

    def in_list(self, expr: str, name: str) -> str:
        """`expr` matched against the list-valued parameter `name`."""
        return f"{expr} = ANY({self.param(name)})"

    def update_target(self, target: str, alias: str) -> tuple[str, str]:
        """An UPDATE's target clause and how its columns are referred to (a dialect
        without aliases on UPDATE refers to the table by its name)."""
        return f"{target} AS {alias}", alias

    def primary_key(self, columns: Sequence[str]) -> str:
        """A CREATE TABLE's key clause (empty where keys cannot be declared as plain
        PRIMARY KEY: every write is an anti-join on the key anyway)."""
        return f", PRIMARY KEY ({', '.join(self.ident(c) for c in columns)})"

    def id_key(self) -> str:
        """An event or object table's key clause on `id`."""
        return self.primary_key(["id"])

    def table_options(self, keys: Sequence[str], bookkeeping: str = "") -> str:
        """What follows a CREATE TABLE's column list (a table engine and its order);
        `bookkeeping` names the _sluice table being made, if it is one."""
        return ""

    def distinct(self, a: str, b: str) -> str:
        return f"{a} IS DISTINCT FROM {b}"

    def same(self, a: str, b: str) -> str:
        return f"{a} IS NOT DISTINCT FROM {b}"

    # ALTER COLUMN ... TYPE keeps a column's place (a retype otherwise rebuilds it).
    alters_column_type = True

    def cast(self, expr: str, sql_type: str) -> str:
        return f"CAST({expr} AS {sql_type})"

    # --- types -------------------------------------------------------------------------
    def column_type(self, name: str, kind: ColumnType) -> str:
        """A data column's SQL type (the rescued JSON column and the key are special)."""
        if name == "_rescued_data":
            return self.json_type
        if name == "id" and self.key_type is not None:
            return self.key_type
        return self.type_names[kind]

    @property
    def timestamp(self) -> str:
        return self.type_names[ColumnType.TIMESTAMP]

    @property
    def bigint(self) -> str:
        return self.type_names[ColumnType.BIGINT]

    def read_type(self, data_type: str) -> ColumnType:
        """information_schema's data_type -> ColumnType (text for anything else)."""
        name = data_type.lower().split("(")[0].strip()
        for kind, sql in self.type_names.items():
            if sql.lower().split("(")[0] == name:
                return kind
        return _READ_TYPES.get(name, ColumnType.TEXT)

    # --- functions that differ ---------------------------------------------------------
    def json_text(self, expr: str) -> str:
        """JSON text (as staged) into the rescued column's type."""
        return self.cast(expr, self.json_type)

    def first_non_null(self, value: str, partition: str, order: str) -> str:
        """A window expression: `value` of the first row (in `order`) where it is not NULL.
        Portable form: NULLs ordered last (PostgreSQL has no IGNORE NULLS)."""
        return (
            f"FIRST_VALUE({value}) OVER (PARTITION BY {partition} ORDER BY CASE WHEN {value} "
            f"IS NULL THEN 1 ELSE 0 END, {order} "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        )

    def latest_non_null(self, value: str, order: str) -> str | None:
        """An aggregate: `value` of the first row in `order` where it is not NULL; None
        where the dialect has none (profile_rows then takes first_non_null, a window per
        trait, which sorts each key's rows once per trait)."""
        return None

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    # Reverse ETL: how a staged model row is hashed. A dialect that hashes a whole row
    # in SQL (row_to_json...) says so here; the others hash typed columns after staging.
    def whole_row_hash(self, alias: str) -> str | None:
        return f"md5(CAST(row_to_json({alias}) AS text))"

    def row_hash(self, columns: Sequence[tuple[str, ColumnType]]) -> str:
        """A hash of these typed columns, each value length-prefixed, NULL distinct
        from ''."""
        parts = [self._hash_part(self.ident(c), k) for c, k in columns]
        return f"md5({(' || ' + self.literal('|') + ' || ').join(parts) or self.literal('')})"

    def _hash_part(self, expr: str, kind: ColumnType) -> str:
        text = self.as_text(expr, kind)
        return f"COALESCE('v' || CAST(length({text}) AS {self.text_type}) || ':' || {text}, 'n')"

    def as_text(self, expr: str, kind: ColumnType) -> str:
        if kind is ColumnType.BOOLEAN:
            return f"CASE WHEN {expr} THEN 'true' WHEN NOT {expr} THEN 'false' END"
        return self.cast(expr, self.text_type)

    def limit(self, n: int) -> str:
        return f" LIMIT {int(n)}"

    def lease_expiry(self, minutes: int) -> str:
        return f"{self.now} + INTERVAL '{int(minutes)} minutes'"

    def lock_table(self, table: str) -> str | None:
        """A statement serialising lease takers on the locks table, if the dialect has one."""
        return None

    # Narrows information_schema reads to this database (DuckDB lists every attached one).
    catalog_filter = ""

    def schemas_sql(self) -> str:
        return (
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            f"WHERE table_schema IS NOT NULL{self.catalog_filter}"
        )

    def clip_text(self, text: str) -> str:
        """Bookkeeping text as the dialect's text column holds it (unbounded here)."""
        return text

    def model_type(self, data_type: str) -> ColumnType:
        """Coarse type of a reverse-ETL model's column (for a destination table)."""
        t = data_type.lower()
        if t.startswith(("bigint", "integer", "smallint", "hugeint", "tinyint", "int", "uint")):
            if not t.startswith("interval"):
                return ColumnType.BIGINT
        if t.startswith(("numeric", "decimal", "double", "real", "float")):
            return ColumnType.DOUBLE
        if t.startswith("bool"):
            return ColumnType.BOOLEAN
        if t.startswith("timestamp"):
            return ColumnType.TIMESTAMP
        return ColumnType.TEXT


# Type names seen in information_schema beyond the ones Sluice creates.
_READ_TYPES: dict[str, ColumnType] = {
    **dict.fromkeys(("boolean", "bool"), ColumnType.BOOLEAN),
    **dict.fromkeys(("bigint", "integer", "int64", "number"), ColumnType.BIGINT),
    **dict.fromkeys(("double precision", "double", "float", "float64"), ColumnType.DOUBLE),
    **dict.fromkeys(
        ("timestamp with time zone", "timestamp_tz", "timestamp"), ColumnType.TIMESTAMP
    ),
}
