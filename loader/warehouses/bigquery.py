"""BigQuery (google-cloud-bigquery): load jobs into a staging table, then one MERGE.

Datasets: Sluice's "schema" is a BigQuery dataset named `dataset_prefix + schema` in the
target's project and location; the bookkeeping dataset is `dataset_prefix + "_sluice"`
(a leading underscore is allowed and makes it a *hidden* dataset: the console's
explorer does not list it, queries still read it). `table_ref` gives the backticked
`project.dataset.table`.

Types: BOOL, INT64, FLOAT64, TIMESTAMP, STRING; `_rescued_data` and JSON-ish values are
STRING holding JSON (`JSON_VALUE(_rescued_data, '$.revenue')` reads a rescued value).
Event tables are created through the tables API, partitioned by DAY on `received_at` and
clustered on `id` (what a MERGE on `id` and analysts' date filters prune on).

Bulk path: a batch's rows are written as NDJSON into a load job (free, unlike streaming
inserts) into a fresh staging table in the bookkeeping dataset, then one set-based
MERGE per table moves them: new ids only for events (with `fill_nulls` for replays,
NULL columns of existing rows are filled), insert-or-replace by id for objects. The
staging table is dropped at once.

Exactly once without long transactions: BigQuery has no open-ended transaction a
client can hold across load jobs and DDL the way PostgreSQL does. The promise of the
core ("a batch's rows and the record of the files it consumed are committed together")
is kept by ordering and idempotence instead:

- every data write is a single MERGE keyed by `id` (atomic on its own), and MERGE of
  rows that are there already changes nothing: re-running a batch is a no-op for the
  rows it committed before;
- `transaction()` defers the batch's bookkeeping writes (file ledger, rejects,
  turned-off names, object cursors) and writes them only when the block exits
  normally, after every data MERGE of the batch, ledger and cursors last; each is a
  MERGE keyed by its natural key, so writing it twice is harmless.

So a crash (or a failure) anywhere before the ledger write leaves the files pending:
the rerun re-MERGEs them, inserting only the ids that are missing (no duplicate), and
then records them (no gap). A crash after the ledger write lost nothing. Profiles
(users, accounts) are recomputed from their source table by one MERGE, which gives the
same result however often it runs.

Locks: a lease row in `_sluice.locks` (name, holder, expiry) taken with one MERGE; a
held, unexpired lease raises LockBusy, and so does losing a race for it (two
concurrent MERGEs may both insert a row: whoever then sees another holder backs off).
A crashed sync's lease expires after `lock_lease_minutes`.

Reverse ETL: the model's stage (key as text, TO_HEX(MD5(TO_JSON_STRING(row)))) and its
change set are CREATE OR REPLACE TABLE ... AS SELECT tables in the bookkeeping dataset;
advancing the snapshot is one MERGE (delete removed keys, upsert the rest), and the
table destination's delete-then-insert is one MERGE too (`replace_keys_sql`), so each
step is atomic without a multi-statement transaction.

Errors: every API call goes through one bounded retry policy (`retries` attempts, with
exponential backoff and jitter) for transient failures: HTTP 429/500/502/503/504,
`rateLimitExceeded`/`backendError` reasons, connection resets. Anything else becomes one
WarehouseError sentence naming the target and what to fix (endpoint, credentials,
grants, project/location), with secrets scrubbed.

Emulator notes (bqemulator 1.4, used by the tests): it rejects several `ADD COLUMN`
clauses in one `ALTER TABLE`, and its table metadata does not see columns added by
DDL. `add_columns` therefore falls back to one clause per statement on that exact
error, and patches the table metadata when it lacks a column; on BigQuery both steps
are no-ops (one ALTER statement, metadata already current).
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson
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
from loader.retype import RetypePlan, plan_retype
from loader.schema import ColumnType
from loader.warehouses.base import (
    BLOCKED_KEYS,
    BOOKKEEPING_SCHEMA,
    VIOLATION_KEYS,
    VIOLATION_SUMMARY,
    Capabilities,
    LockBusy,
    ProfileSpec,
    TableStats,
    Warehouse,
    WarehouseError,
    reject_rows,
    rescued_profile_rows,
    violation_rows,
)

if TYPE_CHECKING:
    from google.cloud import bigquery

CAPABILITIES = Capabilities(
    # Column names: 300 characters (table names may have 1,024 bytes; columns bind first).
    max_identifier_bytes=300,
    type_names={
        ColumnType.BOOLEAN: "BOOL",
        ColumnType.BIGINT: "INT64",
        ColumnType.DOUBLE: "FLOAT64",
        ColumnType.TIMESTAMP: "TIMESTAMP",
        ColumnType.TEXT: "STRING",
    },
    json_type="STRING",
    max_text_chars=None,
    # 10,000 columns per table at most: headroom below it.
    max_columns=9_500,
)

# Type names as the tables API (legacy names) and INFORMATION_SCHEMA (standard) give them.
_READ_TYPES = {
    "BOOL": ColumnType.BOOLEAN,
    "BOOLEAN": ColumnType.BOOLEAN,
    "INT64": ColumnType.BIGINT,
    "INTEGER": ColumnType.BIGINT,
    "FLOAT64": ColumnType.DOUBLE,
    "FLOAT": ColumnType.DOUBLE,
    "NUMERIC": ColumnType.DOUBLE,
    "BIGNUMERIC": ColumnType.DOUBLE,
    "TIMESTAMP": ColumnType.TIMESTAMP,
    "DATETIME": ColumnType.TIMESTAMP,
    "STRING": ColumnType.TEXT,
    "JSON": ColumnType.TEXT,
}
RESCUED = "_rescued_data"
# Rows per parameterised bookkeeping statement, and bound text per statement (BigQuery
# caps a request at 10 MB).
CHUNK_ROWS = 5000
CHUNK_CHARS = 2_000_000
# Job-level failure reasons worth re-running a job for; HTTP-level ones are by status.
_TRANSIENT_REASONS = {
    "backendError",
    "internalError",
    "rateLimitExceeded",
    "jobRateLimitExceeded",
    "jobBackendError",
    "jobInternalError",
    "badGateway",
}
_EMULATOR_ONE_ALTER = "Only one ALTER command per statement"
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9\-.:]{4,61}[a-z0-9]$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_]*$")
T = TypeVar("T")
Mode = Literal["insert", "fill_nulls", "upsert"]


_VIOLATION_FIELDS: list[tuple[str, str]] = [
    ("schema_name", "STRING"),
    ("file", "STRING"),
    ("event", "STRING"),
    ("property", "STRING"),
    ("kind", "STRING"),
    ("example", "STRING"),
    ("occurrences", "INT64"),
    ("first_seen", "STRING"),
    ("last_seen", "STRING"),
]
_BLOCKED_FIELDS: list[tuple[str, str]] = [
    ("schema_name", "STRING"),
    ("file", "STRING"),
    ("line", "INT64"),
    ("event", "STRING"),
    ("raw", "STRING"),
    ("violations", "STRING"),
]


class BigQueryTarget(BaseModel):
    """The typed fields of a `type: bigquery` target in profiles.yml."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["bigquery"]
    project: str = Field(description="GCP project id that holds the datasets and runs jobs")
    location: str = Field(default="US", description="dataset and job location, e.g. US, EU")
    dataset_prefix: str = Field(default="", description="prepended to every dataset name")
    keyfile: str | None = Field(default=None, description="service-account JSON key file")
    keyfile_json: SecretStr | None = Field(
        default=None, description="the service-account JSON itself (e.g. ${GCP_SA_JSON})"
    )
    api_endpoint: str | None = Field(default=None, description="only for an emulator/proxy")
    anonymous: bool = Field(default=False, description="no credentials (emulators only)")
    retries: int = Field(default=5, ge=1, le=20, description="attempts for transient errors")
    job_timeout_seconds: int = Field(default=600, ge=1)
    lock_lease_minutes: int = Field(default=360, ge=0)

    @field_validator("project")
    @classmethod
    def _project_id(cls, value: str) -> str:
        if not _PROJECT_ID.match(value):
            raise ValueError(
                f"'{value}' is not a GCP project id (lower-case letters, digits and "
                "hyphens, 6 to 63 characters)"
            )
        return value

    @field_validator("dataset_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _DATASET_NAME.match(value):
            raise ValueError("dataset_prefix may hold only letters, digits and underscores")
        return value

    @model_validator(mode="after")
    def _check(self) -> BigQueryTarget:
        if self.keyfile is not None and self.keyfile_json is not None:
            raise ValueError("give keyfile or keyfile_json, not both")
        if self.anonymous and self.api_endpoint is None:
            raise ValueError("anonymous: true is for an emulator; set api_endpoint too")
        return self

    @classmethod
    def from_target(cls, name: str, target: Any) -> BigQueryTarget:
        """Validate the loosely typed profiles.yml target; errors name the field."""
        data = target.model_dump() if isinstance(target, BaseModel) else dict(target)
        for key, value in list(data.items()):
            if isinstance(value, SecretStr):
                data[key] = value.get_secret_value()
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "target"
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"profiles.yml: target '{name}': field '{field}': {msg}") from None

    def dataset(self, schema: str) -> str:
        return f"{self.dataset_prefix}{schema}"


