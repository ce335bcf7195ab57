"""Schedules (each source's cron) and sensors (new archive files; loads made outside
Dagster) for the sync jobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

import dagster as dg

from dagster_project.assets import op_name
from dagster_project.resources import WarehouseResource, resource_key
from loader.sources.archive import ArchiveFile, list_files, received_day
from loader.sync.pipeline import ledger_exists, loaded_files_of, pending_files
from loader.sync.project import Project
from loader.warehouses.base import LockBusy
from loader.warehouses.warehouse import Warehouse

T = TypeVar("T")


def sync_job(
    assets_def: dg.AssetsDefinition, source: str, target: str
) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=job_name(source, target),
        selection=dg.AssetSelection.assets(assets_def),
        tags={"sluice/source": source, "sluice/target": target},
    )


def job_name(source: str, target: str) -> str:
    return f"{op_name(source, target)}__job"


def _partition_keys(project: Project, source: str, days: list[date]) -> list[str]:
    start = project.source(source).start_date
    return sorted({d.isoformat() for d in days if d >= start})


def build_schedule(
    project: Project, source: str, target: str, job: dg.UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition | None:
    """At each tick, yesterday's and today's partitions: files that arrived late for
    yesterday load too. Each run loads only pending files, so ticks are cheap."""
    cron = project.source(source).schedule
    if cron is None:
        return None

    def ticks(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        now = context.scheduled_execution_time or datetime.now(timezone.utc)
        if not project.is_archive(source):
            # Object sources are not partitioned: each run fetches what changed.
            yield dg.RunRequest(run_key=now.isoformat(), tags={"sluice/trigger": "schedule"})
            return
        today = now.astimezone(timezone.utc).date()
        keys = _partition_keys(project, source, [today - timedelta(days=1), today])
        for key in keys:
            yield dg.RunRequest(
                run_key=f"{key}@{now.isoformat()}",
                partition_key=key,
                tags={"sluice/trigger": "schedule"},
            )

    return dg.ScheduleDefinition(
        name=f"{op_name(source, target)}__schedule",
        cron_schedule=cron,
        execution_timezone="UTC",
        job=job,
        execution_fn=ticks,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            f"Syncs {source} into {target} on the source's schedule ({cron}, UTC, from "
            "sluice.yml): "
            + (
                "yesterday's and today's partitions, so late files load; each run loads "
                "only files not loaded yet."
                if project.is_archive(source)
                else "each run fetches what changed since the last one."
            )
        ),
    )


def _read_archive_and_ledger(
    context: dg.SensorEvaluationContext,
    res_key: str,
    url: str,
    storage_options: dict | None,
    read: Callable[[Warehouse, list[ArchiveFile]], T | dg.SkipReason],
) -> T | dg.SkipReason:
    """What `read` finds in the warehouse about the archive's files, or why a sensor tick
    has no answer now: no archive yet (nothing delivered), or a sync holding the lock."""
    try:
        files = list_files(url, storage_options or None)
    except FileNotFoundError:
        return dg.SkipReason(f"no archive at {url} yet")
    resource: WarehouseResource = getattr(context.resources, res_key)
    try:
        with resource.open() as warehouse:
            return read(warehouse, files)
    except LockBusy as exc:
        return dg.SkipReason(f"{exc}; checking again at the next tick")


def _archive_pending_by_day(
    context: dg.SensorEvaluationContext, project: Project, source: str, res_key: str
) -> dict[str, list[str]] | dg.SkipReason:
    """{partition key: archive files the warehouse's ledger has not recorded}, asked of
    the loader (the same matching a sync does), or why the question has no answer now."""
    settings = project.source(source)
    url = project.archive_url(source)
    schema = project.schema_of(source)
    pending = _read_archive_and_ledger(
        context,
        res_key,
        url,
        settings.storage_options,
        lambda warehouse, files: (
            pending_files(warehouse, url, schema, files) if ledger_exists(warehouse) else files
        ),
    )
    if isinstance(pending, dg.SkipReason):
        return pending
    today = datetime.now(timezone.utc).date()
    by_day: dict[str, list[str]] = {}
    for f in pending:
        day = received_day(f.url) or today
        if day < settings.start_date:
            context.log.warning(f"{f.url} was received before start_date; not requested")
            continue
        by_day.setdefault(day.isoformat(), []).append(f.url)
    return by_day


def _digest(urls: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(urls)).encode()).hexdigest()[:12]


def build_sensor(
    project: Project,
    source: str,
    target: str,
    job: dg.UnresolvedAssetJobDefinition,
) -> dg.SensorDefinition:
    """A run per received day whose archive files the warehouse has not recorded.

    The warehouse's file ledger (`_sluice.loaded_files`) decides what is new, so a first
    tick over a loaded archive requests nothing, and days loaded by `sluice sync` are
    not loaded again. The cursor remembers which pending files each day was requested
    for: a tick requests a day again only when more of its files arrive."""
    res_key = resource_key(target)

    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = json.loads(context.cursor) if context.cursor else {}
        requested: dict[str, str] = state.get("requested", {})
        by_day = _archive_pending_by_day(context, project, source, res_key)
        if isinstance(by_day, dg.SkipReason):
            return by_day
        digests = {key: _digest(urls) for key, urls in by_day.items()}
        # Days no longer pending are forgotten: the cursor stays as small as the backlog.
        cursor = json.dumps({"requested": digests}, sort_keys=True)
        new = sorted(key for key, digest in digests.items() if requested.get(key) != digest)
        if not new:
            if by_day:
                return dg.SkipReason(
                    f"runs already requested for {', '.join(sorted(by_day))} of {source}; "
                    "waiting for them to load"
                )
            return dg.SkipReason(f"every archive file of {source} is loaded into {target}")
        requests = [
            dg.RunRequest(
                run_key=f"{key}:{digests[key]}",
                partition_key=key,
                tags={"sluice/trigger": "sensor", "sluice/new_files": str(len(by_day[key]))},
            )
            for key in new
        ]
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return dg.SensorDefinition(
        name=f"{op_name(source, target)}__new_files",
        evaluation_fn=evaluate,
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={res_key},
        description=(
            f"Requests a run of {source} into {target} for each received day with archive "
            f"files that {target}'s _sluice.loaded_files does not record (new files, or "
            "days no run has loaded yet). Files loaded by `sluice sync` count as loaded."
        ),
    )


# Materializations one reporter tick records at most; the rest follow on the next ticks
# (a first tick over a year of CLI loads must not write 15,000 events at once).
MAX_REPORTED_EVENTS = 2_000
_IN_PROGRESS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _dagster_is_loading(
    instance: dg.DagsterInstance, keys: set[dg.AssetKey], source: str, target: str
) -> bool:
    """A run of these assets is under way: its ledger rows may be committed before its
    materializations are, so the reporter waits rather than report them twice. A run of
    the sync job carries its tags; an ad-hoc run its asset selection."""
    for run in instance.get_runs(dg.RunsFilter(statuses=_IN_PROGRESS), limit=100):
        if run.asset_selection and run.asset_selection & keys:
            return True
        if run.tags.get("sluice/source") == source and run.tags.get("sluice/target") == target:
            return True
    return False


def _days_dagster_recorded(
    instance: dg.DagsterInstance, key: dg.AssetKey, days: list[str], since: float | None
) -> set[str]:
    """Which of `days` have a materialization of `key` (after `since`, when given)."""
    if not days:
        return set()
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=days, after_timestamp=since),
        limit=len(days) * 50,
    ).records
    return {r.partition_key for r in records if r.partition_key is not None}


def build_load_reporter(
    project: Project,
    source: str,
    target: str,
    table_of: dict[dg.AssetKey, str],
    rejects_table: str,
) -> dg.SensorDefinition:
    """Makes Dagster show loads done outside it (`sluice sync`, cron).

    Each tick compares the warehouse's file ledger (`_sluice.loaded_files`, per received
    day) with what the instance knows; a day that gained loaded files that no Dagster run
    materialized is reported as a materialization of each of the source's tables in that
    day's partition, with the `_sluice.sync_runs` run that loaded it. Dagster's own runs
    are never reported twice."""
    res_key = resource_key(target)
    keys = set(table_of)
    rejects_key = next(k for k, t in table_of.items() if t == rejects_table)
    settings = project.source(source)
    url = project.archive_url(source)
    schema = project.schema_of(source)

    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = json.loads(context.cursor) if context.cursor else {}
        seen: dict[str, int] = state.get("loaded_by_day", {})
        since: float | None = state.get("checked_at")
        now = datetime.now(timezone.utc).timestamp()
        if _dagster_is_loading(context.instance, keys, source, target):
            return dg.SkipReason(f"a Dagster run is loading {source}; checking after it")

        def read(
            warehouse: Warehouse, files: list[ArchiveFile]
        ) -> tuple[list[ArchiveFile], set[str], list[dict]] | dg.SkipReason:
            if not ledger_exists(warehouse):
                return dg.SkipReason(f"nothing has been loaded into {target} yet")
            return (
                loaded_files_of(warehouse, url, schema, files),
                set(warehouse.read_schema(schema)),
                _successful_runs(warehouse, schema, target),
            )

        got = _read_archive_and_ledger(context, res_key, url, settings.storage_options, read)
        if isinstance(got, dg.SkipReason):
            return got
        loaded, tables, runs = got
        counts: dict[str, int] = {}
        for f in loaded:
            day = received_day(f.url)
            if day is not None and day >= settings.start_date:
                counts[day.isoformat()] = counts.get(day.isoformat(), 0) + 1
        changed = sorted(d for d, n in counts.items() if seen.get(d) != n)
        recorded = _days_dagster_recorded(context.instance, rejects_key, changed, since)
        report_keys = sorted(
            (k for k, t in table_of.items() if t in tables or t == rejects_table),
            key=lambda k: k.to_user_string(),
        )
        # The newest run since the last tick (on a first tick, of all): what loaded them.
        recent = [r for r in runs if since is None or _finished(r) > since]
        latest = max(recent, key=_finished, default=None)
        events: list[dg.AssetMaterialization] = []
        done: list[str] = []
        for day in changed:
            if day not in recorded:
                if events and len(events) + len(report_keys) > MAX_REPORTED_EVENTS:
                    break
                events += [
                    dg.AssetMaterialization(
                        asset_key=key,
                        partition=day,
                        description=(
                            f"Loaded outside Dagster (sluice sync); seen in "
                            f"{target}'s _sluice.loaded_files."
                        ),
                        metadata=_outside_metadata(counts[day], latest),
                    )
                    for key in report_keys
                ]
            done.append(day)
        finished = len(done) == len(changed)
        cursor = json.dumps(
            {
                "loaded_by_day": {d: n for d, n in counts.items() if d in done or d not in changed},
                # A partial tick keeps the old mark, so the rest is judged the same way.
                "checked_at": now if finished else since,
            },
            sort_keys=True,
        )
        if not events:
            return dg.SensorResult(
                skip_reason=f"Dagster shows every load of {source} into {target}",
                cursor=cursor,
            )
        reported = sorted({e.partition for e in events if e.partition})
        context.log.info(
            f"reporting loads made outside Dagster for {len(reported)} day(s) of {source}: "
            f"{', '.join(reported)}"
        )
        return dg.SensorResult(asset_events=events, cursor=cursor)

    return _outside_loads_sensor(
        source,
        target,
        keys,
        evaluate,
        f"Shows loads of {source} into {target} made outside Dagster (sluice sync, "
        "cron): days that gained files in the warehouse's _sluice.loaded_files "
        "without a Dagster run become materializations of those days' partitions.",
    )


def _successful_runs(warehouse: Warehouse, schema: str, target: str) -> list[dict]:
    """The recent successful `_sluice.sync_runs` runs into `schema` on `target`: the
    runs an outside load or sync can be attributed to."""
    return [
        r
        for r in warehouse.recent_runs(limit=50)
        if r.get("schema") == schema and r.get("target") == target and r.get("status") == "success"
    ]


def _outside_loads_sensor(
    source: str,
    target: str,
    keys: set[dg.AssetKey],
    evaluate: Callable[[dg.SensorEvaluationContext], dg.SensorResult | dg.SkipReason],
    description: str,
) -> dg.SensorDefinition:
    """The reporter sensors of files and of cloud sources share name, cadence and
    default state (stopped: reporting is opt-in), so one place defines them."""
    return dg.SensorDefinition(
        name=f"{op_name(source, target)}__outside_loads",
        evaluation_fn=evaluate,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={resource_key(target)},
        asset_selection=dg.AssetSelection.assets(*keys),
        description=description,
    )


def _outside_metadata(files: int, run: dict | None) -> dict[str, object]:
    metadata: dict[str, object] = {"files_loaded": files, "sluice/origin": "outside Dagster"}
    if run is not None:
        metadata["sluice/sync_run_id"] = str(run.get("run_id"))
        metadata["loaded_at"] = str(run.get("finished_at"))
        metadata["mode"] = "replay" if run.get("replay") else "sync"
    return metadata


def _finished(run: dict) -> float:
    try:
        return datetime.fromisoformat(str(run.get("finished_at"))).timestamp()
    except ValueError:
        return 0.0


def build_object_load_reporter(
    project: Project, source: str, target: str, table_of: dict[dg.AssetKey, str]
) -> dg.SensorDefinition:
    """Makes Dagster show syncs of a cloud/object source done outside it (`sluice sync`):
    a successful `_sluice.sync_runs` run that loaded rows into a collection after the
    asset's latest materialization becomes one. Dagster's own runs materialize after
    their sync finished, so they are never reported twice."""
    res_key = resource_key(target)
    keys = set(table_of)
    schema = project.schema_of(source)

    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        if _dagster_is_loading(context.instance, keys, source, target):
            return dg.SkipReason(f"a Dagster run is syncing {source}; checking after it")
        resource: WarehouseResource = getattr(context.resources, res_key)
        try:
            with resource.open() as warehouse:
                if not ledger_exists(warehouse):
                    return dg.SkipReason(f"nothing has been loaded into {target} yet")
                runs = _successful_runs(warehouse, schema, target)
        except LockBusy as exc:
            return dg.SkipReason(f"{exc}; checking again at the next tick")
        events = []
        for key, table in sorted(table_of.items(), key=lambda kv: kv[0].to_user_string()):
            latest = context.instance.get_latest_materialization_event(key)
            since = latest.timestamp if latest is not None else 0.0
            newer = [
                r for r in runs if _finished(r) > since and (r.get("rows_loaded") or {}).get(table)
            ]
            if not newer:
                continue
            run = max(newer, key=_finished)
            metadata = _outside_metadata(0, run)
            del metadata["files_loaded"]
            metadata["rows_loaded"] = sum(int(r["rows_loaded"][table]) for r in newer)
            events.append(
                dg.AssetMaterialization(
                    asset_key=key,
                    description=f"Synced outside Dagster (sluice sync); seen in {target}'s "
                    "_sluice.sync_runs.",
                    metadata=metadata,
                )
            )
        if not events:
            return dg.SkipReason(f"Dagster shows every sync of {source} into {target}")
        return dg.SensorResult(asset_events=events)

    return _outside_loads_sensor(
        source,
        target,
        keys,
        evaluate,
        f"Shows syncs of {source} into {target} made outside Dagster (sluice sync, "
        "cron): a run in the warehouse's _sluice.sync_runs that loaded rows into a "
        "collection after its latest materialization becomes one.",
    )
