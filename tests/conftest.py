"""Shared fixtures: a real PostgreSQL (started here when none is reachable), real DuckDB,
and an embedded ClickHouse (chdb, for the tests that ask for it)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from loader.sources.sample import write_archive
from tests.clickhouse_fixture import clickhouse_factory  # noqa: F401 - a fixture


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SLUICE_TEST_PG_DSN, else the local server on 5432, else one we start ourselves."""
    dsn = os.environ.get("SLUICE_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    if _listening("127.0.0.1", 5432):
        yield "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        return
    import pgserver  # a self-contained PostgreSQL, for machines with none running

    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    name = f"sluice_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_admin_dsn)
    info["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["duckdb", "postgres"])
def warehouse_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_wh(warehouse_kind: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A factory opening (possibly several times) the same fresh target."""
    opened = []
    if warehouse_kind == "clickhouse":
        yield request.getfixturevalue("clickhouse_factory")
        return
    if warehouse_kind == "postgres":
        dsn = request.getfixturevalue("pg_dsn")

        def factory():
            from loader.warehouses.postgres import PostgresWarehouse

            wh = PostgresWarehouse("pg_test", dsn)
            opened.append(wh)
            return wh
    else:
        path = str(tmp_path / "wh.duckdb")

        def factory():
            from loader.warehouses.duckdb import DuckDBWarehouse

            for wh in opened:
                try:
                    wh.close()
                except Exception:  # noqa: BLE001
                    pass
            wh = DuckDBWarehouse("duck_test", path)
            opened.append(wh)
            return wh

    yield factory
    for wh in opened:
        try:
            wh.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture(scope="session")
def sample_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_archive(root, 6000, events_per_file=1500)
    return root