def quote(name: str) -> str:
    """A backticked identifier part (column, or a whole `project.dataset.table` path)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _staged_text(value: Any) -> str | None:
    """A retyped column's value as text, CAST to the column's type in SQL."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return repr(value) if isinstance(value, float) else str(value)


def _json_value(value: Any) -> Any:
    """NDJSON for load jobs: timestamps as RFC 3339 text, nested values as JSON text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def merge_sql(
    target: str,
    source: str,
    columns: Sequence[str],
    mode: Mode = "insert",
    keys: Sequence[str] = ("id",),
    insert_extra: dict[str, str] | None = None,
    changed: Sequence[str] = (),
) -> str:
    """One MERGE from `source` (a staged table or a subquery) into `target` (public for
    tests). insert: new keys only; fill_nulls: also fill the NULL columns of matched rows
    (never `uuid_ts` or `_rescued_data`, never a non-NULL value); upsert: replace matched
    rows. `insert_extra` adds {column: SQL expression} to inserted rows. `changed`
    (upsert): a matched row is updated only when one of these columns differs."""
    match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    rest = [c for c in columns if c not in keys]
    clauses = []
    if mode == "upsert" and rest:
        sets = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in rest)
        when = " OR ".join(f"t.{quote(c)} IS DISTINCT FROM s.{quote(c)}" for c in changed)
        clauses.append(f"WHEN MATCHED {f'AND ({when}) ' if when else ''}THEN UPDATE SET {sets}")
    fillable = [c for c in rest if c not in ("uuid_ts", RESCUED)]
    if mode == "fill_nulls" and fillable:
        changed = " OR ".join(
            f"(t.{quote(c)} IS NULL AND s.{quote(c)} IS NOT NULL)" for c in fillable
        )
        sets = ", ".join(f"{quote(c)} = COALESCE(t.{quote(c)}, s.{quote(c)})" for c in fillable)
        clauses.append(f"WHEN MATCHED AND ({changed}) THEN UPDATE SET {sets}")
    extra = insert_extra or {}
    cols = ", ".join(quote(c) for c in [*columns, *extra])
    values = ", ".join([*(f"s.{quote(c)}" for c in columns), *extra.values()])
    clauses.append(f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})")
    return f"MERGE {target} AS t USING {source} AS s ON {match} " + " ".join(clauses)


def profile_sql(target: str, source: str, spec: ProfileSpec) -> str:
    """Latest non-NULL value per trait for the keys in `@keys`, merged into the profile
    table (public for tests): ARRAY_AGG(... IGNORE NULLS ORDER BY newest)[SAFE_OFFSET(0)]
    per key, newest by `timestamp` then `received_at`. A matched row gets only the synced
    traits, `received_at` and `uuid_ts`, and only when a trait or `received_at` differs
    (a replay changes nothing): a column not in `spec.trait_columns` (a trait turned off
    by selective sync) keeps its value."""
    key = quote(spec.key_column)
    order = "ORDER BY `timestamp` DESC NULLS LAST, `received_at` DESC NULLS LAST"
    traits = [
        f"ARRAY_AGG({quote(c)} IGNORE NULLS {order})[SAFE_OFFSET(0)] AS {quote(c)}"
        for c in spec.trait_columns
    ]
    select = ", ".join(
        [
            f"{key} AS `id`",
            *traits,
            "MAX(`received_at`) AS `received_at`",
            "CURRENT_TIMESTAMP() AS `uuid_ts`",
        ]
    )
    inner = f"(SELECT {select} FROM {source} WHERE {key} IN UNNEST(@keys) GROUP BY {key})"
    return merge_sql(
        target,
        inner,
        ["id", *spec.trait_columns, "received_at", "uuid_ts"],
        mode="upsert",
        changed=[*spec.trait_columns, "received_at"],
    )


def replace_keys_sql(target: str, stage: str | None, key: str, columns: Sequence[str]) -> str:
    """Delete-then-insert as one atomic MERGE (public for tests): each key in `@keys`
    matches (and deletes) its rows; each staged row has a NULL match key, never matches,
    and is inserted. Needs no unique key, and running it twice gives the same table."""
    deletes = "SELECT k AS _sluice_match" + "".join(f", NULL AS {quote(c)}" for c in columns)
    deletes += " FROM UNNEST(@keys) AS k"
    source = deletes
    if stage is not None:
        inserts = "SELECT CAST(NULL AS STRING) AS _sluice_match" + "".join(
            f", {quote(c)}" for c in columns
        )
        source = f"{inserts} FROM {stage} UNION ALL {deletes}"
    cols = ", ".join(quote(c) for c in columns)
    values = ", ".join(f"s.{quote(c)}" for c in columns)
    return (
        f"MERGE {target} AS t USING ({source}) AS s "
        f"ON CAST(t.{quote(key)} AS STRING) = s._sluice_match WHEN MATCHED THEN DELETE "
        f"WHEN NOT MATCHED AND s._sluice_match IS NULL THEN INSERT ({cols}) VALUES ({values})"
    )


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return int(code) if isinstance(code, int) else None


def _reason(exc: BaseException) -> str | None:
    try:
        return str(exc.errors[0]["reason"])  # type: ignore[attr-defined]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt: throttling, a server-side hiccup, a dropped connection."""
    import requests
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, (ConnectionError, requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return True
    if isinstance(exc, auth_exceptions.TransportError):
        return True
    if _status(exc) in (429, 500, 502, 503, 504):
        return True
    return _reason(exc) in _TRANSIENT_REASONS


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0].rstrip(".") if lines else ""


