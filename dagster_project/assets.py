"""The asset factory: one multi-asset per (source, target), one spec per table.

All loading is `loader`'s; this module only maps a Dagster run (partition, selection,
config) onto the loader and the run's report onto per-table events. The multi-asset is a
graph: `plan` (checks selective sync, plans one stage per received day), `stage` (mapped
over the days: read, normalise, encode into the staging area; no pool, no warehouse, so
a backfill's days stage at once on the run's executor) and `commit` (in the pool of its
(source, target): commits the staged days in order, the lock held per day, then emits
the tables' events). A subset run, or a single day's pending files, loads in the commit
step as one `Loader.load` call (the plan stages nothing).
"""

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_project.resources import WarehouseResource, resource_key
from dagster_project.translator import REJECTS_TABLE, SluiceTranslator, TableInfo, column_schema
from loader.config.errors import ConfigError
from loader.native.loader import loader_class
from loader.rules.naming import snake_case
from loader.rules.selective_sync import SelectiveSync
from loader.sync.catalog import tables_of, update_catalog
from loader.sync.pipeline import Loader, SyncReport, recorded_run
from loader.sync.project import Project
from loader.sync.staging import (
    StagedPartition,
    StagingArea,
    commit_in_order,
    plan_stages,
    progress_of,
    stage,
)
from loader.warehouses.base import LockBusy
from loader.warehouses.warehouse import Warehouse

# Tables every event source has (users/accounts follow identifies/groups).
CORE_TABLES = ("tracks", "pages", "screens", "identifies", "users", "groups", "accounts", "aliases")

CHECK_DUPLICATES = "no_duplicate_ids"
CHECK_FRESHNESS = "received_at_fresh"
CHECK_REJECT_RATE = "reject_rate"
CHECK_SELECTIVE_SYNC = "selective_sync_valid"
CHECK_TRACKING_PLAN = "tracking_plan_conformance"
# Tables a tracking plan checks: every event table, identifies and groups.
UNPLANNED_TABLES = ("tracks", "pages", "screens", "users", "accounts", "aliases", REJECTS_TABLE)

CHECK_DESCRIPTIONS = {
    CHECK_DUPLICATES: (
        "No id (Segment's messageId) appears twice in the table. Blocking: a failure "
        "stops downstream assets from building on duplicated rows."
    ),
    CHECK_FRESHNESS: (
        "The newest received_at is at most the source's freshness_hours old (sluice.yml); "
        "a warning when the archive stops delivering or loads fall behind."
    ),
    CHECK_REJECT_RATE: (
        "Rejected lines / lines read in the run stay at or below the source's "
        "max_reject_rate (sluice.yml); the lines are in _sluice.rejected_events."
    ),
    CHECK_SELECTIVE_SYNC: (
        "selective_sync.yml parses and is valid; blocking, checked before anything loads, "
        "so a broken rule never loads data it meant to keep out."
    ),
    CHECK_TRACKING_PLAN: (
        "Events of this table the run checked against the source's tracking plan: the "
        "share with a violation stays at or below conformance_threshold (sluice.yml); a "
        "warning above it. Violations are in _sluice.violations (`sluice plan report`)."
    ),
}


def check_spec(name: str, key: dg.AssetKey, blocking: bool = False) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        name, asset=key, blocking=blocking, description=CHECK_DESCRIPTIONS[name]
    )


class _ToDagsterLog(logging.Handler):
    """Forwards the loader's log records (batch commits, new tables and columns,
    rejects) into the run's event log, at their level."""

    def __init__(self, log: Any) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._log.error(message)
        elif record.levelno >= logging.WARNING:
            self._log.warning(message)
        else:
            self._log.info(message)


@contextmanager
def loader_logs_to(context: dg.AssetExecutionContext) -> Iterator[None]:
    """The `sluice` logger's INFO and above go to `context.log` while the block runs."""
    logger = logging.getLogger("sluice")
    handler = _ToDagsterLog(context.log)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class SyncConfig(dg.Config):
    replay: bool = Field(
        default=False,
        description=(
            "Reload every archive file of the partition's day(s), even files already "
            "loaded: missing rows are inserted and NULL columns filled, nothing is "
            "changed. Backfills always replay."
        ),
    )


def daily_partitions(project: Project, source: str) -> dg.DailyPartitionsDefinition:
    """By received day (UTC); today's partition exists so files arriving today load."""
    start = project.source(source).start_date
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), end_offset=1)


