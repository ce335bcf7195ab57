"""Talking to BigQuery's API: the target's settings, credentials, one bounded retry
policy and one sentence per failure (with secrets scrubbed).

Apart from the SQL driver (bigquery.py) because none of it is SQL: every API call the
driver makes (query and load jobs, datasets, tables) goes through `BigQueryApi.call`.

Errors: every call goes through one bounded retry policy (`retries` attempts, with
exponential backoff and jitter) for transient failures: HTTP 429/500/502/503/504,
`rateLimitExceeded`/`backendError` reasons, connection resets. Anything else becomes one
WarehouseError sentence naming the target and what to fix (endpoint, credentials,
grants, project/location).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from loader.config.targets import BigQueryTarget
from loader.scrub import Scrubber
from loader.warehouses.base import T, WarehouseError, first_line, retried
from loader.warehouses.dialect import rename_params

if TYPE_CHECKING:
    from google.cloud import bigquery

# Job-level failure reasons worth re-running a job for; HTTP-level ones are by status.
_TRANSIENT_REASONS = set(
    "backendError internalError rateLimitExceeded jobRateLimitExceeded jobBackendError "
    "jobInternalError badGateway".split()
)
# Python value -> query parameter type (bool before int: a bool is an int).
_PARAM_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "BOOL"),
    (int, "INT64"),
    (float, "FLOAT64"),
    (datetime, "TIMESTAMP"),
    (date, "DATE"),
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

    network = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    if isinstance(exc, (ConnectionError, *network, auth_exceptions.TransportError)):
        return True
    if _status(exc) in (429, 500, 502, 503, 504):
        return True
    return _reason(exc) in _TRANSIENT_REASONS


class BigQueryApi:
    """A google-cloud-bigquery client for one target, and how its failures read."""

    def __init__(
        self, target_name: str, target: BigQueryTarget, client: bigquery.Client | None = None
    ) -> None:
        self.target_name = target_name
        self.target = target
        self._scrub = Scrubber()
        self.client = client if client is not None else self._make_client()
        try:
            # A cheap call that proves endpoint, credentials and project before any work.
            self.call(lambda: list(self.client.list_datasets(max_results=1, **self.kw())))
        except WarehouseError:
            raise
        except Exception as exc:  # noqa: BLE001 - every connect failure becomes one sentence
            raise WarehouseError(self._message(exc, connecting=True)) from None

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
            self._scrub.add(raw)
            try:
                info = json.loads(raw)
                if isinstance(info, dict) and info.get("private_key"):
                    self._scrub.add(str(info["private_key"]))
                    for line in str(info["private_key"]).splitlines():
                        if len(line) > 16:
                            self._scrub.add(line)
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
        return first_line(text, self._scrub) or type(exc).__name__

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

    def policy(self) -> Any:
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

    def kw(self) -> dict[str, Any]:
        return {"retry": self.policy(), "timeout": float(self.target.job_timeout_seconds)}

    def call(self, fn: Callable[[], T]) -> T:
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
            import requests
            from google.auth import exceptions as auth_exceptions

            failures = (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError)
            if isinstance(exc, (*failures, requests.RequestException)):
                raise WarehouseError(self._message(exc)) from None
            raise

    def job(self, sql: str, params: Sequence[Any] = (), not_found_ok: bool = False) -> Any:
        """Run one query job to completion; returns the finished job (rows via result)."""
        from google.api_core import exceptions as api_exceptions
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=list(params))

        def run() -> Any:
            job = self.client.query(
                sql, job_config=config, job_id_prefix="sluice_", location=self.target.location,
                job_retry=self.policy(), **self.kw(),
            )  # fmt: skip
            job.result(job_retry=self.policy(), **self.kw())
            return job

        try:
            return self.call(run)
        except api_exceptions.NotFound as exc:
            if not_found_ok:
                raise
            raise WarehouseError(self._message(exc)) from None

    def rows(self, job: Any) -> list[tuple[Any, ...]]:
        return [tuple(r.values()) for r in self.call(lambda: list(job.result(retry=self.policy())))]

    def attempts(self, fn: Callable[[], T]) -> T:
        """Re-run a whole idempotent job (a load into a truncated staging table) when the
        job itself failed for a transient reason; HTTP calls have their own policy."""
        return retried(fn, self.target.retries, is_transient, first_wait=0.2)


def _kind(value: Any) -> str:
    for python, sql in _PARAM_TYPES:
        if isinstance(value, python):
            return sql
    return "STRING"


def bind(sql: str, params: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """pyformat (`%(name)s`, as statements.py writes) -> BigQuery's `@name`, each bound as
    a typed query parameter (a list as an ARRAY of its items' type)."""
    from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter

    if not params:
        return sql, []
    bound: dict[str, Any] = {}

    def one(name: str) -> str:
        value = params[name]
        if isinstance(value, (list, tuple)):
            first = next((v for v in value if v is not None), "")
            bound[name] = ArrayQueryParameter(name, _kind(first), list(value))
        else:
            bound[name] = ScalarQueryParameter(name, _kind(value), value)
        return f"@{name}"

    return rename_params(sql, one), list(bound.values())