class BigQueryWarehouse(Warehouse):
    capabilities = CAPABILITIES

    def __init__(
        self,
        target_name: str,
        target: BigQueryTarget,
        client: bigquery.Client | None = None,
    ) -> None:
        self.target_name = target_name
        self.target = target
        self._secrets: list[str] = []
        self._depth = 0
        self._pending: list[tuple[int, Callable[[], None]]] = []
        self._types: dict[tuple[str, str], dict[str, ColumnType]] = {}
        self._datasets: set[str] = set()
        self._holder = uuid.uuid4().hex
        self.client = client if client is not None else self._make_client()
        try:
            # A cheap call that proves endpoint, credentials and project before any work.
            self._call(lambda: list(self.client.list_datasets(max_results=1, **self._kw())))
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001 - every connect failure becomes one sentence
            raise WarehouseError(self._message(exc, connecting=True)) from None

    # --- client, errors and retries ------------------------------------------------------
    def _where(self) -> str:
        where = f"BigQuery target '{self.target_name}' (project '{self.target.project}'"
        if self.target.api_endpoint:
            where += f", endpoint {self.target.api_endpoint}"
        return where + ")"

    def _make_client(self) -> bigquery.Client:
        from google.api_core.client_options import ClientOptions
        from google.cloud import bigquery

        credentials = self._credentials()
        endpoint = self.target.api_endpoint
        return bigquery.Client(
            project=self.target.project,
            credentials=credentials,
            location=self.target.location,
            client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None,
        )

    def _credentials(self) -> Any:
        import google.auth
        from google.auth import exceptions as auth_exceptions
        from google.auth.credentials import AnonymousCredentials
        from google.oauth2 import service_account

        scopes = ["https://www.googleapis.com/auth/bigquery"]
        t = self.target
        if t.anonymous:
            return AnonymousCredentials()
        if t.keyfile_json is not None:
            raw = t.keyfile_json.get_secret_value()
            self._secrets.append(raw)
            try:
                info = json.loads(raw)
                if isinstance(info, dict) and info.get("private_key"):
                    self._secrets.append(str(info["private_key"]))
                    self._secrets.extend(
                        ln for ln in str(info["private_key"]).splitlines() if len(ln) > 16
                    )
                return service_account.Credentials.from_service_account_info(info, scopes=scopes)
            except (ValueError, KeyError, TypeError) as exc:
                reason = type(exc).__name__
                raise WarehouseError(
                    f"cannot use keyfile_json of {self._where()} ({reason}); set it to the "
                    "service-account JSON key (the whole file) in profiles.yml"
                ) from None
        if t.keyfile is not None:
            try:
                return service_account.Credentials.from_service_account_file(
                    t.keyfile, scopes=scopes
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
                raise WarehouseError(
                    f"cannot read the service-account keyfile '{t.keyfile}' of {self._where()} "
                    f"({reason}); check keyfile in profiles.yml"
                ) from None
        try:
            credentials, _ = google.auth.default(scopes=scopes)
        except auth_exceptions.DefaultCredentialsError:
            raise WarehouseError(
                f"no Google credentials for {self._where()}; set keyfile (a service-account "
                "JSON key) in profiles.yml, or GOOGLE_APPLICATION_CREDENTIALS, or run "
                "`gcloud auth application-default login`"
            ) from None
        return credentials

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _detail(self, exc: BaseException) -> str:
        """The server's own message (not the request URL or job id), first line only."""
        msg = getattr(exc, "message", None)
        if isinstance(exc, Exception) and _status(exc) is not None and msg:
            text = str(msg)
        else:
            text = str(exc) or type(exc).__name__
            if "Connection refused" in text or "NewConnectionError" in text:
                text = "connection refused"
            elif "Name or service not known" in text or "NameResolutionError" in text:
                text = "unknown host"
            elif "timed out" in text.lower():
                text = "timed out"
        text = text.split("; reason: ")[0]  # the client repeats the error's fields after it
        text = re.sub(r"\s*\(job ID: [^)]*\)", "", text)
        text = re.sub(r"(POST|GET|PATCH|PUT|DELETE) https?://\S+:?\s*", "", text)
        return self._scrub(_first_line(text)) or type(exc).__name__

    def _message(self, exc: BaseException, connecting: bool = False) -> str:
        """One sentence: what failed, on which target, and what to change."""
        from google.auth import exceptions as auth_exceptions

        status = _status(exc)
        detail = self._detail(exc)
        where = self._where()
        anonymous_refused = isinstance(exc, auth_exceptions.GoogleAuthError) and (
            "Anonymous credentials" in str(exc)
        )
        if anonymous_refused or (status == 401 and self.target.anonymous):
            return (
                f"{where} asks for credentials but the target is anonymous; set keyfile or "
                "keyfile_json (and remove anonymous: true) in profiles.yml"
            )
        if status == 401 or isinstance(exc, auth_exceptions.RefreshError):
            return (
                f"BigQuery rejected the credentials of {where}: {detail}; check keyfile "
                "(or the application-default credentials) in profiles.yml"
            )
        if status == 403 and _reason(exc) not in _TRANSIENT_REASONS:
            return (
                f"permission denied on {where}: {detail}; grant the service account "
                f"BigQuery Data Editor and BigQuery Job User on project '{self.target.project}'"
            )
        if status == 404:
            return (
                f"not found on {where}: {detail}; check project and location "
                f"('{self.target.location}') in profiles.yml"
            )
        if connecting or status is None or is_transient(exc):
            fix = (
                "check api_endpoint in profiles.yml and that the emulator is running"
                if self.target.api_endpoint
                else "check the network (and a proxy) to bigquery.googleapis.com"
            )
            return f"cannot reach {where}: {detail}; {fix}"
        return f"{where}: {detail}"

    def _policy(self) -> Any:
        """A Retry for one call: transient errors, at most `retries` attempts, exponential
        backoff with jitter (api_core), all within `job_timeout_seconds`."""
        from google.api_core.retry import Retry

        attempts = {"n": 1}
        limit = self.target.retries

        def predicate(exc: Exception) -> bool:
            if not is_transient(exc) or attempts["n"] >= limit:
                return False
            attempts["n"] += 1
            return True

        return Retry(
            predicate=predicate,
            initial=0.2,
            maximum=8.0,
            multiplier=2.0,
            timeout=float(self.target.job_timeout_seconds),
        )

    def _kw(self) -> dict[str, Any]:
        return {"retry": self._policy(), "timeout": float(self.target.job_timeout_seconds)}

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one API call; errors other than not-found become one WarehouseError."""
        from google.api_core import exceptions as api_exceptions

        try:
            return fn()
        except api_exceptions.RetryError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise WarehouseError(self._message(cause)) from None
        except api_exceptions.NotFound:
            raise
        except WarehouseError:
            raise
        except Exception as exc:
            from google.auth import exceptions as auth_exceptions

            if isinstance(exc, api_exceptions.GoogleAPIError) or isinstance(
                exc, (auth_exceptions.GoogleAuthError, OSError)
            ):
                raise WarehouseError(self._message(exc)) from None
            import requests

            if isinstance(exc, requests.RequestException):
                raise WarehouseError(self._message(exc)) from None
            raise

    def _job(
        self,
        sql: str,
        params: Sequence[Any] = (),
        not_found_ok: bool = False,
    ) -> Any:
        """Run one query job to completion; returns the finished job (rows via result)."""
        from google.api_core import exceptions as api_exceptions
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=list(params))

        def run() -> Any:
            job = self.client.query(
                sql,
                job_config=config,
                job_id_prefix="sluice_",
                location=self.target.location,
                retry=self._policy(),
                job_retry=self._policy(),
                timeout=float(self.target.job_timeout_seconds),
            )
            job.result(
                retry=self._policy(),
                job_retry=self._policy(),
                timeout=float(self.target.job_timeout_seconds),
            )
            return job

        try:
            return self._call(run)
        except api_exceptions.NotFound as exc:
            if not_found_ok:
                raise
            raise WarehouseError(self._message(exc)) from None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """A DML/DDL statement; returns the rows it changed (0 for DDL)."""
        job = self._job(sql, params)
        return int(job.num_dml_affected_rows or 0)

    def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        job = self._job(sql, params)
        rows = self._call(lambda: list(job.result(retry=self._policy())))
        return [tuple(r.values()) for r in rows]

    # --- names ---------------------------------------------------------------------------
    def _dataset_id(self, schema: str) -> str:
        return f"{self.target.project}.{self.target.dataset(schema)}"

    def _table_id(self, schema: str, table: str) -> str:
        return f"{self._dataset_id(schema)}.{table}"

    def table_ref(self, schema: str, table: str) -> str:
        return quote(self._table_id(schema, table))

    # --- retype (sluice schema set-type) --------------------------------------------------
    # BigQuery only widens a column's type in place (INT64 to NUMERIC...): the table is
    # rewritten by one CREATE OR REPLACE TABLE ... AS SELECT (atomic: readers see the old
    # table or the new one), the column's new values joined from a staging table.
    _RETYPE_STAGE = [
        ("id", "STRING"),
        ("value", "STRING"),
        ("changed", "BOOL"),
        ("rescued", "STRING"),
    ]
    _COLUMN_TYPES = [
        ("schema_name", "STRING"),
        ("table_name", "STRING"),
        ("column_name", "STRING"),
        ("column_type", "STRING"),
    ]

    def retype_column(
        self, schema: str, table: str, column: str, new_type: ColumnType, apply: bool
    ) -> RetypePlan:
        columns = self.read_schema(schema).get(table, {})
        if column not in columns:
            raise WarehouseError(f"no column '{column}' in {schema}.{table}")
        has_rescued = RESCUED in columns
        c, r = quote(column), quote(RESCUED)
        where = f"{c} IS NOT NULL" + (f" OR {r} IS NOT NULL" if has_rescued else "")
        rows = self._fetchall(
            f"SELECT id, {c}, {r if has_rescued else 'NULL'} "
            f"FROM {self.table_ref(schema, table)} WHERE {where}"
        )
        plan = plan_retype(RetypePlan(schema, table, column, columns[column], new_type), rows)
        if not apply:
            return plan
        if plan.needs_rescued_column and not has_rescued:
            self.add_columns(schema, table, {RESCUED: ColumnType.TEXT})
            columns = {**columns, RESCUED: ColumnType.TEXT}
        self._create(BOOKKEEPING_SCHEMA, "retype_stage", self._RETYPE_STAGE, partition=False)
        self._execute(f"DELETE FROM {self._b('retype_stage')} WHERE TRUE")
        staged = [
            (ch.id, _staged_text(ch.value), ch.rescued_changed, ch.rescued) for ch in plan.changes
        ]
        for batch in self._struct_rows(self._RETYPE_STAGE, staged):
            self._execute(
                f"INSERT INTO {self._b('retype_stage')} (id, value, changed, rescued) "
                "SELECT r.id, r.value, r.changed, r.rescued FROM UNNEST(@rows) AS r",
                [batch],
            )
        self._execute(self.retype_sql(schema, table, column, new_type, columns))
        self._types[(schema, table)] = {**columns, column: new_type}
        self._create(BOOKKEEPING_SCHEMA, "column_types", self._COLUMN_TYPES, partition=False)
        self._merge_rows(
            "column_types",
            self._COLUMN_TYPES,
            ("schema_name", "table_name", "column_name"),
            [(schema, table, column, new_type.value)],
            mode="upsert",
        )
        self._execute(f"DELETE FROM {self._b('retype_stage')} WHERE TRUE")
        plan.applied = True
        return plan

    def retype_sql(
        self,
        schema: str,
        table: str,
        column: str,
        new_type: ColumnType,
        columns: dict[str, ColumnType],
    ) -> str:
        """The one statement rewriting the table (public for the dialect check)."""
        target = self.table_ref(schema, table)
        kind = CAPABILITIES.type_names[new_type]
        replaced = [f"CAST(s.value AS {kind}) AS {quote(column)}"]
        if RESCUED in columns:
            replaced.append(f"IF(s.changed, s.rescued, t.{quote(RESCUED)}) AS {quote(RESCUED)}")
        layout = ""
        if columns.get("received_at") is ColumnType.TIMESTAMP:
            layout += " PARTITION BY DATE(received_at)"
        if columns.get("id") is ColumnType.TEXT:
            layout += " CLUSTER BY id"
        return (
            f"CREATE OR REPLACE TABLE {target}{layout} AS SELECT t.* REPLACE "
            f"({', '.join(replaced)}) FROM {target} AS t "
            f"LEFT JOIN {self._b('retype_stage')} AS s ON t.id = s.id"
        )

    def decided_types(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        if "column_types" not in self.read_schema(BOOKKEEPING_SCHEMA):
            return {}
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, kind in self._fetchall(
            f"SELECT table_name, column_name, column_type FROM {self._b('column_types')} "
            "WHERE schema_name = @s",
            [P("s", "STRING", schema)],
        ):
            out.setdefault(str(table), {})[str(column)] = ColumnType(str(kind))
        return out

    def _b(self, table: str) -> str:
        return self.table_ref(BOOKKEEPING_SCHEMA, table)

    # --- connection, transactions, locks ------------------------------------------------
    def close(self) -> None:
        self.client.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Data MERGEs run at once; bookkeeping writes issued inside the block are written
        when the outermost block exits normally, ledger and cursors last (see the module
        docstring for why that is exactly once). A failure drops them."""
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._pending.clear()
            raise
        self._depth -= 1
        if self._depth == 0:
            pending = [fn for _, fn in sorted(self._pending, key=lambda p: p[0])]
            self._pending.clear()
            for fn in pending:
                fn()

    def _bookkeeping_write(self, priority: int, fn: Callable[[], None]) -> None:
        if self._depth:
            self._pending.append((priority, fn))
        else:
            fn()

    def _ensure_dataset(self, schema: str) -> None:
        dataset_id = self._dataset_id(schema)
        if dataset_id in self._datasets:
            return
        from google.cloud import bigquery

        dataset = bigquery.Dataset(dataset_id)
        dataset.location = self.target.location
        self._call(lambda: self.client.create_dataset(dataset, exists_ok=True, **self._kw()))
        self._datasets.add(dataset_id)

    def _create(
        self,
        schema: str,
        table: str,
        columns: dict[str, ColumnType] | Sequence[tuple[str, str]],
        partition: bool = True,
    ) -> None:
        """Create a table through the tables API (idempotent: exists_ok). Tables with a
        TIMESTAMP `received_at` are partitioned by its day, and clustered on `id`."""
        from google.cloud import bigquery

        self._ensure_dataset(schema)
        if isinstance(columns, dict):
            fields = [(n, self._field_type(n, k)) for n, k in columns.items()]
        else:
            fields = list(columns)
        obj = bigquery.Table(
            self._table_id(schema, table),
            schema=[bigquery.SchemaField(n, t) for n, t in fields],
        )
        names = {n: t for n, t in fields}
        if partition and names.get("received_at") == "TIMESTAMP":
            obj.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field="received_at"
            )
        if partition and names.get("id") == "STRING":
            obj.clustering_fields = ["id"]
        self._call(lambda: self.client.create_table(obj, exists_ok=True, **self._kw()))

    def _ensure_locks(self) -> None:
        self._create(
            BOOKKEEPING_SCHEMA,
            "locks",
            [
                ("name", "STRING"),
                ("holder", "STRING"),
                ("acquired_at", "TIMESTAMP"),
                ("expires_at", "TIMESTAMP"),
            ],
            partition=False,
        )

    def lease_sql(self) -> str:
        """Take a free or expired lease in one MERGE (public for tests)."""
        minutes = int(self.target.lock_lease_minutes)
        expires = f"TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {minutes} MINUTE)"
        return (
            f"MERGE {self._b('locks')} AS l USING (SELECT @name AS name, @holder AS holder) "
            "AS s ON l.name = s.name WHEN MATCHED AND l.expires_at < CURRENT_TIMESTAMP() "
            "THEN UPDATE SET holder = s.holder, acquired_at = CURRENT_TIMESTAMP(), "
            f"expires_at = {expires} WHEN NOT MATCHED THEN INSERT (name, holder, "
            f"acquired_at, expires_at) VALUES (s.name, s.holder, CURRENT_TIMESTAMP(), {expires})"
        )

    @contextmanager
    def _lease(self, name: str, busy: str) -> Iterator[None]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        self._ensure_locks()
        minutes = int(self.target.lock_lease_minutes)
        params = [P("name", "STRING", name), P("holder", "STRING", self._holder)]
        message = (
            f"{busy} on BigQuery target '{self.target_name}' holds the lock; wait for it to "
            f"finish (a crashed run's lock expires after {minutes} minutes, or delete its row "
            f"from _sluice.locks where name = '{name}')"
        )
        release = (
            f"DELETE FROM {self._b('locks')} WHERE name = @name AND holder = @holder",
            params,
        )
        try:
            self._execute(self.lease_sql(), params)
        except WarehouseError as exc:
            if "concurrent update" in str(exc).lower():  # lost a race for an expired row
                raise LockBusy(message) from None
            raise
        holders = {
            str(r[0])
            for r in self._fetchall(
                f"SELECT holder FROM {self._b('locks')} WHERE name = @name "
                "AND (holder = @holder OR expires_at >= CURRENT_TIMESTAMP())",
                params,
            )
        }
        if holders != {self._holder}:
            self._execute(*release)  # lost a race: drop our row, if we inserted one
            raise LockBusy(message)
        try:
            yield
        finally:
            self._execute(*release)

    def lock(self, schema: str) -> Iterator[None]:  # type: ignore[override]
        return self._lease(f"sync:{schema}", f"another sync of schema '{schema}'")

    def retl_lock(self, model: str) -> Iterator[None]:  # type: ignore[override]
        return self._lease(f"retl:{model}", f"another reverse-ETL run of model '{model}'")

    # --- schema -------------------------------------------------------------------------
    _BOOKKEEPING: dict[str, list[tuple[str, str]]] = {
        "loaded_files": [
            ("schema_name", "STRING"),
            ("file", "STRING"),
            ("lines", "INT64"),
            ("loaded_at", "TIMESTAMP"),
        ],
        "rejected_events": [
            ("schema_name", "STRING"),
            ("file", "STRING"),
            ("line", "INT64"),
            ("raw", "STRING"),
            ("reason", "STRING"),
            ("rejected_at", "TIMESTAMP"),
        ],
        "sync_runs": [
            ("run_id", "STRING"),
            ("schema_name", "STRING"),
            ("target", "STRING"),
            ("status", "STRING"),
            ("started_at", "TIMESTAMP"),
            ("finished_at", "TIMESTAMP"),
            ("report", "STRING"),
        ],
        "cursors": [
            ("schema_name", "STRING"),
            ("collection", "STRING"),
            ("cursor", "STRING"),
            ("updated_at", "TIMESTAMP"),
        ],
        "turned_off_names": [
            ("schema_name", "STRING"),
            ("table_name", "STRING"),
            ("column_name", "STRING"),
            ("first_seen", "TIMESTAMP"),
        ],
        "violations": [
            *_VIOLATION_FIELDS,
            ("recorded_at", "TIMESTAMP"),
        ],
        "blocked_events": [
            *_BLOCKED_FIELDS,
            ("blocked_at", "TIMESTAMP"),
        ],
    }
    _RETL_BOOKKEEPING: dict[str, list[tuple[str, str]]] = {
        "retl_snapshots": [
            ("model", "STRING"),
            ("key", "STRING"),
            ("row_hash", "STRING"),
            ("synced_at", "TIMESTAMP"),
        ],
        "retl_sent": [
            ("model", "STRING"),
            ("key", "STRING"),
            ("op", "STRING"),
            ("row_hash", "STRING"),
            ("record_id", "STRING"),
            ("run_id", "STRING"),
            ("sent_at", "TIMESTAMP"),
        ],
        "retl_runs": [
            ("run_id", "STRING"),
            ("model", "STRING"),
            ("target", "STRING"),
            ("status", "STRING"),
            ("started_at", "TIMESTAMP"),
            ("finished_at", "TIMESTAMP"),
            ("report", "STRING"),
        ],
    }

    def _ensure_tables(self, tables: dict[str, list[tuple[str, str]]]) -> None:
        """Create the missing bookkeeping tables (one list call when all are there)."""
        self._ensure_dataset(BOOKKEEPING_SCHEMA)
        dataset = self._dataset_id(BOOKKEEPING_SCHEMA)
        have = {
            t.table_id
            for t in self._call(lambda: list(self.client.list_tables(dataset, **self._kw())))
        }
        for name, fields in tables.items():
            if name not in have:
                self._create(BOOKKEEPING_SCHEMA, name, fields, partition=False)

    def ensure_bookkeeping(self) -> None:
        self._ensure_tables(self._BOOKKEEPING)
        self._ensure_locks()

    def read_schema(self, schema: str) -> dict[str, dict[str, ColumnType]]:
        from google.api_core import exceptions as api_exceptions

        info = quote(self._dataset_id(schema)) + ".INFORMATION_SCHEMA.COLUMNS"
        try:
            job = self._job(
                f"SELECT table_name, column_name, data_type FROM {info} "
                "ORDER BY table_name, ordinal_position",
                not_found_ok=True,
            )
            rows = self._call(lambda: list(job.result(retry=self._policy())))
        except api_exceptions.NotFound:
            return {}  # no such dataset yet
        out: dict[str, dict[str, ColumnType]] = {}
        for table, column, data_type in (tuple(r.values()) for r in rows):
            if schema == BOOKKEEPING_SCHEMA and str(table).startswith("_stage_"):
                continue
            kind = _READ_TYPES.get(str(data_type).split("(")[0].upper(), ColumnType.TEXT)
            out.setdefault(str(table), {})[str(column)] = kind
        for table, cols in out.items():
            self._types[(schema, table)] = dict(cols)
        return out

    def _field_type(self, name: str, kind: ColumnType) -> str:
        return "STRING" if name == RESCUED else CAPABILITIES.type_names[kind]

    def _table_fields(self, schema: str, table: str) -> dict[str, str]:
        """{column: BigQuery type} from the tables API (also caches the ColumnTypes)."""
        obj = self._call(lambda: self.client.get_table(self._table_id(schema, table), **self._kw()))
        fields = {f.name: str(f.field_type).upper() for f in obj.schema}
        self._types[(schema, table)] = {
            n: _READ_TYPES.get(t, ColumnType.TEXT) for n, t in fields.items()
        }
        return fields

    def _sql_type(self, schema: str, table: str, column: str) -> str:
        types = self._types.get((schema, table))
        if types is None or column not in types:
            self._table_fields(schema, table)
            types = self._types[(schema, table)]
        if column == RESCUED:
            return "STRING"
        return CAPABILITIES.type_names[types.get(column, ColumnType.TEXT)]

    def create_table(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        self._create(schema, table, columns)
        self._types[(schema, table)] = dict(columns)

    def add_columns_sql(self, schema: str, table: str, columns: dict[str, ColumnType]) -> str:
        """One ALTER TABLE adding every column (one metadata update on BigQuery, which
        rate-limits them per table). Public for tests."""
        adds = ", ".join(
            f"ADD COLUMN IF NOT EXISTS {quote(n)} {self._field_type(n, k)}"
            for n, k in columns.items()
        )
        return f"ALTER TABLE {self.table_ref(schema, table)} {adds}"

    def add_columns(self, schema: str, table: str, columns: dict[str, ColumnType]) -> None:
        if not columns:
            return
        try:
            self._execute(self.add_columns_sql(schema, table, columns))
        except WarehouseError as exc:
            if _EMULATOR_ONE_ALTER not in str(exc) or len(columns) == 1:
                raise
            for name, kind in columns.items():  # the emulator: one clause per statement
                self._execute(self.add_columns_sql(schema, table, {name: kind}))
        fields = self._table_fields(schema, table)
        missing = [n for n in columns if n not in fields]
        if missing:  # the emulator's table metadata does not follow DDL: patch it
            from google.cloud import bigquery

            obj = self._call(
                lambda: self.client.get_table(self._table_id(schema, table), **self._kw())
            )
            obj.schema = [
                *obj.schema,
                *(bigquery.SchemaField(n, self._field_type(n, columns[n])) for n in missing),
            ]
            self._call(lambda: self.client.update_table(obj, ["schema"], **self._kw()))
        self._types.setdefault((schema, table), {}).update(columns)

    # --- bulk writes: a load job into a staging table, then one MERGE --------------------
    def _stage(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> str:
        """Load the rows (NDJSON, typed like the target's columns) into a new staging table
        in the bookkeeping dataset; returns its table id."""
        from google.cloud import bigquery

        self._ensure_dataset(BOOKKEEPING_SCHEMA)
        stage = self._table_id(BOOKKEEPING_SCHEMA, f"_stage_{uuid.uuid4().hex}")
        fields = [bigquery.SchemaField(c, self._sql_type(schema, table, c)) for c in columns]
        buf = io.BytesIO()
        for row in rows:
            buf.write(orjson.dumps({c: _json_value(v) for c, v in zip(columns, row, strict=True)}))
            buf.write(b"\n")
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=fields,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        )

        def load() -> None:
            buf.seek(0)
            job = self.client.load_table_from_file(
                buf,
                stage,
                job_config=config,
                job_id_prefix="sluice_stage_",
                location=self.target.location,
                rewind=True,
                timeout=float(self.target.job_timeout_seconds),
            )
            job.result(retry=self._policy(), timeout=float(self.target.job_timeout_seconds))

        self._call(lambda: self._attempts(load))
        return stage

    def _attempts(self, fn: Callable[[], T]) -> T:
        """Re-run a whole idempotent job (a load into a truncated staging table) when the
        job itself failed for a transient reason; HTTP calls have their own policy."""
        import random
        import time

        for attempt in range(self.target.retries):
            try:
                return fn()
            except Exception as exc:
                if attempt == self.target.retries - 1 or not is_transient(exc):
                    raise
                time.sleep(min(8.0, 0.2 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _drop(self, table_id: str) -> None:
        self._call(lambda: self.client.delete_table(table_id, not_found_ok=True, **self._kw()))

    def _write(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        mode: Mode,
    ) -> int:
        if not rows:
            return 0
        stage = self._stage(schema, table, columns, rows)
        try:
            return self._execute(
                merge_sql(self.table_ref(schema, table), quote(stage), columns, mode)
            )
        finally:
            self._drop(stage)

    def insert_new_rows(
        self,
        schema: str,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        fill_nulls: bool = False,
    ) -> int:
        return self._write(schema, table, columns, rows, "fill_nulls" if fill_nulls else "insert")

    def upsert_rows(
        self, schema: str, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        return self._write(schema, table, columns, rows, "upsert")

    def mark_deleted(self, schema: str, table: str, ids: Sequence[str], at: str) -> int:
        """One MERGE: stamp `_deleted_at` on rows not yet deleted, create unseen ones."""
        from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

        if not ids:
            return 0
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), CHUNK_ROWS):
            chunk = unique[start : start + CHUNK_ROWS]
            self._execute(
                f"MERGE {self.table_ref(schema, table)} AS t USING (SELECT DISTINCT i AS id "
                "FROM UNNEST(@ids) AS i) AS s ON t.id = s.id WHEN MATCHED AND t._deleted_at "
                "IS NULL THEN UPDATE SET _deleted_at = @at WHEN NOT MATCHED THEN INSERT "
                "(id, received_at, uuid_ts, _deleted_at) VALUES (s.id, @at, @at, @at)",
                [
                    ArrayQueryParameter("ids", "STRING", chunk),
                    ScalarQueryParameter("at", "TIMESTAMP", at),
                ],
            )
        return len(ids)

    # --- parameterised bookkeeping MERGEs -------------------------------------------------
    def _struct_rows(
        self, fields: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> Iterator[Any]:
        """ARRAY<STRUCT> query parameters named @rows, chunked by count and text size."""
        from google.cloud.bigquery import (
            ArrayQueryParameter,
            ScalarQueryParameter,
            ScalarQueryParameterType,
            StructQueryParameter,
            StructQueryParameterType,
        )

        kind = StructQueryParameterType(*(ScalarQueryParameterType(t, name=n) for n, t in fields))
        batch: list[Any] = []
        size = 0
        for row in rows:
            values = [_json_value(v) for v in row]
            width = sum(len(str(v)) + 8 for v in values)
            if batch and (len(batch) >= CHUNK_ROWS or size + width > CHUNK_CHARS):
                yield ArrayQueryParameter("rows", kind, batch)
                batch, size = [], 0
            batch.append(
                StructQueryParameter(
                    None,
                    *(
                        ScalarQueryParameter(n, t, v)
                        for (n, t), v in zip(fields, values, strict=True)
                    ),
                )
            )
            size += width
        if batch:
            yield ArrayQueryParameter("rows", kind, batch)

    def _merge_rows(
        self,
        table: str,
        fields: Sequence[tuple[str, str]],
        keys: Sequence[str],
        rows: Sequence[Sequence[Any]],
        mode: Mode = "insert",
        insert_extra: dict[str, str] | None = None,
    ) -> None:
        """MERGE small bookkeeping rows (bound as parameters) into _sluice.`table`."""
        unique = list({tuple(r[i] for i, (n, _) in enumerate(fields) if n in keys): r
                       for r in rows}.values())  # fmt: skip
        cols = [n for n, _ in fields]
        source = "(SELECT " + ", ".join(f"r.{quote(c)}" for c in cols) + " FROM UNNEST(@rows) AS r)"
        sql = merge_sql(self._b(table), source, cols, mode, keys, insert_extra)
        for param in self._struct_rows(fields, unique):
            self._execute(sql, [param])

    def read_cursors(self, schema: str) -> dict[str, str]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        rows = self._fetchall(
            f"SELECT collection, cursor FROM {self._b('cursors')} WHERE schema_name = @s",
            [P("s", "STRING", schema)],
        )
        return {str(c): str(v) for c, v in rows}

    def save_cursor(self, schema: str, collection: str, cursor: str) -> None:
        def write() -> None:
            self._merge_rows(
                "cursors",
                [("schema_name", "STRING"), ("collection", "STRING"), ("cursor", "STRING")],
                ("schema_name", "collection"),
                [(schema, collection, cursor)],
                mode="upsert",
                insert_extra={"updated_at": "CURRENT_TIMESTAMP()"},
            )

        self._bookkeeping_write(1, write)

    def loaded_files(self, schema: str) -> set[str]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        rows = self._fetchall(
            f"SELECT file FROM {self._b('loaded_files')} WHERE schema_name = @s",
            [P("s", "STRING", schema)],
        )
        return {str(r[0]) for r in rows}

    def record_files(self, schema: str, files: Sequence[tuple[str, int]]) -> None:
        if not files:
            return
        rows = [(schema, f, n) for f, n in files]
        self._bookkeeping_write(
            1,
            lambda: self._merge_rows(
                "loaded_files",
                [("schema_name", "STRING"), ("file", "STRING"), ("lines", "INT64")],
                ("schema_name", "file"),
                rows,
                insert_extra={"loaded_at": "CURRENT_TIMESTAMP()"},
            ),
        )

    def record_rejects(self, schema: str, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        rows = [(schema, r.file, r.line, r.raw, r.reason) for r in rejects]
        fields = [
            ("schema_name", "STRING"),
            ("file", "STRING"),
            ("line", "INT64"),
            ("raw", "STRING"),
            ("reason", "STRING"),
        ]
        # Keyed by (schema, file, line): a batch re-run after a crash records them once.
        self._bookkeeping_write(
            0,
            lambda: self._merge_rows(
                "rejected_events",
                fields,
                ("schema_name", "file", "line"),
                rows,
                insert_extra={"rejected_at": "CURRENT_TIMESTAMP()"},
            ),
        )

    def record_violations(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        self._bookkeeping_write(
            0,
            lambda: self._merge_rows(
                "violations",
                _VIOLATION_FIELDS,
                VIOLATION_KEYS,
                rows,
                insert_extra={"recorded_at": "CURRENT_TIMESTAMP()"},
            ),
        )

    def record_blocked(self, schema: str, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        keyed = [(schema, *row) for row in rows]
        self._bookkeeping_write(
            0,
            lambda: self._merge_rows(
                "blocked_events",
                _BLOCKED_FIELDS,
                BLOCKED_KEYS,
                keyed,
                insert_extra={"blocked_at": "CURRENT_TIMESTAMP()"},
            ),
        )

    def violation_summary(self, schema: str | None) -> list[dict[str, Any]]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        if "violations" not in self.read_schema(BOOKKEEPING_SCHEMA):
            return []
        where, params = (
            ("", []) if schema is None else (" WHERE schema_name = @s", [P("s", "STRING", schema)])
        )
        sql = VIOLATION_SUMMARY.format(table=self._b("violations"), where=where)
        return violation_rows(self._fetchall(sql, params))

    def record_turned_off(self, schema: str, names: Sequence[tuple[str, str]]) -> None:
        if not names:
            return
        rows = [(schema, t, c) for t, c in names]
        fields = [("schema_name", "STRING"), ("table_name", "STRING"), ("column_name", "STRING")]
        self._bookkeeping_write(
            0,
            lambda: self._merge_rows(
                "turned_off_names",
                fields,
                ("schema_name", "table_name", "column_name"),
                rows,
                insert_extra={"first_seen": "CURRENT_TIMESTAMP()"},
            ),
        )

    def turned_off_names(self, schema: str) -> dict[str, set[str]]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        rows = self._fetchall(
            f"SELECT table_name, column_name FROM {self._b('turned_off_names')} "
            "WHERE schema_name = @s",
            [P("s", "STRING", schema)],
        )
        out: dict[str, set[str]] = {}
        for table, column in rows:
            out.setdefault(str(table), set()).add(str(column))
        return out

    def _record(self, table: str, first: str, report: dict[str, Any], key: str) -> None:
        fields = [
            ("run_id", "STRING"),
            (first, "STRING"),
            ("target", "STRING"),
            ("status", "STRING"),
            ("started_at", "TIMESTAMP"),
            ("finished_at", "TIMESTAMP"),
            ("report", "STRING"),
        ]
        row = (
            report["run_id"],
            key,
            self.target_name,
            report["status"],
            report["started_at"],
            report["finished_at"],
            orjson.dumps(report, default=str).decode(),
        )
        self._merge_rows(table, fields, ("run_id",), [row], mode="upsert")

    def record_run(self, schema: str, report: dict[str, Any]) -> None:
        self._record("sync_runs", "schema_name", report, schema)

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        rows = self._fetchall(
            f"SELECT report FROM {self._b('sync_runs')} ORDER BY started_at DESC LIMIT {int(limit)}"
        )
        return [orjson.loads(r[0]) for r in rows]

    def recent_rejects(self, schema: str | None, limit: int = 20) -> list[dict[str, Any]]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        where, params = (
            ("", []) if schema is None else (" WHERE schema_name = @s", [P("s", "STRING", schema)])
        )
        rows = self._fetchall(
            "SELECT schema_name, file, line, reason, raw, rejected_at "
            f"FROM {self._b('rejected_events')}{where} "
            f"ORDER BY rejected_at DESC, file, line LIMIT {int(limit)}",
            params,
        )
        return reject_rows(rows)

    # --- profiles (users, accounts) --------------------------------------------------------
    def rebuild_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> int:
        """In SQL (profile_sql); the keys whose history holds a rescued value are rebuilt
        in Python (base.rescued_profile_rows), which follows a trait's newest value into
        the profile's _rescued_data."""
        from google.cloud.bigquery import ArrayQueryParameter

        if not keys:
            return 0
        rescued = self._keys_with_rescued(schema, spec, keys)
        plain = [k for k in keys if k not in rescued] if rescued else list(keys)
        sql = profile_sql(
            self.table_ref(schema, spec.table), self.table_ref(schema, spec.source_table), spec
        )
        for start in range(0, len(plain), CHUNK_ROWS):
            chunk = list(plain[start : start + CHUNK_ROWS])
            self._execute(sql, [ArrayQueryParameter("keys", "STRING", chunk)])
        if rescued:
            self._rescued_profiles(schema, spec, sorted(rescued))
        return len(keys)

    def _keys_with_rescued(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> set[str]:
        from google.cloud.bigquery import ArrayQueryParameter

        if spec.rescued_column is None:
            return set()
        key = quote(spec.key_column)
        found: set[str] = set()
        for start in range(0, len(keys), CHUNK_ROWS):
            chunk = list(keys[start : start + CHUNK_ROWS])
            found.update(
                str(k)
                for (k,) in self._fetchall(
                    f"SELECT DISTINCT {key} FROM {self.table_ref(schema, spec.source_table)} "
                    f"WHERE {key} IN UNNEST(@keys) AND {quote(spec.rescued_column)} IS NOT NULL",
                    [ArrayQueryParameter("keys", "STRING", chunk)],
                )
            )
        return found

    def _rescued_profiles(self, schema: str, spec: ProfileSpec, keys: Sequence[str]) -> None:
        from google.cloud.bigquery import ArrayQueryParameter

        assert spec.rescued_column is not None
        traits = "".join(f", {quote(c)}" for c in spec.trait_columns)
        r = quote(spec.rescued_column)
        key = quote(spec.key_column)
        history: list[tuple[Any, ...]] = []
        current: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), CHUNK_ROWS):
            param = [ArrayQueryParameter("keys", "STRING", list(keys[start : start + CHUNK_ROWS]))]
            history += self._fetchall(
                f"SELECT {key}, `timestamp`, `received_at`{traits}, {r} "
                f"FROM {self.table_ref(schema, spec.source_table)} WHERE {key} IN UNNEST(@keys)",
                param,
            )
            current += self._fetchall(
                f"SELECT `id`{traits}, `received_at`, {r} FROM "
                f"{self.table_ref(schema, spec.table)} WHERE `id` IN UNNEST(@keys)",
                param,
            )
        now = datetime.now(timezone.utc).isoformat()
        rows = rescued_profile_rows(history, current, spec.trait_columns, now)
        if rows:
            names = ["id", *spec.trait_columns, "received_at", "uuid_ts", spec.rescued_column]
            self.upsert_rows(schema, spec.table, names, rows)

    # --- reads ---------------------------------------------------------------------------
    def table_stats(self, schema: str, table: str) -> TableStats:
        rows, duplicates, newest = self._fetchall(
            "SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT id), MAX(received_at) "
            f"FROM {self.table_ref(schema, table)}"
        )[0]
        return TableStats(int(rows), int(duplicates), newest if rows else None)

    def query(self, sql: str) -> Iterator[tuple[Any, ...]]:
        return iter(self._fetchall(sql))

    # --- reverse ETL -------------------------------------------------------------------------
    # Staging and change-set tables are tables in _sluice made by CREATE OR REPLACE TABLE
    # ... AS SELECT (a crashed run's leftovers are replaced by the next run).
    def _retl_id(self, kind: str, model: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_]", "_", model)
        return self._table_id(BOOKKEEPING_SCHEMA, f"retl_{kind}__{safe}")

    def retl_ensure_bookkeeping(self) -> None:
        self._ensure_tables(self._RETL_BOOKKEEPING)
        self._ensure_locks()

    def retl_model_columns(self, model: str, sql: str) -> dict[str, ColumnType]:
        """A dry run: BigQuery plans the query and returns its schema without running it."""
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        job = self._call(
            lambda: self.client.query(
                f"SELECT * FROM (\n{sql}\n) AS m",
                job_config=config,
                location=self.target.location,
                retry=self._policy(),
                job_retry=None,
                timeout=float(self.target.job_timeout_seconds),
            )
        )
        return {
            f.name.lower(): _READ_TYPES.get(str(f.field_type).upper(), ColumnType.TEXT)
            for f in job.schema
        }

    def retl_stage(self, model: str, sql: str, key: str, columns: Sequence[str]) -> int:
        stage = self._retl_id("stage", model)
        inner = f"SELECT {', '.join(quote(c) for c in columns)} FROM (\n{sql}\n) AS m0"
        # The hash sees the whole sent row: TO_JSON_STRING of the row struct, NULLs kept.
        self._job(
            f"CREATE OR REPLACE TABLE {quote(stage)} AS SELECT CAST(r.{quote(key)} AS STRING) "
            f"AS _sluice_key, TO_HEX(MD5(TO_JSON_STRING(r))) AS _sluice_hash, r.* "
            f"FROM ({inner}) AS r"
        )
        return int(self._fetchall(f"SELECT COUNT(*) FROM {quote(stage)}")[0][0])

    def retl_key_problems(self, model: str) -> tuple[int, int]:
        stage = quote(self._retl_id("stage", model))
        nulls, dupes = self._fetchall(
            "SELECT COUNT(*) - COUNT(_sluice_key), COUNT(_sluice_key) - COUNT(DISTINCT "
            f"_sluice_key) FROM {stage}"
        )[0]
        return int(nulls), int(dupes)

    def retl_diff(self, model: str, columns: Sequence[str]) -> dict[str, int]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        stage = quote(self._retl_id("stage", model))
        changes = self._retl_id("changes", model)
        s_cols = "".join(f", s.{quote(c)}" for c in columns)
        d_cols = "".join(f", d.{quote(c)}" for c in columns)
        self._job(
            f"CREATE OR REPLACE TABLE {quote(changes)} AS "
            "SELECT ROW_NUMBER() OVER (ORDER BY d._sluice_kind, d._sluice_key) AS _sluice_seq, "
            f"d._sluice_kind, d._sluice_key, d._sluice_hash{d_cols} FROM ("
            "SELECT CASE WHEN p.key IS NULL THEN 'added' WHEN s._sluice_key IS NULL "
            "THEN 'removed' ELSE 'changed' END AS _sluice_kind, "
            "COALESCE(s._sluice_key, p.key) AS _sluice_key, "
            f"COALESCE(s._sluice_hash, p.row_hash) AS _sluice_hash{s_cols} FROM {stage} AS s "
            f"FULL OUTER JOIN (SELECT key, row_hash FROM {self._b('retl_snapshots')} "
            "WHERE model = @model) AS p ON p.key = s._sluice_key "
            "WHERE p.key IS NULL OR s._sluice_key IS NULL OR p.row_hash <> s._sluice_hash) AS d",
            [P("model", "STRING", model)],
        )
        counts = {"added": 0, "changed": 0, "removed": 0}
        for kind, n in self._fetchall(
            f"SELECT _sluice_kind, COUNT(*) FROM {quote(changes)} GROUP BY _sluice_kind"
        ):
            counts[str(kind)] = int(n)
        staged = int(self._fetchall(f"SELECT COUNT(*) FROM {stage}")[0][0])
        counts["unchanged"] = staged - counts["added"] - counts["changed"]
        return counts

    def retl_changes(
        self, model: str, kinds: Sequence[str], columns: Sequence[str], after: int, limit: int
    ) -> list[tuple[Any, ...]]:
        from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

        if not kinds:
            return []
        changes = quote(self._retl_id("changes", model))
        cols = "".join(f", {quote(c)}" for c in columns)
        return self._fetchall(
            f"SELECT _sluice_seq, _sluice_kind, _sluice_key, _sluice_hash{cols} FROM {changes} "
            "WHERE _sluice_kind IN UNNEST(@kinds) AND _sluice_seq > @after "
            f"ORDER BY _sluice_seq LIMIT {int(limit)}",
            [
                ArrayQueryParameter("kinds", "STRING", list(kinds)),
                ScalarQueryParameter("after", "INT64", int(after)),
            ],
        )

    def retl_apply_sql(self, model: str, where: str) -> str:
        """One MERGE makes the snapshot match the chosen change-set rows, atomically:
        removed keys are deleted, added and changed ones take the new hash. Public for
        tests."""
        changes = quote(self._retl_id("changes", model))
        return (
            f"MERGE {self._b('retl_snapshots')} AS p USING (SELECT _sluice_key, _sluice_hash, "
            f"_sluice_kind FROM {changes} WHERE {where}) AS c "
            "ON p.model = @model AND p.key = c._sluice_key "
            "WHEN MATCHED AND c._sluice_kind = 'removed' THEN DELETE "
            "WHEN MATCHED THEN UPDATE SET row_hash = c._sluice_hash, "
            "synced_at = CURRENT_TIMESTAMP() "
            "WHEN NOT MATCHED AND c._sluice_kind <> 'removed' THEN INSERT "
            "(model, key, row_hash, synced_at) "
            "VALUES (@model, c._sluice_key, c._sluice_hash, CURRENT_TIMESTAMP())"
        )

    def retl_advance(self, model: str, seqs: Sequence[int]) -> None:
        from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

        for start in range(0, len(seqs), CHUNK_ROWS):
            chunk = [int(s) for s in seqs[start : start + CHUNK_ROWS]]
            self._execute(
                self.retl_apply_sql(model, "_sluice_seq IN UNNEST(@seqs)"),
                [
                    ArrayQueryParameter("seqs", "INT64", chunk),
                    ScalarQueryParameter("model", "STRING", model),
                ],
            )

    def retl_sent_ids(self, model: str, keys: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

        out: dict[str, tuple[str, str, str]] = {}
        for start in range(0, len(keys), CHUNK_ROWS):
            for key, op, row_hash, record_id in self._fetchall(
                f"SELECT key, op, row_hash, record_id FROM {self._b('retl_sent')} "
                "WHERE model = @model AND key IN UNNEST(@keys)",
                [
                    ScalarQueryParameter("model", "STRING", model),
                    ArrayQueryParameter("keys", "STRING", list(keys[start : start + CHUNK_ROWS])),
                ],
            ):
                out[str(key)] = (str(op), str(row_hash), str(record_id))
        return out

    def retl_note_sent(
        self, model: str, run_id: str, sent: Sequence[tuple[str, str, str, str]]
    ) -> None:
        if not sent:
            return
        now = datetime.now(timezone.utc).isoformat()
        self._merge_rows(
            "retl_sent",
            self._RETL_BOOKKEEPING["retl_sent"],
            ("model", "key"),
            [(model, key, op, h, rid, run_id, now) for key, op, h, rid in sent],
            mode="upsert",
        )

    def retl_baseline(self, model: str, kinds: Sequence[str]) -> int:
        from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

        if not kinds:
            return 0
        changes = quote(self._retl_id("changes", model))
        kinds_param = ArrayQueryParameter("kinds", "STRING", list(kinds))
        n = int(
            self._fetchall(
                f"SELECT COUNT(*) FROM {changes} WHERE _sluice_kind IN UNNEST(@kinds)",
                [kinds_param],
            )[0][0]
        )
        if n:
            self._execute(
                self.retl_apply_sql(model, "_sluice_kind IN UNNEST(@kinds)"),
                [kinds_param, ScalarQueryParameter("model", "STRING", model)],
            )
        return n

    def retl_drop_stage(self, model: str) -> None:
        for kind in ("changes", "stage"):
            self._drop(self._retl_id(kind, model))

    def retl_snapshot_count(self, model: str) -> int:
        from google.cloud.bigquery import ScalarQueryParameter as P

        return int(
            self._fetchall(
                f"SELECT COUNT(*) FROM {self._b('retl_snapshots')} WHERE model = @m",
                [P("m", "STRING", model)],
            )[0][0]
        )

    def retl_record_run(self, report: dict[str, Any]) -> None:
        self._record("retl_runs", "model", report, report["model"])

    def retl_recent_runs(self, model: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        from google.cloud.bigquery import ScalarQueryParameter as P

        where, params = (
            ("", []) if model is None else ("WHERE model = @m", [P("m", "STRING", model)])
        )
        rows = self._fetchall(
            f"SELECT report FROM {self._b('retl_runs')} {where} "
            f"ORDER BY started_at DESC LIMIT {int(limit)}",
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
        """Delete the keys' rows and insert `rows` (staged by a load job) in one MERGE."""
        from google.api_core import exceptions as api_exceptions
        from google.cloud.bigquery import ArrayQueryParameter

        try:
            existing = self._table_fields(schema, table)
        except api_exceptions.NotFound:
            existing = None
        if existing is None:
            self._create(schema, table, columns, partition=False)
            self._types[(schema, table)] = dict(columns)
        else:
            missing = {n: k for n, k in columns.items() if n not in existing}
            if missing:
                self.add_columns(schema, table, missing)
        names = list(columns)
        stage = self._stage(schema, table, names, rows) if rows else None
        try:
            self._execute(
                replace_keys_sql(self.table_ref(schema, table), stage and quote(stage), key, names),
                [ArrayQueryParameter("keys", "STRING", sorted({str(k) for k in keys}))],
            )
        finally:
            if stage is not None:
                self._drop(stage)
