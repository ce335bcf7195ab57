"""`sluice retl plan|run` as a user runs them: output, exit codes, stored reports, no
secret in any output; against a real loopback webhook, on DuckDB and PostgreSQL."""

# ruff: noqa: F811 - `receiver` is a fixture imported from test_reverse_etl

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_cli import sluice
from tests.test_reverse_etl import (  # noqa: F401
    SECRET,
    Receiver,
    Reply,
    make_customers,
    receiver,
    webhook,
    write_model,
)


@pytest.fixture
def project(tmp_path: Path, pg_dsn: str, receiver: Receiver) -> Path:
    """profiles.yml with a DuckDB and a PostgreSQL target, both holding src.customers."""
    from loader.warehouses.duckdb import DuckDBWarehouse
    from loader.warehouses.postgres import PostgresWarehouse

    (tmp_path / "profiles.yml").write_text(
        yaml.safe_dump(
            {
                "default_target": "duck",
                "targets": {
                    "duck": {"type": "duckdb", "path": str(tmp_path / "wh.duckdb")},
                    "pg": {"type": "postgres", "dsn": pg_dsn},
                },
            }
        )
    )
    for wh in (
        DuckDBWarehouse("duck", str(tmp_path / "wh.duckdb")),
        PostgresWarehouse("pg", pg_dsn),
    ):
        make_customers(wh, 12)
        wh.close()
    write_model(tmp_path / "sql" / "models", webhook(receiver, batch_size=5, max_attempts=3))
    return tmp_path


def reports(project: Path) -> list[dict[str, Any]]:
    from loader.warehouses.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse("duck", str(project / "wh.duckdb"))
    try:
        return wh.retl_recent_runs("customers")
    finally:
        wh.close()


@pytest.mark.parametrize("target", ["duck", "pg"])
def test_plan_then_run_then_nothing_left(project: Path, receiver: Receiver, target: str) -> None:
    env = {"RETL_TEST_TOKEN": SECRET}
    plan = sluice("retl", "plan", "customers", "--target", target, cwd=project)
    assert plan.returncode == 0, plan.stderr
    assert "12 added, 0 changed, 0 removed, 0 unchanged" in plan.stdout
    assert "upsert (this model)" in plan.stdout and "first 5 of 12" in plan.stdout
    assert '"customer_id":"c01"' in plan.stdout
    assert receiver.requests == []  # a plan sends nothing

    receiver.script = [(503, {}, ""), (429, {"Retry-After": "0"}, "")]
    first = sluice("retl", "run", "customers", "--target", target, cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    assert "success" in first.stdout and "sent: 12 added, 0 changed" in first.stdout
    assert len(receiver.accepted()) == 12
    assert SECRET not in first.stdout + first.stderr

    again = sluice("retl", "plan", "customers", "--target", target, cwd=project)
    assert "0 added, 0 changed, 0 removed, 12 unchanged" in again.stdout
    assert "nothing to send" in again.stdout


def test_failed_records_exit_1_and_go_out_next_run(project: Path, receiver: Receiver) -> None:
    env = {"RETL_TEST_TOKEN": SECRET}
    down = {"on": True}

    def reject_c08(body: dict[str, Any], headers: dict[str, str]) -> Reply | None:
        if down["on"] and any(r["key"] == "c08" for r in body["records"]):
            return 500, {}, "down"
        return None

    receiver.rule = reject_c08
    first = sluice("retl", "run", "customers", cwd=project, env=env)
    assert first.returncode == 1
    assert "partial" in first.stdout and "failed: 5" in first.stdout
    assert "failed upsert c06: HTTP 500 after 3 attempts" in first.stdout
    assert "retried by the next run" in first.stdout

    down["on"] = False
    second = sluice("retl", "run", "customers", cwd=project, env=env)
    assert second.returncode == 0 and "sent: 5 added" in second.stdout
    keys = sorted(r["key"] for r in receiver.accepted())
    assert keys == [f"c{i:02d}" for i in range(1, 13)]  # each exactly once

    stored = reports(project)
    assert [r["status"] for r in stored] == ["success", "partial"]
    assert stored[1]["failed"] == 5 and stored[1]["sent"] == {"added": 7, "changed": 0}
    assert SECRET not in json.dumps(stored)


def test_configuration_errors_exit_2(project: Path, receiver: Receiver) -> None:
    missing = sluice("retl", "run", "customers", cwd=project, env={"RETL_TEST_TOKEN": ""})
    assert missing.returncode == 2 and "RETL_TEST_TOKEN" in missing.stderr
    assert receiver.requests == []

    unknown = sluice("retl", "plan", "nope", cwd=project)
    assert unknown.returncode == 2 and "model 'nope' not found" in unknown.stderr

    target = sluice("retl", "plan", "customers", "--target", "nowhere", cwd=project)
    assert target.returncode == 2 and "unknown target 'nowhere'" in target.stderr

    yml = project / "sql" / "models" / "customers.yml"
    yml.write_text(yml.read_text().replace("mode: upsert", "mode: upsrt"))
    bad = sluice("retl", "plan", "customers", cwd=project)
    assert bad.returncode == 2 and "customers.yml, line 2: field 'mode'" in bad.stderr
    assert "Traceback" not in bad.stderr

    (project / "sql" / "models" / "customers.yml").write_text(
        yaml.safe_dump({"key": "customer_id", "schema": "src", "destination": {"type": "file"}})
    )
    fields = sluice("retl", "plan", "customers", cwd=project)
    assert fields.returncode == 2 and "field 'destination.path'" in fields.stderr


def test_models_dir_option_and_sql_error_exit_1(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "broken.sql").write_text("SELECT id AS customer_id FROM {{ schema }}.no_such_table")
    (other / "broken.yml").write_text(
        "key: customer_id\nschema: src\ndestination:\n  type: file\n  path: out\n"
    )
    result = sluice("retl", "plan", "broken", "--models-dir", str(other), cwd=project)
    assert result.returncode == 1 and "model 'broken' failed" in result.stderr
    assert "no_such_table" in result.stderr and "Traceback" not in result.stderr


def test_sample_project_plans_its_example_models(tmp_path: Path) -> None:
    """`sluice init` ships the example models; `sluice retl` finds them via sluice.yml."""
    from tests.test_cli import sluice as run_sluice

    assert run_sluice("init", "demo", "--events", "3000", cwd=tmp_path).returncode == 0
    demo = tmp_path / "demo"
    assert (demo / "sql" / "models" / "users_lifetime_revenue.sql").exists()
    assert run_sluice("sync", cwd=demo).returncode == 0
    plan = run_sluice("retl", "plan", "users_lifetime_revenue", cwd=demo)
    assert plan.returncode == 0, plan.stderr
    assert "added" in plan.stdout
