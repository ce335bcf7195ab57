"""A Dagster backfill scales out: one run of a day range stages its partitions in
parallel steps of the multiprocess executor (no pool, no warehouse), then one pooled
commit step commits them in day order; the tables are a serial replay's."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.assets import op_name, pool_name
from loader.sync.pipeline import Loader
from loader.sync.project import load_project
from loader.warehouses.registry import open_warehouse
from tests import dagster_staged_defs
from tests.test_dagster import DAYS, SCHEMA, _defs, _key, project_dir  # noqa: F401, F811 - a fixture
from tests.test_duckdb_arrow_path import _same, content

NAME = op_name(SCHEMA, "local")


def _backfill_tags() -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": DAYS[0],
        "dagster/asset_partition_range_end": DAYS[-1],
        "dagster/backfill": "staged-test",
    }


def _steps(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """step key -> {start, end: event timestamps, pid: the step's process}."""
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            steps.setdefault(event.step_key, {})["start"] = entry.timestamp
            steps[event.step_key]["pid"] = event.pid
            steps[event.step_key]["starts"] = steps[event.step_key].get("starts", 0) + 1
        elif event.event_type_value == "STEP_SUCCESS":
            steps.setdefault(event.step_key, {})["end"] = entry.timestamp
    return steps


def test_a_backfill_stages_days_in_parallel_and_commits_them_once_in_order(
    project_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SLUICE_STAGED_ROOT", str(project_dir))
    monkeypatch.setenv("SLUICE_STAGED_SLEEP", "3")
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.set_concurrency_slots(pool_name(SCHEMA, "local"), 1)
        result = dg.execute_job(
            dg.reconstructable(dagster_staged_defs.staged_job),
            instance=instance,
            tags=_backfill_tags(),
        )
        assert result.success
        assert len(instance.get_runs()) == 1
        steps = _steps(instance, result.run_id)
        stages = {k: v for k, v in steps.items() if "__stage[" in k}
        assert sorted(stages) == sorted(
            f"{NAME}.{NAME}__stage[{d.replace('-', '_')}]" for d in DAYS
        )
        # Each day in its own process, all of them at once.
        assert len({s["pid"] for s in stages.values()}) == len(DAYS)
        assert max(s["start"] for s in stages.values()) < min(s["end"] for s in stages.values())
        commits = [v for k, v in steps.items() if k.endswith("__commit")]
        assert len(commits) == 1 and commits[0]["starts"] == 1
        assert commits[0]["start"] >= max(s["end"] for s in stages.values())
        tracks = instance.get_materialized_partitions(_key("tracks"))
        assert tracks == set(DAYS)
        assert instance.get_materialized_partitions(_key("rejected_events")) == set(DAYS)
        checks = {
            (e.asset_key, e.check_name): e.passed for e in result.get_asset_check_evaluations()
        }
        assert checks[(_key("tracks"), "no_duplicate_ids")]
        assert checks[(_key("rejected_events"), "selective_sync_valid")]

    # Nothing staged is left behind.
    staging = project_dir / ".sluice" / "staging"
    assert [p for p in staging.rglob("*") if p.is_file()] == []

    # The tables are those of a serial replay of the same days (into another schema).
    project = load_project(project_dir / "sluice.yml")
    wh = open_warehouse(*project.load_profiles().target("local"))
    try:
        first, last = date.fromisoformat(DAYS[0]), date.fromisoformat(DAYS[-1])
        serial = Loader(wh, readers=0).replay(
            project.archive_url(SCHEMA), "serial_copy", first, last
        )
        assert serial.status == "success" and serial.files_loaded > 0
        staged = content(wh, SCHEMA)
        assert staged and "tracks" in staged
        _same(staged, content(wh, "serial_copy"))
    finally:
        wh.close()


def test_a_subset_backfill_loads_serially_in_the_commit_step(project_dir: Path) -> None:  # noqa: F811
    defs = _defs(project_dir)
    assets_def = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition))
    result = dg.materialize(
        [assets_def],
        instance=dg.DagsterInstance.ephemeral(),
        resources=defs.resources,
        selection=[_key("pages")],
        tags=_backfill_tags(),
    )
    assert result.success
    stage_steps = {
        e.step_key
        for e in result.all_events
        if e.event_type_value == "STEP_START" and "__stage[" in (e.step_key or "")
    }
    assert stage_steps == {f"{NAME}.{NAME}__stage[none]"}  # nothing was staged
    pages = [e for e in result.get_asset_materialization_events() if e.asset_key == _key("pages")]
    assert sorted(e.materialization.partition for e in pages) == DAYS
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {_key("pages")}
    project = load_project(project_dir / "sluice.yml")
    wh = open_warehouse(*project.load_profiles().target("local"))
    try:
        assert set(wh.read_schema(SCHEMA)) == {"pages"}
    finally:
        wh.close()
