"""SQL shared by warehouses that speak PostgreSQL's dialect (PostgreSQL, DuckDB).

Adapters subclass this and supply the connection, placeholders and the bulk stage;
everything here quotes identifiers and passes values as parameters.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from loader.messages import Reject
from loader.schema import ColumnType
from loader.warehouses.base import BOOKKEEPING_SCHEMA, ProfileSpec, TableStats, Warehouse


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{quote(schema)}.{quote(table)}"


class SqlFamilyWarehouse(Warehouse):
    placeholder = "%s"

    # --- hooks --------------------------------------------------------------------
    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement, discarding any result."""

    @abstractmethod
    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per parameter row (small bookkeeping writes only)."""

    def _in_list(self) -> str:
        """SQL fragment matching a column against one list-valued parameter."""
        return f"= ANY({self.placeholder})"

    # --- schema -------------------------------------------------------------------
    def ensure_bookkeeping(self) -> None:
        b = quote(BOOKKEEPING_SCHEMA)
        j = self.capabilities.json_type
        ts = self.capabilities.type_names[ColumnType.TIMESTAMP]
        with self.transaction():
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.loaded_files (schema_name text NOT NULL, "
                f"file text NOT NULL, lines bigint, loaded_at {ts} DEFAULT current_timestamp, "
                "PRIMARY KEY (schema_name, file))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.rejected_events (schema_name text NOT NULL, "
                "file text NOT NULL, line bigint, raw text, reason text NOT NULL, "
                f"rejected_at {ts} DEFAULT current_timestamp)"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.sync_runs (run_id text PRIMARY KEY, "
                f"schema_name text, target text, status text, started_at {ts}, "
                f"finished_at {ts}, report {j})"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.cursors (schema_name text NOT NULL, "
                "collection text NOT NULL, cursor text NOT NULL, "
                f"updated_at {ts} DEFAULT current_timestamp, "
                "PRIMARY KEY (schema_name, collection))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.turned_off_names (schema_name text NOT NULL, "
                "table_name text NOT NULL, column_name text NOT NULL, "
                f"first_seen {ts} DEFAULT current_timestamp, "
                "PRIMARY KEY (schema_name, table_name, column_name))"
            )

    def read_schema(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        reverse = {v.lower(): k for k, v in self.capabilities.type_names.items()}
        reverse.update(self._type_aliases())
        out: dict[str, dict[str, ColumnType]] = {}
        rows = self._fetchall(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = {self.placeholder} ORDER BY table_name, ordinal_position",
            (schema,),
        )
        for table, column, data_type in rows:
            kind = reverse.get(str(data_type).lower(), ColumnType.TEXT)
            out.setdefault(table, {})[column] = kind
        return out

    def _type_aliases(self) -> dict[str, ColumnType]:
        return {}

    def _column_sql(self, name: str, kind: ColumnType) -> str:
        if name == "_rescued_data":
            return f"{quote(name)} {self.capabilities.json_type}"
        return f"{quote(name)} {self.capabilities.type_names[kind]}"

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        cols = ", ".join(self._column_sql(n, k) for n, k in columns.items())
        self._execute(f"CREATE TABLE {qualified(schema, table)} ({cols}, PRIMARY KEY (id))")
        self._after_create(schema, table, columns)

    def _after_create(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        """Indexes a warehouse wants (e.g. received_at); none by default."""

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        for name, kind in columns.items():
            self._execute(
                f"ALTER TABLE {qualified(schema, table)} ADD COLUMN {self._column_sql(name, kind)}"
            )

    # --- bulk writes: staged rows, then one set-based statement --------------------
    @abstractmethod
    def _stage_insert(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> int:
        """Bulk-stage rows through the adapter's fast path, then one INSERT ... SELECT
        with `conflict` (ON CONFLICT ...); returns the rows inserted or updated."""

    def insert_new_rows(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        fill_nulls: bool = False,
    ) -> int:
        return self._stage_insert(
            schema, table, columns, rows, self._conflict_clause(quote(table), columns, fill_nulls)
        )

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c != "id")
        return self._stage_insert(
            schema, table, columns, rows, f"ON CONFLICT (id) DO UPDATE SET {sets}"
        )

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        if not ids:
            return 0
        stub = [(i, at, at, at) for i in ids]
        columns = ("id", "received_at", "uuid_ts", "_deleted_at")
        self.insert_new_rows(schema, table, columns, stub)
        p = self.placeholder
        self._execute(
            f"UPDATE {qualified(schema, table)} SET _deleted_at = CAST({p} AS "
            f"{self.capabilities.type_names[ColumnType.TIMESTAMP]}) "
            f"WHERE _deleted_at IS NULL AND id {self._in_list()}",
            (at, list(ids)),
        )
        return len(ids)

    def read_cursors(self, schema: str) -> dict[str, str]:
        rows = self._fetchall(
            f"SELECT collection, cursor FROM {quote(BOOKKEEPING_SCHEMA)}.cursors "
            f"WHERE schema_name = {self.placeholder}",
            (schema,),
        )
        return dict(rows)

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        b, p = quote(BOOKKEEPING_SCHEMA), self.placeholder
        self._execute(
            f"DELETE FROM {b}.cursors WHERE schema_name = {p} AND collection = {p}",
            (schema, collection),
        )
        self._execute(
            f"INSERT INTO {b}.cursors (schema_name, collection, cursor) VALUES ({p}, {p}, {p})",
            (schema, collection, cursor),
        )

    # --- profiles (users, accounts) ------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        target = qualified(schema, spec.table)
        source = qualified(schema, spec.source_table)
        order = 'ORDER BY "timestamp" DESC NULLS LAST, received_at DESC NULLS LAST'
        traits = [
            f"(array_agg({quote(c)} {order}) FILTER (WHERE {quote(c)} IS NOT NULL))[1]"
            for c in spec.trait_columns
        ]
        cols = ["id", *spec.trait_columns, "received_at", "uuid_ts"]
        select = ", ".join(
            [quote(spec.key_column), *traits, "max(received_at)", "current_timestamp"]
        )
        key = quote(spec.key_column)
        self._execute(f"DELETE FROM {target} WHERE id {self._in_list()}", (list(keys),))
        self._execute(
            f"INSERT INTO {target} ({', '.join(quote(c) for c in cols)}) SELECT {select} "
            f"FROM {source} WHERE {key} {self._in_list()} GROUP BY {key}",
            (list(keys),),
        )
        return len(keys)

    # --- bookkeeping ----------------------------------------------------------------
    def loaded_files(self, schema: str) -> set[str]:
        rows = self._fetchall(
            f"SELECT file FROM {quote(BOOKKEEPING_SCHEMA)}.loaded_files "
            f"WHERE schema_name = {self.placeholder}",
            (schema,),
        )
        return {r[0] for r in rows}

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        if files:
            # A replay records files that may be in the ledger already.
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "loaded_files",
                ("schema_name", "file", "lines"),
                [(schema, file, lines) for file, lines in files],
                skip_existing=True,
            )

    def record_turned_off(self, schema: str, names: Sequence[tuple[str, str]]) -> None:
        if names:
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "turned_off_names",
                ("schema_name", "table_name", "column_name"),
                [(schema, table, column) for table, column in names],
                skip_existing=True,
            )

    def turned_off_names(self, schema: str) -> dict[str, set[str]]:
        rows = self._fetchall(
            f"SELECT table_name, column_name FROM {quote(BOOKKEEPING_SCHEMA)}.turned_off_names "
            f"WHERE schema_name = {self.placeholder}",
            (schema,),
        )
        out: dict[str, set[str]] = {}
        for table, column in rows:
            out.setdefault(table, set()).add(column)
        return out

    def _conflict_clause(self, target: str, columns: Sequence[str], fill_nulls: bool) -> str:
        """What to do with a staged row whose id is there already."""
        fillable = [c for c in columns if c not in ("id", "uuid_ts", "_rescued_data")]
        if not fill_nulls or not fillable:
            return "ON CONFLICT (id) DO NOTHING"
        sets = ", ".join(
            f"{quote(c)} = COALESCE({target}.{quote(c)}, excluded.{quote(c)})" for c in fillable
        )
        changed = " OR ".join(
            f"({target}.{quote(c)} IS NULL AND excluded.{quote(c)} IS NOT NULL)" for c in fillable
        )
        return f"ON CONFLICT (id) DO UPDATE SET {sets} WHERE {changed}"

    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        self.insert_plain(
            BOOKKEEPING_SCHEMA,
            "rejected_events",
            ("schema_name", "file", "line", "raw", "reason"),
            [(schema, r.file, r.line, r.raw, r.reason) for r in rejects],
        )

    def insert_plain(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        skip_existing: bool = False,
    ) -> None:
        p = ", ".join([self.placeholder] * len(columns))
        cols = ", ".join(quote(c) for c in columns)
        tail = " ON CONFLICT DO NOTHING" if skip_existing else ""
        self._executemany(
            f"INSERT INTO {qualified(schema, table)} ({cols}) VALUES ({p}){tail}", rows
        )

    def record_run(self, schema: str, report: dict[str, Any]) -> None:
        p = self.placeholder
        with self.transaction():
            self._execute(
                f"INSERT INTO {quote(BOOKKEEPING_SCHEMA)}.sync_runs (run_id, schema_name, "
                "target, status, started_at, finished_at, report) "
                f"VALUES ({', '.join([p] * 7)})",
                (
                    report["run_id"],
                    schema,
                    self.target_name,
                    report["status"],
                    report["started_at"],
                    report["finished_at"],
                    orjson.dumps(report).decode(),
                ),
            )

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._fetchall(
            f"SELECT report FROM {quote(BOOKKEEPING_SCHEMA)}.sync_runs "
            f"ORDER BY started_at DESC LIMIT {int(limit)}"
        )
        return [r[0] if isinstance(r[0], dict) else orjson.loads(r[0]) for r in rows]

    def table_stats(self, schema: str, table: str) -> TableStats:
        rows, duplicates, newest = self._fetchall(
            "SELECT count(*), count(*) - count(DISTINCT id), max(received_at) "
            f"FROM {qualified(schema, table)}"
        )[0]
        return TableStats(int(rows), int(duplicates), newest)

    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        return iter(self._fetchall(sql))
