"""profiles.example.yml is the reference an admin copies: every target in it must be
accepted by its adapter's settings, and every setting an adapter reads must be in it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from loader.config.profiles import load_profiles

EXAMPLE = Path(__file__).resolve().parent.parent / "profiles.example.yml"
# type -> (adapter module, its settings model)
ADAPTER_SETTINGS = {
    "snowflake": ("loader.config.targets", "SnowflakeTarget"),
    "redshift": ("loader.config.targets", "RedshiftTarget"),
    "bigquery": ("loader.config.targets", "BigQueryTarget"),
}


# Targets whose settings model is profiles.yml's own (parsed with the file).
CONFIG_SETTINGS = {"clickhouse": ("loader.config.targets", "ClickHouseTarget")}


def _settings_model(kind: str) -> type:
    module, name = {**ADAPTER_SETTINGS, **CONFIG_SETTINGS}[kind]
    return getattr(importlib.import_module(module), name)


@pytest.fixture
def profiles(monkeypatch: pytest.MonkeyPatch):
    text = EXAMPLE.read_text()
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)):
        monkeypatch.setenv(name, f"example-{name.lower()}")
    return load_profiles(EXAMPLE)


def test_every_example_target_is_accepted_by_its_adapter(profiles) -> None:
    kinds = {target.type for target in profiles.targets.values()}
    assert kinds >= {"duckdb", "postgres", "snowflake", "redshift", "bigquery", "clickhouse"}
    for name, target in profiles.targets.items():
        if target.type in ADAPTER_SETTINGS:
            settings = _settings_model(target.type).from_target(name, target)
            assert settings.type == target.type


@pytest.mark.parametrize("kind", sorted({**ADAPTER_SETTINGS, **CONFIG_SETTINGS}))
def test_every_adapter_setting_is_documented(kind: str) -> None:
    text = EXAMPLE.read_text()
    section = text[text.index(f"type: {kind}") :]
    following = re.search(r"\n  [a-z_]+:\n", section)
    section = section[: following.start()] if following else section
    missing = [
        field
        for field in _settings_model(kind).model_fields
        if field != "type" and not re.search(rf"^\s*#?\s*{field}:", section, re.MULTILINE)
    ]
    assert missing == [], f"profiles.example.yml lacks {kind} settings {missing}"


def test_duckdb_memory_limit_and_threads_reach_duckdb(tmp_path: Path) -> None:
    from loader.config.targets import DuckDBTarget
    from loader.warehouses.base import WarehouseError
    from loader.warehouses.registry import open_warehouse

    target = DuckDBTarget(
        type="duckdb", path=str(tmp_path / "w.duckdb"), memory_limit="256MB", threads=1
    )
    wh = open_warehouse("local", target)
    try:
        ((memory, threads),) = wh.query(
            "SELECT current_setting('memory_limit'), current_setting('threads')"
        )
        assert (memory, int(threads)) == ("244.1 MiB", 1)
    finally:
        wh.close()
    # Without a setting, a load is bounded all the same (DuckDB's own default: 80% of RAM).
    wh = open_warehouse("local", DuckDBTarget(type="duckdb", path=str(tmp_path / "d.duckdb")))
    try:
        ((memory,),) = wh.query("SELECT current_setting('memory_limit')")
        assert memory == "953.6 MiB"  # 1GB, as DuckDB prints it
    finally:
        wh.close()
    bad = DuckDBTarget(type="duckdb", path=str(tmp_path / "x.duckdb"), memory_limit="lots")
    with pytest.raises(WarehouseError, match="target 'local'.*memory_limit"):
        open_warehouse("local", bad)
