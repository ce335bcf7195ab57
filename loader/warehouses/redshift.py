"""Amazon Redshift over its PostgreSQL wire protocol (psycopg): a driver on Warehouse.

Types: Redshift's TEXT is VARCHAR(256), so text columns are VARCHAR(`varchar_bytes`) and
`_rescued_data` VARCHAR(65535), the widest. Widths count UTF-8 bytes and the rescue rule
counts characters, so `max_text_chars = varchar_bytes // 4`; what the rule cannot cover
(an id, a rescued document over 65535 bytes) is named in one sentence before upload,
since COPY would reject the whole batch with only a pointer to stl_load_errors.

Tables get `SORTKEY (received_at)`; their PRIMARY KEY is informational only, so every
write anti-joins on `id` (statements.py).

Bulk path: one gzip CSV object under `s3_staging` (fsspec), `COPY ... IAM_ROLE` (or a key
pair) into a temporary table LIKE the target, read by the shared DML; the object is
deleted after the COPY. `_copy_from_s3` is the one hook the tests replace (they feed
PostgreSQL the object the COPY text names).

Time: `current_timestamp` runs on the leader node only and cannot appear in statements
reading tables: `getdate()` (UTC) throughout. Locks: no advisory locks, so Warehouse's
lease row, taken after `LOCK _sluice.locks`. Lists: no arrays, so a list parameter is
expanded into `IN (%s, ...)` (dialect.positional), in bounded chunks.

Errors: transient failures (dropped connections, serialization conflicts) are retried
outside a transaction, reconnecting first; inside one the batch rolls back and the next
run loads it again. Anything else is one sentence naming the target and the fix.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg

from loader.config.targets import RedshiftTarget
from loader.rules.schema import ColumnType
from loader.scrub import Scrubber
from loader.warehouses import base
from loader.warehouses.base import Capabilities, Rows, T, WarehouseError, first_line, retried
from loader.warehouses.dialect import SqlDialect, positional
from loader.warehouses.warehouse import Warehouse

MAX_VARCHAR = 65535
WIDE = f"varchar({MAX_VARCHAR})"
TS = "timestamp with time zone"
NOW = "getdate()"
NULL_MARK = "\\N"


def capabilities(varchar_bytes: int = MAX_VARCHAR) -> Capabilities:
    return Capabilities(
        max_identifier_bytes=127,
        type_names=base.type_names(
            "boolean", "bigint", "double precision", TS, f"varchar({varchar_bytes})"
        ),
        json_type=WIDE,
        max_text_chars=varchar_bytes // 4,
        # 1,600 columns per table at most: headroom below it.
        max_columns=1_500,
        # _rescued_data is a varchar(65535) too: wider rescued text is cut, marked.
        max_rescued_bytes=MAX_VARCHAR,
    )


# --- pure SQL builders (unit-tested for their exact text) ------------------------------


def sql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def copy_authorization(
    iam_role: str | None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> str:
    """How COPY may read the bucket: a key pair when configured, else the role (with no
    role named, the cluster's default IAM role)."""
    if access_key_id and secret_access_key:
        keys = (
            f"ACCESS_KEY_ID {sql_literal(access_key_id)} "
            f"SECRET_ACCESS_KEY {sql_literal(secret_access_key)}"
        )
        return keys + (f" SESSION_TOKEN {sql_literal(session_token)}" if session_token else "")
    return f"IAM_ROLE {sql_literal(iam_role)}" if iam_role else "IAM_ROLE default"


def target_authorization(target: RedshiftTarget) -> str:
    """copy_authorization for a target's configured role or key pair."""
    secret = target.secret_access_key.get_secret_value() if target.secret_access_key else None
    token = target.session_token.get_secret_value() if target.session_token else None
    return copy_authorization(target.iam_role, target.access_key_id, secret, token)


def copy_statement(
    stage: str, columns: Sequence[str], url: str, authorization: str, region: str | None
) -> str:
    """Redshift's COPY of one staged gzip CSV object into the stage table. The object's
    key is unique (a uuid folder), so COPY's prefix match reads exactly that object."""
    cols = ", ".join(SqlDialect({}, WIDE).ident(c) for c in columns)
    where = f" REGION {sql_literal(region)}" if region else ""
    return (
        f"COPY {stage} ({cols}) FROM {sql_literal(url)} {authorization}{where} FORMAT AS CSV "
        f"GZIP NULL AS {sql_literal(NULL_MARK)} TIMEFORMAT 'auto' COMPUPDATE OFF STATUPDATE OFF"
    )


def create_table_statement(schema: str, table: str, columns: dict[str, str]) -> str:
    """Columns (name -> type SQL); sorted by received_at when the table has it."""
    d = SqlDialect({}, WIDE)
    cols = ", ".join(f"{d.ident(n)} {t}" for n, t in columns.items())
    sortkey = " SORTKEY (received_at)" if "received_at" in columns else ""
    return f"CREATE TABLE {d.table_ref(schema, table)} ({cols}, PRIMARY KEY (id)){sortkey}"


class TooWide(ValueError):
    """A value longer, in UTF-8 bytes, than its VARCHAR column: COPY would reject the
    whole batch, so it is found before anything is uploaded."""

    def __init__(self, row: int, column: int, size: int) -> None:
        super().__init__(f"row {row}, column {column}: {size} bytes")
        self.row, self.column, self.size = row, column, size


def csv_gzip(rows: Sequence[Sequence[Any]], widths: Sequence[int] | None = None) -> bytes:
    """Rows as gzip CSV: every value quoted, NULL as an unquoted \\N (so '' stays '').

    With `widths` (bytes per column), a value that would not fit raises TooWide; only
    text longer than a quarter of its width is encoded to count its bytes."""
    lines: list[str] = []
    for r, row in enumerate(rows):
        fields: list[str] = []
        for c, value in enumerate(row):
            if value is None:
                fields.append(NULL_MARK)
                continue
            text = base.staged_text(value)
            if widths is not None and len(text) * 4 > widths[c]:
                size = len(text.encode())
                if size > widths[c]:
                    raise TooWide(r, c, size)
            fields.append('"' + text.replace('"', '""') + '"')
        lines.append(",".join(fields) + "\n")
    return gzip.compress("".join(lines).encode(), compresslevel=1)


def clip_bytes(text: str, limit: int = MAX_VARCHAR) -> str:
    """Text cut to `limit` UTF-8 bytes (never mid-character), for bookkeeping copies of
    data that is kept elsewhere (a rejected line stays in its archive file)."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


# --- the adapter ------------------------------------------------------------------------

# Retried: serialization conflicts, a node restarting, too many connections. Not retried:
# bad credentials (28...), an unknown database (3D000), anything about the statement.
_TRANSIENT_SQLSTATES = set("40001 40P01 57P01 57P02 57P03 08000 08001 08003 08006 53300".split())
_AUTH_SQLSTATES = {"28P01", "28000"}
_PERMANENT_WORDS = ("password", "authentication", "does not exist", "pg_hba", "permission")


class RedshiftDialect(SqlDialect):
    sqlglot_name = "redshift"
    text_type = WIDE
    now = NOW
    max_list = 10_000  # one statement takes at most 65535 parameters
    # Redshift cannot ALTER a column to another type: a retype rebuilds the column.
    alters_column_type = False

    def in_list(self, expr: str, name: str) -> str:
        return f"{expr} IN ({self.param(name)})"  # expanded by the driver: no arrays

    def update_target(self, target: str, alias: str) -> tuple[str, str]:
        return target, target  # no alias on an UPDATE's target

    def distinct(self, a: str, b: str) -> str:
        return f"NOT {self.same(a, b)}"

    def same(self, a: str, b: str) -> str:
        return f"({a} = {b} OR ({a} IS NULL AND {b} IS NULL))"

    def lock_table(self, table: str) -> str | None:
        return f"LOCK {table}"

    def whole_row_hash(self, alias: str) -> str | None:
        return None  # no row_to_json: rows are hashed from their typed columns

    def as_text(self, expr: str, kind: ColumnType) -> str:
        if kind is ColumnType.BOOLEAN:  # Redshift cannot CAST a boolean to text
            return f"CASE WHEN {expr} THEN 'true' ELSE 'false' END"
        return self.cast(expr, WIDE)

    def clip_text(self, text: str) -> str:
        """A rejected line longer than a VARCHAR can hold is kept cut short: the whole
        line stays in its archive file, which `file` and `line` name."""
        return clip_bytes(text)

    def read_type(self, data_type: str) -> ColumnType:
        return super().read_type("text" if "char" in data_type.lower() else data_type)


class RedshiftWarehouse(Warehouse):
    def __init__(self, target_name: str, target: RedshiftTarget) -> None:
        self.target_name = target_name
        self.target = target
        self.capabilities = capabilities(target.varchar_bytes)
        self.dialect = RedshiftDialect(self.capabilities.type_names, WIDE)
        self.lease_minutes = int(target.lock_lease_minutes)
        self._closed = False
        self._scrub = Scrubber(*target.secrets())
        try:
            self.conn = self._retry(self._connect)
        except psycopg.Error as exc:
            raise WarehouseError(self._connect_message(exc)) from None

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.target.conninfo(), autocommit=True)
        # Timestamps without an offset in an archive are UTC, as Segment treats them.
        conn.execute("SET timezone TO 'UTC'")
        return conn

    def close(self) -> None:
        self._closed = True
        self.conn.close()

    # --- errors and retries ---------------------------------------------------------
    def _first_line(self, exc: BaseException) -> str:
        return first_line(str(exc), self._scrub) or type(exc).__name__

    def _where(self) -> str:
        return f"Redshift target '{self.target_name}' ({self.target.where()})"

    def _connect_message(self, exc: BaseException) -> str:
        state = getattr(exc, "sqlstate", None)
        text = str(exc).lower()
        if state in _AUTH_SQLSTATES or "password" in text or "authentication" in text:
            fix = "check user and password (or dsn) in profiles.yml"
        elif state == "3D000" or "does not exist" in text:
            fix = "check dbname (or dsn) in profiles.yml"
        else:
            fix = (
                "check host and port (or dsn) in profiles.yml, that the cluster is running, "
                "and that its security group admits this machine"
            )
        return f"cannot connect to {self._where()}: {self._first_line(exc)}; {fix}"

    @staticmethod
    def _transient(exc: psycopg.Error) -> bool:
        """Worth another attempt: the same statement may well succeed in a moment."""
        state = exc.sqlstate
        text = str(exc).lower()
        if state in _TRANSIENT_SQLSTATES or "serializable isolation violation" in text:
            return True
        # libpq's own failures (refused, timed out, server closed the connection) carry
        # no SQLSTATE; those naming credentials or a database will not heal by waiting.
        return (
            isinstance(exc, psycopg.OperationalError)
            and state is None
            and not any(word in text for word in _PERMANENT_WORDS)
        )

    def _retry(self, fn: Callable[[], T]) -> T:
        """fn, retried with exponential backoff and jitter on transient errors; a dropped
        connection is reopened first (only ever outside a transaction, so nothing that
        was in flight is silently lost)."""

        def once() -> T:
            conn = getattr(self, "conn", None)
            if conn is not None and conn.closed and not self._closed:
                self.conn = self._connect()
            return fn()

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, psycopg.Error) and self._transient(exc)

        return retried(once, self.target.retries, transient)

    def _run(self, fn: Callable[[], T]) -> T:
        """One statement; retried outside a transaction (inside one, the transaction is
        lost: the caller reruns the batch). Permission errors and a lost connection
        become one sentence."""
        try:
            return fn() if self._depth else self._retry(fn)
        except psycopg.errors.InsufficientPrivilege as exc:
            user, dbname = self.target.login()
            raise WarehouseError(
                f"Redshift target '{self.target_name}': {self._first_line(exc)}; grant user "
                f"'{user}' CREATE on database '{dbname}' and ownership of (or ALL on) the "
                "schemas it loads"
            ) from None
        except psycopg.OperationalError as exc:
            if not self.conn.closed or self._closed:
                raise
            raise WarehouseError(
                f"lost the connection to {self._where()}: {self._first_line(exc)}; "
                "uncommitted work was rolled back, so a rerun resumes where this one stopped"
            ) from None

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        sql, flat = positional(sql, params or {})

        def once() -> int:
            with self.conn.cursor() as cur:
                cur.execute(sql, flat or None)
                return max(cur.rowcount, 0)

        return self._run(once)

    def fetchall(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        sql, flat = positional(sql, params or {})
        return self._run(lambda: self.conn.execute(sql, flat or None).fetchall())

    def transaction(self) -> AbstractContextManager[None]:
        return self._joined(self.conn.transaction)  # Redshift has no SAVEPOINT

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        types = {n: self.dialect.column_type(n, k) for n, k in columns.items()}
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.schema_ref(schema)}")
        self.execute(self._create_table_sql(schema, table, types))

    def _create_table_sql(self, schema: str, table: str, columns: dict[str, str]) -> str:
        """The hook the PostgreSQL-backed tests replace (PostgreSQL has no SORTKEY)."""
        return create_table_statement(schema, table, columns)

    # --- the bulk path -------------------------------------------------------------------
    def _staging_url(self, label: str) -> str:
        prefix = self.target.s3_staging.rstrip("/")
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in label)[:80]
        return f"{prefix}/{uuid.uuid4().hex}/{safe}.csv.gz"

    def _upload(self, url: str, data: bytes) -> None:
        try:
            import fsspec

            with fsspec.open(url, "wb", **self.target.fs_options()) as out:
                out.write(data)
        except Exception as exc:  # noqa: BLE001 - s3fs raises OSError, botocore, ImportError
            raise WarehouseError(
                f"Redshift target '{self.target_name}': cannot write staged rows to {url} "
                f"({self._first_line(exc)}); check s3_staging, region and storage_options "
                "(or the AWS credentials) in profiles.yml"
            ) from None

    def _remove(self, url: str) -> None:
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(url, **self.target.fs_options())
            fs.rm(path)
        except Exception:  # noqa: BLE001 - a leftover staged object is harmless
            pass

    def _copy_from_s3(self, copy_sql: str) -> None:
        """Runs the COPY text exactly as built; the one hook the PostgreSQL-backed tests
        replace (they read the object this very text names back from S3)."""
        self.execute(copy_sql)

    def _widths(self, columns: Sequence[str]) -> list[int]:
        return [
            MAX_VARCHAR if c in ("_rescued_data", "k") else self.target.varchar_bytes
            for c in columns
        ]

    def _bulk_copy(
        self, stage: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], label: str
    ) -> None:
        try:
            data = csv_gzip(rows, self._widths(columns))
        except TooWide as exc:
            raise WarehouseError(self._too_wide_message(columns, rows, label, exc)) from None
        url = self._staging_url(label)
        self._upload(url, data)
        copy_sql = copy_statement(
            stage, columns, url, target_authorization(self.target), self.target.region
        )
        try:
            self._copy_from_s3(copy_sql)
        except psycopg.Error as exc:
            raise WarehouseError(
                f"Redshift target '{self.target_name}': COPY from {url} failed "
                f"({self._first_line(exc)}); check iam_role (or access_key_id and "
                "secret_access_key) and region in profiles.yml: the cluster must be allowed "
                "to read s3_staging (stl_load_errors names a rejected row)"
            ) from None
        finally:
            self._remove(url)

    def _too_wide_message(
        self, columns: Sequence[str], rows: Sequence[Sequence[Any]], label: str, exc: TooWide
    ) -> str:
        column = columns[exc.column]
        width = self._widths(columns)[exc.column]
        row = rows[exc.row]
        which = f"row '{row[columns.index('id')]}'" if "id" in columns else "a row"
        fix = (
            f"raise varchar_bytes in profiles.yml (at most {MAX_VARCHAR})"
            if width < MAX_VARCHAR
            else f"Redshift stores at most {MAX_VARCHAR} bytes in a VARCHAR, so shorten or drop "
            "that value in the source"
        )
        return (
            f"Redshift target '{self.target_name}': in {which} of {label}, the "
            f"{column} value is {exc.size} bytes, over its varchar({width}) column; {fix}"
        )

    @contextmanager
    def stage(self, schema: str, table: str, columns: Sequence[str], rows: Rows) -> Iterator[str]:
        stage = self.dialect.ident(f"_sluice_stage_{uuid.uuid4().hex[:12]}")
        target = self.table_ref(schema, table)
        self.execute(f"CREATE TEMP TABLE {stage} (LIKE {target})")
        self._bulk_copy(stage, columns, rows, f"{schema}.{table}")
        yield stage
        # Not after a failure: the transaction is aborted, and its rollback drops the table.
        self.execute(f"DROP TABLE IF EXISTS {stage}")
