"""The Dagster code location as a data engineer uses it: assets per table, partitions by
received day, subsets, metadata, checks, schedules and sensors, on DuckDB and PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from importlib.resources import files as package_files
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.assets import SyncConfig
from dagster_project.definitions import build_definitions
from loader.catalog import tables_of
from loader.project import load_project
from loader.sample import write_archive
from loader.warehouses.registry import open_warehouse

SCHEMA = "javascript_production"


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
    write_archive(root / "archive", 3000, events_per_file=500, files_per_day=2)
    _ROOT.append(root)
    return root


def _defs(root: Path) -> dg.Definitions:
    return build_definitions(load_project(root / "sluice.yml"))


def _key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["local", SCHEMA, table])


def _materialize(defs: dg.Definitions, partition: str, selection=None, run_config=None):
    assets_def = next(iter(defs.assets))
    return dg.materialize(
        [assets_def],
        instance=dg.DagsterInstance.ephemeral(),
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
    assets_def = next(iter(defs.assets))
    assert assets_def.partitions_def.get_first_partition_key() == "2026-11-01"
    assert assets_def.can_subset
    assert {n.pool for n in assets_def.node_def.iterate_op_defs()} == {
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
    result = _materialize(defs, "2026-11-01")
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
    # The sample archive is from 2026-11-01: older than the 48 h window today, so the
    # freshness check fails (a warning: the run still succeeded).
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

    # With a window wider than the data's age (50 years), the same check passes.
    config = project_dir / "sluice.yml"
    config.write_text(config.read_text().replace("freshness_hours: 48", "freshness_hours: 438000"))
    later = _materialize(_defs(project_dir), "2026-11-02", selection=[_key("pages")])
    assert later.success
    checks = {(c.asset_key, c.check_name): c for c in later.get_asset_check_evaluations()}
    fresh = checks[(_key("pages"), "received_at_fresh")]
    assert fresh.passed and fresh.metadata["threshold_hours"].value == 438000


def test_subset_loads_only_selected_tables_and_leaves_files_pending(project_dir: Path) -> None:
    defs = _defs(project_dir)
    assert _materialize(defs, "2026-11-01").success
    pages_before = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"')
    tracks_before = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"')

    subset = _materialize(defs, "2026-11-02", selection=[_key("pages")])
    assert subset.success
    assert {e.asset_key for e in subset.get_asset_materialization_events()} == {_key("pages")}
    pages_mid = _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"')
    assert pages_mid > pages_before
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"') == tracks_before

    # The full run of that day still loads everything else; pages are not doubled.
    assert _materialize(defs, "2026-11-02").success
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."pages"') == pages_mid
    assert _count(defs, f'SELECT count(*) FROM "{SCHEMA}"."tracks"') > tracks_before
    assert _count(defs, f'SELECT count(*) - count(DISTINCT id) FROM "{SCHEMA}"."tracks"') == 0

    # A replay of a loaded day (what a backfill does) changes nothing.
    replay = _materialize(
        defs,
        "2026-11-01",
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
    result = _materialize(defs, "2026-11-01")
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


@pytest.mark.parametrize("warehouse_kind", ["duckdb"])
def test_sensor_requests_a_run_per_day_with_new_files(project_dir: Path) -> None:
    defs = _defs(project_dir)
    sensor = defs.resolve_sensor_def("sync__javascript_production__local__new_files")
    repo = defs.get_repository_def()
    with dg.DagsterInstance.ephemeral() as instance:
        first = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=repo)
        )
        assert [r.partition_key for r in first.run_requests] == [
            "2026-11-01",
            "2026-11-02",
            "2026-11-03",
        ]
        again = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, repository_def=repo)
        )
        assert again.run_requests == [] and "no new archive files" in again.skip_message
        # A new day arrives.
        day3 = sorted((project_dir / "archive" / "segment-logs" / "sample-source").iterdir())[-1]
        day4 = day3.parent / str(int(day3.name) + 86_400_000)
        shutil.copytree(day3, day4)
        later = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, cursor=first.cursor, repository_def=repo)
        )
    assert [r.partition_key for r in later.run_requests] == ["2026-11-04"]


@pytest.mark.parametrize("warehouse_kind", ["postgres"])
def test_secrets_are_env_vars_never_values(project_dir: Path) -> None:
    defs = _defs(project_dir)
    resource = defs.resources["warehouse_local"]
    # The resource names the target; the secret is read from the run's environment.
    assert resource.target == "local" and not hasattr(resource, "dsn")
    result = _materialize(defs, "2026-11-01", selection=[_key("aliases")])
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


@pytest.mark.parametrize("warehouse_kind", ["duckdb"])
def test_cloud_source_collections_are_assets(project_dir: Path) -> None:
    from tests.fake_apis import FakeStripe

    stripe = FakeStripe()
    try:
        for i in range(3):
            stripe.create("customers", id=f"cus_{i}", email=f"c{i}@example.com")
        stripe.create("charges", id="ch_0", amount=5)
        with (project_dir / "sluice.yml").open("a") as out:
            out.write(
                f"  payments:\n    kind: stripe\n    api_key: sk_test\n"
                f"    base_url: {stripe.url}\n    schedule: '*/30 * * * *'\n"
            )
        defs = _defs(project_dir)
        pay = dg.AssetKey(["local", "payments", "customers"])
        specs = {s.key: s for s in defs.resolve_all_asset_specs()}
        assert specs[pay].tags["sluice/table_type"] == "collection"
        assert dg.AssetKey(["local", "payments", "subscriptions"]) in specs
        assets_def = next(a for a in defs.assets if pay in a.keys)
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
    finally:
        stripe.stop()


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

    assert _materialize(defs, "2026-11-01").success
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
