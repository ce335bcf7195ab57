"""ClickHouse (embedded, chdb) beyond the contract suite: what its lack of transactions
and UPDATE means (row versions read with FINAL, the ledger written last), its locks,
its errors, and every statement it sends parsing as ClickHouse SQL (sqlglot)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlglot

from loader.config.errors import ConfigError
from loader.config.profiles import load_profiles
from loader.rules.schema import ColumnType
from loader.sync.pipeline import Loader
from loader.warehouses import clickhouse_sql as ch
from loader.warehouses.base import LockBusy, WarehouseError
from loader.warehouses.clickhouse import ClickHouseWarehouse, short_error
from loader.warehouses.clickhouse_sql import bind
from tests.clickhouse_fixture import clickhouse_target
from tests.contract import SCHEMA, _archive
from tests.test_reverse_etl import run, write_model

COLUMNS = {
    "id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "uuid_ts": ColumnType.TIMESTAMP,
    "n": ColumnType.BIGINT,
    "name": ColumnType.TEXT,
    "_deleted_at": ColumnType.TIMESTAMP,
}
AT = "2026-11-01T10:00:00+00:00"


def _physical(wh: ClickHouseWarehouse, schema: str, table: str) -> int:
    """Rows as stored, every version (a reader without FINAL)."""
    ref = wh.table_ref(schema, table)
    return int(wh.fetchall(f"SELECT count() FROM {ref} SETTINGS final = 0")[0][0])


def _counts(wh: ClickHouseWarehouse, schema: str) -> dict[str, int]:
    return {t: wh.table_stats(schema, t).rows for t in wh.read_schema(schema)}


def test_a_crash_before_the_ledger_leaves_files_unrecorded_and_the_rerun_adds_no_duplicate(
    clickhouse_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No transaction: a batch that fails after its rows were inserted keeps them, but its
    files are not recorded (the ledger is written last), so the rerun reads them again and
    inserts nothing twice, even as stored (no second version of any event)."""
    archive = _archive(tmp_path / "archive")
    wh = clickhouse_factory()
    Loader(wh).load(str(archive), "clean")
    expected = _counts(wh, "clean")

    def fail(*_: Any) -> None:
        raise RuntimeError("the process dies after the rows, before the ledger")

    monkeypatch.setattr(wh, "record_rejects", fail)
    with pytest.raises(RuntimeError):
        Loader(wh).load(str(archive), SCHEMA)
    assert wh.loaded_files(SCHEMA) == set()
    assert _counts(wh, SCHEMA)["order_completed"] == expected["order_completed"]
    monkeypatch.undo()
    rerun = Loader(wh).load(str(archive), SCHEMA)
    assert rerun.status == "success" and rerun.files_loaded == 3
    assert _counts(wh, SCHEMA) == expected
    assert all(_physical(wh, SCHEMA, t) == n for t, n in expected.items())
    assert len(wh.loaded_files(SCHEMA)) == 3


def test_a_filled_null_is_a_new_version_that_final_reads(clickhouse_factory) -> None:
    """A replay filling a NULL writes a new version of the row: FINAL (every read through
    Sluice) sees it alone; a reader without FINAL sees both until a merge."""
    wh = clickhouse_factory()
    wh.ensure_bookkeeping()
    wh.create_table("web", "t", COLUMNS)
    cols = ("id", "received_at", "uuid_ts", "n", "name")
    assert wh.insert_new_rows("web", "t", cols, [("a", AT, AT, None, "x")]) == 1
    assert wh.insert_new_rows("web", "t", cols, [("a", AT, AT, 5, "y")]) == 0
    assert wh.insert_new_rows("web", "t", cols, [("a", AT, AT, 5, "y")], fill_nulls=True) == 1
    # Nothing left to fill: no further version.
    assert wh.insert_new_rows("web", "t", cols, [("a", AT, AT, 5, "y")], fill_nulls=True) == 0
    assert list(wh.query('SELECT id, n, name FROM "web"."t"')) == [("a", 5, "x")]
    assert _physical(wh, "web", "t") == 2
    wh.execute('OPTIMIZE TABLE "web"."t" FINAL')
    assert _physical(wh, "web", "t") == 1


