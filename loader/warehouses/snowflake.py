"""Snowflake (snowflake-connector-python): a driver on Warehouse.

Names: Snowflake folds unquoted identifiers to upper case, so every name is created as
its upper-case quoted form ("ORDER_COMPLETED"."REVENUE"): what the unquoted lower-case
name resolves to, so analysts and dbt's Segment packages write `SELECT revenue FROM
javascript_production.order_completed`. `read_schema` reports lower-case names.
`_rescued_data` is VARIANT (`_rescued_data:revenue`); run reports stay JSON text.

Bulk path. Snowflake commits the open transaction on any DDL (even CREATE TEMPORARY), so
what a load needs besides DML exists before the batch transaction: the stage
`_SLUICE.SLUICE_STAGE` and, per target table, a permanent all-VARCHAR staging table
`_SLUICE."STAGE__<SCHEMA>__<TABLE>"`, made with the table, by `ensure_bookkeeping` and at
the start of every sync (`lock`). In the batch, `stage` empties the staging table, PUTs
the rows as one Parquet file of text columns (NULL stays NULL, no CSV quoting), COPY
INTOs it (PURGE removes the file; rows loaded are checked against rows sent), and the DML
reads it cast to the target's types. A rollback undoes the COPY with the rest, so rows
and the file ledger commit together. DDL issued inside a transaction commits it first,
as Snowflake would anyway (`_send`).

Why not MERGE (or `write_pandas`): the tests run on fakesnow 0.12.1, which rewrites MERGE
into a temporary table plus UPDATE/INSERT; inside a transaction DuckDB then fails
("Attempting to write to database ... in a transaction that has already modified
database"), and with autocommit off fakesnow commits before it, so a row written before it
survives a ROLLBACK. `write_pandas` starts with CREATE TEMP STAGE (DDL). A stage made
beforehand, PUT and COPY INTO a permanent table run, and roll back, in a transaction.

Locks: Warehouse's lease row in `_SLUICE.LOCKS`.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from loader.config.targets import SnowflakeTarget
from loader.rules.retype import RetypePlan
from loader.rules.schema import ColumnType
from loader.scrub import Scrubber
from loader.warehouses import base
from loader.warehouses import statements as st
from loader.warehouses.base import Capabilities, Rows, T, WarehouseError, first_line, retried
from loader.warehouses.dialect import SqlDialect, positional
from loader.warehouses.warehouse import Warehouse

CAPABILITIES = Capabilities(
    max_identifier_bytes=255,
    type_names=base.type_names("BOOLEAN", "NUMBER(38,0)", "FLOAT", "TIMESTAMP_TZ", "VARCHAR"),
    json_type="VARIANT",
    max_text_chars=16_777_216,
    # No documented column limit, but every statement names every column and a row is
    # at most 16 MB: a bound as generous as the others'.
    max_columns=5_000,
)

B = st.BOOKKEEPING_SCHEMA
RESCUED = st.RESCUED
# The named internal stage in _SLUICE that every load PUTs its Parquet file to (under
# STAGE_PREFIX; COPY INTO ... PURGE = TRUE removes each file once loaded).
STAGE = "sluice_stage"
STAGE_PREFIX = "load"
# Bookkeeping tables written through the stage inside a batch (they need staging tables).
_STAGED_BOOKKEEPING = ("loaded_files", "rejected_events", "turned_off_names", "violations",
                       "blocked_events", "retl_sent")  # fmt: skip
# A batch's new ids are bound in one IN list (profiles updated from the new rows alone);
# beyond this many, every key is rebuilt from all its rows (Snowflake refuses IN lists
# past 16,384 expressions and statements past 1 MB).
_MAX_NEW_IDS = 10_000
_DDL = re.compile(r"\s*(CREATE|ALTER|DROP)\b", re.IGNORECASE)


def connect_kwargs(target: SnowflakeTarget) -> dict[str, Any]:
    """The connector's arguments for a target (secrets unwrapped: never logged)."""
    kw: dict[str, Any] = {
        "account": target.account,
        "user": target.user,
        "database": target.database.upper(),
        "login_timeout": target.login_timeout,
        # Timestamps without an offset in an archive are UTC, as Segment treats them.
        "session_parameters": {
            "TIMEZONE": "UTC",
            "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False,
        },
        "application": "sluice",
    }
    if target.password is not None:
        kw["password"] = target.password.get_secret_value()
    if target.private_key_path is not None:
        kw["private_key"] = _private_key_der(target)
        kw["authenticator"] = "SNOWFLAKE_JWT"
    for key in ("role", "warehouse", "host", "port", "protocol", "network_timeout"):
        value = getattr(target, key)
        if value is not None:
            kw[key] = value
    return kw


