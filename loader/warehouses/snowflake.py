"""Snowflake (snowflake-connector-python): rows bulk-loaded through a named internal stage
(PUT + COPY INTO a staging table), then set-based INSERT/UPDATE; no DDL inside a load
transaction.

Identifier convention: Sluice's names are lower snake_case; Snowflake folds unquoted
identifiers to UPPER case. Every schema, table and column is created as its upper-case
quoted name ("ORDER_COMPLETED"."REVENUE"), which is exactly what the unquoted lower-case
name resolves to, so analysts (and dbt's Segment packages) write
`SELECT revenue FROM javascript_production.order_completed` without quotes.
`read_schema` reports the lower-case names the pipeline uses; `table_ref` gives the
quoted upper-case name. The bookkeeping schema is `_SLUICE` (`_sluice` unquoted).

Types: BOOLEAN, NUMBER(38,0), FLOAT, TIMESTAMP_TZ, VARCHAR; `_rescued_data` is VARIANT
(an OBJECT: `_rescued_data:revenue` reads a rescued value).

Bulk path. Snowflake commits the open transaction implicitly on any DDL (CREATE TABLE or
CREATE STAGE, even temporary ones), so everything a load needs besides DML exists before
the batch transaction starts: the named internal stage `_SLUICE.SLUICE_STAGE` and, per
target table, a permanent staging table `_SLUICE."STAGE__<SCHEMA>__<TABLE>"` with the
target's columns, all VARCHAR. They are created (or given new columns) with the target
table (`create_table`, `add_columns`), by `ensure_bookkeeping` for the bookkeeping tables
written in a batch, and at the start of every sync (`lock`) for tables that predate them.
Inside the batch transaction each write of a table then runs DML and file commands only:
`DELETE FROM` the staging table; the rows as text columns in one Parquet file (NULL stays
NULL and "" stays "", commas, quotes and newlines need no escaping: no CSV dialect to get
right), `PUT` to `@_SLUICE.SLUICE_STAGE/load/<uuid>.parquet`; `COPY INTO` the staging
table `MATCH_BY_COLUMN_NAME = CASE_SENSITIVE PURGE = TRUE` (the file is removed once
loaded; the rows loaded are checked against the rows sent); then `INSERT ... SELECT ...
WHERE NOT EXISTS` (new keys) and `UPDATE ... FROM` (replay fill-nulls, upserts) from
`(SELECT CAST(s."N" AS NUMBER(38,0)) AS "N", PARSE_JSON(s."_RESCUED_DATA") ..., FROM
<staging> AS s)`; and `DELETE FROM` the staging table again. A rollback undoes the COPY
with the rest, so rows and the `_sluice.loaded_files` ledger commit together. Snowflake
does not enforce PRIMARY KEY, so every insert that must skip existing rows matches on the
key. DDL that the pipeline issues inside a transaction (a new table or column, with its
staging table) commits first, as Snowflake does anyway; see `_execute`. A file PUT by a
process that died before its COPY stays in the stage, never loaded (each COPY names its
own file); `REMOVE @_sluice.sluice_stage/load/` clears such leftovers.

Why COPY into a staging table and then INSERT/UPDATE, not one MERGE per table (or
`write_pandas`): MERGE is DML on Snowflake, but the tests run this adapter on fakesnow
0.12.1 (server mode, snowflake-connector-python 4.8.1), which cannot run a MERGE inside a
transaction. It rewrites MERGE as `CREATE OR REPLACE TEMPORARY TABLE merge_candidates AS
...` plus UPDATE/INSERT, so after `BEGIN`, `MERGE INTO "S"."T" AS t USING (SELECT column1
AS "ID", ... FROM VALUES (%s, %s), ...) AS s ON t."ID" = s."ID" WHEN MATCHED THEN UPDATE
SET ... WHEN NOT MATCHED THEN INSERT ...` fails (as it does with a permanent staging table,
created before the transaction and filled inside it, as the source): DuckDB raises
`TransactionException: Attempting to write to database "_fs_global" in a transaction that
has already modified database "<database>"`, which the client gets as HTTP 500 (290500
InternalServerError). In an `autocommit=False` session fakesnow instead commits before
that temporary table, so a row written before the MERGE survives a ROLLBACK.
`write_pandas`, even with `auto_create_table=False`, starts with `CREATE TEMP STAGE` (DDL:
an implicit commit on Snowflake), which fails inside BEGIN on fakesnow with the same
`_fs_global` error. Outside a transaction fakesnow runs MERGE (the lock below takes one);
a stage created beforehand, `PUT` and `COPY INTO` a permanent table do run, and roll
back, inside one, which is the path above. On fakesnow NUMBER(38,0) is a 64-bit integer
and TIMESTAMP_TZ values come back in UTC (the instant kept, the offset not).

Locks: no advisory locks in Snowflake; a row in `_SLUICE.LOCKS` (name, holder token,
lease expiry) taken with one MERGE; a held, unexpired lock raises LockBusy. A crashed
sync's lock expires after `lock_lease_minutes`.
"""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from loader.config import ConfigError
from loader.messages import Reject
from loader.retype import RetypePlan, plan_retype
from loader.schema import ColumnType
from loader.warehouses.base import (
    BLOCKED_COLUMNS,
    BLOCKED_KEYS,
    BOOKKEEPING_SCHEMA,
    VIOLATION_COLUMNS,
    VIOLATION_KEYS,
    VIOLATION_SUMMARY,
    Capabilities,
    LockBusy,
    ProfileSpec,
    Rows,
    TableStats,
    Warehouse,
    WarehouseError,
    reject_rows,
    rescued_profile_rows,
    violation_rows,
)

CAPABILITIES = Capabilities(
    max_identifier_bytes=255,
    type_names={
        ColumnType.BOOLEAN: "BOOLEAN",
        ColumnType.BIGINT: "NUMBER(38,0)",
        ColumnType.DOUBLE: "FLOAT",
        ColumnType.TIMESTAMP: "TIMESTAMP_TZ",
        ColumnType.TEXT: "VARCHAR",
    },
    json_type="VARIANT",
    max_text_chars=16_777_216,
    # No documented column limit, but every statement names every column and a row is
    # at most 16 MB: a bound as generous as the others'.
    max_columns=5_000,
)

# information_schema.columns.data_type -> ColumnType
_READ_TYPES = {
    "boolean": ColumnType.BOOLEAN,
    "number": ColumnType.BIGINT,
    "integer": ColumnType.BIGINT,
    "bigint": ColumnType.BIGINT,
    "float": ColumnType.DOUBLE,
    "double": ColumnType.DOUBLE,
    "real": ColumnType.DOUBLE,
    "timestamp_tz": ColumnType.TIMESTAMP,
    "timestamp_ltz": ColumnType.TIMESTAMP,
    "timestamp_ntz": ColumnType.TIMESTAMP,
    "text": ColumnType.TEXT,
    "varchar": ColumnType.TEXT,
    "variant": ColumnType.TEXT,
    "object": ColumnType.TEXT,
    "array": ColumnType.TEXT,
}

# Bound keys per `IN (...)` list (profile rebuilds, deletes by id, reverse ETL).
CHUNK_ROWS = 1000
# The named internal stage in _SLUICE that every load PUTs its Parquet file to (under
# STAGE_PREFIX; COPY INTO ... PURGE = TRUE removes each file once loaded).
STAGE = "sluice_stage"
STAGE_PREFIX = "load"
RESCUED = "_rescued_data"
# Bookkeeping tables: the columns that identify a row (Snowflake does not enforce keys).
_KEYS = {
    "loaded_files": ("schema_name", "file"),
    # A reject is known by its file and line: re-reading a file never records it twice.
    "rejected_events": ("schema_name", "file", "line"),
    "turned_off_names": ("schema_name", "table_name", "column_name"),
    "violations": VIOLATION_KEYS,
    "blocked_events": BLOCKED_KEYS,
}
# Bookkeeping tables written through the stage (inside the batch: they need staging tables).
_STAGED_BOOKKEEPING = (
    "loaded_files",
    "rejected_events",
    "turned_off_names",
    "violations",
    "blocked_events",
)
T = TypeVar("T")


