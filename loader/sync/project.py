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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from loader.config.errors import ConfigError
from loader.config.profiles import (
    Document,
    Profiles,
    check_cron,
    check_keys,
    defer_secrets,
    find_file,
    find_profiles,
    load_profiles,
    parse_document,
    substitute,
    validate_model,
)
from loader.config.suggest import did_you_mean
from loader.rules.naming import snake_case
from loader.rules.selective_sync import SelectiveSync
from loader.rules.selective_sync import load_file as load_selective_sync
from loader.rules.tracking_plan import TrackingPlan
from loader.rules.tracking_plan import load_file as load_tracking_plan

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
    tracking_plan: str | None = Field(
        default=None, description="tracking_plan.yml of this source, relative to sluice.yml"
    )
    violations: Literal["report", "omit", "block"] | None = Field(
        default=None, description="what a plan violation does (overrides the plan file's)"
    )
    conformance_threshold: float = Field(
        default=0.05, ge=0, le=1, description="violating events / events above this warns"
    )
    staging: str | None = Field(
        default=None,
        description=(
            "where backfills stage partitions: a folder or an s3:// / gs:// prefix "
            "(default: .sluice/staging beside sluice.yml)"
        ),
    )
    mode: Literal["python", "native"] = Field(
        default="python",
        description=(
            "native: the warehouse reads the archive's lines and runs the rules as SQL "
            "(DuckDB targets); python: Sluice's readers do"
        ),
    )

    @model_validator(mode="after")
    def _native_without_plan(self) -> EventSource:
        if self.mode == "native" and self.tracking_plan is not None:
            raise ValueError(
                "mode: native does not check tracking plans yet; remove `tracking_plan:` "
                "or use mode: python"
            )
        return self


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
    _document: Document | None = PrivateAttr(default=None)

    def where(self, *loc: str) -> str:
        """'sluice.yml, line N' of a value, for messages about what the file says."""
        return self._document.where(loc) if self._document is not None else str(self.path)

    def source(self, name: str) -> Any:
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(f"{self.path}: unknown source '{name}' (sources: {known})")
        return self.sources[name]

    def schema_of(self, name: str) -> str:
        return snake_case(self.source(name).schema_name or name)

    def check_secrets(self, name: str) -> None:
        """Read the source's ${VAR} secrets now: a command about to run it fails with the
        unset variable's file and line before it opens anything."""
        source = self.source(name)
        for key in type(source).model_fields:
            value = getattr(source, key)
            if isinstance(value, SecretStr):
                value.get_secret_value()

    def is_archive(self, name: str) -> bool:
        return isinstance(self.source(name), EventSource)

    def event_sources(self) -> list[str]:
        return [n for n in self.sources if self.is_archive(n)]

    def archive_url(self, name: str) -> str:
        """The source's archive; a local one must exist (the error names its absolute
        path and the line of sluice.yml that points at it)."""
        url = self.source(name).archive
        if "://" in url:
            return url
        local = Path(url).expanduser()
        path = local if local.is_absolute() else self.root / local
        if not path.exists():
            raise ConfigError(
                f"{self.where('sources', name, 'archive')}: the archive of source '{name}', "
                f"{path.absolute()}, does not exist; fix 'archive:' or create the folder"
            )
        return str(path)

    def staging_url(self, name: str) -> str:
        """Where the source's backfills stage partitions (sluice.yml `staging:`)."""
        url = self.source(name).staging or ".sluice/staging"
        if "://" in url:
            return url
        local = Path(url).expanduser()
        return str(local if local.is_absolute() else self.root / local)

    def profiles_path(self, explicit: str | None = None) -> Path:
        if explicit is None and self.profiles is not None:
            path = self.root / self.profiles
            if not path.exists():
                raise ConfigError(f"{self.path}: profiles file '{path}' does not exist")
            return path
        beside = self.root / "profiles.yml"
        if explicit is None and "SLUICE_PROFILES" not in os.environ and beside.exists():
            return beside  # a project folder run from elsewhere uses its own profiles
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

    def tracking_plan_path(self, name: str) -> Path | None:
        source = self.source(name)
        plan = getattr(source, "tracking_plan", None)
        return None if plan is None else self.root / plan

    def load_tracking_plan(self, name: str) -> TrackingPlan | None:
        """The source's plan (its sluice.yml `violations:` overriding the file's), or None
        when it has none; a missing file names the line of sluice.yml that points at it."""
        path = self.tracking_plan_path(name)
        if path is None:
            return None
        if not path.exists():
            raise ConfigError(
                f"{self.where('sources', name, 'tracking_plan')}: the tracking plan of source "
                f"'{name}', {path.absolute()}, does not exist; fix 'tracking_plan:' or "
                "create it (`sluice plan infer` writes a starting one)"
            )
        return load_tracking_plan(path).with_action(self.source(name).violations)


def find_project(explicit: str | None) -> Path:
    return find_file(explicit, "SLUICE_PROJECT", PROJECT_FILE, "--project")


SOURCE_KINDS: dict[str, type[_Source]] = {
    "events": EventSource,
    "stripe": StripeSource,
    "zendesk": ZendeskSource,
    "salesforce": SalesforceSource,
    "objects": ObjectArchiveSource,
}


def load_project(path: Path) -> Project:
    """Parse, substitute ${VAR} into the parsed values, validate source by source; the
    first problem is one sentence naming the file, the line and the field."""
    doc = parse_document(path)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'sources:' (see `sluice init`)")
    check_keys(data, Project, doc, (), "the top level")
    raw_sources = data.get("sources")
    if raw_sources is None:
        raw_sources = {}
    if not isinstance(raw_sources, dict):
        raise ConfigError(
            f"{doc.where(('sources',))}: 'sources' must be a mapping of source names to "
            "their settings"
        )
    data = {k: v if k == "sources" else substitute(v, doc, (k,)) for k, v in data.items()}
    sources: dict[str, Any] = {}
    for name, body in raw_sources.items():
        loc = ("sources", name)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{doc.where(loc)}: source '{name}' must be a mapping")
        kind = body.get("kind", "events")
        if kind not in SOURCE_KINDS:
            kinds = list(SOURCE_KINDS)
            raise ConfigError(
                f"{doc.where((*loc, 'kind'))}: field 'sources.{name}.kind' must be one of "
                f"{', '.join(kinds)}, not {str(kind)!r}{did_you_mean(str(kind), kinds)}"
            )
        model = SOURCE_KINDS[kind]
        body = dict(body)
        defer_secrets(body, model, doc, loc)  # read when the source runs, not before
        body = substitute(body, doc, loc)
        sources[name] = validate_model(model, {**body, "kind": kind}, doc, loc, f"source '{name}'")
    project = validate_model(Project, {**data, "sources": sources}, doc, (), "the top level")
    assert project is not None
    project.root = path.parent
    project.path = path
    project._document = doc
    return project