def _private_key_der(target: SnowflakeTarget) -> bytes:
    from cryptography.hazmat.primitives import serialization

    try:
        with open(target.private_key_path or "", "rb") as f:
            pem = f.read()
        passphrase = target.private_key_passphrase
        key = serialization.load_pem_private_key(
            pem, passphrase.get_secret_value().encode() if passphrase else None
        )
    except (OSError, ValueError, TypeError) as exc:
        reason = type(exc).__name__ if isinstance(exc, (ValueError, TypeError)) else exc
        raise WarehouseError(
            f"cannot read the private key '{target.private_key_path}' ({reason}); check "
            "private_key_path and private_key_passphrase in profiles.yml"
        ) from None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class SnowflakeDialect(SqlDialect):
    """Upper-case quoted names; a list parameter expanded into `IN (...)` by the driver
    (dialect.positional: the connector binds on the client, one literal per mark)."""

    sqlglot_name = "snowflake"
    text_type = "VARCHAR"
    now = "CURRENT_TIMESTAMP()"
    max_list = 1000
    # A column changes type only within its kind (a longer VARCHAR): retype rebuilds.
    alters_column_type = False

    def __init__(self) -> None:
        # Reports are JSON text (INSERT ... VALUES takes no PARSE_JSON); _rescued_data
        # alone is VARIANT (column_type).
        super().__init__(CAPABILITIES.type_names, "VARCHAR")

    def ident(self, name: str) -> str:
        """The quoted upper-case name (what the unquoted lower-case name resolves to)."""
        return '"' + name.upper().replace('"', '""') + '"'

    def in_list(self, expr: str, name: str) -> str:
        return f"{expr} IN ({self.param(name)})"

    def column_type(self, name: str, kind: ColumnType) -> str:
        return CAPABILITIES.json_type if name == RESCUED else super().column_type(name, kind)

    def first_non_null(self, value: str, partition: str, order: str) -> str:
        return (
            f"FIRST_VALUE({value}) IGNORE NULLS OVER (PARTITION BY {partition} ORDER BY "
            f"{order} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        )

    def whole_row_hash(self, alias: str) -> str | None:
        # An OBJECT (sorted keys, NULLs kept): the hash sees the whole sent row.
        return f"MD5(TO_VARCHAR(OBJECT_CONSTRUCT_KEEP_NULL({alias}.*)))"

    def lease_expiry(self, minutes: int) -> str:
        return f"DATEADD(minute, {int(minutes)}, {self.now})"

    def schemas_sql(self) -> str:
        return "SELECT DISTINCT LOWER(table_schema) FROM information_schema.tables"

    def read_type(self, data_type: str) -> ColumnType:
        name = data_type.lower()
        if name.startswith("timestamp"):  # _TZ, and _LTZ/_NTZ columns made by others
            return ColumnType.TIMESTAMP
        return ColumnType.DOUBLE if name == "real" else super().read_type(name)

    def model_type(self, data_type: str) -> ColumnType:
        # A NUMBER with a scale (columns_sql writes it "number(p,s)") holds fractions.
        if data_type.lower().startswith(("number", "decimal", "numeric")):
            return ColumnType.DOUBLE if "(" in data_type else ColumnType.BIGINT
        return super().model_type(data_type)


def _typed(expr: str, sql_type: str) -> str:
    if sql_type == "VARIANT":
        return f"PARSE_JSON({expr})"
    return expr if sql_type == "VARCHAR" else f"CAST({expr} AS {sql_type})"


def _transient_errors() -> tuple[type[BaseException], ...]:
    from snowflake.connector import errors

    names = "OperationalError ServiceUnavailableError GatewayTimeoutError BadGatewayError"
    names += " OtherHTTPRetryableError RequestTimeoutError"
    return tuple(getattr(errors, n) for n in names.split() if hasattr(errors, n))


# Snowflake error numbers: login failures and missing/unauthorised objects.
_AUTH_ERRNOS = {390100, 390101, 390102, 390144, 390190, 394300, 250001}
_PERMISSION_ERRNOS = {2003, 3001, 3003, 3041, 390189, 390201, 390317}


class SnowflakeWarehouse(Warehouse):
    capabilities = CAPABILITIES
    dialect = SnowflakeDialect()

    def __init__(
        self, target_name: str, target: SnowflakeTarget, connect: Callable[..., Any] | None = None
    ) -> None:
        self.target_name = target_name
        self.target = target
        self.lease_minutes = target.lock_lease_minutes
        self._scrub = Scrubber(
            *(s.get_secret_value() for s in (target.password, target.private_key_passphrase) if s)
        )
        self._open = False  # a transaction begun on the server (see _send)
        # (schema, table) -> its column types, and the columns its staging table has.
        self._types: dict[tuple[str, str], dict[str, ColumnType]] = {}
        self._staged: dict[tuple[str, str], set[str]] = {}
        self._stage_ready = False
        if connect is None:
            import snowflake.connector

            connect = snowflake.connector.connect
        kwargs = connect_kwargs(target)
        try:
            self.conn = self._retry(lambda: connect(**kwargs))
        except Exception as exc:  # noqa: BLE001 - every connect failure becomes one sentence
            raise WarehouseError(self._connect_message(exc)) from None

    # --- errors and retries ----------------------------------------------------------
    def _first_line(self, exc: BaseException) -> str:
        msg = getattr(exc, "raw_msg", None) or str(exc)
        return first_line(str(msg), self._scrub) or type(exc).__name__

    def _connect_message(self, exc: BaseException) -> str:
        errno = getattr(exc, "errno", None)
        where = f"Snowflake target '{self.target_name}' (account '{self.target.account}')"
        if errno in _AUTH_ERRNOS and errno != 250001:
            fix = "check user and password (or private_key_path) in profiles.yml"
        elif errno in _PERMISSION_ERRNOS:
            fix = "check role, warehouse and database in profiles.yml and the role's grants"
        elif isinstance(exc, WarehouseError):
            return str(exc)
        else:
            fix = "check account (and host/port if set) in profiles.yml and the network"
        return f"cannot connect to {where}: {self._first_line(exc)}; {fix}"

    def _retry(self, fn: Callable[[], T]) -> T:
        errors = _transient_errors()

        def transient(exc: BaseException) -> bool:  # a refused login does not heal
            return isinstance(exc, errors) and getattr(exc, "errno", None) not in (
                _AUTH_ERRNOS - {250001}
            )

        return retried(fn, self.target.retries, transient)

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """One statement on the connection; transient errors are retried outside a
        transaction (inside one, the transaction is lost with the connection: the caller
        reruns)."""

        def once() -> Any:
            cur = self.conn.cursor()
            cur.execute(sql, tuple(params) if params else None)
            return cur

        try:
            return once() if self._open else self._retry(once)
        except Exception as exc:
            if getattr(exc, "errno", None) in (3001, 3003, 3041):
                raise WarehouseError(
                    f"Snowflake target '{self.target_name}': {self._first_line(exc)}; grant the "
                    f"role '{self.target.role or 'default'}' the privileges on database "
                    f"'{self.target.database}' (USAGE, CREATE SCHEMA, and ownership of its "
                    "schemas)"
                ) from None
            raise

    # --- driver primitives -----------------------------------------------------------
    def _send(self, sql: str, params: Mapping[str, Any] | None) -> Any:
        """A statement in the open transaction, if any: pyformat parameters bound
        positionally (a list one mark per item). Snowflake commits the open transaction
        before any DDL; that is done explicitly, so every engine (and fakesnow) sees the
        same, and the transaction begins again at the next other statement. Safe for
        loads: rows committed early are skipped by id on a rerun, and the file ledger is
        only written after the batch's last DDL."""
        sql, values = positional(sql, params or {})
        if self._depth:
            ddl = _DDL.match(sql) is not None
            if ddl and self._open:
                self._commit()
            elif not ddl and not self._open:
                self._run("BEGIN")
                self._open = True
        return self._run(sql, values)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        cur = self._send(sql, params)
        try:
            return max(int(cur.rowcount or 0), 0)
        finally:
            cur.close()

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        cur = self._send(sql, params)
        try:
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> AbstractContextManager[None]:
        return self._joined(self._begin)  # Snowflake transactions do not nest

    @contextmanager
    def _begin(self) -> Iterator[None]:
        """The server's BEGIN waits for the first statement that is no DDL (`_send`)."""
        try:
            yield
        except BaseException:
            if self._open:
                self._open = False
                try:
                    self.conn.cursor().execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - a lost session rolls back by itself
                    pass
            raise
        if self._open:
            self._commit()

    def _commit(self) -> None:
        try:  # never retried: a COMMIT lost with its session must fail the batch
            self._run("COMMIT")
        finally:
            self._open = False

    # --- names and schema --------------------------------------------------------------
    def columns_sql(self, schema: str, table: str | None = None) -> tuple[str, Mapping[str, Any]]:
        """Names in lower case, as the pipeline writes them; a NUMBER with a scale typed
        "number(p,s)" (a reverse-ETL model's fraction: SnowflakeDialect.model_type)."""
        where = "" if table is None else " AND table_name = %(table)s"
        return (
            "SELECT LOWER(table_name), LOWER(column_name), LOWER(data_type) || CASE WHEN "
            "numeric_scale > 0 THEN '(' || CAST(numeric_precision AS VARCHAR) || ',' || "
            "CAST(numeric_scale AS VARCHAR) || ')' ELSE '' END FROM information_schema.columns "
            f"WHERE table_schema = %(schema)s{where} ORDER BY table_name, ordinal_position",
            {"schema": schema.upper(), "table": (table or "").upper()},
        )

    def ensure_bookkeeping(self) -> None:
        super().ensure_bookkeeping()
        self._prepare_staging(B, _STAGED_BOOKKEEPING)

    def retl_ensure_bookkeeping(self) -> None:
        super().retl_ensure_bookkeeping()
        self._prepare_staging(B, _STAGED_BOOKKEEPING)

    @contextmanager
    def lock(self, schema: str) -> Iterator[None]:
        with super().lock(schema):
            # The start of a sync, outside any batch: the staging tables exist before
            # the first batch transaction (their DDL would commit it).
            self._prepare_staging(B, _STAGED_BOOKKEEPING)
            self._prepare_staging(schema)
            yield

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        super().create_table(schema, table, columns)
        self._types[(schema, table)] = dict(columns)
        self._sync_staging(schema, table, list(columns), None)

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        super().add_columns(schema, table, columns)
        self._types.setdefault((schema, table), {}).update(columns)
        staged = self._staged.get((schema, table))
        if staged is None:  # not seen by this connection yet: compare with the target
            self._prepare_staging(schema, [table])
        else:
            self._sync_staging(schema, table, list(columns), staged)

    def retl_write_table(
        self, schema: str, table: str, key: str, columns: dict[str, Any], rows: Any, keys: Any
    ) -> None:
        # Its staging table first: that DDL would commit the delete-and-insert.
        self._sync_staging(schema, table, list(columns), self._staged.get((schema, table)))
        super().retl_write_table(schema, table, key, columns, rows, keys)

    def rebuild_profiles(self, schema: str, spec: base.ProfileSpec, keys: Sequence[str]) -> int:
        if len(spec.new_ids) > _MAX_NEW_IDS:
            spec = replace(spec, new_ids=())
        return super().rebuild_profiles(schema, spec, keys)

    # --- the bulk path: a Parquet file, PUT to the stage, COPY INTO a staging table ------
    def _staging(self, schema: str, table: str) -> str:
        """The staging table of a target table: `_SLUICE."STAGE__<SCHEMA>__<TABLE>"`."""
        return self.table_ref(B, f"stage__{schema}__{table}")

    def _sync_staging(
        self, schema: str, table: str, columns: Sequence[str], have: set[str] | None
    ) -> None:
        """Create the staging table (all VARCHAR: values are cast in the DML) or add the
        columns it lacks. DDL: called outside the batch transaction (module docstring)."""
        if not self._stage_ready:
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.schema_ref(B)}")
            self.execute(f"CREATE STAGE IF NOT EXISTS {self.table_ref(B, STAGE)}")
            self._stage_ready = True
        staging, i = self._staging(schema, table), self.dialect.ident
        if have is None:
            self.execute(
                f"CREATE OR REPLACE TABLE {staging} "
                f"({', '.join(f'{i(c)} VARCHAR' for c in columns)})"
            )
            have = set(columns)
        for column in columns:
            if column not in have:
                self.execute(f"ALTER TABLE {staging} ADD COLUMN {i(column)} VARCHAR")
                have.add(column)
        self._staged[(schema, table)] = have

    def _prepare_staging(self, schema: str, tables: Sequence[str] | None = None) -> None:
        """Bring the staging tables of `schema`'s tables (or of `tables` only) in line
        with them: at the start of a sync and with the bookkeeping, before any batch."""
        ours = self._columns(B)
        wanted: dict[str, list[str]] = {}
        for table, column, _ in ours if schema == B else self._columns(schema):
            if table in tables if tables is not None else schema != B:
                wanted.setdefault(table, []).append(column)
        have: dict[str, set[str]] = {}
        for table, column, _ in ours:
            have.setdefault(table, set()).add(column)
        for table, columns in wanted.items():
            staged = have.get(f"stage__{schema}__{table}")
            if not self._stage_ready or staged is None or not set(columns) <= staged:
                self._sync_staging(schema, table, columns, staged)
            else:
                self._staged[(schema, table)] = staged

    @contextmanager
    def stage(self, schema: str, table: str, columns: Sequence[str], rows: Rows) -> Iterator[str]:
        key = (schema, table)
        if not set(columns) <= self._staged.get(key, set()):
            # Normally done before the batch (lock, ensure_bookkeeping, create_table,
            # add_columns); DDL here commits an open transaction first (see `_send`).
            self._prepare_staging(schema, [table])
        types = self._types.get(key, {})
        if not set(columns) <= set(types):
            types = self._types[key] = {
                c: self.dialect.read_type(k) for _, c, k in self._columns(schema, table)
            }
        sql_types = {c: self.dialect.column_type(c, types[c]) for c in columns}
        with self._loaded(schema, table, sql_types, rows) as staged:
            yield staged

    def stage_typed(
        self, kinds: dict[str, ColumnType], rows: Sequence[Sequence[Any]]
    ) -> AbstractContextManager[str]:
        """Rows apart from any target table (a retype's plan): a staging table of their own."""
        if not set(kinds) <= self._staged.get((B, "retype"), set()):
            self._sync_staging(B, "retype", list(kinds), None)
        sql_types = {c: self.dialect.column_type(c, k) for c, k in kinds.items()}
        return self._loaded(B, "retype", sql_types, rows)

    @contextmanager
    def _loaded(
        self, schema: str, table: str, sql_types: Mapping[str, str], rows: Rows
    ) -> Iterator[str]:
        """Empty the staging table, load `rows` into it (one Parquet file of text
        columns, PUT to the stage and COPY INTO, which removes the file once loaded),
        yield the staged text typed as `sql_types`, empty the staging table again (a
        rollback undoes the COPY with the rest)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        staging, i = self._staging(schema, table), self.dialect.ident
        stage = f"@{self.table_ref(B, STAGE)}"
        self.execute(f"DELETE FROM {staging}")
        if rows:
            data = {
                c.upper(): pa.array([base.staged_text(r[n]) for r in rows], pa.string())
                for n, c in enumerate(sql_types)
            }
            with tempfile.TemporaryDirectory(prefix="sluice-sf-") as tmp:
                name = f"{uuid.uuid4().hex}.parquet"
                path = Path(tmp, name)
                pq.write_table(pa.table(data), path)
                local = path.as_posix().replace("'", "\\'")
                self.execute(f"PUT 'file://{local}' {stage}/{STAGE_PREFIX} AUTO_COMPRESS = FALSE")
            result = self.fetchall(
                f"COPY INTO {staging} FROM {stage}/{STAGE_PREFIX}/{name} FILE_FORMAT = "
                "(TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_SENSITIVE PURGE = TRUE"
            )
            loaded = sum(int(r[3] or 0) for r in result if len(r) > 3)
            if loaded != len(rows):
                raise WarehouseError(
                    f"Snowflake target '{self.target_name}': COPY INTO {staging} loaded "
                    f"{loaded} of {len(rows)} rows ({result!r}); check the stage {STAGE} in "
                    "_sluice"
                )
        select = ", ".join(f"{_typed(f's.{i(c)}', t)} AS {i(c)}" for c, t in sql_types.items())
        yield f"(SELECT {select} FROM {staging} AS s)"
        self.execute(f"DELETE FROM {staging}")

    # --- retype (sluice schema set-type) -----------------------------------------------
    def retype_apply(
        self, schema: str, table: str, column: str, new_type: ColumnType, plan: RetypePlan
    ) -> None:
        """Snowflake changes a column's type only within its kind, and every DDL commits:
        the table is rebuilt into a work table in _sluice, its rows copied with the
        column's new values (and `_rescued_data` where it changed), then swapped in with
        one atomic `ALTER TABLE ... SWAP WITH`. A failure before the swap leaves the table
        as it was."""
        i = self.dialect.ident
        columns = {**self.read_schema(schema)[table], column: new_type}
        name = f"retype__{schema}__{table}"
        work = self.table_ref(B, name)
        self.execute(f"DROP TABLE IF EXISTS {work}")
        self.execute(st.create_table(self.dialect, B, name, columns))
        r = i(RESCUED)
        select = ", ".join(
            f"s.{i('value')}" if c == column
            else f"CASE WHEN s.{i('changed')} THEN s.{r} ELSE t.{r} END" if c == RESCUED
            else f"t.{i(c)}"
            for c in columns
        )  # fmt: skip
        with self._staged_changes(plan, new_type) as staged:
            self.execute(
                f"INSERT INTO {work} ({', '.join(i(c) for c in columns)}) SELECT {select} "
                f"FROM {self.table_ref(schema, table)} AS t LEFT JOIN {staged} AS s "
                f"ON t.{i('id')} = s.{i('id')}"
            )
        self.retype_swap(schema, table, work)
        self._types.pop((schema, table), None)

    def retype_swap(self, schema: str, table: str, work: str) -> None:
        """Swap the rebuilt table in (atomic in Snowflake) and drop the old one."""
        self.execute(f"ALTER TABLE {self.table_ref(schema, table)} SWAP WITH {work}")
        self.execute(f"DROP TABLE {work}")
