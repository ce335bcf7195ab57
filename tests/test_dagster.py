"""The Dagster code location as a data engineer uses it: assets per table, partitions by
received day, subsets, metadata, checks, schedules and sensors, on DuckDB and PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from importlib.resources import files as package_files
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.assets import SyncConfig
from dagster_project.definitions import build_definitions
from loader.sources.sample import default_first_day, write_archive
from loader.sync.catalog import tables_of, update_catalog
from loader.sync.project import load_project
from loader.warehouses.registry import open_warehouse
from tests.fake_apis import FakeStripe

SCHEMA = "javascript_production"
# The fixture's sample archive: three received days ending yesterday (UTC).
DAYS = [(default_first_day(3) + timedelta(days=i)).isoformat() for i in range(3)]


@pytest.fixture
def project_dir(
    tmp_path: Path, warehouse_kind: str, request: pytest.FixtureRequest, monkeypatch
) -> Path:
    """A project as `sluice init` writes it (3 received days), on DuckDB or PostgreSQL;
    the PostgreSQL DSN is a secret given through the environment."""
    root = tmp_path / "project"
    root.mkdir()
    templates = package_files("loader") / "templates"
    for name in ("sluice.yml", "selective_sync.yml"):
        (root / name).write_text((templates / name).read_text())
    if warehouse_kind == "postgres":
        monkeypatch.setenv("SLUICE_DG_TEST_DSN", request.getfixturevalue("pg_dsn"))
        profiles = "default_target: local\ntargets:\n  local:\n    type: postgres\n"
        profiles += "    dsn: ${SLUICE_DG_TEST_DSN}\n"
    else:
        profiles = "default_target: local\ntargets:\n  local:\n    type: duckdb\n"
        profiles += f"    path: {root / 'sluice.duckdb'}\n"
    (root / "profiles.yml").write_text(profiles)
    # On DAYS, fixed when this module was imported (a run may cross midnight, UTC).
    first = date.fromisoformat(DAYS[0])
    write_archive(root / "archive", 3000, events_per_file=500, files_per_day=2, first_day=first)
    assert [d.isoformat() for d in _archive_days(root)] == DAYS
    _ROOT.append(root)
    return root


def _archive_days(root: Path) -> list:
    from loader.sources.archive import received_day

    folders = (root / "archive" / "segment-logs" / "sample-source").iterdir()
    return sorted(received_day(str(f)) for f in folders)


def _defs(root: Path) -> dg.Definitions:
    return build_definitions(load_project(root / "sluice.yml"))


def _key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["local", SCHEMA, table])


def _materialize(
    defs: dg.Definitions, partition: str, selection=None, run_config=None, instance=None
):
    assets_def = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition))
    return dg.materialize(
        [assets_def],
        instance=instance or dg.DagsterInstance.ephemeral(),
        resources=defs.resources,
        partition_key=partition,
        selection=selection,
        run_config=run_config,
        raise_on_error=False,
    )


_ROOT: list[Path] = []


def _count(defs: dg.Definitions, sql: str) -> int:
    """A query through the loader's own profile, outside Dagster."""
    project = load_project(_ROOT[-1] / "sluice.yml")
    wh = open_warehouse(*project.load_profiles().target("local"))
    try:
        return list(wh.query(sql))[0][0]
    finally:
        wh.close()


def test_definitions_describe_every_table_without_touching_the_warehouse(
    project_dir: Path, tmp_path: Path
) -> None:
    # The PostgreSQL target's secret is not even needed to load the definitions.
    defs = _defs(project_dir)
    dg.Definitions.validate_loadable(defs)
    specs = {s.key: s for s in defs.resolve_all_asset_specs()}
    for table in ("tracks", "pages", "identifies", "users", "groups", "accounts", "aliases"):
        spec = specs[_key(table)]
        assert spec.group_name == "javascript_production__local"
        assert "sluice" in spec.kinds and spec.tags["sluice/table_type"] == "core"
    assert specs[_key("rejected_events")].tags["sluice/table_type"] == "rejects"
    checks = {(k.asset_key, k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert (_key("tracks"), "no_duplicate_ids") in checks
    assert (_key("pages"), "received_at_fresh") in checks
    assert (_key("rejected_events"), "reject_rate") in checks
    assert (_key("rejected_events"), "selective_sync_valid") in checks
    assets_def = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition))
    assert assets_def.partitions_def.get_first_partition_key() == "2026-11-01"
    assert assets_def.can_subset
    # Only the commit step is in the pool (plan and stage steps run at once, unpooled).
    assert {n.pool for n in assets_def.node_def.iterate_op_defs() if n.pool} == {
        "sluice__javascript_production__local"
    }
    # Turning a collection off in selective sync removes its asset.
    (project_dir / "selective_sync.yml").write_text(
        "version: 1\ntargets:\n  local:\n    javascript_production:\n      collections: [screens]\n"
    )
    specs = {s.key for s in _defs(project_dir).resolve_all_asset_specs()}
    assert _key("screens") not in specs and _key("pages") in specs


