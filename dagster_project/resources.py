"""One Dagster resource per warehouse target of profiles.yml.

A resource's config is the target's name, its type and the profiles file: no setting and
no secret is copied into it, so the UI shows nothing secret. The target is resolved (its
`${VAR}` references read from the run's environment, its fields validated) when a run
opens it, so a code location loads even when one target is broken; that target's runs
fail with the one-sentence config error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from loader.config.errors import ConfigError
from loader.config.profiles import Profiles, load_profiles
from loader.rules.naming import snake_case
from loader.warehouses.registry import open_warehouse
from loader.warehouses.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """A warehouse target of profiles.yml; `open()` gives the loader's adapter for it."""

    target: str
    type: str
    profiles: str

    def spec(self) -> Any:
        """The target as profiles.yml says now, resolved in this (the run's) environment."""
        try:
            return load_profiles(Path(self.profiles)).target(self.target)[1]
        except ConfigError as exc:
            raise dg.Failure(
                description=f"target '{self.target}' cannot be used: {exc}", allow_retries=False
            ) from None

    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        warehouse = open_warehouse(self.target, self.spec())
        try:
            yield warehouse
        finally:
            warehouse.close()


def resource_key(target: str) -> str:
    return f"warehouse_{snake_case(target)}"


def target_problem(profiles: Profiles, target: str) -> str | None:
    """Why a target's runs cannot work, found at load time without reading a secret: a
    config mistake, or variables unset where the code location loaded."""
    problem, unset = profiles.check(target)
    if problem is not None:
        return problem
    if unset:
        return (
            f"environment variable(s) {', '.join(unset)} of target '{target}' are not set "
            "where the code location loaded; runs need them"
        )
    return None


def warehouse_resources(profiles_path: Path) -> dict[str, WarehouseResource]:
    """{resource key: resource} for every target in profiles.yml."""
    profiles = load_profiles(profiles_path)
    where = str(profiles_path.absolute())
    return {
        resource_key(name): WarehouseResource(target=name, type=profiles.kind(name), profiles=where)
        for name in profiles.targets
    }
