"""Exactly once under kill -9 and under concurrent syncs, on real PostgreSQL and DuckDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loader.sources.sample import write_archive
from loader.sync.pipeline import Loader
from loader.warehouses.base import LockBusy
from loader.warehouses.duckdb import DuckDBWarehouse
from loader.warehouses.postgres import PostgresWarehouse
from tests.helpers import profiles_for, snapshot, table_rows, write_profiles


def _load_cmd(archive: Path, profiles: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loader.cli.app",
        "load",
        str(archive),
        "--schema",
        "src",
        "--profiles",
        str(profiles),
        "--batch-lines",
        "500",
        "--verbose",  # one "committed:" line per batch on stderr (not a terminal)
    ]


@pytest.fixture(scope="module")
def crash_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    write_archive(root, 12_000, events_per_file=500)  # 24 files, 24 batches
    return root


@pytest.mark.parametrize("kind", ["postgres", "duckdb"])
def test_kill_9_mid_load_then_rerun_gives_no_duplicate_and_no_gap(
    kind: str, crash_archive: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    profiles, where = profiles_for(kind, tmp_path, request)

    proc = subprocess.Popen(
        _load_cmd(crash_archive, profiles), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # Kill once some, but not all, batches have committed (one progress line each).
    committed = 0
    while committed < 4:
        line = proc.stderr.readline()
        assert line, "the load ended before it could be killed"
        committed += line.startswith(b"committed:")
    assert proc.poll() is None, "the load finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    if kind == "postgres":
        wh = PostgresWarehouse("t", where)
        partial = wh.loaded_files("src")
        assert 0 < len(partial) < 24
        wh.close()

    rerun = subprocess.run(
        _load_cmd(crash_archive, profiles), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr

    wh = PostgresWarehouse("t", where) if kind == "postgres" else DuckDBWarehouse("t", where)
    try:
        # The same archive loaded without interruption, same batching, beside it.
        Loader(wh, batch_lines=500).load(str(crash_archive), "clean")
        assert snapshot(wh, "src") == snapshot(wh, "clean")
        ((n, distinct),) = table_rows(wh, "SELECT count(*), count(DISTINCT id) FROM src.tracks")
        assert n == distinct > 0
        assert len(wh.loaded_files("src")) == 24
    finally:
        wh.close()


def test_second_concurrent_sync_is_refused_on_postgres(
    pg_dsn: str, sample_archive: Path, tmp_path: Path
) -> None:
    holder = PostgresWarehouse("t", pg_dsn)
    other = PostgresWarehouse("t", pg_dsn)
    profiles = write_profiles(tmp_path / "profiles.yml", "postgres", pg_dsn)
    try:
        with holder.lock("src"):
            with pytest.raises(LockBusy, match="schema 'src' into target 't'"):
                Loader(other).load(str(sample_archive), "src")
            cli = subprocess.run(
                _load_cmd(sample_archive, profiles), capture_output=True, text=True, timeout=120
            )
            assert cli.returncode == 1
            assert "another sync is loading schema 'src'" in cli.stderr
            assert other.loaded_files("src") == set()
        # Once released, the waiting sync goes ahead; a different schema never waited.
        assert Loader(other).load(str(sample_archive), "src").status == "success"
    finally:
        holder.close()
        other.close()


def test_second_concurrent_sync_is_refused_on_duckdb(sample_archive: Path, tmp_path: Path) -> None:
    db = tmp_path / "busy.duckdb"
    profiles = write_profiles(tmp_path / "profiles.yml", "duckdb", str(db))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        cli = subprocess.run(
            _load_cmd(sample_archive, profiles), capture_output=True, text=True, timeout=120
        )
        assert cli.returncode == 1
        assert "is open in another process" in cli.stderr
    finally:
        holder.kill()
        holder.wait()