def op_name(source: str, target: str) -> str:
    return f"sync__{snake_case(source)}__{snake_case(target)}"


def pool_name(source: str, target: str) -> str:
    """One pool per (source, target): with a limit of 1 (dagster.yaml), two runs never
    load the same source into the same target at once."""
    return f"sluice__{snake_case(source)}__{snake_case(target)}"


def table_infos(
    project: Project, rules: SelectiveSync, source: str, target: str, target_type: str
) -> list[TableInfo]:
    """The source's tables in this target: the core tables, every table the catalog has
    seen, minus what selective sync turns off; plus the rejects."""
    schema = project.schema_of(source)
    known = tables_of(project.root, target, schema)
    sync_filter = rules.filter_for(target, source)
    names = sorted(set(CORE_TABLES) | set(known))
    infos = [
        TableInfo(target, target_type, source, schema, name, known.get(name))
        for name in names
        if sync_filter.table_synced(name)
    ]
    infos.append(TableInfo(target, target_type, source, schema, REJECTS_TABLE, None))
    return infos


def build_source_assets(
    project: Project,
    rules: SelectiveSync,
    source: str,
    target: str,
    target_type: str,
    translator: SluiceTranslator,
) -> dg.AssetsDefinition:
    infos = table_infos(project, rules, source, target, target_type)
    # Every table comes from the source's archive (an external asset in the graph).
    archive_key = translator.get_archive_key(source)
    specs = [translator.get_asset_spec(info).merge_attributes(deps=[archive_key]) for info in infos]
    table_of = {spec.key: info.table for spec, info in zip(specs, infos, strict=True)}
    key_of = {info.table: spec.key for spec, info in zip(specs, infos, strict=True)}
    check_specs = [
        check_spec(CHECK_DUPLICATES, key, blocking=True)
        for key, table in table_of.items()
        if table != REJECTS_TABLE
    ]
    check_specs += [
        check_spec(CHECK_FRESHNESS, key)
        for key, table in table_of.items()
        if table != REJECTS_TABLE
    ]
    settings = project.source(source)
    if settings.tracking_plan is not None:
        check_specs += [
            check_spec(CHECK_TRACKING_PLAN, key)
            for key, table in table_of.items()
            if table not in UNPLANNED_TABLES
        ]
    rejects_key = key_of[REJECTS_TABLE]
    check_specs += [
        check_spec(CHECK_REJECT_RATE, rejects_key),
        check_spec(CHECK_SELECTIVE_SYNC, rejects_key, blocking=True),
    ]
    res_key = resource_key(target)
    name = op_name(source, target)
    schema = project.schema_of(source)
    url = project.archive_url(source)
    # Graph outputs: one per table (the spec as declared), one per check (its identifier).
    out_of = {spec.key: spec.key.to_python_identifier() for spec in specs}
    check_outs = [c.get_python_identifier() for c in check_specs]

    def make_loader(warehouse: Warehouse, sync_filter: Any, plan: Any) -> Loader:
        return loader_class(settings.mode)(
            warehouse,
            batch_lines=settings.batch_lines,
            storage_options=settings.storage_options or None,
            sync_filter=sync_filter,
            readers=settings.readers,
            tracking_plan=plan,
        )

    @dg.op(
        name=f"{name}__plan",
        ins={"archive": dg.In(dg.Nothing)},
        out={"orders": dg.DynamicOut(Any), "plan": dg.Out(Any)},
        required_resource_keys={res_key},
    )
    def _plan(context: dg.OpExecutionContext, config: SyncConfig) -> Iterator[Any]:
        """The run's mode, and in a staged run one order per received day to stage. The
        selective sync file is checked here, before anything loads."""
        selected = {table_of[k] for k in context.selected_asset_keys if k in table_of}
        full = selected >= set(table_of.values())
        window = context.partition_time_window
        days = (window.start.date(), (window.end - timedelta(days=1)).date())
        replay = config.replay or "dagster/backfill" in context.run.tags or not full
        info: dict[str, Any] = {
            "mode": "serial",
            "days": days,
            "replay": replay,
            "full": full,
            "selected": sorted(selected),
        }
        try:
            project.load_selective_sync()
        except ConfigError as exc:
            info.update(mode="invalid", error=str(exc))
        # A subset (or a day's pending files) loads serially; a full backfill is staged.
        if info["mode"] == "serial" and full and (replay or days[0] != days[1]):
            current = current_rules(project)
            plan = current_plan(project, source)
            resource: WarehouseResource = getattr(context.resources, res_key)
            with resource.open() as warehouse:
                loader = make_loader(warehouse, current.filter_for(target, source), plan)
                counts = SyncReport("", schema, target, url, "")
                with loader_logs_to(context):
                    orders = plan_stages(loader, url, schema, days, replay, counts)
                # Storage options can be credentials: never in a step output (the IO
                # manager writes outputs to disk); each stage puts the source's back.
                options = dataclasses.replace(loader.read_options(), storage_options=None)
            info.update(
                mode="staged",
                partitions=len(orders),
                files_seen=counts.files_seen,
                files_skipped=counts.files_skipped,
                files_undated=counts.files_undated,
            )
            context.log.info(
                f"staging {len(orders)} partition(s) of {days[0]}..{days[1]} of {source} "
                f"for {target}.{schema}"
            )
            for order in orders:
                yield dg.DynamicOutput(
                    (order, options),
                    mapping_key=order.label.replace("-", "_"),
                    output_name="orders",
                )
        yield dg.Output(info, output_name="plan")
        if info["mode"] != "staged" or not info["partitions"]:
            # A collect of nothing would skip the commit: one empty order keeps it.
            yield dg.DynamicOutput(None, mapping_key="none", output_name="orders")

    @dg.op(name=f"{name}__stage")
    def _stage(context: dg.OpExecutionContext, item: Any) -> Any:
        """One partition read, normalised and encoded into the staging area: no lock,
        no warehouse, as many at once as the executor runs."""
        if item is None:
            return None
        order, options = item
        options = dataclasses.replace(options, storage_options=settings.storage_options or None)
        with loader_logs_to(context):
            staged = stage(order, options, staging_area(project, source), readers=0)
        context.log.info(
            f"staged {order.label}: {len(order.files)} file(s), {staged.lines} line(s) "
            f"in {staged.seconds:.1f}s"
        )
        return staged

    @dg.op(
        name=f"{name}__commit",
        pool=pool_name(source, target),
        required_resource_keys={res_key},
        out={o: dg.Out(dg.Nothing, is_required=False) for o in [*out_of.values(), *check_outs]},
    )
    def _commit(context: dg.OpExecutionContext, plan: Any, staged: list) -> Iterator[Any]:
        """The staged partitions committed in archive order under the schema's lock (a
        subset run loads here, serially), then the tables' events."""
        if plan["mode"] == "invalid":
            yield from _selective_sync_check(context, project, rejects_key)
            raise dg.Failure(
                f"selective sync file is invalid: {plan['error']}", allow_retries=False
            )
        resource: WarehouseResource = getattr(context.resources, res_key)
        selected = set(plan["selected"])
        full, replay, days = plan["full"], plan["replay"], tuple(plan["days"])
        current = current_rules(project)
        tracking = current_plan(project, source)
        sync_filter = current.filter_for(target, source)
        if not full:
            # A subset replays the selected tables only and leaves the files pending.
            sync_filter = sync_filter.restricted_to(selected - {REJECTS_TABLE})
        with resource.open() as warehouse:
            loader = make_loader(warehouse, sync_filter, tracking)
            context.log.info(
                f"{'replaying' if replay else 'loading pending files of'} "
                f"{days[0]}..{days[1]} of {source} into {target}.{schema} "
                f"({'all tables' if full else ', '.join(sorted(selected))})"
                + (
                    f", {plan['partitions']} staged partition(s)"
                    if plan["mode"] == "staged"
                    else ""
                )
            )
            try:
                with loader_logs_to(context):
                    if plan["mode"] == "staged":
                        parts = [s for s in staged if s is not None]
                        report = _commit_partitions(
                            loader, url, schema, plan, parts, area=staging_area(project, source)
                        )
                    else:
                        report = loader.load(
                            url, schema, days=days, replay=replay, record_files=full
                        )
            except LockBusy as exc:
                raise dg.RetryRequested(max_retries=20, seconds_to_wait=30) from exc
            tables = warehouse.read_schema(schema)
            update_catalog(project.root, target, schema, tables)
            yield from table_results(
                context, warehouse, project, source, schema, report, tables, table_of, key_of
            )
            touched = set(report.rows_loaded) | set(report.new_tables)
            discovered = sorted(t for t in touched - set(key_of) if t in tables)
            if discovered:
                # Recorded now; managed assets once the code location reloads the catalog.
                context.log.warning(
                    f"{len(discovered)} table(s) not yet declared as assets: "
                    f"{', '.join(discovered)}; reload the code location to manage them"
                )
            for table in discovered:
                yield dg.AssetMaterialization(
                    asset_key=translator.get_asset_key(
                        TableInfo(target, target_type, source, schema, table, None)
                    ),
                    metadata=_table_metadata(warehouse, schema, table, report, tables),
                )

    def _config(config: dict[str, Any]) -> dict[str, Any]:
        return {f"{name}__plan": {"config": dict(config)}}

    @dg.graph_multi_asset(
        name=name,
        outs={
            out_of[spec.key]: dg.AssetOut.from_spec(
                spec.replace_attributes(deps=[]), dagster_type=dg.Nothing
            )
            for spec in specs
        },
        # An AssetOut takes no deps: every table depends on the archive through the plan.
        ins={"archive": dg.AssetIn(key=archive_key, dagster_type=dg.Nothing)},
        check_specs=check_specs,
        can_subset=True,
        partitions_def=daily_partitions(project, source),
        backfill_policy=dg.BackfillPolicy.single_run(),
        # The run config users give today ({ops: {name: {config: {replay: ...}}}}) still works.
        config=dg.ConfigMapping(config_fn=_config, config_schema=SyncConfig.to_config_schema()),
    )
    def _sync(archive):  # type: ignore[no-untyped-def]
        orders, plan = _plan(archive)
        outs = _commit(plan, orders.map(_stage).collect())
        return {o: getattr(outs, o) for o in [*out_of.values(), *check_outs]}

    # A graph asset's outs take the graph's group: each table gets its spec's back.
    group_of = {spec.key: spec.group_name for spec in specs}
    return _sync.map_asset_specs(
        lambda spec: spec.replace_attributes(group_name=group_of[spec.key])
    )


