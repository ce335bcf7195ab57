"""The adapter contract (tests/contract.py) on DuckDB, PostgreSQL and ClickHouse."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract import CONTRACT


@pytest.fixture(params=["duckdb", "postgres", "clickhouse"])
def warehouse_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("scenario", CONTRACT, ids=lambda s: s.__name__)
def test_contract(scenario, open_wh, tmp_path: Path) -> None:
    scenario(open_wh, tmp_path)