def test_upserts_and_deletion_marks_write_versions_only_where_rows_differ(
    clickhouse_factory,
) -> None:
    wh = clickhouse_factory()
    wh.ensure_bookkeeping()
    wh.create_table("crm", "customers", COLUMNS)
    cols = ("id", "received_at", "uuid_ts", "n", "name")
    assert (
        wh.upsert_rows("crm", "customers", cols, [("c1", AT, AT, 1, "a"), ("c2", AT, AT, 2, "b")])
        == 2
    )
    assert wh.upsert_rows("crm", "customers", cols, [("c1", AT, AT, 1, "a")]) == 0
    # `name` turned off: the row's value stays.
    assert wh.upsert_rows("crm", "customers", cols[:4], [("c2", AT, AT, 20)]) == 1
    wh.mark_deleted("crm", "customers", ["c1", "c3"], "2026-11-02T00:00:00Z")
    rows = sorted(wh.query('SELECT id, n, name, _deleted_at FROM "crm"."customers"'))
    gone = datetime(2026, 11, 2, tzinfo=timezone.utc)
    assert [(r[0], r[1], r[2], r[3] == gone) for r in rows] == [
        ("c1", 1, "a", True),
        ("c2", 20, "b", False),
        ("c3", None, None, True),
    ]
    assert wh.table_stats("crm", "customers").duplicate_ids == 0
    wh.save_cursor("crm", "customers", '{"after": 1}')
    wh.save_cursor("crm", "customers", '{"after": 2}')
    assert wh.read_cursors("crm") == {"customers": '{"after": 2}'}


def test_a_cursor_saved_in_a_failed_block_is_not_written(clickhouse_factory) -> None:
    wh = clickhouse_factory()
    wh.ensure_bookkeeping()
    with pytest.raises(RuntimeError), wh.transaction():
        wh.save_cursor("crm", "customers", '{"after": 9}')
        raise RuntimeError("a page failed")
    assert wh.read_cursors("crm") == {}
    with wh.transaction():
        wh.save_cursor("crm", "customers", '{"after": 3}')
        assert wh.read_cursors("crm") == {}  # written when the block ends
    assert wh.read_cursors("crm") == {"customers": '{"after": 3}'}


def test_the_folder_open_in_another_process_is_lock_busy(tmp_path: Path) -> None:
    folder = tmp_path / "clickhouse"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import chdb, sys, time; c = chdb.connect({str(folder)!r}); "
            "print('ready', flush=True); sys.stdin.read()",
        ],  # fmt: skip
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(LockBusy, match=r"folder .* of target 'ch' is open in another process"):
            ClickHouseWarehouse("ch", clickhouse_target(folder))
    finally:
        holder.communicate("")


def test_a_lease_on_a_server_lets_one_holder_in(clickhouse_factory) -> None:
    """The claim-row lease a server uses, run on the embedded engine: the earliest live
    claim holds; a second is refused and leaves no claim behind."""
    wh = clickhouse_factory()
    wh.target = wh.target.model_copy(update={"path": None, "lock_settle_seconds": 0})
    with wh.lock("web"):
        with pytest.raises(LockBusy, match="another sync is loading schema 'web'"):
            with wh.lock("web"):
                pass
        assert len(wh.fetchall('SELECT holder FROM "_sluice"."locks"')) == 1
    assert wh.fetchall('SELECT holder FROM "_sluice"."locks"') == []
    with wh.lock("web"):
        pass


def test_errors_are_one_sentence_naming_the_target_and_never_the_password(
    clickhouse_factory,
) -> None:
    wh = clickhouse_factory()
    with pytest.raises(WarehouseError) as err:
        list(wh.query("SELECT * FROM nowhere.nothing"))
    text = str(err.value)
    assert text.startswith("ClickHouse target 'ch_test': ") and "\n" not in text
    assert "DB::Exception" not in text and "Code:" not in text and "nowhere" in text
    boom = RuntimeError("Code: 516. DB::Exception: default: Authentication failed: hunter2")
    assert short_error(boom, "hunter2") == "default: Authentication failed: ***"


def test_parameters_are_bound_as_literals_that_round_trip(clickhouse_factory) -> None:
    wh = clickhouse_factory()
    text = "it's a \\ backslash, %(x)s and a 'quote'"
    at = datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert wh.fetchall(
        "SELECT %(t)s, %(n)s, %(b)s, %(at)s", {"t": text, "n": 7, "b": True, "at": at}
    ) == [(text, 7, True, at)]
    assert wh.fetchall("SELECT 1 WHERE 'a' IN %(xs)s", {"xs": []}) == []
    assert wh.fetchall("SELECT 1 WHERE 'a' IN %(xs)s", {"xs": ["b", "a"]}) == [(1,)]
    assert bind("SELECT %(a)s", {"a": None}) == "SELECT NULL"


def test_profiles_yml_clickhouse_target(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        "default_target: ch\ntargets:\n  ch:\n    type: clickhouse\n    path: data/ch\n"
        "  both:\n    type: clickhouse\n    path: x\n    host: y\n"
    )
    profiles = load_profiles(tmp_path / "profiles.yml")
    assert profiles.targets["ch"].path == str(tmp_path / "data" / "ch")
    with pytest.raises(ConfigError, match="line 6.*either path .* or host"):
        profiles.targets["both"]


