"""DuckDB, the embedded default: Arrow tables appended with INSERT ... ON CONFLICT."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from loader.schema import ColumnType
from loader.warehouses.base import BOOKKEEPING_SCHEMA, Capabilities, LockBusy, WarehouseError
from loader.warehouses.sql_family import UpsertSqlWarehouse, literal, quote

CAPABILITIES = Capabilities(
    max_identifier_bytes=63,
    type_names={
        ColumnType.BOOLEAN: "boolean",
        ColumnType.BIGINT: "bigint",
        ColumnType.DOUBLE: "double",
        ColumnType.TIMESTAMP: "timestamp with time zone",
        ColumnType.TEXT: "varchar",
    },
    json_type="json",
    # DuckDB has no documented limit, but a table of 16,000 columns already kills the
    # process (SIGFPE) on insert, 8,000 take seconds per batch: 2,000 is far from both.
    max_columns=2_000,
)


class DatabaseInUse(LockBusy):
    """The DuckDB file is locked by another process: a sync, or any reader that holds a
    connection (a notebook, the DuckDB shell). DuckDB allows one writer per file.

    `holder` is the other process as DuckDB names it ("/usr/bin/python3 (PID 4242)"),
    when it does; the CLI words the message."""

    def __init__(
        self, target_name: str, path: str, holder: str | None, read_only: bool = False
    ) -> None:
        who = f" ({holder})" if holder else ""
        # DuckDB lets no other process read a file while one writes to it.
        if read_only:
            said = (
                f"is open for writing by another process{who}; this command only reads "
                "and can run when that process finishes"
            )
        else:
            said = f"is open in another process{who}; close it or wait for it to finish"
        super().__init__(f"DuckDB file '{path}' of target '{target_name}' {said}")
        self.target_name, self.path, self.holder = target_name, path, holder
        self.read_only = read_only


_HOLDER = re.compile(r"lock is held in (.+? \(PID \d+\))")


def lock_conflict(
    target_name: str, path: str, exc: Exception, read_only: bool = False
) -> DatabaseInUse | None:
    """DuckDB's "Could not set lock on file" error as a typed one; None for other errors."""
    text = str(exc)
    if "lock" not in text.lower():
        return None
    found = _HOLDER.search(text)
    holder = found.group(1) if found else None
    return DatabaseInUse(target_name, os.path.abspath(path), holder, read_only)


def probe(target_name: str, path: str) -> str:
    """`sluice debug`: open the file read-only and run a statement; a missing file is
    reported, not created (a check changes nothing)."""
    if path == ":memory:":
        return "in-memory database"
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(folder) and not os.access(folder, os.W_OK):
            raise WarehouseError(
                f"DuckDB target '{target_name}': folder '{folder}' is not writable, so "
                f"'{os.path.abspath(path)}' cannot be created"
            )
        return f"{os.path.abspath(path)} does not exist yet (the first sync creates it)"
    try:
        conn = duckdb.connect(path, read_only=True)
    except duckdb.Error as exc:
        busy = lock_conflict(target_name, path, exc, read_only=True)
        if busy is not None:
            raise busy from None
        raise WarehouseError(f"cannot open DuckDB target '{target_name}': {exc}") from None
    try:
        conn.execute("SELECT 1").fetchall()
    finally:
        conn.close()
    return f"DuckDB file {os.path.abspath(path)} opens"