class SnowflakeTarget(BaseModel):
    """The typed fields of a `type: snowflake` target in profiles.yml."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["snowflake"]
    account: str = Field(description="account identifier, e.g. myorg-myaccount")
    user: str
    password: SecretStr | None = None
    private_key_path: str | None = Field(default=None, description="PEM key for key-pair auth")
    private_key_passphrase: SecretStr | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str
    host: str | None = Field(default=None, description="only for a fake or proxied endpoint")
    port: int | None = None
    protocol: Literal["https", "http"] | None = None
    login_timeout: int = 30
    network_timeout: int | None = Field(default=None, description="connector default if unset")
    lock_lease_minutes: int = 360
    retries: int = 4

    @model_validator(mode="after")
    def _one_auth(self) -> SnowflakeTarget:
        if self.password is None and self.private_key_path is None:
            raise ValueError("give either password or private_key_path")
        return self

    @classmethod
    def from_target(cls, name: str, target: Any) -> SnowflakeTarget:
        data = target.model_dump() if isinstance(target, BaseModel) else dict(target)
        for key, value in list(data.items()):
            if isinstance(value, SecretStr):
                data[key] = value.get_secret_value()
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "target"
            raise ConfigError(
                f"profiles.yml: target '{name}': field '{field}': {err['msg']}"
            ) from None

    def connect_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "database": self.database.upper(),
            "login_timeout": self.login_timeout,
            # Timestamps without an offset in an archive are UTC, as Segment treats them.
            "session_parameters": {
                "TIMEZONE": "UTC",
                "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False,
            },
            "application": "sluice",
        }
        if self.password is not None:
            kw["password"] = self.password.get_secret_value()
        if self.private_key_path is not None:
            kw["private_key"] = self._private_key_der()
            kw["authenticator"] = "SNOWFLAKE_JWT"
        for key in ("role", "warehouse", "host", "port", "protocol", "network_timeout"):
            value = getattr(self, key)
            if value is not None:
                kw[key] = value
        return kw

    def _private_key_der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        try:
            with open(self.private_key_path or "", "rb") as f:
                pem = f.read()
            passphrase = self.private_key_passphrase
            key = serialization.load_pem_private_key(
                pem, passphrase.get_secret_value().encode() if passphrase else None
            )
        except (OSError, ValueError, TypeError) as exc:
            reason = type(exc).__name__ if isinstance(exc, (ValueError, TypeError)) else exc
            raise WarehouseError(
                f"cannot read the private key '{self.private_key_path}' ({reason}); check "
                "private_key_path and private_key_passphrase in profiles.yml"
            ) from None
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def ident(name: str) -> str:
    """The quoted upper-case identifier (what the unquoted lower-case name resolves to)."""
    return '"' + name.upper().replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{ident(schema)}.{ident(table)}"


def _text(value: Any) -> str | None:
    """Values are bound as text and CAST in SQL, so a VALUES column has one type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _transient_errors() -> tuple[type[BaseException], ...]:
    from snowflake.connector import errors

    names = (
        "OperationalError",
        "ServiceUnavailableError",
        "GatewayTimeoutError",
        "BadGatewayError",
        "OtherHTTPRetryableError",
        "RequestTimeoutError",
    )
    return tuple(getattr(errors, n) for n in names if hasattr(errors, n))


# Snowflake error numbers: login failures and missing/unauthorised objects.
_AUTH_ERRNOS = {390100, 390101, 390102, 390144, 390190, 394300, 250001}
_PERMISSION_ERRNOS = {2003, 3001, 3003, 3041, 390189, 390201, 390317}


