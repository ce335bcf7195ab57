"""Schedules (each source's cron) and sensors (new archive files) for the sync jobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import dagster as dg

from dagster_project.assets import op_name
from loader.project import Project
from loader.sources.archive import list_files, received_day


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
    )


def build_sensor(
    project: Project, source: str, target: str, job: dg.UnresolvedAssetJobDefinition
) -> dg.SensorDefinition:
    """A run per received day with new archive files. The cursor is the newest file
    seen: Segment's archive is appended in path order (day folders in ms)."""
    settings = project.source(source)

    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        state = json.loads(context.cursor) if context.cursor else {}
        last = state.get("last_file", "")
        files = list_files(project.archive_url(source), settings.storage_options or None)
        new = [f.url for f in files if f.url > last]
        if not new:
            return dg.SkipReason(f"no new archive files for {source} after {last or 'start'}")
        today = datetime.now(timezone.utc).date()
        by_day: dict[str, list[str]] = {}
        for url in new:
            day = received_day(url) or today
            if day < settings.start_date:
                context.log.warning(f"{url} was received before start_date; not requested")
                continue
            by_day.setdefault(day.isoformat(), []).append(url)
        requests = [
            dg.RunRequest(
                run_key=f"{key}:{hashlib.sha1(urls[-1].encode()).hexdigest()[:12]}",
                partition_key=key,
                tags={"sluice/trigger": "sensor", "sluice/new_files": str(len(urls))},
            )
            for key, urls in sorted(by_day.items())
        ]
        return dg.SensorResult(run_requests=requests, cursor=json.dumps({"last_file": max(new)}))

    return dg.SensorDefinition(
        name=f"{op_name(source, target)}__new_files",
        evaluation_fn=evaluate,
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
    )