class DuckDBWarehouse(UpsertSqlWarehouse):
    capabilities = CAPABILITIES
    placeholder = "?"

    def __init__(
        self,
        target_name: str,
        path: str,
        memory_limit: str | None = None,
        threads: int | None = None,
        read_only: bool = False,
    ) -> None:
        """`memory_limit` ("512MB") and `threads` bound DuckDB's buffer pool and worker
        threads, which otherwise grow to 80% of RAM and one per core.

        `read_only` is for commands that only read (`runs`, `schema show`): they never
        create the file (a missing one reads as an empty database) and never take the
        write lock a sync needs."""
        self.target_name = target_name
        self.read_only = read_only
        missing = path != ":memory:" and not Path(path).exists()
        if read_only and missing:
            path = ":memory:"
        elif path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | int | bool] = {}
        if memory_limit is not None:
            config["memory_limit"] = memory_limit
        if threads is not None:
            config["threads"] = threads
        try:
            self.conn = duckdb.connect(
                path, read_only=read_only and path != ":memory:", config=config
            )
        except duckdb.IOException as exc:
            busy = lock_conflict(target_name, path, exc, read_only)
            if busy is not None:
                raise busy from None
            raise WarehouseError(f"cannot open DuckDB target '{target_name}': {exc}") from None
        except (duckdb.InvalidInputException, duckdb.ParserException) as exc:
            raise WarehouseError(
                f"DuckDB target '{target_name}': {exc}; check memory_limit and threads in "
                "profiles.yml"
            ) from None
        self.conn.execute("SET TimeZone = 'UTC'")
        # Every name carries the catalog: a file named like a schema (segment.duckdb,
        # schema segment) makes a two-part name ambiguous to DuckDB's binder.
        self.catalog: str = self.conn.execute("SELECT current_database()").fetchone()[0]
        literal = self.catalog.replace("'", "''")
        self._catalog_filter = f" AND table_catalog = '{literal}'"

    def _t(self, schema: str, table: str) -> str:
        return f"{quote(self.catalog)}.{quote(schema)}.{quote(table)}"

    def _s(self, schema: str) -> str:
        return f"{quote(self.catalog)}.{quote(schema)}"

    def _json_object(self, pairs: Sequence[tuple[str, str]]) -> str:
        # A merge patch drops the keys whose value is null (RFC 7386).
        body = ", ".join(f"{literal(k)}, {v}" for k, v in pairs)
        return f"NULLIF(json_merge_patch('{{}}', json_object({body})), '{{}}')"

    def ensure_bookkeeping(self) -> None:
        if not self.read_only:  # a read-only command reads what is there
            super().ensure_bookkeeping()

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        if self.read_only and "sync_runs" not in self.read_schema(BOOKKEEPING_SCHEMA):
            return []
        return super().recent_runs(limit)

    def close(self) -> None:
        self.conn.close()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        # DuckDB keeps a statement's result open until it is fetched.
        self.conn.execute(sql, list(params) if params else None).fetchall()

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, [list(r) for r in rows])

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, list(params) if params else None).fetchall()

    def _in_list(self) -> str:
        return "IN (SELECT unnest(?))"

    def _type_aliases(self) -> dict[str, ColumnType]:
        return {
            "timestamp with time zone": ColumnType.TIMESTAMP,
            "json": ColumnType.TEXT,
            "varchar": ColumnType.TEXT,
        }

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def lock(self, schema: str) -> Iterator[None]:
        # DuckDB holds an OS-level write lock on the file for the whole connection.
        yield

    def _stage_insert(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
    ) -> int:
        if not rows:
            return 0
        types = self.read_schema_table(schema, table)
        arrays = [
            pa.array(values, type=_ARROW[types.get(name, "varchar")])
            for name, values in zip(columns, zip(*rows, strict=True), strict=True)
        ]
        stage = pa.Table.from_arrays(arrays, names=list(columns))
        self.conn.register("_sluice_stage", stage)
        try:
            select = ", ".join(f"CAST({quote(c)} AS {types.get(c, 'varchar')})" for c in columns)
            result = self.conn.execute(
                f"INSERT INTO {self._t(schema, table)} ({', '.join(quote(c) for c in columns)}) "
                f"SELECT {select} FROM _sluice_stage " + conflict
            )
            return int(result.fetchone()[0])
        finally:
            self.conn.unregister("_sluice_stage")

    def insert_plain(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        skip_existing: bool = False,
    ) -> None:
        """Bookkeeping rows through Arrow: DuckDB's executemany is a statement per row."""
        if not rows:
            return
        stage = pa.Table.from_arrays(
            [pa.array([r[i] for r in rows]) for i in range(len(columns))], names=list(columns)
        )
        cols = ", ".join(quote(c) for c in columns)
        target = self._t(schema, table)
        tail = ""
        if skip_existing:
            keys = self._KEYS.get(table, tuple(columns))
            match = " AND ".join(f"t.{quote(k)} IS NOT DISTINCT FROM p.{quote(k)}" for k in keys)
            tail = f" WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {match})"
        self.conn.register("_sluice_plain", stage)
        try:
            self._execute(
                f"INSERT INTO {target} ({cols}) SELECT {cols} FROM _sluice_plain AS p{tail}"
            )
        finally:
            self.conn.unregister("_sluice_plain")

    def read_schema_table(self, schema: str, table: str) -> dict[str, str]:
        rows = self._fetchall(
            "SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_schema = ? AND table_name = ?{self._catalog_filter}",
            (schema, table),
        )
        return {c: str(t).lower() for c, t in rows}

    # --- reverse ETL ---
    def _retl_row_hash(self, alias: str) -> str:
        return f"md5(CAST(to_json({alias}) AS VARCHAR))"

    @contextmanager
    def retl_lock(self, model: str) -> Iterator[None]:
        # DuckDB holds an OS-level write lock on the file for the whole connection.
        yield


_ARROW: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "timestamp with time zone": pa.string(),
    "varchar": pa.string(),
    "json": pa.string(),
}