def test_a_reverse_etl_mirror_into_a_table(clickhouse_factory, tmp_path: Path) -> None:
    wh = clickhouse_factory()
    wh.execute("CREATE DATABASE src")
    wh.execute(
        "CREATE TABLE src.customers (id String NOT NULL, name String, plan String, score Int64) "
        "ENGINE = ReplacingMergeTree ORDER BY id"
    )
    wh.execute(
        "INSERT INTO src.customers SELECT concat('c', toString(number)), "
        "concat('Customer ', toString(number)), 'free', number FROM numbers(1, 6)"
    )
    destination = {"type": "table", "schema": "crm", "table": "out", "batch_size": 4}
    mapping = {"customer_id": "id", "name": "full_name", "score": "score"}
    models = write_model(tmp_path / "models", destination, mode="mirror", mapping=mapping)
    source = "SELECT id, name, score FROM src.customers ORDER BY id"
    target = "SELECT id, full_name, score FROM crm.out ORDER BY id"
    assert run(wh, models).sent["added"] == 6
    assert list(wh.query(target)) == list(wh.query(source))
    wh.execute(
        "INSERT INTO src.customers VALUES ('c1', 'Customer 1', 'pro', 99), ('c9', 'New', 'free', 9)"
    )
    wh.execute("DELETE FROM src.customers WHERE id IN ('c2', 'c3')")
    second = run(wh, models)
    assert second.counts == {"added": 1, "changed": 1, "removed": 2, "unchanged": 3}
    assert list(wh.query(target)) == list(wh.query(source))
    assert sum(run(wh, models).sent.values()) == 0
    assert wh.retl_snapshot_count("customers") == 5


def test_every_statement_sent_parses_as_clickhouse_sql(clickhouse_factory, tmp_path: Path) -> None:
    """A load, a replay and object writes, every statement recorded as sent and parsed
    with sqlglot's ClickHouse dialect."""
    wh = clickhouse_factory()
    sent: list[str] = []
    real = wh.client.run

    def record(sql: str, rows: bool) -> Any:
        sent.append(sql)
        return real(sql, rows)

    wh.client.run = record  # type: ignore[method-assign]
    root = tmp_path / "dated"
    _archive(root / "2026-11-01")
    Loader(wh).load(str(root), SCHEMA)
    Loader(wh).replay(str(root), SCHEMA, datetime(2026, 11, 1).date(), datetime(2026, 11, 2).date())
    wh.create_table("crm", "customers", COLUMNS)
    wh.upsert_rows("crm", "customers", ("id", "n"), [("c1", 1)])
    wh.mark_deleted("crm", "customers", ["c1"], AT)
    wh.save_cursor("crm", "customers", "{}")
    wh.recent_runs()
    wh.recent_rejects(SCHEMA)
    wh.target = wh.target.model_copy(update={"path": None, "lock_settle_seconds": 0})
    with wh.lock(SCHEMA):  # a server's lease
        pass
    d, changes, snaps = wh.dialect, '"_sluice"."retl_changes__m"', '"_sluice"."retl_snapshots"'
    sent += [
        bind(sql, {"model": "m", "kinds": ["added"]})
        for sql in (
            ch.snapshot_versions(d, snaps, changes, d.in_list("_sluice_kind", "kinds")),
            ch.snapshot_removals(snaps, changes, d.in_list("_sluice_kind", "kinds")),
        )
    ]
    assert len(sent) > 50
    for sql in sent:
        try:
            sqlglot.parse_one(sql, read="clickhouse")
        except sqlglot.errors.ParseError as exc:  # pragma: no cover - the failure shown
            raise AssertionError(f"{exc}\n{sql}") from None


def test_sluice_load_into_an_embedded_clickhouse_target(tmp_path: Path) -> None:
    """As a user runs it: a `type: clickhouse` target with a folder beside profiles.yml;
    `runs` reads the run back."""
    from tests.helpers import sluice

    (tmp_path / "profiles.yml").write_text(
        "default_target: ch\ntargets:\n  ch:\n    type: clickhouse\n    path: ch_data\n"
    )
    archive = _archive(tmp_path / "archive")
    first = sluice("load", str(archive), "--schema", "web", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "success" in first.stdout and "order_completed" in first.stdout
    assert (tmp_path / "ch_data").is_dir()
    runs = sluice("runs", cwd=tmp_path)
    assert runs.returncode == 0 and runs.stdout.count("success") == 1


def test_a_server_that_cannot_be_reached_is_one_sentence_without_the_password() -> None:
    from loader.config.targets import ClickHouseTarget

    target = ClickHouseTarget(
        type="clickhouse", host="127.0.0.1", port=1, password="hunter2xyz", connect_timeout=2
    )
    with pytest.raises(WarehouseError) as err:
        ClickHouseWarehouse("srv", target)
    text = str(err.value)
    assert text.startswith("cannot open ClickHouse target 'srv' (server 127.0.0.1): ")
    assert "refused" in text.lower() and "check host, port, user and password" in text
    assert "hunter2xyz" not in text and "\n" not in text