def test_materialize_a_day_emits_per_table_metadata_and_checks(project_dir: Path) -> None:
    defs = _defs(project_dir)
    result = _materialize(defs, DAYS[0])
    assert result.success
    events = {e.asset_key: e for e in result.get_asset_materialization_events()}
    tracks = events[_key("tracks")].materialization.metadata
    loaded = tracks["rows_loaded"].value
    assert loaded > 0
    assert tracks["dagster/row_count"].value == _count(
        defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"'
    )
    columns = {c.name for c in tracks["dagster/column_schema"].schema.columns}
    assert {"id", "received_at", "event", "context_page_path"} <= columns
    assert "event" in tracks["new_columns"].value
    assert "duration_s" in tracks and "rescued_values" in tracks and "rejects" in tracks
    # Event tables were discovered during the run: reported as materialisations too.
    assert _key("order_completed") in events
    rejects = events[_key("rejected_events")].materialization.metadata
    assert rejects["rejects"].value == 1 and rejects["lines_read"].value > 1000

    checks = {(c.asset_key, c.check_name): c for c in result.get_asset_check_evaluations()}
    assert checks[(_key("tracks"), "no_duplicate_ids")].passed
    assert checks[(_key("rejected_events"), "reject_rate")].passed
    assert checks[(_key("rejected_events"), "selective_sync_valid")].passed
    # Day 1 of the sample is two days old: past the 48 h window, so the freshness check
    # fails (a warning: the run still succeeded).
    fresh = checks[(_key("pages"), "received_at_fresh")]
    assert not fresh.passed
    assert fresh.metadata["threshold_hours"].value == 48
    assert fresh.metadata["age_hours"].value > 48

    # Only day 1 was loaded.
    days = _count(defs, f'SELECT count(DISTINCT CAST(received_at AS date)) FROM "{SCHEMA}"."pages"')
    assert days == 1
    # The catalog now knows the event tables: after a reload they are assets.
    assert "order_completed" in tables_of(project_dir, "local", SCHEMA)
    specs = {s.key for s in _defs(project_dir).resolve_all_asset_specs()}
    assert _key("order_completed") in specs

    # The sample ends yesterday: once its last day is loaded, the project as `sluice init`
    # writes it passes its own freshness check.
    later = _materialize(_defs(project_dir), DAYS[2], selection=[_key("pages")])
    assert later.success
    checks = {(c.asset_key, c.check_name): c for c in later.get_asset_check_evaluations()}
    fresh = checks[(_key("pages"), "received_at_fresh")]
    assert fresh.passed and fresh.metadata["age_hours"].value <= 48


def test_subset_loads_only_selected_tables_and_leaves_files_pending(project_dir: Path) -> None:
    defs = _defs(project_dir)
    assert _materialize(defs, DAYS[0]).success
    pages_before = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"')
    tracks_before = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"')

    subset = _materialize(defs, DAYS[1], selection=[_key("pages")])
    assert subset.success
    assert {e.asset_key for e in subset.get_asset_materialization_events()} == {_key("pages")}
    pages_mid = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"')
    assert pages_mid > pages_before
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"') == tracks_before

    # The full run of that day still loads everything else; pages are not doubled.
    assert _materialize(defs, DAYS[1]).success
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"') == pages_mid
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"') > tracks_before
    assert _count(defs, f'SELECT count(*) - count(DISTINCT id) FROM "{SCHEMA}"."tracks"') == 0

    # A replay of a loaded day (what a backfill does) changes nothing.
    replay = _materialize(
        defs,
        DAYS[0],
        run_config=dg.RunConfig(
            ops={"sync__javascript_production__local": SyncConfig(replay=True)}
        ),
    )
    assert replay.success
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"') == pages_mid


