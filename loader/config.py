"""profiles.yml: named warehouse targets, secrets as ${ENV_VAR} references.

Looked up via --profiles, $SLUICE_PROFILES, then ./profiles.yml. Errors name the file,
the line and the field, and never echo a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

M = TypeVar("M", bound=BaseModel)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """Bad configuration; the message is one sentence naming file, line and fix."""


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DuckDBTarget(_Target):
    type: Literal["duckdb"]
    path: str = "sluice.duckdb"
    # DuckDB sizes its buffer pool from the machine's RAM (80%); these bound it.
    memory_limit: str | None = None
    threads: int | None = None


class PostgresTarget(_Target):
    type: Literal["postgres"]
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: SecretStr | None = None
    dbname: str = "postgres"
    sslmode: str | None = None
    dsn: SecretStr | None = Field(default=None, description="overrides the fields above")

    def conninfo(self) -> str:
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": self.dbname,
        }
        if self.password is not None:
            parts["password"] = self.password.get_secret_value()
        if self.sslmode:
            parts["sslmode"] = self.sslmode
        return " ".join(f"{k}='{v}'" for k, v in parts.items())


class _OtherTarget(_Target):
    """Targets whose adapters live in later modules; their fields are kept as given."""

    model_config = ConfigDict(extra="allow")
    type: Literal["redshift", "bigquery", "snowflake"]


Target = Annotated[DuckDBTarget | PostgresTarget | _OtherTarget, Field(discriminator="type")]


class Profiles(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default_target: str
    targets: dict[str, Target]

    def target(self, name: str | None) -> tuple[str, Any]:
        chosen = name or self.default_target
        if chosen not in self.targets:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ConfigError(f"unknown target '{chosen}' (targets in profiles.yml: {known})")
        return chosen, self.targets[chosen]


def check_cron(value: str | None) -> str | None:
    """A pydantic validator for `schedule:` fields (5-field cron, UTC)."""
    if value is not None and len(value.split()) != 5:
        raise ValueError("schedule must be a 5-field cron expression, e.g. '0 * * * *'")
    return value


def interpolate(text: str, source: str) -> str:
    """Replace ${VAR} and ${VAR:-default}; a missing variable is an error naming the line."""

    def one(match: re.Match[str], line: int) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name, default)
        if value is None:
            raise ConfigError(
                f"{source}, line {line}: environment variable {name} is not set; "
                f"export it or give a default as ${{{name}:-value}}"
            )
        return value

    out = []
    for i, line in enumerate(text.splitlines(), 1):
        code, comment = _split_comment(line)
        out.append(_ENV.sub(lambda m, i=i: one(m, i), code) + comment)
    return "\n".join(out)


def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment): references in YAML comments are documentation, not settings."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index], line[index:]
    return line, ""


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a pydantic error location in the YAML text."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if node is None or not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if key.value == str(part):
                line = key.start_mark.line + 1
                node = value
                break
        else:
            break
    return line


def find_file(explicit: str | None, env_var: str, default: str, flag: str) -> Path:
    """The file named by the flag, else by the environment, else ./default; a name
    given explicitly must exist. A folder means the default file inside it."""
    from_env = os.environ.get(env_var)
    for candidate in (explicit, from_env, default):
        if candidate:
            path = Path(candidate)
            if path.is_dir():
                path = path / default
            if path.exists():
                return path
            if candidate is explicit or candidate == from_env:
                raise ConfigError(f"{default} file '{path}' does not exist")
    raise ConfigError(f"no {default} found: pass {flag}, set {env_var}, or run `sluice init`")


def read_model(path: Path, model: type[M], tags: Iterable[str] = (), prepare=None) -> M:
    """Interpolate, parse and validate one YAML file; the first error names the file,
    the line and the field (union tags such as a target's type are left out of it)."""
    raw = path.read_text()
    text = interpolate(raw, str(path))
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if prepare is not None:
        prepare(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        skip = set(tags)
        loc = tuple(p for p in err["loc"] if str(p) not in skip)
        line = line_of(raw, loc)
        where = f", line {line}" if line else ""
        field = ".".join(str(p) for p in loc)
        raise ConfigError(f"{path}{where}: field '{field}': {err['msg']}") from None


def find_profiles(explicit: str | None) -> Path:
    return find_file(explicit, "SLUICE_PROFILES", "profiles.yml", "--profiles")


def load_profiles(path: Path) -> Profiles:
    return read_model(path, Profiles, tags=("duckdb", "postgres", "_OtherTarget"))
