"""Amazon Redshift over its PostgreSQL wire protocol (psycopg).

What differs from PostgreSQL, and how this adapter handles it:

Types: BOOLEAN, BIGINT, DOUBLE PRECISION, TIMESTAMPTZ and VARCHAR(n). Redshift's TEXT is
VARCHAR(256), so every text column is created with an explicit width: data columns
VARCHAR(`varchar_bytes`, default 65535) and `_rescued_data` (JSON text) VARCHAR(65535).
Redshift counts VARCHAR widths in UTF-8 *bytes*; the pipeline's rescue rule counts
characters (`Capabilities.max_text_chars`), so the adapter declares
`max_text_chars = varchar_bytes // 4` (a UTF-8 character is at most 4 bytes): a longer
string never reaches its column, it goes to the row's `_rescued_data` (rescue rule).
What the rule cannot cover (an id, or a `_rescued_data` over 65535 bytes: Redshift's
widest VARCHAR) is found before upload and named in one sentence, since COPY would
reject the whole batch with only a pointer to stl_load_errors. Identifiers Redshift
reserves (`raw`, `timestamp`, ...) are always quoted.

Tables: `CREATE TABLE ... (..., PRIMARY KEY (id)) SORTKEY (received_at)`, no indexes. A
primary key is informational on Redshift (not enforced), so every write that must skip
existing rows joins on `id`.

Bulk path: rows are written as one gzip CSV object under the target's `s3_staging` prefix
(fsspec/s3fs, with `storage_options`), copied into a temporary stage table with
`COPY ... FROM 's3://...' IAM_ROLE '...' FORMAT AS CSV GZIP` (or `ACCESS_KEY_ID ...
SECRET_ACCESS_KEY ...` when a key pair is configured instead of a role), then written with
one set-based statement per table: `INSERT ... SELECT ... LEFT JOIN ... WHERE t.id IS
NULL` (new ids), `MERGE` (upserts: a later version replaces the row; profile rebuilds,
from a temporary table of the rebuilt rows), and, for a replay, `UPDATE ... FROM` filling
NULL columns first. There is no `ON CONFLICT` on Redshift. The
staged object is deleted after the COPY. The COPY text is built by `copy_statement`
(pure) and run by `_copy_from_s3` (the one hook the tests replace, to feed PostgreSQL the
object that very text names, downloaded from S3).

Time: `current_timestamp` and `now()` run on the leader node only and cannot be used in
statements reading tables, so `getdate()` (UTC) is used throughout.

Locks: Redshift has no advisory locks. A sync holds a row in `_sluice.locks` (name, holder
token, lease expiry by the cluster's clock), taken in a transaction that first runs
`LOCK _sluice.locks`, so two syncs cannot both see the name free. A held, unexpired row
raises LockBusy; a crashed sync's row is taken over once its lease (`lock_lease_minutes`,
longer than any sync) has expired.

Lists: Redshift has no arrays, so `= ANY(%s)` becomes `IN (%s, %s, ...)` expanded from a
list parameter (`expand_lists`); long key lists (profile rebuilds) are staged instead,
and deletion marks go in bounded chunks.

Errors: a failed connection, a permission error, an unwritable staging prefix or a failed
COPY becomes one WarehouseError sentence naming the target and what to fix (passwords,
dsn and keys scrubbed); transient failures (dropped connections, serialization
conflicts) are retried with exponential backoff outside a transaction, reconnecting
first; inside one, the batch is rolled back and the next run loads it again.
"""

from __future__ import annotations

import gzip
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import Any, Literal, TypeVar

import orjson
import psycopg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from loader.config import ConfigError
from loader.messages import Reject
from loader.schema import ColumnType
from loader.warehouses.base import (
    BLOCKED_KEYS,
    BOOKKEEPING_SCHEMA,
    VIOLATION_KEYS,
    Capabilities,
    LockBusy,
    ProfileSpec,
    Rows,
    WarehouseError,
    rescued_profile_rows,
)
from loader.warehouses.sql_family import SqlFamilyWarehouse, qualified, quote

T = TypeVar("T")
MAX_VARCHAR = 65535
WIDE = f"varchar({MAX_VARCHAR})"
TS = "timestamp with time zone"
NOW = "getdate()"
NULL_MARK = "\\N"
# Keys per IN list (one statement takes at most 65535 parameters).
CHUNK_KEYS = 10_000