def test_invalid_selective_sync_fails_the_run_before_loading(project_dir: Path) -> None:
    defs = _defs(project_dir)
    (project_dir / "selective_sync.yml").write_text(
        "version: 1\ntargets:\n  local:\n    javascript_production:\n      mode: blocklist\n"
    )
    result = _materialize(defs, DAYS[0])
    assert not result.success
    checks = {(c.asset_key, c.check_name): c for c in result.get_asset_check_evaluations()}
    failed = checks[(_key("rejected_events"), "selective_sync_valid")]
    assert not failed.passed and "line 5" in str(failed.metadata["error"].value)


@pytest.mark.parametrize("warehouse_kind", ["duckdb"])
def test_schedule_requests_yesterday_and_today(project_dir: Path) -> None:
    defs = _defs(project_dir)
    schedule = defs.resolve_schedule_def("sync__javascript_production__local__schedule")
    assert schedule.cron_schedule == "0 * * * *"
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 11, 3, 5, 0, tzinfo=timezone.utc),
            repository_def=defs.get_repository_def(),
        )
        data = schedule.evaluate_tick(context)
    assert [r.partition_key for r in data.run_requests] == ["2026-11-02", "2026-11-03"]
    assert all(r.tags["sluice/trigger"] == "schedule" for r in data.run_requests)


def _cli_load(root: Path, days: tuple[str, str] | None = None) -> None:
    """A load as `sluice sync` does it: the loader, through the project's own profile."""
    from datetime import date

    from loader.sync.pipeline import Loader

    project = load_project(root / "sluice.yml")
    wh = open_warehouse(*project.load_profiles().target("local"))
    try:
        window = (date.fromisoformat(days[0]), date.fromisoformat(days[1])) if days else None
        report = Loader(wh, readers=0).load(project.archive_url(SCHEMA), SCHEMA, days=window)
        assert report.status == "success" and report.files_loaded > 0
        update_catalog(root, "local", SCHEMA, wh.read_schema(SCHEMA))  # as `sluice sync` does
    finally:
        wh.close()


def _tick(defs: dg.Definitions, name: str, instance, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    )
    return sensor.evaluate_tick(context)


NEW_FILES = "sync__javascript_production__local__new_files"


def test_sensor_requests_only_days_the_warehouse_has_not_loaded(project_dir: Path) -> None:
    defs = _defs(project_dir)
    with dg.DagsterInstance.ephemeral() as instance:
        # Nothing loaded yet: each day of the archive is requested, once.
        fresh = _tick(defs, NEW_FILES, instance)
        assert [r.partition_key for r in fresh.run_requests] == DAYS
        # The first two days were loaded by the CLI: a sensor turned on now (empty
        # cursor) requests only the third, not the whole archive.
        _cli_load(project_dir, (DAYS[0], DAYS[1]))
        first = _tick(defs, NEW_FILES, instance)
        assert [r.partition_key for r in first.run_requests] == [DAYS[2]]
        assert first.run_requests[0].tags["sluice/new_files"] == "2"
        # Requested already and not loaded yet: not requested again.
        again = _tick(defs, NEW_FILES, instance, first.cursor)
        assert again.run_requests == [] and "already requested" in again.skip_message
        # Everything loaded (a Dagster run of the day): nothing to do.
        assert _materialize(defs, DAYS[2]).success
        done = _tick(defs, NEW_FILES, instance, again.cursor)
        assert done.run_requests == [] and "every archive file" in done.skip_message
        # A new day arrives; and a late file for a loaded day.
        folders = sorted((project_dir / "archive" / "segment-logs" / "sample-source").iterdir())
        day4 = folders[-1].parent / str(int(folders[-1].name) + 86_400_000)
        shutil.copytree(folders[-1], day4)
        late = next(folders[0].iterdir())
        shutil.copy(late, late.with_name("late." + late.name))
        later = _tick(defs, NEW_FILES, instance, done.cursor)
    day4_key = (datetime.fromisoformat(DAYS[2]) + timedelta(days=1)).date().isoformat()
    assert [r.partition_key for r in later.run_requests] == [DAYS[0], day4_key]
    assert [r.tags["sluice/new_files"] for r in later.run_requests] == ["1", "2"]


OUTSIDE = "sync__javascript_production__local__outside_loads"


def _record(instance: dg.DagsterInstance, tick) -> None:
    """What Dagster's sensor daemon does with a tick's asset events."""
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)


