"""The Snowflake adapter on fakesnow's server mode: the real snowflake-connector-python
network path (login, query requests, result decoding) against a local fake server.

Each test gets its own database on one session-wide server. What fakesnow cannot do is
noted where it matters:
- `ALTER SESSION SET TIMEZONE` is not implemented (the adapter sets TIMEZONE as a
  session parameter at login, which fakesnow ignores; its DuckDB session is UTC anyway);
- a NULL TIMESTAMP_TZ is read back as 1970-01-01 (so tests do not read NULL timestamps);
- fakesnow enforces PRIMARY KEY (Snowflake does not); the adapter never relies on either.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path

import fakesnow
import orjson
import pytest
import snowflake.connector as snowflake_connector

from loader.config.errors import ConfigError
from loader.config.targets import _OtherTarget
from loader.rules.schema import ColumnType
from loader.warehouses.base import LockBusy, ProfileSpec, WarehouseError
from loader.warehouses.registry import open_warehouse
from tests.contract import CONTRACT
from tests.ledger_history_scenario import recent_rejects_scenario, recent_runs_scenario


@pytest.fixture(scope="session")
def fakesnow_server():
    logging.getLogger("fakesnow").setLevel(logging.WARNING)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    with fakesnow.server() as kwargs:
        yield kwargs


def _target(server: dict, database: str, **extra) -> _OtherTarget:
    fields = {
        "type": "snowflake",
        "account": server["account"],
        "user": server["user"],
        "password": server["password"],
        "database": database,
        "host": server["host"],
        "port": server["port"],
        "protocol": server["protocol"],
        "role": "loader",
        "warehouse": "load_wh",
        # fakesnow's own advice: a fake server's HTTP 500 is a bug, not worth retrying.
        "network_timeout": server["network_timeout"],
        **extra,
    }
    return _OtherTarget.model_validate(fields)


@pytest.fixture
def database(fakesnow_server) -> str:
    name = f"sluice_{uuid.uuid4().hex[:10]}"
    conn = snowflake_connector.connect(**fakesnow_server)
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return name


@pytest.fixture
def open_wh(fakesnow_server, database):
    """A factory opening (possibly several times) the same fresh fakesnow database."""
    opened = []

    def factory():
        wh = open_warehouse("sf_test", _target(fakesnow_server, database))
        # tests/test_reverse_etl.py seeds its source tables through `wh.conn.execute`.
        wh.conn.execute = wh.execute
        opened.append(wh)
        return wh

    yield factory
    for wh in opened:
        try:
            wh.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.mark.parametrize("scenario", CONTRACT, ids=lambda s: s.__name__)
def test_contract(scenario, open_wh, tmp_path: Path) -> None:
    scenario(open_wh, tmp_path)


# End-to-end tests of the loader and of reverse ETL, collected again in this module, where
# `open_wh` is the fakesnow fixture above. Not re-run here: tests/test_cloud_sources.py
# (its checks read `_deleted_at IS NULL` back, and fakesnow's server returns a NULL
# TIMESTAMP_TZ as 1970-01-01), and the webhook-retry tests of test_reverse_etl.py (they
# pass on fakesnow too, but add a minute and test no warehouse SQL beyond these).
from tests.test_load import (  # noqa: E402, F401
    test_corrupt_gzip_is_reported_and_other_files_load,
    test_malformed_lines_are_rejected_with_file_line_and_reason,
    test_new_tables_and_columns_appear_mid_archive,
    test_sample_archive_loads_all_segment_tables,
    test_timestamp_is_corrected_for_client_clock_skew,
    test_users_hold_latest_trait_by_event_time_with_late_arrivals,
)
from tests.test_reverse_etl import (  # noqa: E402, F401
    _token,
    receiver,
    test_model_errors_name_file_and_line,
    test_record_ids_over_a_models_life,
    test_sync_modes,
    test_table_destination_mirrors_the_model,
)


def test_upper_case_names_queryable_without_quotes(open_wh, tmp_path: Path) -> None:
    from loader.sync.pipeline import Loader
    from tests.contract import SCHEMA, _archive

    wh = open_wh()
    Loader(wh).load(str(_archive(tmp_path / "archive")), SCHEMA)
    # What an analyst writes: no quotes, lower case.
    rows = list(wh.query(f"SELECT revenue FROM {SCHEMA}.order_completed WHERE id = 't1'"))
    assert rows == [(10.5,)]
    assert wh.table_ref(SCHEMA, "order_completed") == '"CONTRACT_SRC"."ORDER_COMPLETED"'
    names = {r[0] for r in wh.query("SELECT table_name FROM information_schema.tables")}
    assert "ORDER_COMPLETED" in names
    types = wh.read_schema(SCHEMA)["order_completed"]
    assert types["revenue"] is ColumnType.DOUBLE and types["id"] is ColumnType.TEXT
    assert wh.read_schema(SCHEMA)["identifies"]["timestamp"] is ColumnType.TIMESTAMP


def test_upsert_fill_nulls_and_mark_deleted(open_wh) -> None:
    wh = open_wh()
    wh.ensure_bookkeeping()
    cols = {
        "id": ColumnType.TEXT,
        "received_at": ColumnType.TIMESTAMP,
        "uuid_ts": ColumnType.TIMESTAMP,
        "_deleted_at": ColumnType.TIMESTAMP,
        "n": ColumnType.BIGINT,
        "ok": ColumnType.BOOLEAN,
        "name": ColumnType.TEXT,
    }
    wh.create_table("objs", "things", cols)
    ts = "2026-11-01T10:00:00+00:00"
    names = ("id", "received_at", "uuid_ts", "n", "ok", "name")
    with wh.transaction():
        assert wh.insert_new_rows("objs", "things", names, [("a", ts, ts, 1, True, None)]) == 1
    # Again: nothing new; with fill_nulls the NULL `name` is filled, `n` is kept.
    assert wh.insert_new_rows("objs", "things", names, [("a", ts, ts, 2, False, "x")]) == 0
    wh.insert_new_rows("objs", "things", names, [("a", ts, ts, 2, False, "x")], fill_nulls=True)
    table = wh.table_ref("objs", "things")
    assert list(wh.query(f"SELECT n, ok, name FROM {table}")) == [(1, True, "x")]
    wh.upsert_rows(
        "objs", "things", names, [("a", ts, ts, 3, False, "y"), ("b", ts, ts, 4, None, None)]
    )
    assert list(wh.query(f"SELECT id, n, ok, name FROM {table} ORDER BY id")) == [
        ("a", 3, False, "y"),
        ("b", 4, None, None),
    ]
    assert wh.mark_deleted("objs", "things", ["b", "c"], ts) == 2
    deleted = list(wh.query(f"SELECT id FROM {table} WHERE _deleted_at IS NOT NULL ORDER BY id"))
    assert deleted == [("b",), ("c",)]
    wh.save_cursor("objs", "things", '{"after": 1}')
    wh.save_cursor("objs", "things", '{"after": 2}')
    assert wh.read_cursors("objs") == {"things": '{"after": 2}'}


def test_transaction_rolls_back(open_wh) -> None:
    wh = open_wh()
    wh.ensure_bookkeeping()
    with pytest.raises(RuntimeError):
        with wh.transaction():
            wh.record_files("s", [("f1", 1)])
            raise RuntimeError("boom")
    assert wh.loaded_files("s") == set()
    wh.record_files("s", [("f1", 1)])
    wh.record_files("s", [("f1", 1), ("f2", 2)])  # a replay re-records f1: skipped
    assert wh.loaded_files("s") == {"f1", "f2"}
    wh.record_turned_off("s", [("t", ""), ("t", "c")])
    wh.record_turned_off("s", [("t", "c")])
    assert wh.turned_off_names("s") == {"t": {"", "c"}}


def test_lock_busy_across_connections(open_wh) -> None:
    first, second = open_wh(), open_wh()
    first.ensure_bookkeeping()
    with first.lock("src"):
        with pytest.raises(LockBusy, match="another sync is loading schema 'src' into target"):
            with second.lock("src"):
                pass
        with second.lock("other"):  # another schema is free
            pass
    with second.lock("src"):  # released
        pass
    with first.retl_lock("m"):
        with pytest.raises(LockBusy, match="reverse-ETL run of model 'm'"):
            with second.retl_lock("m"):
                pass


def test_recent_runs(open_wh) -> None:
    wh = open_wh()
    recent_runs_scenario(wh)


def test_recent_rejects(open_wh) -> None:
    """What `sluice rejects` lists: one schema's rejected lines, or every schema's."""
    recent_rejects_scenario(open_wh())


def test_reverse_etl_cycle(open_wh) -> None:
    wh = open_wh()
    wh.ensure_bookkeeping()
    wh.retl_ensure_bookkeeping()
    cols = {"id": ColumnType.TEXT, "n": ColumnType.BIGINT, "received_at": ColumnType.TIMESTAMP}
    wh.create_table("src", "people", cols)
    ts = "2026-11-01T10:00:00+00:00"
    wh.insert_new_rows("src", "people", ("id", "n", "received_at"), [("a", 1, ts), ("b", 2, ts)])
    sql = "SELECT id, n FROM src.people"
    columns = wh.retl_model_columns("m", sql)
    assert list(columns) == ["id", "n"]
    assert wh.retl_stage("m", sql, "id", list(columns)) == 2
    assert wh.retl_key_problems("m") == (0, 0)
    assert wh.retl_diff("m", list(columns)) == {
        "added": 2,
        "changed": 0,
        "removed": 0,
        "unchanged": 0,
    }
    page = wh.retl_changes("m", ["added"], list(columns), 0, 10)
    assert [(r[1], r[2], r[5]) for r in page] == [("added", "a", 1), ("added", "b", 2)]
    wh.retl_advance("m", [page[0][0]])
    assert wh.retl_snapshot_count("m") == 1
    assert wh.retl_baseline("m", ["added"]) == 2
    assert wh.retl_snapshot_count("m") == 2
    wh.retl_stage("m", sql, "id", list(columns))
    assert wh.retl_diff("m", list(columns))["unchanged"] == 2
    wh.retl_drop_stage("m")
    wh.retl_write_table(
        "dest", "out", "id", {"id": ColumnType.TEXT, "n": ColumnType.BIGINT}, [("a", 5)], ["a"]
    )
    wh.retl_write_table(
        "dest", "out", "id", {"id": ColumnType.TEXT, "n": ColumnType.BIGINT}, [("a", 6)], ["a"]
    )
    assert list(wh.query("SELECT id, n FROM dest.out")) == [("a", 6)]
    report = {
        "run_id": "r1",
        "model": "m",
        "status": "success",
        "started_at": ts,
        "finished_at": ts,
    }
    wh.retl_record_run(report)
    assert wh.retl_recent_runs("m")[0]["run_id"] == "r1"


def test_statements_sent_are_snowflake_sql(open_wh) -> None:
    """What a replay, an upsert and a profile rebuild send: each statement parses as
    Snowflake's SQL, no MERGE (see the module docstring of loader/warehouses/snowflake.py),
    the profile takes FIRST_VALUE ... IGNORE NULLS, a list is bound one mark per item."""
    import sqlglot

    wh = open_wh()
    wh.ensure_bookkeeping()
    t, ts_kind = ColumnType.TEXT, ColumnType.TIMESTAMP
    wh.create_table(
        "s",
        "identifies",
        {"id": t, "received_at": ts_kind, "uuid_ts": ts_kind, "timestamp": ts_kind,
         "user_id": t, "plan": t, "_rescued_data": t},
    )  # fmt: skip
    wh.create_table("s", "users", {"id": t, "received_at": ts_kind, "uuid_ts": ts_kind, "plan": t})
    sent = _statement_log(wh)
    names = ("id", "received_at", "uuid_ts", "timestamp", "user_id", "plan", "_rescued_data")
    ts = "2026-11-01T10:00:00+00:00"
    with wh.transaction():
        wh.insert_new_rows("s", "identifies", names, [("i1", ts, ts, ts, "u1", None, None)])
        row = ("i1", ts, ts, ts, "u1", "free", {"x": 1})
        assert wh.insert_new_rows("s", "identifies", names, [row], fill_nulls=True) == 1
        wh.upsert_rows("s", "identifies", names[:6], [("i2", ts, ts, ts, "u2", "pro")])
        wh.rebuild_profiles("s", ProfileSpec("users", "identifies", "user_id", ["plan"]), ["u1"])
    assert list(wh.query("SELECT id, plan FROM s.users")) == [("u1", "free")]
    # fill_nulls filled `plan`, and left `_rescued_data` and the load's stamp alone.
    assert list(wh.query("SELECT plan, _rescued_data FROM s.identifies WHERE id = 'i1'")) == [
        ("free", None)
    ]
    for sql in sent:
        if sql not in ("BEGIN", "COMMIT") and not sql.startswith(("PUT ", "COPY INTO")):
            sqlglot.parse_one(sql.replace("%s", "'x'"), read="snowflake")
    text = "\n".join(sent)
    assert "MERGE" not in text and "ANY(" not in text
    assert 'FIRST_VALUE("PLAN") IGNORE NULLS OVER (PARTITION BY "USER_ID" ORDER BY' in text
    assert 'WHERE "USER_ID" IN (%s)' in text
    assert 'PARSE_JSON(s."_RESCUED_DATA") AS "_RESCUED_DATA"' in text


def test_connection_failure_is_one_sentence_without_secret(fakesnow_server, database) -> None:
    secret = "s3cr3t-Pa55"
    target = _target(fakesnow_server, database, password=secret, port=1, login_timeout=2, retries=2)
    with pytest.raises(WarehouseError) as info:
        open_warehouse("sf_prod", target)
    message = str(info.value)
    assert secret not in message
    assert "\n" not in message
    assert message.startswith("cannot connect to Snowflake target 'sf_prod' (account 'fakesnow')")
    assert "check account (and host/port if set) in profiles.yml" in message


def test_bad_target_config_names_the_field(fakesnow_server) -> None:
    target = _OtherTarget.model_validate({"type": "snowflake", "account": "a", "user": "u"})
    with pytest.raises(ConfigError, match="target 'sf': field 'database'"):
        open_warehouse("sf", target)
    target = _OtherTarget.model_validate(
        {"type": "snowflake", "account": "a", "user": "u", "database": "d"}
    )
    with pytest.raises(ConfigError, match="password or private_key_path"):
        open_warehouse("sf", target)


def test_transient_errors_are_retried(fakesnow_server, database) -> None:
    from snowflake.connector.errors import OperationalError

    from loader.config.targets import SnowflakeTarget
    from loader.warehouses.snowflake import SnowflakeWarehouse

    calls = []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError(msg="connection reset", errno=250003)
        return snowflake_connector.connect(**kwargs)

    target = SnowflakeTarget.from_target("sf", _target(fakesnow_server, database))
    wh = SnowflakeWarehouse("sf", target, connect=flaky)
    assert len(calls) == 3
    assert list(wh.query("SELECT 1")) == [(1,)]
    wh.close()


def _fail_with(errno: int, msg: str, calls: list[int]):
    from snowflake.connector.errors import DatabaseError

    def connect(**_kwargs):
        calls.append(1)
        raise DatabaseError(msg=msg, errno=errno)

    return connect


def test_login_and_permission_failures_name_the_fix(fakesnow_server, database) -> None:
    from loader.config.targets import SnowflakeTarget
    from loader.warehouses.snowflake import SnowflakeWarehouse

    target = SnowflakeTarget.from_target("sf", _target(fakesnow_server, database))
    calls: list[int] = []
    with pytest.raises(WarehouseError) as info:
        SnowflakeWarehouse("sf", target, connect=_fail_with(390100, "Incorrect username", calls))
    assert calls == [1]  # a wrong password is not retried
    assert str(info.value) == (
        "cannot connect to Snowflake target 'sf' (account 'fakesnow'): Incorrect username; "
        "check user and password (or private_key_path) in profiles.yml"
    )
    with pytest.raises(WarehouseError, match="check role, warehouse and database"):
        SnowflakeWarehouse(
            "sf", target, connect=_fail_with(390189, "Role 'LOADER' does not exist", [])
        )


def test_permission_error_on_a_statement(open_wh) -> None:
    from snowflake.connector.errors import ProgrammingError

    wh = open_wh()

    class Denied:
        def execute(self, *_args):
            raise ProgrammingError(
                msg="Insufficient privileges to operate on schema 'X'", errno=3001
            )

    real = wh.conn
    wh.conn = type("C", (), {"cursor": lambda self: Denied(), "close": real.close})()
    with pytest.raises(WarehouseError) as info:
        wh.ensure_bookkeeping()
    wh.conn = real
    message = str(info.value)
    assert message.startswith("Snowflake target 'sf_test': Insufficient privileges")
    assert "grant the role 'loader'" in message and "\n" not in message


def test_key_pair_auth_reaches_the_server(fakesnow_server, database, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"phrase"),
    )
    (tmp_path / "key.p8").write_bytes(pem)
    target = _target(fakesnow_server, database).model_dump()
    del target["password"]
    target.update(private_key_path=str(tmp_path / "key.p8"), private_key_passphrase="phrase")
    wh = open_warehouse("sf_kp", _OtherTarget.model_validate(target))
    assert list(wh.query("SELECT 1")) == [(1,)]
    wh.close()
    target["private_key_passphrase"] = "wrong"
    with pytest.raises(WarehouseError) as info:
        open_warehouse("sf_kp", _OtherTarget.model_validate(target))
    assert "wrong" not in str(info.value)
    assert "check private_key_path and private_key_passphrase" in str(info.value)


def test_expired_lock_is_taken_over(fakesnow_server, database) -> None:
    crashed = open_warehouse("sf", _target(fakesnow_server, database, lock_lease_minutes=0))
    crashed.ensure_bookkeeping()
    crashed.lock("src").__enter__()  # never released: the process died
    other = open_warehouse("sf", _target(fakesnow_server, database))
    with other.lock("src"):
        pass
    crashed.close()
    other.close()


def _statement_log(wh) -> list[str]:
    """Every statement the adapter sends over its real connection, in order."""
    sent: list[str] = []
    run = wh._run

    def logged(sql, params=None):
        sent.append(" ".join(sql.split()))
        return run(sql, params)

    wh._run = logged
    return sent


def test_rows_go_through_the_stage_inside_one_transaction(open_wh) -> None:
    first = open_wh()
    first.ensure_bookkeeping()
    cols = {"id": ColumnType.TEXT, "received_at": ColumnType.TIMESTAMP, "n": ColumnType.BIGINT}
    first.create_table("objs", "things", cols)
    # A second connection (nothing cached): the staging tables are checked at `lock`.
    wh = open_wh()
    sent = _statement_log(wh)
    ts = "2026-11-01T10:00:00+00:00"
    with wh.lock("objs"):
        start = len(sent)
        with wh.transaction():
            wh.insert_new_rows("objs", "things", ("id", "received_at", "n"), [("a", ts, 1)])
            wh.record_files("objs", [("f1", 1)])
        batch = sent[start:]
    assert batch[0] == "BEGIN" and batch[-1] == "COMMIT"
    inner = batch[1:-1]
    assert not [s for s in inner if s.split()[0] in ("BEGIN", "COMMIT", "CREATE", "ALTER")]
    puts = [s for s in inner if s.startswith("PUT 'file://")]
    copies = [s for s in inner if s.startswith("COPY INTO")]
    assert len(puts) == len(copies) == 2  # the table and the _sluice.loaded_files ledger
    assert all('@"_SLUICE"."SLUICE_STAGE"/load' in s for s in puts)
    assert copies[0].startswith('COPY INTO "_SLUICE"."STAGE__OBJS__THINGS" FROM @')
    assert all("TYPE = PARQUET" in s and "PURGE = TRUE" in s for s in copies)
    assert copies[1].startswith('COPY INTO "_SLUICE"."STAGE___SLUICE__LOADED_FILES"')
    assert not [s for s in sent if "VALUES" in s and "THINGS" in s]
    inserts = [s for s in inner if s.startswith('INSERT INTO "OBJS"."THINGS"')]
    assert inserts and 'FROM "_SLUICE"."STAGE__OBJS__THINGS" AS s' in inserts[0]
    assert list(wh.query("SELECT id, n FROM objs.things")) == [("a", 1)]
    assert wh.loaded_files("objs") == {"f1"}
    # Staged files are purged by COPY; staging tables are left empty.
    assert list(wh.query('LIST @"_SLUICE"."SLUICE_STAGE"')) == []
    assert list(wh.query('SELECT COUNT(*) FROM "_SLUICE"."STAGE__OBJS__THINGS"')) == [(0,)]


def test_a_lost_commit_fails_the_batch_and_is_not_retried(open_wh) -> None:
    """A COMMIT that fails in transit is not retried: on a session whose transaction is
    gone a second COMMIT succeeds and would hide the loss. The batch fails; its rerun
    loads it."""
    from snowflake.connector.errors import OperationalError

    wh = open_wh()
    wh.ensure_bookkeeping()
    real, commits = wh.conn, []

    class LosesFirstCommit:
        def cursor(self):
            cur = real.cursor()
            execute = cur.execute

            def guarded(sql, params=None):
                if sql == "COMMIT":
                    commits.append(sql)
                    if len(commits) == 1:
                        execute("ROLLBACK")
                        raise OperationalError(msg="connection reset", errno=250003)
                return execute(sql, params)

            cur.execute = guarded
            return cur

        def close(self):
            real.close()

    wh.conn = LosesFirstCommit()
    with pytest.raises(OperationalError):
        with wh.transaction():
            wh.record_files("s", [("f1", 1)])
    assert commits == ["COMMIT"] and wh.loaded_files("s") == set()
    with wh.transaction():
        wh.record_files("s", [("f1", 1)])
    assert wh.loaded_files("s") == {"f1"}


def test_a_failed_batch_leaves_no_rows_no_ledger_and_no_staged_file(open_wh) -> None:
    wh = open_wh()
    wh.ensure_bookkeeping()
    wh.create_table("objs", "things", {"id": ColumnType.TEXT, "n": ColumnType.BIGINT})
    with pytest.raises(RuntimeError):
        with wh.transaction():
            wh.insert_new_rows("objs", "things", ("id", "n"), [("a", 1), ("b", 2)])
            wh.record_files("objs", [("f1", 1)])
            assert list(wh.query("SELECT COUNT(*) FROM objs.things")) == [(2,)]
            raise RuntimeError("crash after the ledger write")
    assert list(wh.query("SELECT COUNT(*) FROM objs.things")) == [(0,)]
    assert wh.loaded_files("objs") == set()
    assert list(wh.query('LIST @"_SLUICE"."SLUICE_STAGE"')) == []
    # The rerun loads the batch.
    with wh.transaction():
        wh.insert_new_rows("objs", "things", ("id", "n"), [("a", 1), ("b", 2)])
        wh.record_files("objs", [("f1", 1)])
    assert list(wh.query("SELECT id, n FROM objs.things ORDER BY id")) == [("a", 1), ("b", 2)]


def test_awkward_values_round_trip_through_the_stage(open_wh) -> None:
    import orjson

    wh = open_wh()
    wh.ensure_bookkeeping()
    cols = {
        "id": ColumnType.TEXT,
        "received_at": ColumnType.TIMESTAMP,
        "ok": ColumnType.BOOLEAN,
        "n": ColumnType.BIGINT,
        "x": ColumnType.DOUBLE,
        "s": ColumnType.TEXT,
        "_rescued_data": ColumnType.TEXT,
    }
    wh.create_table("odd", "vals", cols)
    big = 2**63 - 1  # fakesnow's NUMBER(38,0) is 64-bit; Snowflake's holds 38 digits
    texts = [
        "",
        "a,b \"quoted\", 'single'",
        "line1\nline2\r\nline3",
        "\\N",
        "NULL",
        "tab\there, ünïcødé ✓ 🚀",
        " leading and trailing ",
    ]
    rows = []
    for i, text in enumerate(texts):
        rows.append(
            (
                f"r{i}",
                "2026-11-01T10:00:00.123456+05:30" if i % 2 else datetime(2026, 1, 2, 3, 4, 5),
                [True, False, None][i % 3],
                [big, -big - 1, 0, None][i % 4],
                [0.1 + 0.2, 1e300, -2.5e-300, 5e-324, None][i % 5],
                text,
                {"revenue": "1,5", "nested": {"q": '"', "nl": "\n"}, "k": [1, None]} if i else None,
            )
        )
    rows.append(("r-null", "2026-11-01T10:00:00Z", None, None, None, None, None))
    names = tuple(cols)
    with wh.transaction():
        assert wh.insert_new_rows("odd", "vals", names, rows) == len(rows)
    got = {
        r[0]: r
        for r in wh.query("SELECT id, received_at, ok, n, x, s, _rescued_data FROM odd.vals")
    }
    assert len(got) == len(rows)
    for row in rows:
        back = got[row[0]]
        sent_ts = row[1] if isinstance(row[1], datetime) else datetime.fromisoformat(row[1])
        if sent_ts.tzinfo is None:
            sent_ts = sent_ts.replace(tzinfo=timezone.utc)
        assert back[1] == sent_ts  # the same instant (fakesnow returns it in UTC)
        assert back[2:6] == row[2:6], row[0]
        assert (orjson.loads(back[6]) if back[6] is not None else None) == row[6]
    assert got["r0"][5] == "" and got["r-null"][5] is None  # "" and NULL stay apart
    assert list(wh.query("SELECT COUNT(*) FROM odd.vals WHERE s IS NULL")) == [(1,)]
    assert list(wh.query("SELECT _rescued_data:revenue FROM odd.vals WHERE id = 'r1'")) == [
        ('"1,5"',)
    ]
    # The UPDATE ... FROM path (upsert) reads the same staged values.
    wh.upsert_rows("odd", "vals", ("id", "s", "n"), [("r1", "", big), ("r0", None, None)])
    assert list(wh.query("SELECT id, s, n FROM odd.vals WHERE id IN ('r0', 'r1') ORDER BY id")) == [
        ("r0", None, None),
        ("r1", "", big),
    ]


def test_set_type_rebuilds_the_table_and_swaps_it_in(open_wh, tmp_path: Path) -> None:
    """Snowflake cannot change a column to another kind: the table is rebuilt into a
    work table and swapped in. fakesnow cannot run `ALTER TABLE ... SWAP WITH`: that
    statement is checked to parse as Snowflake's, and the swap is done here by copying
    the work table in its place (what the swap leaves)."""
    import sqlglot

    from loader.rules.schema import ColumnType
    from loader.sync.pipeline import Loader
    from tests.helpers import track, write_ndjson

    wh = open_wh()
    write_ndjson(
        tmp_path / "a" / "0.json.gz",
        [track("m1", sku=42), track("m2", sku="AB-7"), track("m3", sku=7)],
    )
    assert Loader(wh).load(str(tmp_path / "a"), "s").status == "success"
    rows = "SELECT id, sku, CAST(_rescued_data AS VARCHAR) FROM s.order_completed ORDER BY id"

    def restored(r: tuple) -> tuple:
        return (r[0], r[1], orjson.loads(r[2]) if r[2] else None)

    before = [restored(r) for r in wh.query(rows)]
    assert before == [("m1", 42, None), ("m2", None, {"sku": "AB-7"}), ("m3", 7, None)]

    swaps: list[str] = []

    def swap(schema: str, table: str, work: str) -> None:
        target = f'"{schema.upper()}"."{table.upper()}"'
        swaps.append(f"ALTER TABLE {target} SWAP WITH {work}")
        wh.execute(f"DROP TABLE {target}")
        wh.execute(f"CREATE TABLE {target} AS SELECT * FROM {work}")
        wh.execute(f"DROP TABLE {work}")

    wh.retype_swap = swap
    plan = wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=False)
    assert (plan.moved_in, plan.moved_out, plan.kept) == (1, 0, 2)
    assert [restored(r) for r in wh.query(rows)] == before and not swaps
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=True)
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.TEXT
    assert [restored(r) for r in wh.query(rows)] == [
        ("m1", "42", None),
        ("m2", "AB-7", None),
        ("m3", "7", None),
    ]
    assert wh.decided_types("s") == {"order_completed": {"sku": ColumnType.TEXT}}
    (statement,) = swaps
    assert isinstance(sqlglot.parse_one(statement, read="snowflake"), sqlglot.exp.Alter), statement
    # A later load of more such values: into the column.
    write_ndjson(tmp_path / "a" / "1.json.gz", [track("m4", sku="EF-1")])
    assert Loader(wh).load(str(tmp_path / "a"), "s").status == "success"
    assert list(wh.query("SELECT sku FROM s.order_completed WHERE id = 'm4'")) == [("EF-1",)]
    # And back: the text that is no number is rescued.
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.BIGINT, apply=True)
    assert [restored(r) for r in wh.query(rows)][:2] == [
        ("m1", 42, None),
        ("m2", None, {"sku": "AB-7"}),
    ]


def test_tracking_plan_bookkeeping(open_wh) -> None:
    from tests.test_tracking_plan_load import check_plan_bookkeeping

    check_plan_bookkeeping(open_wh())