def capabilities(varchar_bytes: int = MAX_VARCHAR) -> Capabilities:
    return Capabilities(
        max_identifier_bytes=127,
        type_names={
            ColumnType.BOOLEAN: "boolean",
            ColumnType.BIGINT: "bigint",
            ColumnType.DOUBLE: "double precision",
            ColumnType.TIMESTAMP: TS,
            ColumnType.TEXT: f"varchar({varchar_bytes})",
        },
        json_type=WIDE,
        max_text_chars=varchar_bytes // 4,
        # 1,600 columns per table at most: headroom below it.
        max_columns=1_500,
        # _rescued_data is a varchar(65535) too: wider rescued text is cut, marked.
        max_rescued_bytes=MAX_VARCHAR,
    )


class RedshiftTarget(BaseModel):
    """The typed fields of a `type: redshift` target in profiles.yml."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["redshift"]
    host: str = "127.0.0.1"
    port: int = 5439
    user: str = "sluice"
    password: SecretStr | None = None
    dbname: str = "dev"
    sslmode: str | None = Field(default="prefer", description="libpq sslmode")
    dsn: SecretStr | None = Field(default=None, description="overrides host..sslmode")
    iam_role: str | None = Field(default=None, description="role ARN the COPY assumes")
    access_key_id: str | None = Field(default=None, description="COPY credentials, not a role")
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    s3_staging: str = Field(description="s3://bucket/prefix for staged gzip CSV files")
    region: str | None = Field(default=None, description="the staging bucket's region")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="for fsspec")
    # At least 64: a timestamp, number or boolean as text always fits any column then, so
    # the width check before an upload only ever concerns text.
    varchar_bytes: int = Field(default=MAX_VARCHAR, ge=64, le=MAX_VARCHAR)
    connect_timeout: int = 15
    retries: int = Field(default=4, ge=1)
    lock_lease_minutes: int = Field(default=360, ge=1)

    @field_validator("s3_staging")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        # COPY reads only from S3; a local path would fail at the first batch instead.
        if not value.startswith("s3://") or len(value.rstrip("/")) <= len("s3://"):
            raise ValueError("must be an s3://bucket/prefix URL")
        return value

    @model_validator(mode="after")
    def _one_copy_authorisation(self) -> RedshiftTarget:
        # Half a key pair, or a key pair and a role, is a profile mistake better named
        # now than as an S3 access error after the first batch was staged.
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        if self.access_key_id is not None and self.iam_role:
            raise ValueError("give iam_role or access_key_id/secret_access_key, not both")
        return self

    @classmethod
    def from_target(cls, name: str, target: Any) -> RedshiftTarget:
        data = target.model_dump() if isinstance(target, BaseModel) else dict(target)
        for key, value in list(data.items()):
            if isinstance(value, SecretStr):
                data[key] = value.get_secret_value()
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            where = f"field '{field}': " if field else ""
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"profiles.yml: target '{name}': {where}{msg}") from None

    def conninfo(self) -> str:
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        parts: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "connect_timeout": self.connect_timeout,
        }
        if self.password is not None:
            parts["password"] = self.password.get_secret_value()
        if self.sslmode:
            parts["sslmode"] = self.sslmode
        return psycopg.conninfo.make_conninfo(**parts)

    def _dsn_info(self) -> dict[str, Any]:
        """The dsn's parts, or none when it does not parse (libpq says why at connect)."""
        if self.dsn is None:
            return {}
        try:
            return psycopg.conninfo.conninfo_to_dict(self.dsn.get_secret_value())
        except psycopg.Error:
            return {}

    def where(self) -> str:
        if self.dsn is not None:
            info = self._dsn_info()
            return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
        return f"{self.host}:{self.port}"

    def login(self) -> tuple[str, str]:
        """(user, dbname) actually used, for messages that tell what to grant."""
        info = self._dsn_info()
        return str(info.get("user", self.user)), str(info.get("dbname", self.dbname))

    def secrets(self) -> list[str]:
        """Every configured value that must never appear in a message."""
        values = [
            s.get_secret_value()
            for s in (self.password, self.dsn, self.secret_access_key, self.session_token)
            if s is not None
        ]
        values.append(str(self._dsn_info().get("password", "")))
        for key in ("secret", "token", "password"):
            values.append(str(self.storage_options.get(key) or ""))
        return [v for v in values if len(v) >= 4]

    def copy_authorization(self) -> str:
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        token = self.session_token.get_secret_value() if self.session_token else None
        return copy_authorization(self.iam_role, self.access_key_id, secret, token)

    def fs_options(self) -> dict[str, Any]:
        """fsspec options for the staging bucket: storage_options win; the COPY key pair
        and region fill what they leave out, so one set of credentials can serve both."""
        options = dict(self.storage_options)
        if self.access_key_id and "key" not in options and self.secret_access_key:
            options["key"] = self.access_key_id
            options["secret"] = self.secret_access_key.get_secret_value()
            if self.session_token and "token" not in options:
                options["token"] = self.session_token.get_secret_value()
        if self.region:
            client = dict(options.get("client_kwargs") or {})
            client.setdefault("region_name", self.region)
            options["client_kwargs"] = client
        return options


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


