"""The targets of profiles.yml, one settings model per warehouse type, in one place.

A model holds what the user writes and what follows from it alone (a connection string,
the fsspec options of a staging bucket, the values never to print); what the driver
does with it (connect, COPY credentials as SQL) stays in its adapter. Models import no
driver at module level, so every target validates where its driver is not installed and
opening it names the pip extra to install (warehouses/registry.py).
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from loader.config.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
DEFAULT_DUCKDB_MEMORY_LIMIT = "1GB"
# Redshift's widest varchar, in bytes.
REDSHIFT_MAX_VARCHAR = 65535
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9\-.:]{4,61}[a-z0-9]$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9_]*$")


# --- targets --------------------------------------------------------------------------


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DuckDBTarget(_Target):
    type: Literal["duckdb"]
    path: str = Field(
        default="sluice.duckdb", description="database file, relative to profiles.yml"
    )
    # DuckDB would size its buffer pool from the machine's RAM (80%) and let its cache of
    # table blocks grow with the archive; a load needs far less (DuckDB spills to disk
    # past the limit). null gives DuckDB's own default back.
    memory_limit: str | None = Field(
        default=DEFAULT_DUCKDB_MEMORY_LIMIT, description="DuckDB's buffer pool, e.g. 512MB, 4GB"
    )
    threads: int | None = Field(default=None, ge=1)


class PostgresTarget(_Target):
    # host, user and dbname are required unless a dsn is given (see REQUIRED_UNLESS_DSN):
    # libpq's defaults would otherwise load into the server's `postgres` database.
    type: Literal["postgres"]
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    password: SecretStr | None = None
    dbname: str | None = None
    sslmode: str | None = None
    dsn: SecretStr | None = Field(
        default=None, description="a libpq connection string; fields given beside it win"
    )

    @field_validator("dsn")
    @classmethod
    def _parsable_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_dsn(value)

    def conninfo(self) -> str:
        """The libpq connection string, every value quoted by psycopg (a password holding
        `'` or `port=` stays a password)."""
        import psycopg

        params: dict[str, Any] = {
            key: getattr(self, key)
            for key in ("host", "port", "user", "dbname", "sslmode")
            if getattr(self, key) is not None
        }
        if self.password is not None:
            params["password"] = self.password.get_secret_value()
        dsn = self.dsn.get_secret_value() if self.dsn is not None else ""
        return psycopg.conninfo.make_conninfo(dsn, **params)


def _check_dsn(value: SecretStr | None) -> SecretStr | None:
    """A dsn libpq cannot parse is named now, without quoting it (it holds the password)."""
    if value is None:
        return value
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the driver's absence is reported at open
        return value
    try:
        psycopg.conninfo.conninfo_to_dict(value.get_secret_value())
    except psycopg.Error:
        raise ValueError(
            "not a libpq connection string (key=value pairs or a postgresql:// URL; "
            "quote values with spaces or quotes as 'it''s', or give the fields instead)"
        ) from None
    return value


class ClickHouseTarget(_Target):
    """Embedded (chdb: `path`, a folder one process uses at a time) or a server
    (clickhouse-connect over HTTP: `host`...); exactly one of the two."""

    type: Literal["clickhouse"]
    path: str | None = Field(
        default=None, description="embedded: data folder, relative to profiles.yml"
    )
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str = "default"
    password: SecretStr | None = None
    database: str = Field(default="default", description="the connection's default database")
    secure: bool = False
    connect_timeout: int = Field(default=10, ge=1)
    # A server has no lock primitive: a claim row living this long (longer than any sync),
    # read back after lock_settle_seconds (longer than an insert takes to be visible).
    lock_lease_minutes: int = Field(default=360, ge=1)
    lock_settle_seconds: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _embedded_or_server(self) -> ClickHouseTarget:
        if (self.path is None) == (self.host is None):
            raise ValueError("give either path (embedded ClickHouse) or host (a server), not both")
        return self


class _OtherTarget(_Target):
    """A target's fields as given, validated by its model only when it is opened
    (adapter_target), for code that builds a target by hand."""

    model_config = ConfigDict(extra="allow")
    type: Literal["redshift", "bigquery", "snowflake"]


TARGET_TYPES = ("duckdb", "postgres", "redshift", "bigquery", "snowflake", "clickhouse")
# Fields without which a connection silently goes to the driver's defaults.
REQUIRED_UNLESS_DSN: dict[str, tuple[str, ...]] = {
    "postgres": ("host", "user", "dbname"),
    "redshift": ("host", "user", "dbname"),
}
# Fields naming local files: relative to the profiles file.
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "duckdb": ("path",),
    "clickhouse": ("path",),
    "bigquery": ("keyfile",),
    "snowflake": ("private_key_path",),
}
TARGET_MODELS: dict[str, type[BaseModel]] = {}  # filled below, once every model exists


def target_model(kind: str) -> type[BaseModel]:
    """The settings model of a target type."""
    return TARGET_MODELS[kind]


def adapter_target(model: type[M], name: str, target: Any) -> M:
    """A loosely typed profiles.yml target (secrets unwrapped) validated by its adapter's
    own settings model; the first problem as one ConfigError naming the field."""
    data = target.model_dump() if isinstance(target, BaseModel) else dict(target)
    for key, value in list(data.items()):
        if isinstance(value, SecretStr):
            data[key] = value.get_secret_value()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        where = f"field '{field}': " if field else ""  # a rule over several fields
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"profiles.yml: target '{name}': {where}{msg}") from None


class SnowflakeTarget(_Target):
    """The typed fields of a `type: snowflake` target in profiles.yml."""

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
        return adapter_target(cls, name, target)


class RedshiftTarget(_Target):
    """The typed fields of a `type: redshift` target in profiles.yml."""

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
    varchar_bytes: int = Field(default=REDSHIFT_MAX_VARCHAR, ge=64, le=REDSHIFT_MAX_VARCHAR)
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
        return adapter_target(cls, name, target)

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
        import psycopg

        return psycopg.conninfo.make_conninfo(**parts)

    def _dsn_info(self) -> dict[str, Any]:
        """The dsn's parts, or none when it does not parse (libpq says why at connect)."""
        if self.dsn is None:
            return {}
        import psycopg

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


class BigQueryTarget(_Target):
    """The typed fields of a `type: bigquery` target in profiles.yml."""

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
        return adapter_target(cls, name, target)

    def dataset(self, schema: str) -> str:
        return f"{self.dataset_prefix}{schema}"


TARGET_MODELS.update(
    duckdb=DuckDBTarget,
    postgres=PostgresTarget,
    redshift=RedshiftTarget,
    bigquery=BigQueryTarget,
    snowflake=SnowflakeTarget,
    clickhouse=ClickHouseTarget,
)
