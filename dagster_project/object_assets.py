"""Cloud object sources (Stripe, Zendesk, Salesforce, object exports) as assets: one
multi-asset per (source, target), one asset per collection. Not partitioned: each
collection keeps its own cursor, so a run fetches what changed since the last one and
a subset run syncs just the selected collections."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from dagster_project.assets import (
    CHECK_DUPLICATES,
    CHECK_FRESHNESS,
    check_spec,
    current_rules,
    loader_logs_to,
    op_name,
    pool_name,
    table_results,
)
from dagster_project.resources import WarehouseResource, resource_key
from dagster_project.translator import SluiceTranslator, TableInfo
from loader.rules.naming import snake_case
from loader.rules.selective_sync import SelectiveSync
from loader.sources.cloud.registry import collections_of, connector_for
from loader.sync.catalog import tables_of, update_catalog
from loader.sync.object_pipeline import DEFAULT_BATCH_OBJECTS, ObjectLoader
from loader.sync.project import Project
from loader.warehouses.base import LockBusy


def _collections(project: Project, source: str, target: str) -> dict[str, str]:
    """{table: collection} of an object source in a target."""
    known = tables_of(project.root, target, project.schema_of(source))
    return {snake_case(c): c for c in collections_of(project.source(source), known)}


def object_table_infos(
    project: Project, rules: SelectiveSync, source: str, target: str, target_type: str
) -> list[TableInfo]:
    """The source's collections in this target, minus what selective sync turns off."""
    settings = project.source(source)
    schema = project.schema_of(source)
    known = tables_of(project.root, target, schema)
    sync_filter = rules.filter_for(target, source)
    return [
        TableInfo(target, target_type, source, schema, table, known.get(table), settings.kind)
        for table in sorted(_collections(project, source, target))
        if sync_filter.table_synced(table)
    ]


def build_object_source_assets(
    project: Project,
    rules: SelectiveSync,
    source: str,
    target: str,
    target_type: str,
    translator: SluiceTranslator,
) -> dg.AssetsDefinition:
    settings = project.source(source)
    schema = project.schema_of(source)
    collections = _collections(project, source, target)
    infos = object_table_infos(project, rules, source, target, target_type)
    specs = [translator.get_asset_spec(info) for info in infos]
    table_of = {spec.key: info.table for spec, info in zip(specs, infos, strict=True)}
    key_of = {table: key for key, table in table_of.items()}
    check_specs = [
        check_spec(name, key, blocking=name == CHECK_DUPLICATES)
        for key in table_of
        for name in (CHECK_DUPLICATES, CHECK_FRESHNESS)
    ]
    res_key = resource_key(target)

    @dg.multi_asset(
        name=op_name(source, target),
        specs=specs,
        check_specs=check_specs,
        can_subset=True,
        pool=pool_name(source, target),
        required_resource_keys={res_key},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
    )
    def _sync(context: dg.AssetExecutionContext) -> Iterator[Any]:
        resource: WarehouseResource = getattr(context.resources, res_key)
        selected = sorted(collections[table_of[k]] for k in context.selected_asset_keys)
        current = current_rules(project)
        with resource.open() as warehouse:
            loader = ObjectLoader(
                warehouse,
                sync_filter=current.filter_for(target, source),
                batch_objects=settings.batch_lines or DEFAULT_BATCH_OBJECTS,
            )
            context.log.info(f"syncing {', '.join(selected)} of {source} into {target}.{schema}")
            try:
                with loader_logs_to(context):
                    report = loader.sync(connector_for(settings, project.root), schema, selected)
            except LockBusy as exc:
                raise dg.RetryRequested(max_retries=20, seconds_to_wait=30) from exc
            tables = warehouse.read_schema(schema)
            update_catalog(project.root, target, schema, tables)
            yield from table_results(
                context, warehouse, project, source, schema, report, tables, table_of, key_of
            )

    return _sync