def test_loads_made_by_the_cli_show_in_dagster(project_dir: Path) -> None:
    defs = _defs(project_dir)
    tracks, rejects = _key("tracks"), _key("rejected_events")
    with dg.DagsterInstance.ephemeral() as instance:
        empty = _tick(defs, OUTSIDE, instance)
        assert not empty.asset_events and "nothing has been loaded" in empty.skip_message
        _cli_load(project_dir, (DAYS[0], DAYS[1]))
        defs = _defs(project_dir)  # the code location reloads: event tables are assets
        assert instance.get_latest_materialization_event(tracks) is None
        # While a run of the sync job is under way, its loads are its own to report.
        running = instance.add_run(
            dg.DagsterRun(
                job_name="sync__javascript_production__local__job",
                status=dg.DagsterRunStatus.STARTED,
                tags={"sluice/source": SCHEMA, "sluice/target": "local"},
            )
        )
        waiting = _tick(defs, OUTSIDE, instance)
        assert not waiting.asset_events and "a Dagster run is loading" in waiting.skip_message
        instance.delete_run(running.run_id)
        tick = _tick(defs, OUTSIDE, instance)
        _record(instance, tick)
        # The assets and the loaded days' partitions are materialized, with the run.
        assert instance.get_materialized_partitions(tracks) == {DAYS[0], DAYS[1]}
        assert instance.get_materialized_partitions(rejects) == {DAYS[0], DAYS[1]}
        assert instance.get_materialized_partitions(_key("order_completed")) == {DAYS[0], DAYS[1]}
        metadata = instance.get_latest_materialization_event(tracks).asset_materialization.metadata
        assert metadata["files_loaded"].value == 2
        assert metadata["sluice/origin"].value == "outside Dagster"
        (run,) = _sync_runs(project_dir)
        assert metadata["sluice/sync_run_id"].value == run
        # Nothing new: nothing reported again.
        again = _tick(defs, OUTSIDE, instance, tick.cursor)
        assert not again.asset_events and "every load" in again.skip_message
        # Dagster's own run of day 3 is not reported a second time.
        assert _materialize(defs, DAYS[2], instance=instance).success
        before = len(_materializations(instance, tracks))
        after = _tick(defs, OUTSIDE, instance, again.cursor)
        assert not after.asset_events
        assert instance.get_materialized_partitions(tracks) == set(DAYS)
        # A late file of day 1, loaded by the CLI: day 1 is materialized again.
        folder = sorted((project_dir / "archive" / "segment-logs" / "sample-source").iterdir())[0]
        late = next(folder.iterdir())
        shutil.copy(late, late.with_name("late." + late.name))
        _cli_load(project_dir)
        late_tick = _tick(defs, OUTSIDE, instance, after.cursor)
        _record(instance, late_tick)
        assert {e.partition for e in late_tick.asset_events} == {DAYS[0]}
        assert len(_materializations(instance, tracks)) == before + 1


def _materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list:
    return instance.fetch_materializations(key, limit=100).records


def _sync_runs(root: Path) -> list[str]:
    project = load_project(root / "sluice.yml")
    wh = open_warehouse(*project.load_profiles().target("local"))
    try:
        return [r["run_id"] for r in wh.recent_runs()]
    finally:
        wh.close()


@pytest.mark.parametrize("warehouse_kind", ["duckdb"])
def test_runs_log_the_loaders_lines_and_everything_is_described(project_dir: Path) -> None:
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "sql" / "models", project_dir / "sql" / "models"
    )
    # Day 2 gets a file whose Order Completed events carry a property never seen before.
    from tests.helpers import track, write_ndjson

    day2 = sorted((project_dir / "archive" / "segment-logs" / "sample-source").iterdir())[1]
    write_ndjson(day2 / "extra.gz", [track("x-1", received=f"{DAYS[1]}T10:00:00Z", gift_wrap=True)])
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(_defs(project_dir), DAYS[0], instance=instance)
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
        second = _materialize(_defs(project_dir), DAYS[1], instance=instance)
        assert second.success
        messages += [e.user_message for e in instance.all_logs(second.run_id)]
    # The loader's own lines are in the runs' logs, next to Dagster's.
    assert any(
        m.startswith("committed batch into javascript_production: 2 file(s), 1001 line(s)")
        for m in messages
    )
    assert any(
        m.startswith("new table(s) in javascript_production: ") and "order_completed" in m
        for m in messages
    )
    assert "new column(s) in javascript_production: order_completed.gift_wrap" in messages
    assert any(m.startswith("rejected ") and ", line 12: " in m for m in messages)

    defs = _defs(project_dir)  # the catalog now knows every table's columns
    graph = defs.resolve_asset_graph()
    undescribed = []
    for assets_def in defs.assets:
        if isinstance(assets_def, dg.AssetsDefinition):
            undescribed += [str(c.key) for c in assets_def.check_specs if not c.description]
    undescribed += [s.name for s in defs.schedules if not s.description]
    undescribed += [s.name for s in defs.sensors if not s.description]
    columns = 0
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, spec.key
        schema = spec.metadata.get("dagster/column_schema")
        for column in schema.columns if schema else ():
            columns += 1
            if not column.description:
                undescribed.append(f"{spec.key.to_user_string()}.{column.name}")
    assert undescribed == []
    assert columns > 300 and len(defs.schedules) >= 2 and len(defs.sensors) == 2
    assert len(list(graph.asset_check_keys)) > 60
    # The run's own column schema is described too.
    tracks = {e.asset_key: e for e in result.get_asset_materialization_events()}[_key("tracks")]
    described = tracks.materialization.metadata["dagster/column_schema"].schema.columns
    assert all(c.description for c in described)
    by_name = {c.name: c.description for c in described}
    assert "messageId" in by_name["id"] and "context" in by_name["context_page_path"]

    # Every table of the source comes from its archive, an external asset.
    archive = dg.AssetKey(["archive", "javascript_production"])
    assert archive in graph.get(_key("tracks")).parent_keys
    assert archive in graph.get(_key("order_completed")).parent_keys
    assert not graph.get(archive).is_materializable
    assert str(project_dir / "archive") in graph.get(archive).description