def copy_statement(
    stage: str, columns: Sequence[str], url: str, authorization: str, region: str | None
) -> str:
    """Redshift's COPY of one staged gzip CSV object into the stage table. The object's
    key is unique (a uuid folder), so COPY's prefix match reads exactly that object."""
    cols = ", ".join(quote(c) for c in columns)
    where = f" REGION {sql_literal(region)}" if region else ""
    return (
        f"COPY {stage} ({cols}) FROM {sql_literal(url)} {authorization}{where} FORMAT AS CSV "
        f"GZIP NULL AS {sql_literal(NULL_MARK)} TIMEFORMAT 'auto' COMPUPDATE OFF STATUPDATE OFF"
    )


def create_table_statement(schema: str, table: str, columns: dict[str, str]) -> str:
    """Columns (name -> type SQL); sorted by received_at when the table has it."""
    cols = ", ".join(f"{quote(n)} {t}" for n, t in columns.items())
    sortkey = " SORTKEY (received_at)" if "received_at" in columns else ""
    return f"CREATE TABLE {qualified(schema, table)} ({cols}, PRIMARY KEY (id)){sortkey}"


def insert_new_statement(target: str, stage: str, columns: Sequence[str]) -> str:
    """New ids only: an anti-join (the key is not enforced on Redshift)."""
    cols = ", ".join(quote(c) for c in columns)
    s_cols = ", ".join(f"_sluice_s.{quote(c)}" for c in columns)
    return (
        f"INSERT INTO {target} ({cols}) SELECT {s_cols} FROM {stage} AS _sluice_s "
        f"LEFT JOIN {target} AS _sluice_t ON _sluice_t.id = _sluice_s.id "
        "WHERE _sluice_t.id IS NULL"
    )


def fill_nulls_statement(target: str, table: str, stage: str, fillable: Sequence[str]) -> str:
    """Replay: NULL columns of existing rows filled from the staged row, nothing else."""
    t = quote(table)
    sets = ", ".join(
        f"{quote(c)} = COALESCE({t}.{quote(c)}, _sluice_s.{quote(c)})" for c in fillable
    )
    changed = " OR ".join(
        f"({t}.{quote(c)} IS NULL AND _sluice_s.{quote(c)} IS NOT NULL)" for c in fillable
    )
    return (
        f"UPDATE {target} SET {sets} FROM {stage} AS _sluice_s "
        f"WHERE {t}.id = _sluice_s.id AND ({changed})"
    )


def merge_statement(target: str, stage: str, columns: Sequence[str]) -> str:
    """Upsert: existing ids get the staged columns, new ids are inserted."""
    cols = ", ".join(quote(c) for c in columns)
    vals = ", ".join(f"_sluice_s.{quote(c)}" for c in columns)
    sets = ", ".join(f"{quote(c)} = _sluice_s.{quote(c)}" for c in columns if c != "id")
    return (
        f"MERGE INTO {target} USING {stage} AS _sluice_s ON {target}.id = _sluice_s.id "
        f"WHEN MATCHED THEN UPDATE SET {sets} "
        f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})"
    )


def profile_statement(target: str, source: str, keys: str, spec: ProfileSpec) -> str:
    """Latest non-NULL value per trait and key, with window functions only (Redshift has
    neither `FILTER (WHERE ...)` nor `array_agg`); also valid PostgreSQL."""
    key = f"_sluice_src.{quote(spec.key_column)}"
    order = '"timestamp" DESC NULLS LAST, _sluice_src.received_at DESC NULLS LAST'
    frame = "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING"
    traits = [
        f"FIRST_VALUE(_sluice_src.{quote(c)}) OVER (PARTITION BY {key} ORDER BY CASE WHEN "
        f"_sluice_src.{quote(c)} IS NULL THEN 1 ELSE 0 END, _sluice_src.{order} {frame}) "
        f"AS {quote(c)}"
        for c in spec.trait_columns
    ]
    inner = ", ".join(
        [
            f"{key} AS _sluice_key",
            *traits,
            f"MAX(_sluice_src.received_at) OVER (PARTITION BY {key}) AS _sluice_received_at",
            f"ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY _sluice_src.received_at) "
            "AS _sluice_rn",
        ]
    )
    cols = ["id", *spec.trait_columns, "received_at", "uuid_ts"]
    outer = ", ".join(
        ["_sluice_key", *(quote(c) for c in spec.trait_columns), "_sluice_received_at", NOW]
    )
    return (
        f"INSERT INTO {target} ({', '.join(quote(c) for c in cols)}) SELECT {outer} FROM "
        f"(SELECT {inner} FROM {source} AS _sluice_src JOIN {keys} AS _sluice_k "
        f"ON {key} = _sluice_k.k) AS _sluice_p WHERE _sluice_rn = 1"
    )