def staging_area(project: Project, source: str) -> StagingArea:
    """Where a staged run's partitions are written between their stage and commit steps:
    the source's `staging:` (shared storage when steps run on several machines)."""
    options = project.source(source).storage_options or None
    return StagingArea(project.staging_url(source), options)


def _commit_partitions(
    loader: Loader,
    url: str,
    schema: str,
    plan: dict[str, Any],
    staged: list[StagedPartition],
    area: StagingArea,
) -> SyncReport:
    """As loader.sync.backfill.run_backfill commits: each partition in order, the lock
    held per commit; a refused stage is staged again here."""
    days = plan["days"]
    with recorded_run(loader.warehouse, schema, url) as report:
        if plan["replay"]:
            report.replay = {"from": days[0].isoformat(), "to": days[1].isoformat()}
        report.files_seen += plan["files_seen"]
        report.files_skipped += plan["files_skipped"]
        report.files_undated = plan["files_undated"]
        loader.track(progress_of([s.order for s in staged]))
        commit_in_order(loader, url, staged, area, report, "the executor's")
    return report


def current_rules(project: Project) -> SelectiveSync:
    """The current rules, or a run failure (not retried) naming the file and line."""
    try:
        return project.load_selective_sync()
    except ConfigError as exc:
        raise dg.Failure(f"selective sync file is invalid: {exc}", allow_retries=False) from exc