@pytest.mark.parametrize("warehouse_kind", ["postgres"])
def test_secrets_are_env_vars_never_values(project_dir: Path) -> None:
    defs = _defs(project_dir)
    resource = defs.resources["warehouse_local"]
    # The resource names the target; the secret is read from the run's environment.
    assert resource.target == "local" and not hasattr(resource, "dsn")
    result = _materialize(defs, DAYS[0], selection=[_key("aliases")])
    assert result.success
    import os

    secret = os.environ["SLUICE_DG_TEST_DSN"]
    for event in result.all_events:
        assert secret not in str(event)


def test_dagster_definitions_validate_on_the_sample_project(tmp_path: Path) -> None:
    """What CI and `dagster dev` load: the sample project as `sluice init` writes it,
    with the shipped dagster.yaml as the instance configuration."""
    import os
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    init = subprocess.run(
        [str(bin_dir / "sluice"), "init", "demo", "--events", "500"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    demo = tmp_path / "demo"
    assert "default_limit: 1" in (demo / "dagster.yaml").read_text()
    result = subprocess.run(
        [str(bin_dir / "dagster"), "definitions", "validate", "-m", "dagster_project.definitions"],
        cwd=demo,
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": str(demo)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Validation successful" in result.stderr + result.stdout


@contextmanager
def _stripe_payments(project_dir: Path, settings: str) -> Iterator[FakeStripe]:
    """A fake Stripe with three customers, added to the project as the `payments`
    source with `settings` (sluice.yml lines under it); stopped after the test."""
    stripe = FakeStripe()
    try:
        for i in range(3):
            stripe.create("customers", id=f"cus_{i}", email=f"c{i}@example.com")
        with (project_dir / "sluice.yml").open("a") as out:
            out.write(
                f"  payments:\n    kind: stripe\n    api_key: sk_test\n"
                f"    base_url: {stripe.url}\n{settings}"
            )
        yield stripe
    finally:
        stripe.stop()


@pytest.mark.parametrize("warehouse_kind", ["duckdb"])
def test_cloud_source_collections_are_assets(project_dir: Path) -> None:
    with _stripe_payments(project_dir, "    schedule: '*/30 * * * *'\n") as stripe:
        stripe.create("charges", id="ch_0", amount=5)
        defs = _defs(project_dir)
        pay = dg.AssetKey(["local", "payments", "customers"])
        specs = {s.key: s for s in defs.resolve_all_asset_specs()}
        assert specs[pay].tags["sluice/table_type"] == "collection"
        assert dg.AssetKey(["local", "payments", "subscriptions"]) in specs
        assets_def = next(
            a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and pay in a.keys
        )
        result = dg.materialize(
            [assets_def],
            instance=dg.DagsterInstance.ephemeral(),
            resources=defs.resources,
            selection=[pay],
            raise_on_error=False,
        )
        assert result.success
        (event,) = result.get_asset_materialization_events()
        metadata = event.materialization.metadata
        assert event.asset_key == pay and metadata["rows_loaded"].value == 3
        assert metadata["dagster/row_count"].value == 3
        # Only the selected collection was fetched.
        # Only the selected collection was fetched (and the events high-water mark).
        assert {p for _, p, _, _ in stripe.requests} == {"/v1/customers", "/v1/events"}
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["no_duplicate_ids"]
        schedule = defs.resolve_schedule_def("sync__payments__local__schedule")
        with dg.DagsterInstance.ephemeral() as instance:
            tick = schedule.evaluate_tick(
                dg.build_schedule_context(
                    instance=instance,
                    scheduled_execution_time=datetime(2026, 11, 3, 5, 0, tzinfo=timezone.utc),
                    repository_def=defs.get_repository_def(),
                )
            )
        assert [r.partition_key for r in tick.run_requests] == [None]


@pytest.mark.parametrize("warehouse_kind", ["postgres"])
def test_cloud_syncs_made_by_the_cli_show_in_dagster(project_dir: Path) -> None:
    from loader.sources.cloud.registry import connector_for
    from loader.sync.object_pipeline import ObjectLoader

    with _stripe_payments(project_dir, "    collections: [customers, charges]\n") as stripe:
        defs = _defs(project_dir)
        customers = dg.AssetKey(["local", "payments", "customers"])
        name = "sync__payments__local__outside_loads"
        with dg.DagsterInstance.ephemeral() as instance:
            # A `sluice sync` of the source, outside Dagster.
            project = load_project(project_dir / "sluice.yml")
            wh = open_warehouse(*project.load_profiles().target("local"))
            try:
                report = ObjectLoader(wh).sync(
                    connector_for(project.source("payments"), project_dir), "payments"
                )
            finally:
                wh.close()
            assert report.rows_loaded["customers"] == 3
            tick = _tick(defs, name, instance)
            _record(instance, tick)
            # customers got rows; charges had none, so it is not claimed.
            assert [e.asset_key for e in tick.asset_events] == [customers]
            event = instance.get_latest_materialization_event(customers)
            metadata = event.asset_materialization.metadata
            assert metadata["rows_loaded"].value == 3
            assert metadata["sluice/sync_run_id"].value == report.run_id
            again = _tick(defs, name, instance)
            assert not again.asset_events and "every sync" in again.skip_message
            # Dagster's own sync is not reported a second time.
            stripe.create("customers", id="cus_9", email="c9@example.com")
            assets_def = next(
                a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and customers in a.keys
            )
            assert dg.materialize(
                [assets_def], instance=instance, resources=defs.resources, selection=[customers]
            ).success
            after = _tick(defs, name, instance)
            assert not after.asset_events


def test_reverse_etl_models_are_assets_downstream_of_their_tables(project_dir: Path) -> None:
    models = project_dir / "sql" / "models"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sql" / "models", models)
    (models / "plans.sql").write_text(
        "SELECT u.id AS user_id, u.plan FROM {{ schema }}.users AS u WHERE u.plan IS NOT NULL\n"
    )
    (models / "plans.yml").write_text(
        "key: user_id\nmode: upsert\ndestination:\n  type: file\n"
        f"  path: {project_dir / 'exports'}\n  format: ndjson\n"
    )
    # The template's sluice.yml already says `models: sql/models` (a second one is an error).
    assert "\nmodels: sql/models" in (project_dir / "sluice.yml").read_text()
    defs = _defs(project_dir)
    graph = defs.resolve_asset_graph()
    revenue = dg.AssetKey(["reverse_etl", "segment", "users_lifetime_revenue"])
    assert graph.get(revenue).parent_keys == {_key("users"), _key("order_completed")}
    accounts = dg.AssetKey(["reverse_etl", "webhook", "accounts_active_users_7d"])
    assert graph.get(accounts).parent_keys == {_key("accounts"), _key("groups"), _key("tracks")}
    assert defs.resolve_schedule_def("retl__users_lifetime_revenue__schedule")

    assert _materialize(defs, DAYS[0]).success
    plans = dg.AssetKey(["reverse_etl", "file", "plans"])
    plans_def = next(
        a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and plans in a.keys
    )
    result = dg.materialize(
        [plans_def], instance=dg.DagsterInstance.ephemeral(), resources=defs.resources
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    sent = event.materialization.metadata["records_sent"].value
    users = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."users" WHERE plan IS NOT NULL')
    assert sent == users > 0
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    files = [p for p in (project_dir / "exports").rglob("*") if p.is_file()]
    exported = sum(len(p.read_text().splitlines()) for p in files)
    assert exported == users
