"""Reverse-ETL models as assets downstream of the tables their SQL reads."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from dagster_project.resources import WarehouseResource, resource_key
from dagster_project.translator import SluiceTranslator, TableInfo
from loader.reverse_etl.lineage import tables_read
from loader.reverse_etl.model import list_models, load_model
from loader.reverse_etl.runner import run_model
from loader.rules.naming import snake_case
from loader.sync.project import Project
from loader.warehouses.base import LockBusy

CHECK_DELIVERED = "all_records_delivered"


def retl_key(destination_type: str, model: str) -> dg.AssetKey:
    return dg.AssetKey(["reverse_etl", snake_case(destination_type), model])


def build_retl_assets(
    project: Project, target: str, target_type: str, translator: SluiceTranslator
) -> tuple[list[dg.AssetsDefinition], list[dg.ScheduleDefinition]]:
    models_dir = project.models_dir()
    if models_dir is None or not models_dir.exists():
        return [], []
    assets, schedules = [], []
    for name in list_models(models_dir):
        model = load_model(models_dir, name)
        deps = [
            translator.get_asset_key(TableInfo(target, target_type, "", schema, table, None))
            for schema, table in tables_read(model.sql, model.spec.schema_name)
        ]
        asset_def = _model_asset(project, target, name, model.destination.type, deps)
        assets.append(asset_def)
        if model.spec.schedule:
            schedules.append(
                dg.ScheduleDefinition(
                    name=f"retl__{name}__schedule",
                    cron_schedule=model.spec.schedule,
                    execution_timezone="UTC",
                    target=dg.AssetSelection.assets(asset_def),
                    tags={"sluice/trigger": "schedule"},
                    default_status=dg.DefaultScheduleStatus.STOPPED,
                    description=(
                        f"Runs reverse-ETL model {name} on its schedule "
                        f"({model.spec.schedule}, UTC, from {name}.yml)."
                    ),
                )
            )
    return assets, schedules


def _model_asset(
    project: Project, target: str, name: str, destination_type: str, deps: list[dg.AssetKey]
) -> dg.AssetsDefinition:
    key = retl_key(destination_type, name)
    res_key = resource_key(target)

    @dg.asset(
        key=key,
        deps=deps,
        group_name="reverse_etl",
        kinds={"sluice", destination_type},
        description=f"Reverse-ETL model {name}: changes since the last sync, sent to "
        f"its {destination_type} destination.",
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_DELIVERED,
                asset=key,
                description=(
                    f"Every changed record of {name} reached the {destination_type} "
                    "destination; failed ones are retried at the next sync."
                ),
            )
        ],
        required_resource_keys={res_key},
        pool=f"sluice__retl__{name}",
    )
    def _run(context: dg.AssetExecutionContext) -> Iterator[Any]:
        resource: WarehouseResource = getattr(context.resources, res_key)
        model = load_model(project.models_dir(), name)  # type: ignore[arg-type]
        with resource.open() as warehouse:
            try:
                report = run_model(warehouse, model)
            except LockBusy as exc:
                raise dg.RetryRequested(max_retries=20, seconds_to_wait=30) from exc
        if report.status == "failed":
            raise dg.Failure(
                f"model {name} failed: {report.error}", metadata={"report": report.to_dict()}
            )
        yield dg.MaterializeResult(
            asset_key=key,
            metadata={
                "status": report.status,
                "records_staged": report.staged,
                "records_sent": sum(report.sent.values()),
                "records_failed": report.failed,
                "changes": report.counts,
                "duration_s": report.duration_s,
            },
            check_results=[
                dg.AssetCheckResult(
                    asset_key=key,
                    check_name=CHECK_DELIVERED,
                    passed=report.failed == 0,
                    metadata={"records_failed": report.failed, "unsent": report.unsent},
                )
            ],
        )

    return _run
