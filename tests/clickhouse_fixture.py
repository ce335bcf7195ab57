"""An embedded ClickHouse per test (chdb, in this process): a fresh data folder each.

chdb runs one engine per process, on one folder at a time: a test's connections share
its folder, and the factory closes the earlier ones before opening another (as a later
sync would find the folder closed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loader.config.targets import ClickHouseTarget


def clickhouse_target(folder: Path) -> ClickHouseTarget:
    return ClickHouseTarget(type="clickhouse", path=str(folder))


@pytest.fixture
def clickhouse_factory(tmp_path: Path) -> Iterator[Callable[[], object]]:
    from loader.warehouses.clickhouse import ClickHouseWarehouse

    opened: list[ClickHouseWarehouse] = []
    target = clickhouse_target(tmp_path / "clickhouse")

    def factory() -> ClickHouseWarehouse:
        while opened:
            opened.pop().close()
        wh = ClickHouseWarehouse("ch_test", target)
        opened.append(wh)
        return wh

    yield factory
    while opened:
        opened.pop().close()
