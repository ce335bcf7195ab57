"""A reverse-ETL model: ``<name>.sql`` (one SELECT) plus ``<name>.yml`` (key, sync mode,
schedule, destination, column mapping).

Everything a user can get wrong in these files is reported here, before the warehouse
is touched, as one sentence naming the file and line; what needs the warehouse (does
the key column exist?) is checked by the runner with the same line-precise messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loader.config.errors import ConfigError
from loader.config.profiles import check_cron, line_of, parse_document, substitute
from loader.reverse_etl.destinations import (
    KNOWN_TYPES,
    Destination,
    DestinationConfig,
    destination_class,
)

DEFAULT_MODELS_DIR = "sql/models"
DEFAULT_SCHEMA = "javascript_production"
MODES = ("upsert", "insert", "update", "mirror")

# Which kinds of change each mode sends, and which it records without sending: in
# `update` mode a new row is a baseline, so that its later changes are sent as updates.
SEND_KINDS: dict[str, tuple[str, ...]] = {
    "upsert": ("added", "changed"),
    "insert": ("added",),
    "update": ("changed",),
    "mirror": ("added", "changed", "removed"),
}
BASELINE_KINDS: dict[str, tuple[str, ...]] = {"update": ("added",)}

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
RESERVED_PREFIX = "_sluice_"


class ModelError(ConfigError):
    """A model file is wrong; the message names the file, the line and the fix."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    description: str | None = None
    key: str = Field(description="column whose value identifies a row (unique, not NULL)")
    mode: Literal["upsert", "insert", "update", "mirror"] = "upsert"
    schedule: str | None = Field(default=None, description="cron, in UTC")
    schema_name: str = Field(default=DEFAULT_SCHEMA, alias="schema")
    mapping: dict[str, str] | None = Field(default=None, description="column -> field")
    destination: dict[str, Any]

    _cron = field_validator("schedule")(check_cron)

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError("schema must be a plain name (letters, digits, _)")
        return value


@dataclass
class Model:
    name: str
    sql: str
    spec: ModelSpec
    destination: DestinationConfig
    destination_class: type[Destination]
    sql_path: Path
    yml_path: Path
    yml_text: str

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def send_kinds(self) -> tuple[str, ...]:
        return SEND_KINDS[self.mode]

    @property
    def baseline_kinds(self) -> tuple[str, ...]:
        return BASELINE_KINDS.get(self.mode, ())

    def op(self, kind: str) -> str:
        """What a record of this kind asks the destination to do."""
        if kind == "removed":
            return "delete"
        return "upsert" if self.mode == "mirror" else self.mode

    def where(self, *loc: Any) -> str:
        """`file, line N` of a YAML field (the file alone if the field is not there)."""
        line = line_of(self.yml_text, loc) if loc else None
        return f"{self.yml_path}, line {line}" if line else str(self.yml_path)

    def fields(self, columns: Sequence[str]) -> dict[str, str]:
        """column -> destination field for what is sent; the key is always included."""
        mapping = self.spec.mapping
        if mapping is None:
            return {c: c for c in columns}
        out = {} if self.key in mapping else {self.key: self.key}
        out.update(mapping)
        return out

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise ModelError if the SQL's columns do not fit the YAML."""
        known = ", ".join(columns)
        reserved = [c for c in columns if c.startswith(RESERVED_PREFIX)]
        if reserved:
            raise ModelError(
                f"{self.sql_path}: column '{reserved[0]}' uses the reserved prefix "
                f"'{RESERVED_PREFIX}'; rename it"
            )
        if self.key not in columns:
            raise ModelError(
                f"{self.where('key')}: key column '{self.key}' is not among the columns "
                f"the SQL returns ({known})"
            )
        for column in self.spec.mapping or {}:
            if column not in columns:
                raise ModelError(
                    f"{self.where('mapping', column)}: mapped column '{column}' is not among "
                    f"the columns the SQL returns ({known})"
                )
        fields = self.fields(columns)
        problem = self.destination_class.check_fields(
            self.destination, list(fields.values()), fields[self.key]
        )
        if problem:
            raise ModelError(f"{self.where('destination')}: {problem}")


def list_models(models_dir: Path) -> list[str]:
    return sorted(p.stem for p in models_dir.glob("*.yml") if p.with_suffix(".sql").exists())


