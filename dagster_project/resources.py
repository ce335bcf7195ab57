"""One Dagster resource per warehouse target of profiles.yml.

Secrets written as `${VAR}` in profiles.yml become `dg.EnvVar("VAR")`, so Dagster
resolves them at run time and shows only the variable's name, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import TypeAdapter

from loader.config import ConfigError, Target, interpolate
from loader.naming import snake_case
from loader.warehouses.base import Warehouse
from loader.warehouses.registry import open_warehouse

SECRET_FIELDS = ("password", "dsn", "token", "private_key", "private_key_passphrase")
_WHOLE_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$")
_TARGET = TypeAdapter(Target)


class WarehouseResource(dg.ConfigurableResource):
    """A warehouse target; `open()` gives the loader's adapter for it."""

    target: str
    type: str
    settings: dict[str, str] = {}
    password: str | None = None
    dsn: str | None = None
    token: str | None = None
    private_key: str | None = None
    private_key_passphrase: str | None = None

    def spec(self) -> Any:
        fields: dict[str, Any] = {"type": self.type, **self.settings}
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return _TARGET.validate_python(fields)

    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        warehouse = open_warehouse(self.target, self.spec())
        try:
            yield warehouse
        finally:
            warehouse.close()


def resource_key(target: str) -> str:
    return f"warehouse_{snake_case(target)}"


def _secret(value: Any, source: str) -> Any:
    """`${VAR}` -> EnvVar; `${VAR:-default}` -> EnvVar when VAR is set, else the default
    (written in the file, so not a secret); anything else as written."""
    import os

    if not isinstance(value, str):
        return value
    match = _WHOLE_REF.match(value.strip())
    if match is None:
        return interpolate(value, source)
    name, default = match.groups()
    if default is not None and name not in os.environ:
        return default or None
    return dg.EnvVar(name)


def warehouse_resources(profiles_path: Path) -> dict[str, WarehouseResource]:
    """{resource key: resource} for every target in profiles.yml."""
    raw = yaml.safe_load(profiles_path.read_text()) or {}
    targets = raw.get("targets") or {}
    if not isinstance(targets, dict):
        raise ConfigError(f"{profiles_path}: 'targets' must be a mapping")
    out = {}
    for name, fields in targets.items():
        fields = dict(fields or {})
        kind = str(fields.pop("type", ""))
        secrets = {
            k: _secret(fields.pop(k), str(profiles_path)) for k in SECRET_FIELDS if k in fields
        }
        settings = {
            k: str(interpolate(str(v), str(profiles_path)))
            for k, v in fields.items()
            if v is not None
        }
        out[resource_key(name)] = WarehouseResource(
            target=name, type=kind, settings=settings, **{k: v for k, v in secrets.items() if v}
        )
    return out
