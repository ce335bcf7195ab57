"""`_sluice` bookkeeping and replays on real DuckDB and PostgreSQL: a replay of loaded
data changes nothing (every table, every column, uuid_ts and `_sluice` included), files
are known by their path under the archive root, rejects by file and line, profiles
follow a trait's newest value even when it was rescued, and the bookkeeping tolerates
concurrent first syncs and readers."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from loader.sources.archive import list_files
from loader.sources.sample import write_archive
from loader.sync.pipeline import Loader
from loader.warehouses.base import LockBusy
from loader.warehouses.postgres import PostgresWarehouse
from tests.helpers import identify, table_rows, track, write_ndjson

EVERY_DAY = (date(2000, 1, 1), date(2100, 1, 1))


def everything(wh: Any, *schemas: str) -> dict[str, list[str]]:
    """Every row of every table of `schemas` and of `_sluice`, every column (uuid_ts,
    loaded_at, rejected_at...), as text; not sync_runs, which records each run."""
    out: dict[str, list[str]] = {}
    for schema in (*schemas, "_sluice"):
        for table in sorted(wh.read_schema(schema)):
            if schema == "_sluice" and table == "sync_runs":
                continue
            rows = wh.query(f"SELECT * FROM {wh.table_ref(schema, table)}")
            out[f"{schema}.{table}"] = sorted(repr(tuple(r)) for r in rows)
    return out


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


@pytest.fixture
def small_archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    write_archive(root, 2000, events_per_file=500)  # identifies, groups, one broken line
    return root


def test_replaying_loaded_days_changes_nothing_byte_for_byte(open_wh, small_archive: Path) -> None:
    wh = open_wh()
    loader = Loader(wh, batch_lines=1000, readers=0)
    assert loader.load(str(small_archive), "src").rejects == 1
    before = everything(wh, "src")
    assert before["src.users"] and before["src.accounts"]
    assert len(before["_sluice.rejected_events"]) == 1
    for _ in range(3):
        report = loader.replay(str(small_archive), "src", *EVERY_DAY)
        assert report.status == "success" and report.files_loaded == 4
        assert everything(wh, "src") == before
    ((rejects,),) = table_rows(wh, "SELECT count(*) FROM _sluice.rejected_events")
    assert rejects == 1


def test_a_truncated_gzip_read_again_records_its_reject_once(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "arch"
    write_ndjson(root / "1.json.gz", [track("a1")])
    good = gzip.compress(b"".join(orjson.dumps(track(f"b{i}")) + b"\n" for i in range(500)))
    (root / "2.json.gz").write_bytes(good[: len(good) // 2])
    wh = open_wh()
    loader = Loader(wh, readers=0)
    loader.load(str(root), "src")
    first = everything(wh, "src")
    assert any("2.json.gz" in row for row in first["_sluice.rejected_events"])
    for _ in range(3):
        loader.load(str(root), "src")
    assert everything(wh, "src") == first


def test_folders_with_the_same_file_names_are_different_files(open_wh, tmp_path: Path) -> None:
    for day in ("2026-11-01", "2026-11-02"):
        write_ndjson(tmp_path / "exports" / day / "part-0.json", [track(day)], gz=False)
    wh = open_wh()
    for day in ("2026-11-01", "2026-11-02"):
        report = Loader(wh, readers=0).load(str(tmp_path / "exports" / day), "src")
        assert report.files_loaded == 1 and report.rows_loaded["tracks"] == 1
    report = Loader(wh, readers=0).load(
        str(tmp_path / "exports" / "2026-11-02" / "part-0.json"), "src"
    )
    assert report.files_loaded == 0  # the same file, named from its folder as before


def test_a_moved_project_loads_nothing_again(open_wh, tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_archive(project / "archive", 2000, events_per_file=500)
    wh = open_wh()
    assert Loader(wh, readers=0).load(str(project / "archive"), "src").files_loaded == 4
    before = everything(wh, "src")
    moved = tmp_path / "elsewhere" / "project-copy"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))
    again = Loader(wh, readers=0).load(str(moved / "archive"), "src")
    assert again.status == "success"
    assert (again.files_loaded, again.files_skipped) == (0, 4)
    assert everything(wh, "src") == before
    keys = {r[0] for r in table_rows(wh, "SELECT file FROM _sluice.loaded_files")}
    assert all(k.startswith("archive/segment-logs/") for k in keys), keys


def test_a_ledger_with_absolute_paths_still_counts_its_files(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    write_archive(root, 1000, events_per_file=500, malformed=False)
    wh = open_wh()
    # What an earlier version recorded: each file by its absolute path.
    wh.ensure_bookkeeping()
    with wh.transaction():
        wh.record_files("src", [(f.url, 500) for f in list_files(str(root))])
    report = Loader(wh, readers=0).load(str(root), "src")
    assert (report.files_loaded, report.files_skipped) == (0, 2)
    assert "tracks" not in wh.read_schema("src")


def test_profiles_follow_a_traits_newest_value_even_when_rescued(open_wh, tmp_path: Path) -> None:
    def profile(wh: Any) -> tuple[Any, Any, Any]:
        ((logins, plan, rescued),) = table_rows(
            wh, "SELECT logins, plan, _rescued_data FROM src.users WHERE id = 'u1'"
        )
        return logins, plan, _json(rescued)

    wh = open_wh()
    loader = Loader(wh, readers=0)

    def load(name: str, *messages: dict[str, Any]) -> None:
        root = tmp_path / name
        write_ndjson(root / "f.json", list(messages), gz=False)
        assert loader.load(str(root), "src").status == "success"

    t = "2026-11-0{}T10:00:00Z"
    load("a", identify("m1", "u1", t.format(1), t.format(1), logins=5, plan="free"))
    assert profile(wh) == (5, "free", None)
    # Newer, and not a number: identifies rescues it, and so does the profile.
    load("b", identify("m2", "u1", t.format(2), t.format(2), logins="many"))
    ((rescued,),) = table_rows(wh, "SELECT _rescued_data FROM src.identifies WHERE id = 'm2'")
    assert _json(rescued) == {"logins": "many"}
    assert profile(wh) == (None, "free", {"logins": "many"})
    # An older value arriving late does not win over the newer rescued one.
    load("c", identify("m0", "u1", "2026-10-30T10:00:00Z", t.format(3), logins=3))
    assert profile(wh) == (None, "free", {"logins": "many"})
    # A newer value that fits takes the column back, and the rescued one goes.
    load("d", identify("m3", "u1", t.format(4), t.format(4), logins=7))
    assert profile(wh) == (7, "free", None)
    load("e", identify("m4", "u1", t.format(5), t.format(5), plan="pro"))
    assert profile(wh) == (7, "pro", None)
    # Both in one batch: the newest decides.
    load(
        "f",
        identify("m6", "u1", t.format(7), t.format(7), logins="lots"),
        identify("m5", "u1", t.format(6), t.format(6), logins=9),
    )
    assert profile(wh) == (None, "pro", {"logins": "lots"})


def test_concurrent_first_syncs_on_a_fresh_postgres_get_the_lock_message(
    pg_dsn: str, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    write_ndjson(root / "1.json", [track("a"), track("b")], gz=False)
    start = threading.Barrier(6)
    outcomes: list[str] = []

    def first_sync(schema: str) -> None:
        wh = PostgresWarehouse("t", pg_dsn)
        try:
            start.wait()
            outcomes.append(Loader(wh, readers=0).load(str(root), schema).status)
        except LockBusy as exc:
            assert "another sync is loading schema" in str(exc)
            outcomes.append("busy")
        except Exception as exc:  # noqa: BLE001 - what a user would see
            outcomes.append(f"{type(exc).__name__}: {exc}")
        finally:
            wh.close()

    threads = [
        threading.Thread(target=first_sync, args=(s,)) for s in ("a", "a", "a", "b", "b", "c")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 6
    assert set(outcomes) <= {"success", "busy"}, outcomes
    assert outcomes.count("success") >= 3  # one per schema at least
    wh = PostgresWarehouse("t", pg_dsn)
    try:
        for schema in ("a", "b", "c"):
            assert table_rows(wh, f"SELECT count(*) FROM {schema}.tracks") == [(2,)]
    finally:
        wh.close()


def _sluice(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader.cli.app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_duckdb_file_schema_and_table_named_alike(tmp_path: Path) -> None:
    """segment.duckdb, schema segment, an event named Segment: every name is qualified
    with its catalog, so none is ambiguous."""
    from loader.warehouses.duckdb import DuckDBWarehouse

    db = tmp_path / "segment.duckdb"
    (tmp_path / "profiles.yml").write_text(
        f"default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: '{db}'\n"
    )
    root = tmp_path / "archive"
    write_ndjson(
        root / "2026-11-01" / "1.json",
        [
            track("s1", event="Segment", plan="pro"),
            track("s2", event="Order Completed", revenue=3),
            identify("i1", "u1", "2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z", logins=1),
            identify("i2", "u1", "2026-11-01T11:00:00Z", "2026-11-01T11:00:00Z", logins="x"),
            b"{broken",
        ],
        gz=False,
    )
    load = _sluice("load", str(root), "--schema", "segment", cwd=tmp_path)
    assert load.returncode == 0, load.stderr
    wh = DuckDBWarehouse("local", str(db))
    try:
        assert {"segment", "tracks", "identifies", "users"} <= set(wh.read_schema("segment"))
        before = everything(wh, "segment")
        assert before["segment.segment"] and len(before["_sluice.rejected_events"]) == 1
        for _ in range(2):
            replay = Loader(wh, readers=0).replay(str(root), "segment", *EVERY_DAY)
            assert replay.status == "success" and replay.files_loaded == 1
        assert everything(wh, "segment") == before
    finally:
        wh.close()
    show = _sluice("schema", "show", "segment.segment", cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert "segment.segment" in show.stdout and "plan" in show.stdout
    runs = _sluice("runs", cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert runs.stdout.count(" run ") == 3


def test_duckdb_read_only_commands_beside_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "wh.duckdb"
    (tmp_path / "profiles.yml").write_text(
        f"default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: '{db}'\n"
    )
    # Before any sync: nothing to show, and no database file is created.
    runs = _sluice("runs", cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert "no sync runs recorded yet" in runs.stdout
    assert not db.exists()
    root = tmp_path / "archive"
    write_ndjson(root / "1.json", [track("a", revenue=1)], gz=False)
    assert _sluice("load", str(root), "--schema", "src", cwd=tmp_path).returncode == 0
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(db)!r}); "
            "c.execute('CREATE TABLE scratch AS SELECT 1 AS x'); print('ready', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        for args in (("runs",), ("schema", "show", "src")):
            busy = _sluice(*args, cwd=tmp_path)
            assert busy.returncode != 0
            assert "open for writing by another process" in busy.stderr
            assert "can run when that process finishes" in busy.stderr
            assert "another sync is running" not in busy.stderr
    finally:
        writer.kill()
        writer.wait()
    # Readers take no write lock: two at once both read.
    readers = [
        subprocess.Popen(
            [sys.executable, "-m", "loader.cli.app", "schema", "show", "src.order_completed"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=120) for r in readers]
    assert all(r.returncode == 0 for r in readers), outs
    assert all("revenue" in out for out, _ in outs)
    runs = _sluice("runs", cwd=tmp_path)
    assert runs.returncode == 0 and " run " in runs.stdout
