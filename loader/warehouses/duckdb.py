"""DuckDB, the embedded default: the readers' Arrow batches scanned in place by DuckDB
and appended with an anti-join on id."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from loader.encode.arrow_batches import ArrowEncoder, read_table
from loader.encode.encoded import EncodedChunk
from loader.warehouses import statements as st
from loader.warehouses.base import Capabilities, LockBusy, Rows, WarehouseError, type_names
from loader.warehouses.dialect import SqlDialect, rename_params
from loader.warehouses.warehouse import Warehouse

CAPABILITIES = Capabilities(
    max_identifier_bytes=63,
    type_names=type_names("boolean", "bigint", "double", "timestamp with time zone", "varchar"),
    json_type="json",
    # DuckDB has no documented limit, but a table of 16,000 columns already kills the
    # process (SIGFPE) on insert, 8,000 take seconds per batch: 2,000 is far from both.
    max_columns=2_000,
    row_encoder=ArrowEncoder(),
)


LOAD_CHECKPOINT_THRESHOLD = "64MB"


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


class DuckDBDialect(SqlDialect):
    sqlglot_name = "duckdb"

    def __init__(self, catalog: str) -> None:
        super().__init__(CAPABILITIES.type_names, CAPABILITIES.json_type)
        # Every name carries the catalog: a file named like a schema (segment.duckdb,
        # schema segment) makes a two-part name ambiguous to DuckDB's binder.
        self.catalog = catalog
        self.catalog_filter = f" AND table_catalog = {self.literal(catalog)}"

    def schema_ref(self, schema: str) -> str:
        return f"{self.ident(self.catalog)}.{self.ident(schema)}"

    def in_list(self, expr: str, name: str) -> str:
        return f"{expr} IN (SELECT unnest({self.param(name)}))"

    def whole_row_hash(self, alias: str) -> str | None:
        return f"md5(CAST(to_json({alias}) AS VARCHAR))"

    def json_text(self, expr: str) -> str:
        return f"CAST({expr} AS JSON)"

    def latest_non_null(self, value: str, order: str) -> str | None:
        return f"(array_agg({value} ORDER BY {order}) FILTER (WHERE {value} IS NOT NULL))[1]"

    def id_key(self) -> str:
        """No PRIMARY KEY on event and object tables. DuckDB keeps a key's ART index
        wholly in memory and cannot spill it: 10M ids outgrew a 300 MB memory_limit
        (OutOfMemoryException on the next insert), so a large warehouse would stop
        loading at its default limit. The anti-join on id, distinct ids in each insert
        (`_refuse_repeats`) and DuckDB's single writer per file keep `id` unique, as on
        Snowflake, BigQuery and Redshift, whose keys are not enforced either."""
        return ""


class DuckDBWarehouse(Warehouse):
    capabilities = CAPABILITIES

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
        # (schema, table) -> its columns' DuckDB types, for stage (cleared by any DDL).
        self._types: dict[tuple[str, str], dict[str, str]] = {}
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
        if not read_only:
            # DuckDB checkpoints when its WAL passes 16 MB: every batch of a load, each
            # rewriting the tables' open row groups. Rows committed since the last
            # checkpoint stay in the loading process's memory: 64 MB of WAL measured at
            # 1M events 34.9 s and 43 MB of such rows, against 33.4 s and 234 MB at 256 MB,
            # and 48 s at 16 MB.
            config["checkpoint_threshold"] = LOAD_CHECKPOINT_THRESHOLD
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
        self.dialect = DuckDBDialect(self.conn.execute("SELECT current_database()").fetchone()[0])

    def ensure_bookkeeping(self) -> None:
        if not self.read_only:  # a read-only command reads what is there
            super().ensure_bookkeeping()

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        # DuckDB keeps a statement's result open until it is fetched; DML returns its count.
        rows = self.fetchall(sql, params)
        dml = sql.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE")
        return int(rows[0][0]) if dml and rows else 0

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if sql.lstrip()[:6].upper() in ("CREATE", "ALTER ", "DROP T"):
            self._types.clear()  # a table or its columns change: stage reads them again
        return self.conn.execute(*_bind(sql, params)).fetchall()

    def transaction(self) -> AbstractContextManager[None]:
        return self._joined(self._begin)  # DuckDB has no savepoints

    @contextmanager
    def _begin(self) -> Iterator[None]:
        self.conn.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def hold(self, name: str, busy: str) -> Iterator[None]:
        # DuckDB holds an OS-level write lock on the file for the whole connection.
        yield

    def insert_encoded(
        self, schema: str, table: str, chunks: Sequence[EncodedChunk], fill_nulls: bool = False
    ) -> int:
        """The readers' Arrow batches, one scan and one anti-join insert per column set;
        a replay (fill_nulls) fills the NULLs of rows already there first.

        One lookup of the whole batch's ids already there (a UNION ALL of semi-joins),
        then plain appends, was tried: 37 inserts took 230-280 ms against 340-430 ms
        alone, but a whole 1M-event load was no faster, and the lookup ran out of
        memory at a 256MB memory_limit where the anti-joins load."""
        by_columns: dict[tuple[str, ...], list[EncodedChunk]] = {}
        for chunk in chunks:
            if chunk.ids:
                by_columns.setdefault(chunk.columns, []).append(chunk)
        d, target = self.dialect, self.table_ref(schema, table)
        inserted = 0
        for columns, group in by_columns.items():
            arrow = read_table(c.payload for c in group)
            ids = arrow.column("id")
            _refuse_repeats(schema, table, len(ids) - pc.count_distinct(ids, mode="all").as_py())
            with self.transaction(), self._scan(schema, table, columns, arrow) as staged:
                if fill_nulls and st.fillable(columns):
                    inserted += self.execute(st.fill_nulls(d, target, staged, columns))
                inserted += self.execute(st.insert_new(d, target, staged, columns))
        return inserted

    def native_lines(self, name: str, lines: pa.Table) -> None:
        """Native mode's raw lines, scanned in place (no copy) under `name`."""
        self.conn.register(name, lines)

    def native_lines_done(self, name: str) -> None:
        self.conn.unregister(name)

    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        if rows and "id" in columns:
            at = list(columns).index("id")
            _refuse_repeats(schema, table, len(rows) - len({row[at] for row in rows}))
        return super().insert_new_rows(schema, table, columns, rows, fill_nulls)

    def stage(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows
    ) -> AbstractContextManager[str]:
        """Rows as tuples (bookkeeping, profiles, a table the readers did not encode)
        as an Arrow table; timestamps as ISO text, cast by the scan."""
        types = self._types_of(schema, table, columns)
        arrays = [
            pa.array(
                [v.isoformat() if isinstance(v, datetime) else v for v in values]
                if kind == _TIMESTAMP
                else values,
                type=_ARROW.get(kind, pa.string()),
            )
            for name, values in zip(columns, zip(*rows, strict=True), strict=True)
            for kind in [types.get(name, "varchar")]
        ]
        return self._scan(schema, table, columns, pa.Table.from_arrays(arrays, names=list(columns)))

    def _types_of(self, schema: str, table: str, columns: Sequence[str]) -> dict[str, str]:
        types = self._types.get((schema, table))
        if types is None or not set(columns) <= set(types):
            # Read once per table, not per batch: information_schema is slow in DuckDB.
            types = {c: str(t).lower() for _, c, t in self._columns(schema, table)}
            self._types[(schema, table)] = types
        return types

    @contextmanager
    def _scan(
        self, schema: str, table: str, columns: Sequence[str], arrow: pa.Table
    ) -> Iterator[str]:
        """An Arrow table DuckDB scans in place, each column cast to the table's type
        where the Arrow type is not already it."""
        types = self._types_of(schema, table, columns)
        name = f"_sluice_stage_{uuid.uuid4().hex[:12]}"
        self.conn.register(name, arrow)
        d = self.dialect
        select = ", ".join(
            d.ident(c)
            if _NATIVE.get(kind) == arrow.schema.field(c).type
            else f"CAST({d.ident(c)} AS {kind}) AS {d.ident(c)}"
            for c in columns
            for kind in [types.get(c, "varchar")]
        )
        try:
            yield f"(SELECT {select} FROM {name})"
        except BaseException:
            # A failed statement aborts DuckDB's transaction, which then refuses even
            # this: the error to tell is the statement's, not that one.
            with suppress(duckdb.Error):
                self.conn.unregister(name)
            raise
        self.conn.unregister(name)


def _refuse_repeats(schema: str, table: str, repeated: int) -> None:
    """Refuse an insert whose rows share an id (the batch then fails whole): with no key
    on the table, nothing else would stop both rows going in."""
    if repeated:
        raise WarehouseError(
            f"{schema}.{table}: {repeated} row(s) of one insert repeat an id already in it; "
            "nothing of the batch was loaded"
        )


def _bind(sql: str, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
    """pyformat -> DuckDB's `$name`, with only the parameters the statement names (DuckDB
    refuses others)."""
    used: dict[str, Any] = {}

    def one(name: str) -> str:
        used[name] = (params or {})[name]
        return f"${name}"

    return rename_params(sql, one), used or None


_TIMESTAMP = "timestamp with time zone"
# Staged as text (ISO 8601) and cast in SQL, as the pipeline's rows carry it.
_ARROW: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "timestamp with time zone": pa.string(),
    "varchar": pa.string(),
    "json": pa.string(),
}
# Arrow types DuckDB reads as the column's own type (no CAST in the scan).
_NATIVE: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "varchar": pa.string(),
}
