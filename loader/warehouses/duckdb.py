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
from loader.warehouses.base import Capabilities, LockBusy, WarehouseError
from loader.warehouses.sql_family import UpsertSqlWarehouse, qualified, quote

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
)


class DatabaseInUse(LockBusy):
    """The DuckDB file is locked by another process: a sync, or any reader that holds a
    connection (a notebook, the DuckDB shell). DuckDB allows one writer per file.

    `holder` is the other process as DuckDB names it ("/usr/bin/python3 (PID 4242)"),
    when it does; the CLI words the message."""

    def __init__(self, target_name: str, path: str, holder: str | None) -> None:
        who = f" ({holder})" if holder else ""
        super().__init__(
            f"DuckDB file '{path}' of target '{target_name}' is open in another "
            f"process{who}; close it or wait for it to finish"
        )
        self.target_name, self.path, self.holder = target_name, path, holder


_HOLDER = re.compile(r"lock is held in (.+? \(PID \d+\))")


def lock_conflict(target_name: str, path: str, exc: Exception) -> DatabaseInUse | None:
    """DuckDB's "Could not set lock on file" error as a typed one; None for other errors."""
    text = str(exc)
    if "lock" not in text.lower():
        return None
    found = _HOLDER.search(text)
    return DatabaseInUse(target_name, os.path.abspath(path), found.group(1) if found else None)


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
        busy = lock_conflict(target_name, path, exc)
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
    ) -> None:
        """`memory_limit` ("512MB") and `threads` bound DuckDB's buffer pool and worker
        threads, which otherwise grow to 80% of RAM and one per core."""
        self.target_name = target_name
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        config: dict[str, str | int] = {}
        if memory_limit is not None:
            config["memory_limit"] = memory_limit
        if threads is not None:
            config["threads"] = threads
        try:
            self.conn = duckdb.connect(path, config=config)
        except duckdb.IOException as exc:
            busy = lock_conflict(target_name, path, exc)
            if busy is not None:
                raise busy from None
            raise WarehouseError(f"cannot open DuckDB target '{target_name}': {exc}") from None
        except (duckdb.InvalidInputException, duckdb.ParserException) as exc:
            raise WarehouseError(
                f"DuckDB target '{target_name}': {exc}; check memory_limit and threads in "
                "profiles.yml"
            ) from None
        self.conn.execute("SET TimeZone = 'UTC'")

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
                f"INSERT INTO {qualified(schema, table)} ({', '.join(quote(c) for c in columns)}) "
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
        tail = " ON CONFLICT DO NOTHING" if skip_existing else ""
        self.conn.register("_sluice_plain", stage)
        try:
            self._execute(
                f"INSERT INTO {qualified(schema, table)} ({cols}) "
                f"SELECT {cols} FROM _sluice_plain{tail}"
            )
        finally:
            self.conn.unregister("_sluice_plain")

    def read_schema_table(self, schema: str, table: str) -> dict[str, str]:
        rows = self._fetchall(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?",
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