class SnowflakeWarehouse(Warehouse):
    capabilities = CAPABILITIES

    def __init__(
        self, target_name: str, target: SnowflakeTarget, connect: Callable[..., Any] | None = None
    ) -> None:
        self.target_name = target_name
        self.target = target
        self._secrets = [
            s.get_secret_value()
            for s in (target.password, target.private_key_passphrase)
            if s is not None and s.get_secret_value()
        ]
        self._depth = 0
        self._types: dict[tuple[str, str], dict[str, ColumnType]] = {}
        # (schema, table) -> the columns its staging table is known to have.
        self._staged: dict[tuple[str, str], set[str]] = {}
        self._stage_ready = False
        self._holder = uuid.uuid4().hex
        if connect is None:
            import snowflake.connector

            connect = snowflake.connector.connect
        kwargs = target.connect_kwargs()
        try:
            self.conn = self._retry(lambda: connect(**kwargs))
        except Exception as exc:  # noqa: BLE001 - every connect failure becomes one sentence
            raise WarehouseError(self._connect_message(exc)) from None

    # --- errors and retries ----------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _first_line(self, exc: BaseException) -> str:
        msg = getattr(exc, "raw_msg", None) or str(exc)
        lines = [ln.strip() for ln in str(msg).strip().splitlines() if ln.strip()]
        return self._scrub(lines[0].rstrip(".")) if lines else type(exc).__name__

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
        transient = _transient_errors()
        attempts = max(1, self.target.retries)
        for attempt in range(attempts):
            try:
                return fn()
            except transient as exc:
                errno = getattr(exc, "errno", None)
                if attempt == attempts - 1 or errno in _AUTH_ERRNOS - {250001}:
                    raise
                time.sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """Execute one statement; transient errors are retried outside a transaction
        (inside one, the transaction is lost with the connection: the caller reruns)."""

        def once() -> Any:
            cur = self.conn.cursor()
            cur.execute(sql, tuple(params) if params else None)
            return cur

        try:
            return once() if self._depth else self._retry(once)
        except WarehouseError:
            raise
        except Exception as exc:
            if getattr(exc, "errno", None) in (3001, 3003, 3041):
                raise WarehouseError(
                    f"Snowflake target '{self.target_name}': {self._first_line(exc)}; grant the "
                    f"role '{self.target.role or 'default'}' the privileges on database "
                    f"'{self.target.database}' (USAGE, CREATE SCHEMA, and ownership of its "
                    "schemas)"
                ) from None
            raise

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> int:
        if self._depth and sql.lstrip()[:6].upper() in ("CREATE", "ALTER ", "DROP T", "DROP S"):
            # Snowflake commits the open transaction before any DDL; do it explicitly so
            # every engine (and fakesnow) sees the same thing, then carry on in a new one.
            # Safe for loads: rows committed early are skipped by id on a rerun, and
            # the file ledger is only written after the batch's last DDL.
            self._run("COMMIT")
            try:
                self._run(sql, params).close()
            finally:
                self._run("BEGIN")
            return 0
        cur = self._run(sql, params)
        count = cur.rowcount
        cur.close()
        return int(count or 0)

    def _fetchall(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        cur = self._run(sql, params)
        try:
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()

    # --- connection, transactions, locks ------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:  # Snowflake transactions do not nest: join the outer one.
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._run("BEGIN")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._depth = 0
        self._run("COMMIT")

    def _rollback(self) -> None:
        try:
            self.conn.cursor().execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a lost session rolls back by itself
            pass

    def _ensure_locks(self) -> None:
        b = ident(BOOKKEEPING_SCHEMA)
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {b}.LOCKS (NAME VARCHAR NOT NULL, HOLDER VARCHAR "
            "NOT NULL, ACQUIRED_AT TIMESTAMP_TZ, EXPIRES_AT TIMESTAMP_TZ, PRIMARY KEY (NAME))"
        )

    @contextmanager
    def _lease(self, name: str, busy: str) -> Iterator[None]:
        self._ensure_locks()
        locks = f"{ident(BOOKKEEPING_SCHEMA)}.LOCKS"
        minutes = int(self.target.lock_lease_minutes)
        # One MERGE takes a free or expired lock; Snowflake serialises MERGEs on a table.
        self._execute(
            f"MERGE INTO {locks} AS l USING (SELECT %s AS NAME, %s AS HOLDER) AS s "
            "ON l.NAME = s.NAME "
            "WHEN MATCHED AND l.EXPIRES_AT < CURRENT_TIMESTAMP() THEN UPDATE SET "
            "HOLDER = s.HOLDER, ACQUIRED_AT = CURRENT_TIMESTAMP(), "
            f"EXPIRES_AT = DATEADD(minute, {minutes}, CURRENT_TIMESTAMP()) "
            "WHEN NOT MATCHED THEN INSERT (NAME, HOLDER, ACQUIRED_AT, EXPIRES_AT) VALUES "
            f"(s.NAME, s.HOLDER, CURRENT_TIMESTAMP(), DATEADD(minute, {minutes}, "
            "CURRENT_TIMESTAMP()))",
            (name, self._holder),
        )
        held = self._fetchall(f"SELECT HOLDER FROM {locks} WHERE NAME = %s", (name,))
        if not held or held[0][0] != self._holder:
            raise LockBusy(
                f"{busy} on Snowflake target '{self.target_name}' holds the lock; wait for it "
                f"to finish (a crashed run's lock expires after {minutes} minutes, or delete "
                f"its row from _sluice.locks where name = '{name}')"
            )
        try:
            yield
        finally:
            self._execute(
                f"DELETE FROM {locks} WHERE NAME = %s AND HOLDER = %s", (name, self._holder)
            )

    @contextmanager
    def lock(self, schema: str) -> Iterator[None]:  # type: ignore[override]
        with self._lease(f"sync:{schema}", f"another sync of schema '{schema}'"):
            # The start of a sync, outside any batch: the stage and staging tables exist
            # before the first batch transaction (their DDL would commit it).
            self.prepare_staging(BOOKKEEPING_SCHEMA, list(_STAGED_BOOKKEEPING))
            self.prepare_staging(schema)
            yield

    def retl_lock(self, model: str) -> Iterator[None]:  # type: ignore[override]
        return self._lease(f"retl:{model}", f"another reverse-ETL run of model '{model}'")

    # --- schema -------------------------------------------------------------------------
    def ensure_bookkeeping(self) -> None:
        b = ident(BOOKKEEPING_SCHEMA)
        ts = "TIMESTAMP_TZ"
        self._ensure_locks()
        for ddl in (
            f"CREATE TABLE IF NOT EXISTS {b}.LOADED_FILES (SCHEMA_NAME VARCHAR NOT NULL, "
            f"FILE VARCHAR NOT NULL, LINES NUMBER(38,0), LOADED_AT {ts} DEFAULT "
            "CURRENT_TIMESTAMP(), PRIMARY KEY (SCHEMA_NAME, FILE))",
            f"CREATE TABLE IF NOT EXISTS {b}.REJECTED_EVENTS (SCHEMA_NAME VARCHAR NOT NULL, "
            "FILE VARCHAR NOT NULL, LINE NUMBER(38,0), RAW VARCHAR, REASON VARCHAR NOT NULL, "
            f"REJECTED_AT {ts} DEFAULT CURRENT_TIMESTAMP())",
            f"CREATE TABLE IF NOT EXISTS {b}.SYNC_RUNS (RUN_ID VARCHAR NOT NULL, "
            f"SCHEMA_NAME VARCHAR, TARGET VARCHAR, STATUS VARCHAR, STARTED_AT {ts}, "
            f"FINISHED_AT {ts}, REPORT VARCHAR, PRIMARY KEY (RUN_ID))",
            f"CREATE TABLE IF NOT EXISTS {b}.CURSORS (SCHEMA_NAME VARCHAR NOT NULL, "
            f"COLLECTION VARCHAR NOT NULL, CURSOR VARCHAR NOT NULL, UPDATED_AT {ts} DEFAULT "
            "CURRENT_TIMESTAMP(), PRIMARY KEY (SCHEMA_NAME, COLLECTION))",
            f"CREATE TABLE IF NOT EXISTS {b}.TURNED_OFF_NAMES (SCHEMA_NAME VARCHAR NOT NULL, "
            "TABLE_NAME VARCHAR NOT NULL, COLUMN_NAME VARCHAR NOT NULL, FIRST_SEEN "
            f"{ts} DEFAULT CURRENT_TIMESTAMP(), PRIMARY KEY (SCHEMA_NAME, TABLE_NAME, "
            "COLUMN_NAME))",
            f"CREATE TABLE IF NOT EXISTS {b}.VIOLATIONS (SCHEMA_NAME VARCHAR NOT NULL, "
            "FILE VARCHAR NOT NULL, EVENT VARCHAR NOT NULL, PROPERTY VARCHAR NOT NULL, "
            "KIND VARCHAR NOT NULL, EXAMPLE VARCHAR, OCCURRENCES NUMBER(38,0), "
            f"FIRST_SEEN VARCHAR, LAST_SEEN VARCHAR, RECORDED_AT {ts} DEFAULT "
            "CURRENT_TIMESTAMP())",
            f"CREATE TABLE IF NOT EXISTS {b}.BLOCKED_EVENTS (SCHEMA_NAME VARCHAR NOT NULL, "
            "FILE VARCHAR NOT NULL, LINE NUMBER(38,0), EVENT VARCHAR, RAW VARCHAR, "
            f"VIOLATIONS VARCHAR, BLOCKED_AT {ts} DEFAULT CURRENT_TIMESTAMP())",
        ):
            self._execute(ddl)
        self.prepare_staging(BOOKKEEPING_SCHEMA, list(_STAGED_BOOKKEEPING))

    def _columns(self, schema: str, table: str | None = None) -> list[tuple[str, str, str]]:
        sql = (
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s"
        )
        params: list[Any] = [schema.upper()]
        if table is not None:
            sql += " AND table_name = %s"
            params.append(table.upper())
        rows = self._fetchall(sql + " ORDER BY table_name, ordinal_position", params)
        return [(str(t).lower(), str(c).lower(), str(d).lower()) for t, c, d in rows]

    def read_schema(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, data_type in self._columns(schema):
            kind = _READ_TYPES.get(data_type.split("(")[0], ColumnType.TEXT)
            out.setdefault(table, {})[column] = kind
        for table, cols in out.items():
            self._types[(schema, table)] = dict(cols)
        return out

    def _column_sql(self, name: str, kind: ColumnType) -> str:
        if name == RESCUED:
            return f"{ident(name)} VARIANT"
        return f"{ident(name)} {CAPABILITIES.type_names[kind]}"

    def _sql_type(self, schema: str, table: str, column: str) -> str:
        types = self._types.get((schema, table))
        if types is None or column not in types:
            types = self._types[(schema, table)] = {
                c: _READ_TYPES.get(d.split("(")[0], ColumnType.TEXT)
                for _, c, d in self._columns(schema, table)
            }
        if column == RESCUED:
            return "VARIANT"
        return CAPABILITIES.type_names[types.get(column, ColumnType.TEXT)]

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
        cols = ", ".join(self._column_sql(n, k) for n, k in columns.items())
        self._execute(f"CREATE TABLE {qualified(schema, table)} ({cols}, PRIMARY KEY (ID))")
        self._types[(schema, table)] = dict(columns)
        self._sync_staging(schema, table, list(columns), None)

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        for name, kind in columns.items():
            self._execute(
                f"ALTER TABLE {qualified(schema, table)} ADD COLUMN {self._column_sql(name, kind)}"
            )
            self._types.setdefault((schema, table), {})[name] = kind
        staged = self._staged.get((schema, table))
        if staged is None:  # not seen by this connection yet: compare with the target
            self.prepare_staging(schema, [table])
        else:
            self._sync_staging(schema, table, list(columns), staged)

    # --- bulk writes: a Parquet file, PUT to the stage, COPY INTO a staging table, DML -----
    def _staging(self, schema: str, table: str) -> str:
        """The staging table of a target table: `_SLUICE."STAGE__<SCHEMA>__<TABLE>"`."""
        return qualified(BOOKKEEPING_SCHEMA, f"stage__{schema}__{table}")

    def _ensure_stage(self) -> None:
        if not self._stage_ready:
            b = ident(BOOKKEEPING_SCHEMA)
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
            self._execute(f"CREATE STAGE IF NOT EXISTS {b}.{ident(STAGE)}")
            self._stage_ready = True

    def _sync_staging(
        self, schema: str, table: str, columns: Sequence[str], have: set[str] | None
    ) -> None:
        """Create the staging table (all VARCHAR: values are cast in the DML) or add the
        columns it lacks. DDL: called outside the batch transaction (see the docstring)."""
        self._ensure_stage()
        staging = self._staging(schema, table)
        if have is None:
            cols = ", ".join(f"{ident(c)} VARCHAR" for c in columns)
            self._execute(f"CREATE OR REPLACE TABLE {staging} ({cols})")
            have = set(columns)
        for column in columns:
            if column not in have:
                self._execute(f"ALTER TABLE {staging} ADD COLUMN {ident(column)} VARCHAR")
                have.add(column)
        self._staged[(schema, table)] = have

    def prepare_staging(self, schema: str, tables: Sequence[str] | None = None) -> None:
        """Bring the staging tables of `schema`'s tables (or of `tables` only) in line with
        them: run at the start of a sync (`lock`), before any batch transaction."""
        wanted: dict[str, list[str]] = {}
        for table, column, _ in self._columns(schema):
            if (tables is None and schema != BOOKKEEPING_SCHEMA) or table in (tables or ()):
                wanted.setdefault(table, []).append(column)
        if not wanted:
            return
        self._ensure_stage()
        have: dict[str, set[str]] = {}
        for table, column, _ in self._columns(BOOKKEEPING_SCHEMA):
            have.setdefault(table, set()).add(column)
        for table, columns in wanted.items():
            staged = have.get(f"stage__{schema}__{table}".lower())
            if staged is None or not set(columns) <= staged:
                self._sync_staging(schema, table, columns, staged)
            else:
                self._staged[(schema, table)] = staged

    def _source(self, schema: str, table: str, columns: Sequence[str]) -> str:
        """`(SELECT CAST(s."N" AS NUMBER(38,0)) AS "N", ... FROM <staging> AS s)`: the
        staged text typed as the target's columns."""
        select = []
        for c in columns:
            kind = self._sql_type(schema, table, c)
            if kind == "VARIANT":
                value = f"PARSE_JSON(s.{ident(c)})"
            elif kind == "VARCHAR":
                value = f"s.{ident(c)}"
            else:
                value = f"CAST(s.{ident(c)} AS {kind})"
            select.append(f"{value} AS {ident(c)}")
        return f"(SELECT {', '.join(select)} FROM {self._staging(schema, table)} AS s)"

    def write_sql(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        keys: Sequence[str] = ("id",),
        mode: Literal["insert", "fill_nulls", "upsert", "plain"] = "insert",
    ) -> list[str]:
        """The statements writing the staged rows into the target (public for tests): for
        fill_nulls and upsert an `UPDATE ... FROM` of the rows whose key is there, then an
        `INSERT ... SELECT ... WHERE NOT EXISTS` of the others (plain: every row). (One
        MERGE would do both, but fakesnow 0.12.1 cannot run MERGE inside a transaction: see
        the module docstring. Under the schema lock the two statements are equivalent.)"""
        target = qualified(schema, table)
        source = self._source(schema, table, columns)
        cols = ", ".join(ident(c) for c in columns)
        values = ", ".join(f"s.{ident(c)}" for c in columns)
        if mode == "plain":
            return [f"INSERT INTO {target} ({cols}) SELECT {values} FROM {source} AS s"]
        match = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in keys)
        rest = [c for c in columns if c not in keys]
        statements = []
        if mode == "upsert" and rest:
            sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in rest)
            statements.append(f"UPDATE {target} AS t SET {sets} FROM {source} AS s WHERE {match}")
        fillable = [c for c in rest if c not in ("uuid_ts", RESCUED)]
        if mode == "fill_nulls" and fillable:
            sets = ", ".join(f"{ident(c)} = COALESCE(t.{ident(c)}, s.{ident(c)})" for c in fillable)
            changed = " OR ".join(
                f"(t.{ident(c)} IS NULL AND s.{ident(c)} IS NOT NULL)" for c in fillable
            )
            statements.append(
                f"UPDATE {target} AS t SET {sets} FROM {source} AS s WHERE {match} AND ({changed})"
            )
        statements.append(
            f"INSERT INTO {target} ({cols}) SELECT {values} FROM {source} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {match})"
        )
        return statements

    def _stage_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Empty the staging table, then load `rows` into it: one Parquet file of text
        columns (NULL stays NULL, "" stays "", any text survives: no CSV quoting), PUT to
        the stage and COPY INTO, which removes the file once loaded (PURGE = TRUE)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        staging = self._staging(schema, table)
        stage = f"@{ident(BOOKKEEPING_SCHEMA)}.{ident(STAGE)}"
        data = {
            c.upper(): pa.array([_text(r[i]) for r in rows], pa.string())
            for i, c in enumerate(columns)
        }
        self._execute(f"DELETE FROM {staging}")
        with tempfile.TemporaryDirectory(prefix="sluice-sf-") as tmp:
            name = f"{uuid.uuid4().hex}.parquet"
            path = Path(tmp, name)
            pq.write_table(pa.table(data), path)
            local = path.as_posix().replace("'", "\\'")
            self._execute(f"PUT 'file://{local}' {stage}/{STAGE_PREFIX} AUTO_COMPRESS = FALSE")
        result = self._fetchall(
            f"COPY INTO {staging} FROM {stage}/{STAGE_PREFIX}/{name} FILE_FORMAT = "
            "(TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_SENSITIVE PURGE = TRUE"
        )
        loaded = sum(int(r[3] or 0) for r in result if len(r) > 3)
        if loaded != len(rows):
            raise WarehouseError(
                f"Snowflake target '{self.target_name}': COPY INTO {staging} loaded {loaded} "
                f"of {len(rows)} rows ({result!r}); check the stage {STAGE} in _sluice"
            )

    def _write(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        keys: Sequence[str] = ("id",),
        mode: Literal["insert", "fill_nulls", "upsert", "plain"] = "insert",
    ) -> int:
        """Rows inserted or updated: stage them, run the DML, empty the staging table again;
        one transaction (joined if a batch is open)."""
        if not set(columns) <= self._staged.get((schema, table), set()):
            # Normally done by lock/ensure_bookkeeping/create_table/add_columns before the
            # batch; DDL here commits an open transaction first (see `_execute`).
            self.prepare_staging(schema, [table])
        total = 0
        with self.transaction():
            self._stage_rows(schema, table, columns, rows)
            for sql in self.write_sql(schema, table, columns, keys, mode):
                total += self._execute(sql)
            self._execute(f"DELETE FROM {self._staging(schema, table)}")
        return total

    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        mode: Literal["insert", "fill_nulls"] = "fill_nulls" if fill_nulls else "insert"
        return self._write(schema, table, columns, rows, mode=mode) if rows else 0

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        return self._write(schema, table, columns, rows, mode="upsert") if rows else 0

    def insert_plain(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        skip_existing: bool = False,
    ) -> None:
        if not rows:
            return
        if skip_existing:
            keys = _KEYS.get(table, tuple(columns)) if schema == BOOKKEEPING_SCHEMA else columns
            self._write(schema, table, columns, rows, keys=keys)
        else:
            self._write(schema, table, columns, rows, mode="plain")

    def _in(self, n: int) -> str:
        return "IN (" + ", ".join(["%s"] * n) + ")"

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        if not ids:
            return 0
        stub = [(i, at, at, at) for i in ids]
        self.insert_new_rows(schema, table, ("id", "received_at", "uuid_ts", "_deleted_at"), stub)
        for start in range(0, len(ids), CHUNK_ROWS):
            chunk = list(ids[start : start + CHUNK_ROWS])
            self._execute(
                f"UPDATE {qualified(schema, table)} SET _DELETED_AT = CAST(%s AS TIMESTAMP_TZ) "
                f"WHERE _DELETED_AT IS NULL AND ID {self._in(len(chunk))}",
                [at, *chunk],
            )
        return len(ids)

    def read_cursors(self, schema: str) -> dict[str, str]:
        rows = self._fetchall(
            f"SELECT COLLECTION, CURSOR FROM {ident(BOOKKEEPING_SCHEMA)}.CURSORS "
            "WHERE SCHEMA_NAME = %s",
            (schema,),
        )
        return {str(c): str(v) for c, v in rows}

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        b = ident(BOOKKEEPING_SCHEMA)
        self._execute(
            f"DELETE FROM {b}.CURSORS WHERE SCHEMA_NAME = %s AND COLLECTION = %s",
            (schema, collection),
        )
        self._execute(
            f"INSERT INTO {b}.CURSORS (SCHEMA_NAME, COLLECTION, CURSOR) VALUES (%s, %s, %s)",
            (schema, collection, cursor),
        )

    # --- profiles (users, accounts) --------------------------------------------------------
    def profile_sql(self, schema: str, spec: ProfileSpec, n: int) -> str:
        """The profile rows of `n` keys (bound): latest non-NULL value per synced trait,
        FIRST_VALUE ... IGNORE NULLS over the key's rows newest first (Snowflake has no
        aggregate FILTER clause), as `_SLUICE_KEY`, the traits, `_SLUICE_RECEIVED_AT`.
        Public for tests."""
        key = ident(spec.key_column)
        order = '"TIMESTAMP" DESC NULLS LAST, RECEIVED_AT DESC NULLS LAST'
        window = (
            f"OVER (PARTITION BY {key} ORDER BY {order} "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
        )
        traits = [
            f"FIRST_VALUE({ident(c)}) IGNORE NULLS {window} AS {ident(c)}"
            for c in spec.trait_columns
        ]
        inner = ", ".join(
            [
                f"{key} AS _SLUICE_KEY",
                *traits,
                f"MAX(RECEIVED_AT) OVER (PARTITION BY {key}) AS _SLUICE_RECEIVED_AT",
                f"ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {order}) AS _SLUICE_RN",
            ]
        )
        outer = ", ".join(
            ["_SLUICE_KEY", *(ident(c) for c in spec.trait_columns), "_SLUICE_RECEIVED_AT"]
        )
        return (
            f"SELECT {outer} FROM (SELECT {inner} FROM "
            f"{qualified(schema, spec.source_table)} WHERE {key} {self._in(n)}) AS p "
            "WHERE _SLUICE_RN = 1"
        )

    def profile_write_sql(self, schema: str, spec: ProfileSpec, n: int) -> list[str]:
        """The statements rebuilding the profiles of `n` keys (each binds the keys once;
        public for tests): an `UPDATE ... FROM` setting only the synced traits,
        `received_at` and `uuid_ts` of the rows there (a column not in
        `spec.trait_columns`, e.g. a trait turned off by selective sync, keeps its value),
        then an `INSERT ... WHERE NOT EXISTS` of the new keys. No MERGE: see write_sql."""
        target = qualified(schema, spec.table)
        profiles = f"({self.profile_sql(schema, spec, n)}) AS p"
        sets = ", ".join(
            [
                *(f"{ident(c)} = p.{ident(c)}" for c in spec.trait_columns),
                f"{ident('received_at')} = p._SLUICE_RECEIVED_AT",
                f"{ident('uuid_ts')} = CURRENT_TIMESTAMP()",
            ]
        )
        cols = ", ".join(ident(c) for c in ["id", *spec.trait_columns, "received_at", "uuid_ts"])
        values = ", ".join(
            [
                "p._SLUICE_KEY",
                *(f"p.{ident(c)}" for c in spec.trait_columns),
                "p._SLUICE_RECEIVED_AT",
                "CURRENT_TIMESTAMP()",
            ]
        )
        # A profile equal to its rebuilt row is left as it is (uuid_ts too): a replay
        # changes nothing.
        changed = " OR ".join(
            [
                *(f"t.{ident(c)} IS DISTINCT FROM p.{ident(c)}" for c in spec.trait_columns),
                f"t.{ident('received_at')} IS DISTINCT FROM p._SLUICE_RECEIVED_AT",
            ]
        )
        return [
            f"UPDATE {target} AS t SET {sets} FROM {profiles} WHERE t.{ident('id')} = "
            f"p._SLUICE_KEY AND ({changed})",
            f"INSERT INTO {target} ({cols}) SELECT {values} FROM {profiles} WHERE NOT EXISTS "
            f"(SELECT 1 FROM {target} AS t WHERE t.{ident('id')} = p._SLUICE_KEY)",
        ]

    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """In SQL (profile_write_sql); the keys whose history holds a rescued value are
        rebuilt in Python (base.rescued_profile_rows), which follows a trait's newest
        value into the profile's _rescued_data."""
        if not keys:
            return 0
        with self.transaction():  # joins the batch's transaction when one is open
            rescued = self._keys_with_rescued(schema, spec, keys)
            plain = [k for k in keys if k not in rescued] if rescued else list(keys)
            for start in range(0, len(plain), CHUNK_ROWS):
                chunk = list(plain[start : start + CHUNK_ROWS])
                for sql in self.profile_write_sql(schema, spec, len(chunk)):
                    self._execute(sql, chunk)
            if rescued:
                self._rescued_profiles(schema, spec, sorted(rescued))
        return len(keys)

    def _keys_with_rescued(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> set[str]:
        if spec.rescued_column is None:
            return set()
        found: set[str] = set()
        key = ident(spec.key_column)
        for start in range(0, len(keys), CHUNK_ROWS):
            chunk = list(keys[start : start + CHUNK_ROWS])
            found.update(
                str(k)
                for (k,) in self._fetchall(
                    f"SELECT DISTINCT {key} FROM {qualified(schema, spec.source_table)} "
                    f"WHERE {key} {self._in(len(chunk))} "
                    f"AND {ident(spec.rescued_column)} IS NOT NULL",
                    chunk,
                )
            )
        return found

    def _rescued_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> None:
        assert spec.rescued_column is not None
        traits = "".join(f", {ident(c)}" for c in spec.trait_columns)
        r = ident(spec.rescued_column)
        key = ident(spec.key_column)
        history: list[tuple[Any, ...]] = []
        current: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), CHUNK_ROWS):
            chunk = list(keys[start : start + CHUNK_ROWS])
            history += self._fetchall(
                f'SELECT {key}, "TIMESTAMP", RECEIVED_AT{traits}, {r} '
                f"FROM {qualified(schema, spec.source_table)} WHERE {key} {self._in(len(chunk))}",
                chunk,
            )
            current += self._fetchall(
                f"SELECT ID{traits}, RECEIVED_AT, {r} FROM {qualified(schema, spec.table)} "
                f"WHERE ID {self._in(len(chunk))}",
                chunk,
            )
        now = datetime.now(timezone.utc).isoformat()
        rows = rescued_profile_rows(history, current, spec.trait_columns, now)
        if rows:
            names = ["id", *spec.trait_columns, "received_at", "uuid_ts", spec.rescued_column]
            self.upsert_rows(schema, spec.table, names, rows)

    # --- bookkeeping -----------------------------------------------------------------------
    def loaded_files(self, schema: str) -> set[str]:
        rows = self._fetchall(
            f"SELECT FILE FROM {ident(BOOKKEEPING_SCHEMA)}.LOADED_FILES WHERE SCHEMA_NAME = %s",
            (schema,),
        )
        return {str(r[0]) for r in rows}

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        if files:
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "loaded_files",
                ("schema_name", "file", "lines"),
                [(schema, f, n) for f, n in files],
                skip_existing=True,
            )

    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None:
        if rejects:
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "rejected_events",
                ("schema_name", "file", "line", "raw", "reason"),
                [(schema, r.file, r.line, r.raw, r.reason) for r in rejects],
                skip_existing=True,
            )

    def record_violations(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            self.insert_plain(
                BOOKKEEPING_SCHEMA, "violations", VIOLATION_COLUMNS, rows, skip_existing=True
            )

    def record_blocked(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "blocked_events",
                BLOCKED_COLUMNS,
                [(schema, *row) for row in rows],
                skip_existing=True,
            )

    def violation_summary(self, schema: str | None) -> list[dict[str, Any]]:
        if "violations" not in {t.lower() for t in self.read_schema(BOOKKEEPING_SCHEMA)}:
            return []
        where, params = ("", ()) if schema is None else (" WHERE SCHEMA_NAME = %s", (schema,))
        table = f"{ident(BOOKKEEPING_SCHEMA)}.VIOLATIONS"
        return violation_rows(
            self._fetchall(VIOLATION_SUMMARY.format(table=table, where=where), params)
        )

    def record_turned_off(self, schema: str, names: Sequence[tuple[str, str]]) -> None:
        if names:
            self.insert_plain(
                BOOKKEEPING_SCHEMA,
                "turned_off_names",
                ("schema_name", "table_name", "column_name"),
                [(schema, t, c) for t, c in names],
                skip_existing=True,
            )

    def turned_off_names(self, schema: str) -> dict[str, set[str]]:
        rows = self._fetchall(
            f"SELECT TABLE_NAME, COLUMN_NAME FROM {ident(BOOKKEEPING_SCHEMA)}.TURNED_OFF_NAMES "
            "WHERE SCHEMA_NAME = %s",
            (schema,),
        )
        out: dict[str, set[str]] = {}
        for table, column in rows:
            out.setdefault(str(table), set()).add(str(column))
        return out

    def _record(self, table: str, first: str, report: dict[str, Any], key: str) -> None:
        self._execute(
            f"INSERT INTO {ident(BOOKKEEPING_SCHEMA)}.{ident(table)} (RUN_ID, {first}, TARGET, "
            "STATUS, STARTED_AT, FINISHED_AT, REPORT) VALUES (%s, %s, %s, %s, "
            "CAST(%s AS TIMESTAMP_TZ), CAST(%s AS TIMESTAMP_TZ), %s)",
            (
                report["run_id"],
                key,
                self.target_name,
                report["status"],
                _text(report["started_at"]),
                _text(report["finished_at"]),
                orjson.dumps(report).decode(),
            ),
        )

    def record_run(self, schema: str, report: dict[str, Any]) -> None:
        self._record("sync_runs", "SCHEMA_NAME", report, schema)

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._fetchall(
            f"SELECT REPORT FROM {ident(BOOKKEEPING_SCHEMA)}.SYNC_RUNS "
            f"ORDER BY STARTED_AT DESC LIMIT {int(limit)}"
        )
        return [orjson.loads(r[0]) for r in rows]

    def recent_rejects(self, schema: str | None, limit: int = 20) -> list[dict[str, Any]]:
        where, params = ("", ()) if schema is None else (" WHERE SCHEMA_NAME = %s", (schema,))
        rows = self._fetchall(
            "SELECT SCHEMA_NAME, FILE, LINE, REASON, RAW, REJECTED_AT "
            f"FROM {ident(BOOKKEEPING_SCHEMA)}.REJECTED_EVENTS{where} "
            f"ORDER BY REJECTED_AT DESC, FILE, LINE LIMIT {int(limit)}",
            params,
        )
        return reject_rows(rows)

    # --- retype (sluice schema set-type) --------------------------------------------------
    # Snowflake changes a column's type only within its kind (a longer VARCHAR), and every
    # DDL commits: the table is rebuilt into a work table in _sluice, its rows copied with
    # the column's new values (one transaction), then swapped in with one atomic
    # `ALTER TABLE ... SWAP WITH`. A failure before the swap leaves the table as it was.
    _RETYPE_STAGE = "retype_stage"

    def retype_column(
        self, schema: str, table: str, column: str, new_type: ColumnType, apply: bool
    ) -> RetypePlan:
        columns = self.read_schema(schema).get(table, {})
        if column not in columns:
            raise WarehouseError(f"no column '{column}' in {schema}.{table}")
        has_rescued = RESCUED in columns
        c, r = ident(column), ident(RESCUED)
        where = f"{c} IS NOT NULL" + (f" OR {r} IS NOT NULL" if has_rescued else "")
        rows = self._fetchall(
            f"SELECT ID, {c}, {r if has_rescued else 'NULL'} FROM {qualified(schema, table)} "
            f"WHERE {where}"
        )
        plan = plan_retype(RetypePlan(schema, table, column, columns[column], new_type), rows)
        if not apply:
            return plan
        new_columns = dict(columns)
        new_columns[column] = new_type
        if plan.needs_rescued_column:
            new_columns.setdefault(RESCUED, ColumnType.TEXT)
        b = BOOKKEEPING_SCHEMA
        work = qualified(b, f"retype__{schema}__{table}")
        stage_columns = ["id", "value", "changed", "rescued"]
        self._ensure_column_types()
        self._sync_staging(b, self._RETYPE_STAGE, stage_columns, None)
        cols = ", ".join(self._column_sql(n, k) for n, k in new_columns.items())
        self._execute(f"CREATE OR REPLACE TABLE {work} ({cols}, PRIMARY KEY (ID))")
        with self.transaction():
            self._execute(f"DELETE FROM {self._staging(b, self._RETYPE_STAGE)}")
            if plan.changes:
                self._stage_rows(
                    b,
                    self._RETYPE_STAGE,
                    stage_columns,
                    [(ch.id, ch.value, ch.rescued_changed, ch.rescued) for ch in plan.changes],
                )
            self._execute(self.retype_copy_sql(schema, table, column, new_columns, work))
        self.retype_swap(schema, table, work)
        self._types[(schema, table)] = new_columns
        with self.transaction():
            self._record_column_type(schema, table, column, new_type)
        plan.applied = True
        return plan

    def retype_copy_sql(
        self,
        schema: str,
        table: str,
        column: str,
        new_columns: dict[str, ColumnType],
        work: str,
    ) -> str:
        """Every row into the work table, the column (and `_rescued_data` where it
        changed) from the staged plan; public for the tests' dialect check."""
        staged = self._staging(BOOKKEEPING_SCHEMA, self._RETYPE_STAGE)
        select = []
        for name, kind in new_columns.items():
            if name == column:
                cast = CAPABILITIES.type_names[kind]
                select.append(f"CAST(s.{ident('value')} AS {cast})")
            elif name == RESCUED:
                old = (
                    f"t.{ident(RESCUED)}"
                    if RESCUED in self._types.get((schema, table), {})
                    else "NULL"
                )
                select.append(
                    f"CASE WHEN s.{ident('changed')} = 'true' THEN "
                    f"PARSE_JSON(s.{ident('rescued')}) ELSE {old} END"
                )
            else:
                select.append(f"t.{ident(name)}")
        cols = ", ".join(ident(n) for n in new_columns)
        return (
            f"INSERT INTO {work} ({cols}) SELECT {', '.join(select)} "
            f"FROM {qualified(schema, table)} AS t LEFT JOIN {staged} AS s "
            f"ON t.{ident('id')} = s.{ident('id')}"
        )

    def retype_swap(self, schema: str, table: str, work: str) -> None:
        """Swap the rebuilt table in (atomic in Snowflake) and drop the old one."""
        self._execute(f"ALTER TABLE {qualified(schema, table)} SWAP WITH {work}")
        self._execute(f"DROP TABLE {work}")

    def _ensure_column_types(self) -> None:
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {ident(BOOKKEEPING_SCHEMA)}")
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {ident(BOOKKEEPING_SCHEMA)}.COLUMN_TYPES (SCHEMA_NAME "
            "VARCHAR NOT NULL, TABLE_NAME VARCHAR NOT NULL, COLUMN_NAME VARCHAR NOT NULL, "
            "COLUMN_TYPE VARCHAR NOT NULL, DECIDED_AT TIMESTAMP_TZ, "
            "PRIMARY KEY (SCHEMA_NAME, TABLE_NAME, COLUMN_NAME))"
        )

    def _record_column_type(
        self, schema: str, table: str, column: str, new_type: ColumnType
    ) -> None:
        t = f"{ident(BOOKKEEPING_SCHEMA)}.COLUMN_TYPES"
        key = (schema, table, column)
        self._execute(
            f"DELETE FROM {t} WHERE SCHEMA_NAME = %s AND TABLE_NAME = %s AND COLUMN_NAME = %s",
            key,
        )
        self._execute(
            f"INSERT INTO {t} VALUES (%s, %s, %s, %s, CURRENT_TIMESTAMP())",
            (*key, new_type.value),
        )

    def decided_types(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        if "column_types" not in self.read_schema(BOOKKEEPING_SCHEMA):
            return {}
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, kind in self._fetchall(
            f"SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM "
            f"{ident(BOOKKEEPING_SCHEMA)}.COLUMN_TYPES WHERE SCHEMA_NAME = %s",
            (schema,),
        ):
            out.setdefault(str(table), {})[str(column)] = ColumnType(str(kind))
        return out

    def schema_names(self) -> set[str]:
        rows = self._fetchall("SELECT DISTINCT table_schema FROM information_schema.tables")
        return {str(r[0]).lower() for r in rows}

    def table_ref(self, schema: str, table: str) -> str:
        return qualified(schema, table)

    def table_stats(self, schema: str, table: str) -> TableStats:
        rows, duplicates, newest = self._fetchall(
            "SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT ID), MAX(RECEIVED_AT) "
            f"FROM {qualified(schema, table)}"
        )[0]
        return TableStats(int(rows), int(duplicates), newest if rows else None)

    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        return iter(self._fetchall(sql))

    # --- reverse ETL -------------------------------------------------------------------------
    # Staging and change-set tables are real tables in _SLUICE (CTAS is DDL in Snowflake and
    # commits on its own; a crashed run's leftovers are replaced by the next run).
    def _retl_table(self, kind: str, model: str) -> str:
        return qualified(BOOKKEEPING_SCHEMA, f"retl_{kind}__{model}")

    def retl_ensure_bookkeeping(self) -> None:
        b = ident(BOOKKEEPING_SCHEMA)
        self._ensure_locks()
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {b}.RETL_SNAPSHOTS (MODEL VARCHAR NOT NULL, KEY VARCHAR "
            "NOT NULL, ROW_HASH VARCHAR NOT NULL, SYNCED_AT TIMESTAMP_TZ, PRIMARY KEY (MODEL, KEY))"
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {b}.RETL_SENT (MODEL VARCHAR NOT NULL, KEY VARCHAR "
            "NOT NULL, OP VARCHAR NOT NULL, ROW_HASH VARCHAR NOT NULL, RECORD_ID VARCHAR NOT NULL, "
            "RUN_ID VARCHAR NOT NULL, SENT_AT TIMESTAMP_TZ, PRIMARY KEY (MODEL, KEY))"
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {b}.RETL_RUNS (RUN_ID VARCHAR NOT NULL, MODEL VARCHAR, "
            "TARGET VARCHAR, STATUS VARCHAR, STARTED_AT TIMESTAMP_TZ, FINISHED_AT TIMESTAMP_TZ, "
            "REPORT VARCHAR, PRIMARY KEY (RUN_ID))"
        )

    @staticmethod
    def _retl_kind(data_type: str) -> ColumnType:
        t = data_type.lower()
        if t.startswith(("number", "decimal", "numeric", "int", "bigint", "smallint")):
            return ColumnType.BIGINT  # NUMBER with a scale: see retl_model_columns
        if t.startswith(("float", "double", "real")):
            return ColumnType.DOUBLE
        if t.startswith("bool"):
            return ColumnType.BOOLEAN
        if t.startswith("timestamp"):
            return ColumnType.TIMESTAMP
        return ColumnType.TEXT

    def retl_model_columns(self, model: str, sql: str) -> dict[str, ColumnType]:
        probe = self._retl_table("probe", model)
        self._execute(f"CREATE OR REPLACE TABLE {probe} AS SELECT * FROM (\n{sql}\n) AS m LIMIT 0")
        rows = self._fetchall(
            "SELECT column_name, data_type, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (BOOKKEEPING_SCHEMA.upper(), f"retl_probe__{model}".upper()),
        )
        self._execute(f"DROP TABLE IF EXISTS {probe}")
        out = {}
        for column, data_type, scale in rows:
            kind = self._retl_kind(str(data_type))
            if str(data_type).lower() in ("number", "decimal", "numeric") and scale:
                kind = ColumnType.DOUBLE
            out[str(column).lower()] = kind
        return out

    def retl_stage(self, model: str, sql: str, key: str, columns: Sequence[str]) -> int:
        stage = self._retl_table("stage", model)
        inner = f"SELECT {', '.join(ident(c) for c in columns)} FROM (\n{sql}\n) AS m0"
        # The hash sees the whole sent row: an OBJECT with sorted keys, NULLs kept.
        self._execute(
            f"CREATE OR REPLACE TABLE {stage} AS SELECT CAST(r.{ident(key)} AS VARCHAR) AS "
            "_SLUICE_KEY, MD5(TO_VARCHAR(OBJECT_CONSTRUCT_KEEP_NULL(r.*))) AS _SLUICE_HASH, "
            f"r.* FROM ({inner}) AS r"
        )
        return int(self._fetchall(f"SELECT COUNT(*) FROM {stage}")[0][0])

    def retl_key_problems(self, model: str) -> tuple[int, int]:
        stage = self._retl_table("stage", model)
        nulls, dupes = self._fetchall(
            "SELECT COUNT(*) - COUNT(_SLUICE_KEY), COUNT(_SLUICE_KEY) - COUNT(DISTINCT "
            f"_SLUICE_KEY) FROM {stage}"
        )[0]
        return int(nulls), int(dupes)

    def retl_diff(self, model: str, columns: Sequence[str]) -> dict[str, int]:
        stage = self._retl_table("stage", model)
        changes = self._retl_table("changes", model)
        s_cols = "".join(f", s.{ident(c)}" for c in columns)
        snapshots = f"{ident(BOOKKEEPING_SCHEMA)}.RETL_SNAPSHOTS"
        model_lit = "'" + model.replace("'", "''") + "'"  # CTAS: no bind parameters
        self._execute(
            f"CREATE OR REPLACE TABLE {changes} AS SELECT ROW_NUMBER() OVER (ORDER BY "
            "d._SLUICE_KIND, d._SLUICE_KEY) AS _SLUICE_SEQ, d._SLUICE_KIND, d._SLUICE_KEY, "
            f"d._SLUICE_HASH{''.join(', d.' + ident(c) for c in columns)} FROM ("
            "SELECT CASE WHEN p.KEY IS NULL THEN 'added' WHEN s._SLUICE_KEY IS NULL "
            "THEN 'removed' ELSE 'changed' END AS _SLUICE_KIND, "
            "COALESCE(s._SLUICE_KEY, p.KEY) AS _SLUICE_KEY, "
            f"COALESCE(s._SLUICE_HASH, p.ROW_HASH) AS _SLUICE_HASH{s_cols} FROM {stage} AS s "
            f"FULL OUTER JOIN (SELECT KEY, ROW_HASH FROM {snapshots} WHERE MODEL = {model_lit}) "
            "AS p ON p.KEY = s._SLUICE_KEY WHERE p.KEY IS NULL OR s._SLUICE_KEY IS NULL OR "
            "p.ROW_HASH <> s._SLUICE_HASH) AS d"
        )
        counts = {"added": 0, "changed": 0, "removed": 0}
        for kind, n in self._fetchall(
            f"SELECT _SLUICE_KIND, COUNT(*) FROM {changes} GROUP BY _SLUICE_KIND"
        ):
            counts[str(kind)] = int(n)
        staged = int(self._fetchall(f"SELECT COUNT(*) FROM {stage}")[0][0])
        counts["unchanged"] = staged - counts["added"] - counts["changed"]
        return counts

    def retl_changes(
        self, model: str, kinds: Sequence[str], columns: Sequence[str], after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        if not kinds:
            return []
        changes = self._retl_table("changes", model)
        cols = "".join(f", {ident(c)}" for c in columns)
        return self._fetchall(
            f"SELECT _SLUICE_SEQ, _SLUICE_KIND, _SLUICE_KEY, _SLUICE_HASH{cols} FROM {changes} "
            f"WHERE _SLUICE_KIND {self._in(len(kinds))} AND _SLUICE_SEQ > %s "
            f"ORDER BY _SLUICE_SEQ LIMIT {int(limit)}",
            [*kinds, int(after)],
        )

    def _retl_apply(self, model: str, where: str, params: list[Any]) -> None:
        changes = self._retl_table("changes", model)
        snapshots = f"{ident(BOOKKEEPING_SCHEMA)}.RETL_SNAPSHOTS"
        with self.transaction():
            self._execute(
                f"DELETE FROM {snapshots} WHERE MODEL = %s AND KEY IN "
                f"(SELECT _SLUICE_KEY FROM {changes} WHERE {where})",
                [model, *params],
            )
            self._execute(
                f"INSERT INTO {snapshots} (MODEL, KEY, ROW_HASH, SYNCED_AT) SELECT "
                f"CAST(%s AS VARCHAR), _SLUICE_KEY, _SLUICE_HASH, CURRENT_TIMESTAMP() FROM "
                f"{changes} WHERE {where} AND _SLUICE_KIND <> 'removed'",
                [model, *params],
            )

    def retl_advance(self, model: str, seqs: Sequence[int]) -> None:
        for start in range(0, len(seqs), CHUNK_ROWS):
            chunk = [int(s) for s in seqs[start : start + CHUNK_ROWS]]
            self._retl_apply(model, f"_SLUICE_SEQ {self._in(len(chunk))}", chunk)

    def retl_sent_ids(self, model: str, keys: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        out: dict[str, tuple[str, str, str]] = {}
        for start in range(0, len(keys), CHUNK_ROWS):
            chunk = list(keys[start : start + CHUNK_ROWS])
            for key, op, row_hash, record_id in self._fetchall(
                f"SELECT KEY, OP, ROW_HASH, RECORD_ID FROM {ident(BOOKKEEPING_SCHEMA)}.RETL_SENT "
                f"WHERE MODEL = %s AND KEY {self._in(len(chunk))}",
                [model, *chunk],
            ):
                out[str(key)] = (str(op), str(row_hash), str(record_id))
        return out

    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        if not sent:
            return
        table = f"{ident(BOOKKEEPING_SCHEMA)}.RETL_SENT"
        with self.transaction():
            for start in range(0, len(sent), CHUNK_ROWS):
                chunk = [s[0] for s in sent[start : start + CHUNK_ROWS]]
                self._execute(
                    f"DELETE FROM {table} WHERE MODEL = %s AND KEY {self._in(len(chunk))}",
                    [model, *chunk],
                )
            for start in range(0, len(sent), CHUNK_ROWS):
                chunk_rows = sent[start : start + CHUNK_ROWS]
                values = ", ".join(
                    ["(%s, %s, %s, %s, %s, %s, CURRENT_TIMESTAMP())"] * len(chunk_rows)
                )
                params: list[Any] = []
                for key, op, row_hash, record_id in chunk_rows:
                    params += [model, key, op, row_hash, record_id, run_id]
                self._execute(
                    f"INSERT INTO {table} (MODEL, KEY, OP, ROW_HASH, RECORD_ID, RUN_ID, SENT_AT) "
                    f"VALUES {values}",
                    params,
                )

    def retl_baseline(self, model: str, kinds: Sequence[str]) -> int:
        if not kinds:
            return 0
        changes = self._retl_table("changes", model)
        where = f"_SLUICE_KIND {self._in(len(kinds))}"
        n = int(self._fetchall(f"SELECT COUNT(*) FROM {changes} WHERE {where}", list(kinds))[0][0])
        if n:
            self._retl_apply(model, where, list(kinds))
        return n

    def retl_drop_stage(self, model: str) -> None:
        for kind in ("changes", "stage", "probe"):
            self._execute(f"DROP TABLE IF EXISTS {self._retl_table(kind, model)}")

    def retl_snapshot_count(self, model: str) -> int:
        return int(
            self._fetchall(
                f"SELECT COUNT(*) FROM {ident(BOOKKEEPING_SCHEMA)}.RETL_SNAPSHOTS WHERE MODEL = %s",
                (model,),
            )[0][0]
        )

    def retl_record_run(self, report: dict[str, Any]) -> None:
        self._record("retl_runs", "MODEL", report, report["model"])

    def retl_recent_runs(self, model: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        where, params = ("", ()) if model is None else ("WHERE MODEL = %s", (model,))
        rows = self._fetchall(
            f"SELECT REPORT FROM {ident(BOOKKEEPING_SCHEMA)}.RETL_RUNS {where} "
            f"ORDER BY STARTED_AT DESC LIMIT {int(limit)}",
            params,
        )
        return [orjson.loads(r[0]) for r in rows]

    def retl_write_table(
        self,
        schema: str,
        table: str,
        key: str,
        columns: dict[str, ColumnType],
        rows: Sequence[Sequence[Any]],
        keys: Sequence[str],
    ) -> None:
        existing = self.read_schema(schema).get(table)
        target = qualified(schema, table)
        # DDL first: in Snowflake it would commit the delete-and-insert transaction.
        if existing is None:
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {ident(schema)}")
            cols = ", ".join(f"{ident(n)} {CAPABILITIES.type_names[k]}" for n, k in columns.items())
            self._execute(f"CREATE TABLE {target} ({cols}, PRIMARY KEY ({ident(key)}))")
            self._types[(schema, table)] = dict(columns)
        else:
            missing = {n: k for n, k in columns.items() if n not in existing}
            if missing:
                self.add_columns(schema, table, missing)
        self.prepare_staging(schema, [table])
        with self.transaction():
            for start in range(0, len(keys), CHUNK_ROWS):
                chunk = list(keys[start : start + CHUNK_ROWS])
                self._execute(
                    f"DELETE FROM {target} WHERE CAST({ident(key)} AS VARCHAR) "
                    f"{self._in(len(chunk))}",
                    chunk,
                )
            if rows:
                self.insert_plain(schema, table, list(columns), rows)