def current_plan(project: Project, source: str) -> Any:
    """The source's tracking plan (or None), or a run failure naming the file and line."""
    try:
        return project.load_tracking_plan(source)
    except ConfigError as exc:
        raise dg.Failure(f"tracking plan is invalid: {exc}", allow_retries=False) from exc


def _selective_sync_check(
    context: dg.AssetExecutionContext, project: Project, rejects_key: dg.AssetKey
) -> Iterator[dg.AssetCheckResult]:
    """Fails the run (blocking check) before any load when the file has an error."""
    try:
        project.load_selective_sync()
    except ConfigError as exc:
        if dg.AssetCheckKey(rejects_key, CHECK_SELECTIVE_SYNC) in context.selected_asset_check_keys:
            yield dg.AssetCheckResult(
                asset_key=rejects_key,
                check_name=CHECK_SELECTIVE_SYNC,
                passed=False,
                metadata={"error": str(exc)},
            )
        current_rules(project)


def _table_metadata(
    warehouse: Warehouse,
    schema: str,
    table: str,
    report: SyncReport,
    tables: dict[str, Any],
    source_kind: str = "events",
) -> dict[str, Any]:
    stats = warehouse.table_stats(schema, table)
    new_columns = [c.split(".", 1)[1] for c in report.new_columns if c.startswith(f"{table}.")]
    if table in report.new_tables:
        new_columns = list(tables[table])
    plan = {}
    if report.plan_checked:
        plan = {
            "tracking_plan_violations": report.violations.get(table, 0),
            "tracking_plan_violating_events": report.plan_violating.get(table, 0),
            "tracking_plan_blocked_events": report.blocked_events,
        }
    return {
        **plan,
        "rows_loaded": report.rows_loaded.get(table, 0),
        "dagster/row_count": stats.rows,
        "new_columns": new_columns,
        "rescued_values": report.rescued_by_table.get(table, 0),
        "rejects": report.rejects,
        "duration_s": report.duration_s,
        "files_loaded": report.files_loaded,
        "mode": "replay" if report.replay else "sync",
        "dagster/table_name": f"{schema}.{table}",
        "dagster/column_schema": column_schema(
            {c: k.value for c, k in tables[table].items()}, table, source_kind
        ),
    }