def expand_lists(sql: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """`IN (%s)` with a list parameter -> `IN (%s, %s, ...)` (an empty list: `IN (NULL)`)."""
    if not any(isinstance(p, (list, tuple)) for p in params):
        return sql, list(params)
    parts = sql.split("%s")
    if len(parts) != len(params) + 1:
        raise ValueError("placeholders and parameters do not match")
    out, flat = [parts[0]], []
    for param, tail in zip(params, parts[1:], strict=True):
        if isinstance(param, (list, tuple)):
            out.append(", ".join(["%s"] * len(param)) if param else "NULL")
            flat.extend(param)
        else:
            out.append("%s")
            flat.append(param)
        out.append(tail)
    return "".join(out), flat


class TooWide(ValueError):
    """A value longer, in UTF-8 bytes, than its VARCHAR column: COPY would reject the
    whole batch, so it is found before anything is uploaded."""

    def __init__(self, row: int, column: int, size: int) -> None:
        super().__init__(f"row {row}, column {column}: {size} bytes")
        self.row, self.column, self.size = row, column, size


def _csv_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


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
            text = _csv_text(value)
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
_TRANSIENT_SQLSTATES = {
    "40001",
    "40P01",
    "57P01",
    "57P02",
    "57P03",
    "08000",
    "08001",
    "08003",
    "08006",
    "53300",
}
_AUTH_SQLSTATES = {"28P01", "28000"}
_PERMANENT_WORDS = ("password", "authentication", "does not exist", "pg_hba", "permission")
MAX_IN_LIST = 10_000


class RedshiftWarehouse(SqlFamilyWarehouse):
    def __init__(self, target_name: str, target: RedshiftTarget) -> None:
        self.target_name = target_name
        self.target = target
        self.capabilities = capabilities(target.varchar_bytes)
        self._depth = 0
        self._closed = False
        self._holder = uuid.uuid4().hex
        self._secrets = target.secrets()
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
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _first_line(self, exc: BaseException) -> str:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        return self._scrub(lines[0].rstrip(".")) if lines else type(exc).__name__

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
        attempts = self.target.retries
        for attempt in range(attempts):
            try:
                conn = getattr(self, "conn", None)
                if conn is not None and conn.closed and not self._closed:
                    self.conn = self._connect()
                return fn()
            except psycopg.Error as exc:
                if attempt == attempts - 1 or not self._transient(exc):
                    raise
                time.sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

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

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        sql, flat = expand_lists(sql, params)
        self._run(lambda: self.conn.execute(sql, flat or None))

    def _rowcount(self, sql: str, params: Sequence[Any] = ()) -> int:
        sql, flat = expand_lists(sql, params)

        def once() -> int:
            with self.conn.cursor() as cur:
                cur.execute(sql, flat or None)
                return max(cur.rowcount, 0)

        return self._run(once)

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        sql, flat = expand_lists(sql, params)
        return self._run(lambda: self.conn.execute(sql, flat or None).fetchall())

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def once() -> None:
            with self.conn.cursor() as cur:
                cur.executemany(sql, rows)

        self._run(once)

    def _in_list(self) -> str:
        return f"IN ({self.placeholder})"

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # Redshift has no SAVEPOINT: a nested block joins the outer transaction.
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self.conn.transaction():
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0

    # --- locks ------------------------------------------------------------------------
    def _ensure_locks_table(self) -> None:
        b = quote(BOOKKEEPING_SCHEMA)
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {b}.locks (name {WIDE} NOT NULL, holder varchar(64) "
            f"NOT NULL, expires_at {TS} NOT NULL, PRIMARY KEY (name))"
        )

    @contextmanager
    def _lock_row(self, name: str, busy: str) -> Iterator[None]:
        """Leases are timed by the cluster's clock (getdate()), not this machine's, so
        two loaders with skewed clocks agree on when a lease has run out."""
        locks = f"{quote(BOOKKEEPING_SCHEMA)}.locks"
        lease = f"interval '{int(self.target.lock_lease_minutes)} minutes'"
        self._ensure_locks_table()
        with self.transaction():
            self._execute(f"LOCK {locks}")
            self._execute(f"DELETE FROM {locks} WHERE name = %s AND expires_at < {NOW}", (name,))
            got = self._rowcount(
                f"INSERT INTO {locks} (name, holder, expires_at) SELECT %s, %s, {NOW} + {lease} "
                f"WHERE NOT EXISTS (SELECT 1 FROM {locks} WHERE name = %s)",
                (name, self._holder, name),
            )
        if not got:
            raise LockBusy(busy)
        try:
            yield
        finally:
            self._execute(
                f"DELETE FROM {locks} WHERE name = %s AND holder = %s", (name, self._holder)
            )

    def lock(self, schema: str) -> Any:
        return self._lock_row(
            f"sync:{schema}",
            f"another sync is loading schema '{schema}' into target '{self.target_name}'; "
            "wait for it to finish",
        )

    def retl_lock(self, model: str) -> Any:
        return self._lock_row(
            f"retl:{model}",
            f"another reverse-ETL run of model '{model}' on target '{self.target_name}' holds "
            "the lock; wait for it to finish",
        )

    # --- schema -------------------------------------------------------------------------
    def ensure_bookkeeping(self) -> None:
        b = quote(BOOKKEEPING_SCHEMA)
        with self.transaction():
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.loaded_files (schema_name {WIDE} NOT NULL, "
                f"file {WIDE} NOT NULL, lines bigint, loaded_at {TS} DEFAULT {NOW}, "
                "PRIMARY KEY (schema_name, file))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.rejected_events (schema_name {WIDE} NOT NULL, "
                f'file {WIDE} NOT NULL, line bigint, "raw" {WIDE}, reason {WIDE} NOT NULL, '
                f"rejected_at {TS} DEFAULT {NOW})"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.sync_runs (run_id {WIDE} NOT NULL, "
                f"schema_name {WIDE}, target {WIDE}, status {WIDE}, started_at {TS}, "
                f"finished_at {TS}, report {WIDE}, PRIMARY KEY (run_id))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.cursors (schema_name {WIDE} NOT NULL, "
                f"collection {WIDE} NOT NULL, cursor {WIDE} NOT NULL, "
                f"updated_at {TS} DEFAULT {NOW}, PRIMARY KEY (schema_name, collection))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.turned_off_names (schema_name {WIDE} NOT NULL, "
                f"table_name {WIDE} NOT NULL, column_name {WIDE} NOT NULL, "
                f"first_seen {TS} DEFAULT {NOW}, "
                "PRIMARY KEY (schema_name, table_name, column_name))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.violations (schema_name {WIDE} NOT NULL, "
                f"file {WIDE} NOT NULL, event {WIDE} NOT NULL, property {WIDE} NOT NULL, "
                f"kind {WIDE} NOT NULL, example {WIDE}, occurrences bigint, "
                f"first_seen {WIDE}, last_seen {WIDE}, recorded_at {TS} DEFAULT {NOW})"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.blocked_events (schema_name {WIDE} NOT NULL, "
                f'file {WIDE} NOT NULL, line bigint, event {WIDE}, "raw" {WIDE}, '
                f"violations {WIDE}, blocked_at {TS} DEFAULT {NOW})"
            )
        self._ensure_locks_table()

    # --- retype: Redshift cannot ALTER a column to another type, so the column is
    # rebuilt (add new, fill, drop old, rename), all in the one transaction.
    _retype_text = WIDE
    _now_sql = NOW

    def _retype_begin(self, schema: str, table: str, column: str, new_type: ColumnType) -> str:
        existing = set(self.read_schema(schema).get(table, {}))
        filled = f"{column[:100]}__retype"
        while filled in existing:
            filled += "_"
        self.add_columns(schema, table, {filled: new_type})
        return filled

    def _retype_stage_rows(self, stage: str, rows: Sequence[Sequence[Any]]) -> None:
        # The bulk path (gzip CSV on S3, COPY): a retype stages up to every row.
        if rows:
            columns = ("id", "value", "changed", "_rescued_data")
            self._bulk_copy(stage, columns, rows, "retype")

    def _type_aliases(self) -> dict[str, ColumnType]:
        return {"character varying": ColumnType.TEXT, "varchar": ColumnType.TEXT}

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        caps = self.capabilities
        types = {
            n: caps.json_type if n == "_rescued_data" else caps.type_names[k]
            for n, k in columns.items()
        }
        self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
        self._execute(self._create_table_sql(schema, table, types))

    def _create_table_sql(self, schema: str, table: str, columns: dict[str, str]) -> str:
        """The hook the PostgreSQL-backed tests replace (PostgreSQL has no SORTKEY)."""
        return create_table_statement(schema, table, columns)

    # --- bookkeeping writes: no ON CONFLICT ------------------------------------------------
    _KEYS = {
        "loaded_files": ("schema_name", "file"),
        # A reject is known by its file and line: re-reading a file never records it twice.
        "rejected_events": ("schema_name", "file", "line"),
        "violations": VIOLATION_KEYS,
        "blocked_events": BLOCKED_KEYS,
    }

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
        target = qualified(schema, table)
        cols = ", ".join(quote(c) for c in columns)
        values = ", ".join(["%s"] * len(columns))
        if not skip_existing:
            self._executemany(f"INSERT INTO {target} ({cols}) VALUES ({values})", rows)
            return
        keys = self._KEYS.get(table, tuple(columns))
        where = " AND ".join(f"{quote(k)} = %s" for k in keys)
        at = [list(columns).index(k) for k in keys]
        self._executemany(
            f"INSERT INTO {target} ({cols}) SELECT {values} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} WHERE {where})",
            [(*row, *(row[i] for i in at)) for row in rows],
        )

    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None:
        """A rejected line longer than a VARCHAR can hold is kept cut short: the whole line
        stays in its archive file, which `file` and `line` name."""
        self.insert_plain(
            BOOKKEEPING_SCHEMA,
            "rejected_events",
            ("schema_name", "file", "line", "raw", "reason"),
            [
                (schema, clip_bytes(r.file), r.line, clip_bytes(r.raw), clip_bytes(r.reason))
                for r in rejects
            ],
            skip_existing=True,
        )

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        """As the shared version, with the ids in bounded IN lists: one statement takes at
        most 65535 parameters."""
        if not ids:
            return 0
        ts = self.capabilities.type_names[ColumnType.TIMESTAMP]
        columns = ("id", "received_at", "uuid_ts", "_deleted_at")
        with self.transaction():
            self.insert_new_rows(schema, table, columns, [(i, at, at, at) for i in ids])
            for start in range(0, len(ids), MAX_IN_LIST):
                self._execute(
                    f"UPDATE {qualified(schema, table)} SET _deleted_at = CAST(%s AS {ts}) "
                    "WHERE _deleted_at IS NULL AND id IN (%s)",
                    (at, list(ids[start : start + MAX_IN_LIST])),
                )
        return len(ids)

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
        self._execute(copy_sql)

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
            stage, columns, url, self.target.copy_authorization(), self.target.region
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

    def _stage(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> str:
        stage = quote(f"_sluice_stage_{uuid.uuid4().hex[:12]}")
        self._execute(f"CREATE TEMP TABLE {stage} (LIKE {qualified(schema, table)})")
        self._bulk_copy(stage, columns, rows, f"{schema}.{table}")
        return stage

    def insert_new_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Rows, fill_nulls: bool = False
    ) -> int:
        if not rows:
            return 0
        target = qualified(schema, table)
        with self.transaction():
            stage = self._stage(schema, table, columns, rows)
            filled = 0
            fillable = [c for c in columns if c not in ("id", "uuid_ts", "_rescued_data")]
            if fill_nulls and fillable:
                filled = self._rowcount(fill_nulls_statement(target, table, stage, fillable))
            inserted = self._rowcount(insert_new_statement(target, stage, columns))
            self._execute(f"DROP TABLE {stage}")
        return filled + inserted

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        if not rows:
            return 0
        with self.transaction():
            stage = self._stage(schema, table, columns, rows)
            n = self._rowcount(merge_statement(qualified(schema, table), stage, columns))
            self._execute(f"DROP TABLE {stage}")
        return n

    # --- profiles -------------------------------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """Latest non-NULL value per trait in SQL; the keys whose history holds a rescued
        value are rebuilt in Python (base.rescued_profile_rows). A profile whose rebuilt
        values equal its current ones is left as it is, uuid_ts included."""
        if not keys:
            return 0
        target = qualified(schema, spec.table)
        source = qualified(schema, spec.source_table)
        rescued = self._keys_with_rescued(source, spec, keys)
        plain = [k for k in keys if k not in rescued] if rescued else list(keys)
        suffix = uuid.uuid4().hex[:12]
        stage = quote(f"_sluice_keys_{suffix}")
        profiles = quote(f"_sluice_profiles_{suffix}")
        columns = ["id", *spec.trait_columns, "received_at", "uuid_ts"]
        same = " AND ".join(
            f"({profiles}.{quote(c)} = _sluice_t.{quote(c)} OR ({profiles}.{quote(c)} IS NULL "
            f"AND _sluice_t.{quote(c)} IS NULL))"
            for c in [*spec.trait_columns, "received_at"]
        )
        with self.transaction():
            if plain:
                self._execute(f"CREATE TEMP TABLE {stage} (k {WIDE})")
                self._bulk_copy(stage, ["k"], [(k,) for k in plain], f"{schema}.{spec.table}.keys")
                # The rebuilt rows go to a temporary table shaped like the profile table
                # (a Redshift MERGE reads a table, not a subquery); those equal to the
                # profile there are dropped (a replay changes nothing), then the MERGE sets
                # only the synced traits, received_at and uuid_ts, so a column not in
                # spec.trait_columns (a trait turned off by selective sync) keeps its value.
                self._execute(f"CREATE TEMP TABLE {profiles} (LIKE {target})")
                self._execute(profile_statement(profiles, source, stage, spec))
                self._execute(
                    f"DELETE FROM {profiles} USING {target} AS _sluice_t "
                    f"WHERE {profiles}.id = _sluice_t.id AND {same}"
                )
                self._execute(merge_statement(target, profiles, columns))
                self._execute(f"DROP TABLE {profiles}")
                self._execute(f"DROP TABLE {stage}")
            if rescued:
                self._rescued_profiles(schema, spec, sorted(rescued))
        return len(keys)

    def _keys_with_rescued(self, source: str, spec: ProfileSpec, keys: Sequence[str]) -> set[str]:
        if spec.rescued_column is None:
            return set()
        key = quote(spec.key_column)
        found: set[str] = set()
        for start in range(0, len(keys), CHUNK_KEYS):
            found.update(
                k
                for (k,) in self._fetchall(
                    f"SELECT DISTINCT {key} FROM {source} WHERE {key} IN (%s) "
                    f"AND {quote(spec.rescued_column)} IS NOT NULL",
                    (list(keys[start : start + CHUNK_KEYS]),),
                )
            )
        return found

    def _rescued_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> None:
        assert spec.rescued_column is not None
        traits = "".join(f", {quote(c)}" for c in spec.trait_columns)
        r = quote(spec.rescued_column)
        history: list[tuple[Any, ...]] = []
        current: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), CHUNK_KEYS):
            chunk = list(keys[start : start + CHUNK_KEYS])
            history += self._fetchall(
                f'SELECT {quote(spec.key_column)}, "timestamp", received_at{traits}, {r} '
                f"FROM {qualified(schema, spec.source_table)} "
                f"WHERE {quote(spec.key_column)} IN (%s)",
                (chunk,),
            )
            current += self._fetchall(
                f"SELECT id{traits}, received_at, {r} FROM {qualified(schema, spec.table)} "
                "WHERE id IN (%s)",
                (chunk,),
            )
        now = datetime.now(timezone.utc).isoformat()
        rows = rescued_profile_rows(history, current, spec.trait_columns, now)
        if rows:
            names = ["id", *spec.trait_columns, "received_at", "uuid_ts", spec.rescued_column]
            self.upsert_rows(schema, spec.table, names, rows)

    # --- reverse ETL ------------------------------------------------------------------------
    def retl_ensure_bookkeeping(self) -> None:
        b = quote(BOOKKEEPING_SCHEMA)
        with self.transaction():
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {b}")
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.retl_snapshots (model {WIDE} NOT NULL, "
                f"key {WIDE} NOT NULL, row_hash varchar(64) NOT NULL, synced_at {TS}, "
                "PRIMARY KEY (model, key))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.retl_sent (model {WIDE} NOT NULL, "
                f"key {WIDE} NOT NULL, op varchar(16) NOT NULL, row_hash varchar(64) NOT NULL, "
                f"record_id varchar(64) NOT NULL, run_id varchar(64) NOT NULL, sent_at {TS}, "
                "PRIMARY KEY (model, key))"
            )
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {b}.retl_runs (run_id {WIDE} NOT NULL, "
                f"model {WIDE}, target {WIDE}, status {WIDE}, started_at {TS}, "
                f"finished_at {TS}, report {WIDE}, PRIMARY KEY (run_id))"
            )

    def retl_write_table(
        self,
        schema: str,
        table: str,
        key: str,
        columns: dict[str, ColumnType],
        rows: Sequence[Sequence[Any]],
        keys: Sequence[str],
    ) -> None:
        """As the shared version, but keys are compared as VARCHAR(65535): Redshift's TEXT
        is VARCHAR(256), which would cut longer keys short; keys go in bounded IN lists."""
        existing = self.read_schema(schema).get(table)
        target = qualified(schema, table)
        types = self.capabilities.type_names
        with self.transaction():
            if existing is None:
                self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
                cols = ", ".join(f"{quote(n)} {types[k]}" for n, k in columns.items())
                self._execute(f"CREATE TABLE {target} ({cols}, PRIMARY KEY ({quote(key)}))")
            else:
                missing = {n: k for n, k in columns.items() if n not in existing}
                if missing:
                    self.add_columns(schema, table, missing)
            for start in range(0, len(keys), MAX_IN_LIST):
                self._execute(
                    f"DELETE FROM {target} WHERE CAST({quote(key)} AS {WIDE}) IN (%s)",
                    (list(keys[start : start + MAX_IN_LIST]),),
                )
            if rows:
                self.insert_plain(schema, table, list(columns), rows)

    def _hash_part(self, column: str, kind: ColumnType) -> str:
        c = quote(column)
        # Redshift cannot CAST a boolean to text.
        text = (
            f"CASE WHEN {c} THEN 'true' ELSE 'false' END"
            if kind is ColumnType.BOOLEAN
            else f"CAST({c} AS {WIDE})"
        )
        return f"COALESCE('v' || CAST(length({text}) AS {WIDE}) || ':' || {text}, 'n')"

    # Keys compared as VARCHAR(65535): Redshift's TEXT is VARCHAR(256).
    _retl_key_type = WIDE

    def _retl_row_hash(self, alias: str) -> str:
        """No row_to_json on Redshift: staged empty, hashed by _retl_hash_staged."""
        return "CAST(NULL AS varchar(64))"

    def _retl_hash_staged(self, stage: str, model: str, columns: Sequence[str]) -> None:
        """Hashed from the typed columns: each value length-prefixed, NULL distinct
        from ''."""
        kinds = self._retl_columns_of(f"retl_stage__{model}")
        parts = " || '|' || ".join(self._hash_part(c, kinds[c]) for c in columns) or "''"
        self._execute(f"UPDATE {stage} SET _sluice_hash = md5({parts})")

    def retl_diff(self, model: str, columns: Sequence[str]) -> dict[str, int]:
        stage = self._retl_table("stage", model)
        changes = self._retl_table("changes", model)
        cols = ", ".join(quote(c) for c in columns)
        s_cols = ", ".join(f"s.{quote(c)}" for c in columns)
        with self.transaction():
            self._execute(f"DROP TABLE IF EXISTS {changes}")
            self._execute(
                f"CREATE TABLE {changes} AS SELECT CAST(0 AS bigint) AS _sluice_seq, "
                f"CAST('' AS varchar(16)) AS _sluice_kind, s.* FROM {stage} AS s WHERE 1 = 0"
            )
            self._execute(
                f"INSERT INTO {changes} (_sluice_seq, _sluice_kind, _sluice_key, _sluice_hash"
                f"{', ' + cols if cols else ''}) SELECT row_number() OVER (ORDER BY "
                "d._sluice_kind, d._sluice_key), d._sluice_kind, d._sluice_key, d._sluice_hash"
                f"{', ' + cols if cols else ''} FROM ("
                "SELECT CASE WHEN p.key IS NULL THEN 'added' WHEN s._sluice_key IS NULL "
                "THEN 'removed' ELSE 'changed' END AS _sluice_kind, "
                "COALESCE(s._sluice_key, p.key) AS _sluice_key, "
                "COALESCE(s._sluice_hash, p.row_hash) AS _sluice_hash"
                f"{', ' + s_cols if s_cols else ''} FROM {stage} AS s FULL OUTER JOIN "
                f"(SELECT key, row_hash FROM {quote(BOOKKEEPING_SCHEMA)}.retl_snapshots "
                "WHERE model = %s) AS p ON p.key = s._sluice_key "
                "WHERE p.key IS NULL OR s._sluice_key IS NULL OR p.row_hash <> s._sluice_hash"
                ") AS d",
                (model,),
            )
        counts = {"added": 0, "changed": 0, "removed": 0}
        for kind, n in self._fetchall(
            f"SELECT _sluice_kind, count(*) FROM {changes} GROUP BY _sluice_kind"
        ):
            counts[str(kind)] = int(n)
        staged = int(self._fetchall(f"SELECT count(*) FROM {stage}")[0][0])
        counts["unchanged"] = staged - counts["added"] - counts["changed"]
        return counts

    def _retl_apply(self, model: str, where: str, param: list[Any]) -> None:
        changes = self._retl_table("changes", model)
        snapshots = f"{quote(BOOKKEEPING_SCHEMA)}.retl_snapshots"
        with self.transaction():
            self._execute(
                f"DELETE FROM {snapshots} WHERE model = %s AND key IN "
                f"(SELECT _sluice_key FROM {changes} WHERE {where})",
                (model, param),
            )
            self._execute(
                f"INSERT INTO {snapshots} (model, key, row_hash, synced_at) "
                f"SELECT CAST(%s AS {WIDE}), _sluice_key, _sluice_hash, {NOW} FROM {changes} "
                f"WHERE {where} AND _sluice_kind <> 'removed'",
                (model, param),
            )
