"""sluice.yml: the sources a project syncs, where their archives are, when, and into which
targets; plus where profiles.yml and selective_sync.yml live.

Paths in the file are relative to the file itself, so a project folder can be moved or
checked out anywhere. Errors name the file, the line and the field.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from loader.config import (
    ConfigError,
    Profiles,
    check_cron,
    find_file,
    find_profiles,
    load_profiles,
    read_model,
)
from loader.naming import snake_case
from loader.selective_sync import SelectiveSync
from loader.selective_sync import load_file as load_selective_sync

PROJECT_FILE = "sluice.yml"


class _Source(BaseModel):
    """What every source has: where it lands, when it runs, what monitoring expects."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_name: str | None = Field(default=None, alias="schema")
    schedule: str | None = Field(default=None, description="cron, in UTC")
    targets: list[str] = Field(default_factory=list)
    batch_lines: int | None = None
    start_date: date = Field(
        default=date(2025, 1, 1), description="first received day (Dagster's daily partitions)"
    )
    freshness_hours: float = Field(
        default=48.0, description="received_at older than this fails the freshness check"
    )
    max_reject_rate: float = Field(
        default=0.01, description="rejected lines / lines read above this fails the check"
    )

    _cron = field_validator("schedule")(check_cron)


class EventSource(_Source):
    """An archive of Segment messages (Segment's S3 log layout or plain NDJSON)."""

    kind: Literal["events"] = "events"
    archive: str = Field(description="a folder, a file, or an s3:// / gs:// prefix")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    readers: int | None = Field(
        default=None, ge=0, description="reader processes (default: one per core; 0: none)"
    )


class _ObjectSource(_Source):
    collections: list[str] | None = Field(default=None, description="default: all")


class _ApiSource(_ObjectSource):
    """A SaaS API: how long one request and one whole sync may take (a stalled or
    dripping server ends the sync with a sentence; what was committed stands)."""

    request_timeout_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="one request, its retries included"
    )
    sync_budget_seconds: float = Field(
        default=14_400.0, gt=0, le=7 * 86_400, description="one sync of the source"
    )


class StripeSource(_ApiSource):
    kind: Literal["stripe"]
    api_key: SecretStr
    base_url: str = "https://api.stripe.com"


class ZendeskSource(_ApiSource):
    kind: Literal["zendesk"]
    url: str = Field(description="https://<subdomain>.zendesk.com")
    email: str
    api_token: SecretStr


class SalesforceSource(_ApiSource):
    kind: Literal["salesforce"]
    instance_url: str
    access_token: SecretStr
    fields: dict[str, list[str]] = Field(default_factory=dict)


class ObjectArchiveSource(_ObjectSource):
    kind: Literal["objects"]
    archive: str = Field(description="folder or prefix holding <collection>/*.ndjson")
    storage_options: dict[str, Any] = Field(default_factory=dict)


Source = Annotated[
    EventSource | StripeSource | ZendeskSource | SalesforceSource | ObjectArchiveSource,
    Field(discriminator="kind"),
]


class Project(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    profiles: str | None = None
    selective_sync: str | None = None
    sources: dict[str, Source] = Field(default_factory=dict)
    models: str | None = Field(default=None, description="folder of reverse-ETL models")
    models_target: str | None = Field(
        default=None, description="target the models run in (default_target if unset)"
    )

    # Set by load_project: where the file is, for relative paths.
    root: Path = Field(default=Path("."), exclude=True)
    path: Path = Field(default=Path(PROJECT_FILE), exclude=True)

    def source(self, name: str) -> Any:
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(f"{self.path}: unknown source '{name}' (sources: {known})")
        return self.sources[name]

    def schema_of(self, name: str) -> str:
        return snake_case(self.source(name).schema_name or name)

    def is_archive(self, name: str) -> bool:
        return isinstance(self.source(name), EventSource)

    def event_sources(self) -> list[str]:
        return [n for n in self.sources if self.is_archive(n)]

    def archive_url(self, name: str) -> str:
        url = self.source(name).archive
        if "://" in url or os.path.isabs(url):
            return url
        return str(self.root / url)

    def profiles_path(self, explicit: str | None = None) -> Path:
        if explicit is None and self.profiles is not None:
            path = self.root / self.profiles
            if not path.exists():
                raise ConfigError(f"{self.path}: profiles file '{path}' does not exist")
            return path
        return find_profiles(explicit)

    def load_profiles(self, explicit: str | None = None) -> Profiles:
        return load_profiles(self.profiles_path(explicit))

    def targets_of(self, name: str, profiles: Profiles) -> list[str]:
        return self.source(name).targets or [profiles.default_target]

    def models_dir(self) -> Path | None:
        return None if self.models is None else self.root / self.models

    def selective_sync_path(self) -> Path | None:
        return None if self.selective_sync is None else self.root / self.selective_sync

    def load_selective_sync(self) -> SelectiveSync:
        path = self.selective_sync_path()
        if path is None:
            return SelectiveSync()
        if not path.exists():
            raise ConfigError(f"{self.path}: selective_sync file '{path}' does not exist")
        return load_selective_sync(path)


def find_project(explicit: str | None) -> Path:
    return find_file(explicit, "SLUICE_PROJECT", PROJECT_FILE, "--project")


def _default_kind(data: dict[str, Any]) -> None:
    for source in (data.get("sources") or {}).values():
        if isinstance(source, dict):
            source.setdefault("kind", "events")


def load_project(path: Path) -> Project:
    kinds = ("events", "stripe", "zendesk", "salesforce", "objects")
    project = read_model(path, Project, tags=kinds, prepare=_default_kind)
    project.root = path.parent
    project.path = path
    return project