def table_results(
    context: dg.AssetExecutionContext,
    warehouse: Warehouse,
    project: Project,
    source: str,
    schema: str,
    report: SyncReport,
    tables: dict[str, Any],
    table_of: dict[dg.AssetKey, str],
    key_of: dict[str, dg.AssetKey],
) -> Iterator[dg.MaterializeResult]:
    settings = project.source(source)
    wanted = context.selected_asset_check_keys
    for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
        table = table_of[key]
        if table == REJECTS_TABLE:
            rate = report.rejects / report.lines_read if report.lines_read else 0.0
            checks = [
                dg.AssetCheckResult(
                    asset_key=key,
                    check_name=CHECK_REJECT_RATE,
                    passed=rate <= settings.max_reject_rate,
                    metadata={"reject_rate": rate, "threshold": settings.max_reject_rate},
                ),
                dg.AssetCheckResult(asset_key=key, check_name=CHECK_SELECTIVE_SYNC, passed=True),
            ]
            yield dg.MaterializeResult(
                asset_key=key,
                metadata={
                    "rejects": report.rejects,
                    "lines_read": report.lines_read,
                    "reject_rate": rate,
                    "files_failed": len(report.files_failed),
                    "duration_s": report.duration_s,
                },
                check_results=[c for c in checks if _check_key(c) in wanted],
            )
            continue
        if table not in tables:
            continue  # no data for it yet (e.g. no screen calls): skippable
        metadata = _table_metadata(warehouse, schema, table, report, tables, settings.kind)
        stats = warehouse.table_stats(schema, table)
        age_h = _age_hours(stats.max_received_at)
        checks = [
            dg.AssetCheckResult(
                asset_key=key,
                check_name=CHECK_DUPLICATES,
                passed=stats.duplicate_ids == 0,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"duplicate_ids": stats.duplicate_ids},
            ),
            dg.AssetCheckResult(
                asset_key=key,
                check_name=CHECK_FRESHNESS,
                passed=age_h is not None and age_h <= settings.freshness_hours,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "newest_received_at": str(stats.max_received_at),
                    "age_hours": round(age_h, 1) if age_h is not None else -1.0,
                    "threshold_hours": settings.freshness_hours,
                },
            ),
        ]
        # Cloud sources (shared results code) have no tracking plan.
        planned = getattr(settings, "tracking_plan", None) is not None
        if planned and table not in UNPLANNED_TABLES:
            checks.append(_conformance(key, table, report, settings.conformance_threshold))
        yield dg.MaterializeResult(
            asset_key=key,
            metadata=metadata,
            check_results=[c for c in checks if _check_key(c) in wanted],
        )


def _conformance(
    key: dg.AssetKey, table: str, report: SyncReport, threshold: float
) -> dg.AssetCheckResult:
    checked = report.plan_checked.get(table, 0)
    violating = report.plan_violating.get(table, 0)
    rate = violating / checked if checked else 0.0
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_TRACKING_PLAN,
        passed=rate <= threshold,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "events_checked": checked,
            "violating_events": violating,
            "violations": report.violations.get(table, 0),
            "violating_rate": round(rate, 4),
            "threshold": threshold,
        },
    )


def _check_key(result: dg.AssetCheckResult) -> dg.AssetCheckKey:
    assert result.asset_key is not None and result.check_name is not None
    return dg.AssetCheckKey(result.asset_key, result.check_name)


def _age_hours(newest: datetime | date | None) -> float | None:
    if newest is None:
        return None
    if not isinstance(newest, datetime):
        newest = datetime(newest.year, newest.month, newest.day, tzinfo=timezone.utc)
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - newest).total_seconds() / 3600