def load_model(models_dir: Path, name: str, schema: str | None = None) -> Model:
    """Parse and check `<models_dir>/<name>.{sql,yml}`; `schema` overrides `schema:`."""
    if not _NAME.match(name):
        raise ModelError(
            f"'{name}' is not a model name: use lower-case letters, digits and _ "
            "(at most 40, starting with a letter)"
        )
    sql_path, yml_path = models_dir / f"{name}.sql", models_dir / f"{name}.yml"
    if not yml_path.exists() or not sql_path.exists():
        missing = yml_path if not yml_path.exists() else sql_path
        known = ", ".join(list_models(models_dir)) or "none"
        raise ModelError(
            f"model '{name}' not found: {missing} does not exist (models in {models_dir}: {known})"
        )
    raw = yml_path.read_text()
    spec = _parse_spec(raw, yml_path)
    if schema is not None:
        if not _IDENTIFIER.match(schema):
            raise ModelError(f"schema '{schema}' must be a plain name (letters, digits, _)")
        spec.schema_name = schema
    dest_config, dest_class = _parse_destination(spec, raw, yml_path)
    if spec.mode == "mirror" and not dest_class.supports_delete:
        line = line_of(raw, ("mode",))
        raise ModelError(
            f"{yml_path}, line {line}: the {dest_config.type} destination cannot delete, so "
            "mode 'mirror' is not possible; use upsert, insert or update"
        )
    if spec.mapping is not None:
        seen: dict[str, str] = {}
        for column, field in spec.mapping.items():
            if field in seen:
                raise ModelError(
                    f"{yml_path}, line {line_of(raw, ('mapping', column))}: field '{field}' is "
                    f"mapped twice (from '{seen[field]}' and '{column}')"
                )
            seen[field] = column
    sql = render_sql(sql_path.read_text(), sql_path, {"schema": spec.schema_name})
    return Model(name, sql, spec, dest_config, dest_class, sql_path, yml_path, raw)


def render_sql(text: str, path: Path, variables: dict[str, str]) -> str:
    """Replace ``{{ name }}`` placeholders; an unknown one is an error naming its line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):

        def one(match: re.Match[str], number: int = number) -> str:
            name = match.group(1)
            if name not in variables:
                known = ", ".join("{{ " + v + " }}" for v in variables)
                raise ModelError(
                    f"{path}, line {number}: unknown placeholder '{match.group(0)}' "
                    f"(known: {known})"
                )
            return variables[name]

        out.append(_PLACEHOLDER.sub(one, line))
    sql = "\n".join(out).strip()
    while sql.endswith(";"):
        sql = sql[:-1].rstrip()
    if not sql:
        raise ModelError(f"{path}: the model's SQL is empty; write one SELECT statement")
    return sql


def _parse_spec(raw: str, path: Path) -> ModelSpec:
    """Parsed first, then ${VAR} substituted into string values (as profiles.yml is): a
    secret's characters (`: `, ` #`, quotes, a leading `{`) never change the file's
    structure, and a YAML error never quotes a line holding a secret."""
    try:
        doc = parse_document(path, raw)
        data = substitute(doc.data, doc, ())
    except ModelError:
        raise
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a mapping with key, mode, destination, ...")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, raw, path, ()) from None


def _parse_destination(
    spec: ModelSpec, raw: str, path: Path
) -> tuple[DestinationConfig, type[Destination]]:
    kind = spec.destination.get("type")
    if kind not in KNOWN_TYPES:
        line = line_of(raw, ("destination", "type")) or line_of(raw, ("destination",))
        raise ModelError(
            f"{path}, line {line}: destination type {kind!r} is not one of {', '.join(KNOWN_TYPES)}"
        )
    cls = destination_class(str(kind))
    try:
        return cls.config_class.model_validate(spec.destination), cls
    except ValidationError as exc:
        raise _validation_error(exc, raw, path, ("destination",)) from None


def _validation_error(
    exc: ValidationError, raw: str, path: Path, prefix: tuple[str, ...]
) -> ModelError:
    err = exc.errors()[0]
    loc = prefix + tuple(str(p) for p in err["loc"])
    line = line_of(raw, loc) or line_of(raw, loc[:-1]) or (line_of(raw, prefix) if prefix else None)
    where = f", line {line}" if line else ""
    field = ".".join(loc)
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ModelError(f"{path}{where}: field '{field}': {msg}")
