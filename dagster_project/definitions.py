"""The Dagster code location, built from sluice.yml (found via $SLUICE_PROJECT or the
working directory), profiles.yml, selective_sync.yml and the catalog of tables.

Loading it does no warehouse or network I/O; run `dagster dev -m dagster_project.definitions`
in a project folder (see the README).
"""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import build_source_assets, table_infos
from dagster_project.automation import (
    build_load_reporter,
    build_object_load_reporter,
    build_schedule,
    build_sensor,
    sync_job,
)
from dagster_project.object_assets import build_object_source_assets, object_table_infos
from dagster_project.resources import target_problem, warehouse_resources
from dagster_project.retl_assets import build_retl_assets
from dagster_project.translator import REJECTS_TABLE, SluiceTranslator
from loader.sync.project import Project, find_project, load_project


def build_definitions(
    project: Project, translator: SluiceTranslator | None = None
) -> dg.Definitions:
    translator = translator or SluiceTranslator()
    profiles = project.load_profiles()
    rules = project.load_selective_sync()
    resources = warehouse_resources(project.profiles_path())
    assets: list = []
    jobs, schedules, sensors = [], [], []
    for source in project.sources:
        build = build_source_assets if project.is_archive(source) else build_object_source_assets
        if project.is_archive(source):
            assets.append(translator.get_archive_spec(source, project.archive_url(source)))
        for target in project.targets_of(source, profiles):
            target = profiles.name(target)
            assets_def = build(project, rules, source, target, profiles.kind(target), translator)
            assets_def = _say_if_broken(assets_def, target_problem(profiles, target))
            job = sync_job(assets_def, source, target)
            assets.append(assets_def)
            jobs.append(job)
            schedule = build_schedule(project, source, target, job)
            if schedule is not None:
                schedules.append(schedule)
            if project.is_archive(source):
                sensors.append(build_sensor(project, source, target, job))
                infos = table_infos(project, rules, source, target, profiles.kind(target))
                table_of = {translator.get_asset_spec(i).key: i.table for i in infos}
                sensors.append(
                    build_load_reporter(project, source, target, table_of, REJECTS_TABLE)
                )
            else:
                infos = object_table_infos(project, rules, source, target, profiles.kind(target))
                table_of = {translator.get_asset_spec(i).key: i.table for i in infos}
                if table_of:
                    sensors.append(build_object_load_reporter(project, source, target, table_of))
    if project.models_dir() is not None:
        models_target = profiles.name(project.models_target)
        kind = profiles.kind(models_target)
        retl, retl_schedules = build_retl_assets(project, models_target, kind, translator)
        problem = target_problem(profiles, models_target)
        assets += [_say_if_broken(a, problem) for a in retl]
        schedules += retl_schedules
    return dg.Definitions(
        assets=assets, jobs=jobs, schedules=schedules, sensors=sensors, resources=resources
    )


def _say_if_broken(assets_def: dg.AssetsDefinition, problem: str | None) -> dg.AssetsDefinition:
    """A target whose config cannot work still has its assets (the location loads); they
    say why their runs will fail (the run itself fails with the same sentence)."""
    if problem is None:
        return assets_def

    def mark(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(
            description=f"Cannot run until the target's config is fixed: {problem}\n\n"
            f"{spec.description or ''}",
            metadata={**spec.metadata, "sluice/target_config": f"broken: {problem}"},
        )

    return assets_def.map_asset_specs(mark)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_project(find_project(None)))
