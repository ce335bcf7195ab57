"""The BigQuery adapter against bqemulator 1.4: a BigQuery REST emulator started on
loopback for the session (tests/bq_emulator.py), driven by the real
google-cloud-bigquery client (anonymous credentials, custom api_endpoint). Each test
gets its own fresh project on the one emulator (the emulator keeps projects apart).

Everything the adapter sends runs on the emulator: load jobs (NDJSON) into staging
tables, Warehouse's statements as BigQueryDialect writes them (INSERT ... SELECT ...
WHERE NOT EXISTS, UPDATE ... FROM with IS DISTINCT FROM, DELETE, window functions with
FIRST_VALUE(... IGNORE NULLS), `IN UNNEST(@array)` parameters), event tables created
through the tables API with DAY partitioning on received_at and clustering on id,
bookkeeping tables by DDL with column defaults, ALTER TABLE ADD COLUMN IF NOT EXISTS,
INFORMATION_SCHEMA.COLUMNS, dry runs (model columns), CREATE TABLE ... AS SELECT
(reverse-ETL stage and change set) and CREATE OR REPLACE TABLE ... AS SELECT (retype).

What bqemulator does differently from BigQuery, and how it is covered:
- several `ADD COLUMN` clauses in one `ALTER TABLE` are rejected ("Only one ALTER command
  per statement"), and columns added by DDL do not reach the table metadata (tables.get,
  INFORMATION_SCHEMA). The adapter falls back to one clause per statement on that error
  and patches the metadata when a column is missing from it; on BigQuery both are
  no-ops. The one-statement ALTER BigQuery gets is asserted as text and parsed with
  sqlglot's bigquery dialect (test_generated_sql_parses_as_bigquery).
- column defaults set through the tables API are ignored (DDL defaults work), and
  `PRIMARY KEY ... NOT ENFORCED` (the only key BigQuery takes) is refused: the adapter
  declares no keys (every write anti-joins on them) and writes time-of-insert columns
  itself (test_bookkeeping_tables_of_an_older_version_keep_their_timestamps);
- query jobs with a destination table are accepted but write nothing (the adapter
  uses CREATE TABLE ... AS SELECT instead), and query parameters are not bound inside
  multi-statement scripts (the adapter runs no scripts);
- its multi-statement transactions are not isolated (a failed script does not roll
  back); the adapter's exactly-once design does not rely on transactions (see the
  module docstring of loader/warehouses/bigquery.py and
  test_crash_between_rows_and_ledger_reruns_without_duplicates);
- no IAM: 401/403/404/5xx answers come from a loopback stand-in server (or a proxy in
  front of the emulator) that speaks BigQuery's JSON error format; a service-account
  token refusal comes from a loopback stand-in token endpoint.
- it echoes the type names it was given (FLOAT64) where BigQuery's tables API answers
  legacy ones (FLOAT); the adapter and the tests accept both.

"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlglot

from loader.config.errors import ConfigError
from loader.config.profiles import load_profiles
from loader.config.targets import _OtherTarget
from loader.rules.schema import ColumnType
from loader.sync.pipeline import Loader
from loader.warehouses.base import LockBusy, ProfileSpec, WarehouseError
from loader.warehouses.registry import open_warehouse
from loader.warehouses.warehouse import Warehouse
from tests.bq_emulator import free_port, running_emulator
from tests.contract import CONTRACT, SCHEMA, _archive
from tests.ledger_history_scenario import recent_rejects_scenario, recent_runs_scenario


@pytest.fixture(scope="session")
def bq_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_emulator(tmp_path_factory.mktemp("bqemu") / "bqemulator.log") as url:
        yield url


def _target(endpoint: str, project: str, **extra: Any) -> _OtherTarget:
    fields = {
        "type": "bigquery",
        "project": project,
        "location": "US",
        "api_endpoint": endpoint,
        "anonymous": True,
        "retries": 3,
        "job_timeout_seconds": 60,
        **extra,
    }
    return _OtherTarget.model_validate(fields)


@pytest.fixture
def project() -> str:
    """One fresh, empty project per test."""
    return f"sluice-{uuid.uuid4().hex[:12]}"


class _Seeder:
    """`execute(sql)` for the PostgreSQL-dialect seed statements of shared tests, as
    BigQuery runs them (sqlglot transpiles; BigQuery keys are NOT ENFORCED only)."""

    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    def execute(self, statement: str) -> None:
        for sql in sqlglot.transpile(statement, read="postgres", write="bigquery"):
            self.wh.execute(sql.replace(" PRIMARY KEY", ""))  # type: ignore[attr-defined]


@pytest.fixture
def open_wh(bq_endpoint: str, project: str) -> Iterator[Callable[..., Warehouse]]:
    """A factory opening (possibly several times) the same fresh project."""
    opened: list[Warehouse] = []

    def factory(**extra: Any) -> Warehouse:
        wh = open_warehouse("bq_test", _target(bq_endpoint, project, **extra))
        # tests/test_reverse_etl.py seeds its source tables through `wh.conn.execute`.
        wh.conn = _Seeder(wh)  # type: ignore[attr-defined]
        opened.append(wh)
        return wh

    yield factory
    for wh in opened:
        wh.close()


@pytest.mark.parametrize("scenario", CONTRACT, ids=lambda s: s.__name__)
def test_contract(scenario, open_wh, tmp_path: Path) -> None:
    scenario(open_wh, tmp_path)


# End-to-end tests of the loader and of reverse ETL, collected again in this module, where
# `open_wh` is the emulator fixture above. Not re-run here:
# test_timestamp_is_corrected_for_client_clock_skew (its SQL quotes "timestamp", a string
# literal in BigQuery: test_timestamp_is_corrected_for_clock_skew below is the same check),
# test_reload_and_overlapping_archive_are_idempotent (25 s here; the contract's
# scenario_dedupe_across_runs is the same promise), the webhook-retry tests of
# test_reverse_etl.py (no warehouse SQL beyond test_sync_modes).
from tests.test_load import (  # noqa: E402, F401
    test_corrupt_gzip_is_reported_and_other_files_load,
    test_malformed_lines_are_rejected_with_file_line_and_reason,
    test_new_tables_and_columns_appear_mid_archive,
    test_sample_archive_loads_all_segment_tables,
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


def _client(wh: Warehouse) -> Any:
    return wh.client  # type: ignore[attr-defined]


# BigQuery's tables API answers legacy type names; the emulator echoes what was sent.
_STANDARD = {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL"}


def _types(table: Any) -> dict[str, str]:
    return {f.name: _STANDARD.get(f.field_type, f.field_type) for f in table.schema}


def test_tables_are_partitioned_by_received_at_day(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    Loader(wh).load(str(_archive(tmp_path / "archive")), SCHEMA)
    client = _client(wh)
    table = client.get_table(f"{client.project}.{SCHEMA}.order_completed")
    assert table.time_partitioning.type_ == "DAY"
    assert table.time_partitioning.field == "received_at"
    assert table.clustering_fields == ["id"]
    types = _types(table)
    assert types["revenue"] == "FLOAT64" and types["received_at"] == "TIMESTAMP"
    assert types["_rescued_data"] == "STRING"
    # What an analyst writes: the dataset is the source's schema name.
    rows = list(wh.query(f"SELECT revenue FROM {SCHEMA}.order_completed WHERE id = 't1'"))
    assert rows == [(10.5,)]
    rescued = list(
        wh.query(
            f"SELECT JSON_VALUE(_rescued_data, '$.revenue') FROM {SCHEMA}.order_completed "
            "WHERE id = 't3'"
        )
    )
    assert rescued == [("lots",)]
    assert wh.table_ref(SCHEMA, "pages") == f"`{client.project}.{SCHEMA}.pages`"
    ledger = client.get_table(f"{client.project}._sluice.loaded_files")
    assert ledger.time_partitioning is None  # bookkeeping is small: not partitioned
    assert {d.dataset_id for d in client.list_datasets()} == {SCHEMA, "_sluice"}
    # Staging tables are dropped after their MERGE.
    staged = [t.table_id for t in client.list_tables(f"{client.project}._sluice")]
    assert not [t for t in staged if t.startswith("_stage_")]


def test_timestamp_is_corrected_for_clock_skew(open_wh, tmp_path: Path) -> None:
    from tests.helpers import track, write_ndjson

    msg = track("t1")
    msg.update(
        receivedAt="2026-11-01T12:00:00Z",
        sentAt="2026-11-01T12:10:00Z",  # client clock 10 minutes fast
        originalTimestamp="2026-11-01T12:09:00Z",
    )
    write_ndjson(tmp_path / "a" / "1.json", [msg], gz=False)
    wh = open_wh()
    Loader(wh).load(str(tmp_path / "a"), "src")
    rows = list(wh.query("SELECT FORMAT_TIMESTAMP('%F %T', `timestamp`) FROM src.tracks"))
    assert rows == [("2026-11-01 11:59:00",)]


def test_new_columns_reach_table_metadata_and_rows(open_wh) -> None:
    wh = open_wh()
    cols = {"id": ColumnType.TEXT, "received_at": ColumnType.TIMESTAMP, "a": ColumnType.TEXT}
    wh.create_table("s", "t", cols)
    wh.add_columns("s", "t", {"b": ColumnType.BIGINT, "c": ColumnType.BOOLEAN})
    wh.add_columns("s", "t", {"d": ColumnType.DOUBLE})
    client = _client(wh)
    assert _types(client.get_table(f"{client.project}.s.t")) == {
        "id": "STRING",
        "received_at": "TIMESTAMP",
        "a": "STRING",
        "b": "INT64",
        "c": "BOOL",
        "d": "FLOAT64",
    }
    assert wh.read_schema("s")["t"]["b"] is ColumnType.BIGINT
    ts = "2026-11-01T10:00:00+00:00"
    wh.insert_new_rows("s", "t", ("id", "received_at", "b", "c", "d"), [("x", ts, 7, True, 0.5)])
    assert list(wh.query("SELECT b, c, d FROM s.t")) == [(7, True, 0.5)]


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
    filled = wh.insert_new_rows(
        "objs", "things", names, [("a", ts, ts, 2, False, "x")], fill_nulls=True
    )
    assert filled == 1
    table = wh.table_ref("objs", "things")
    assert list(wh.query(f"SELECT n, ok, name FROM {table}")) == [(1, True, "x")]
    upserted = wh.upsert_rows(
        "objs", "things", names, [("a", ts, ts, 3, False, "y"), ("b", ts, ts, 4, None, None)]
    )
    assert upserted == 2
    assert list(wh.query(f"SELECT id, n, ok, name FROM {table} ORDER BY id")) == [
        ("a", 3, False, "y"),
        ("b", 4, None, None),
    ]
    assert wh.mark_deleted("objs", "things", ["b", "c"], ts) == 2
    deleted = list(wh.query(f"SELECT id FROM {table} WHERE _deleted_at IS NOT NULL ORDER BY id"))
    assert deleted == [("b",), ("c",)]
    alive = list(wh.query(f"SELECT id FROM {table} WHERE _deleted_at IS NULL"))
    assert alive == [("a",)]
    wh.save_cursor("objs", "things", '{"after": 1}')
    wh.save_cursor("objs", "things", '{"after": 2}')
    assert wh.read_cursors("objs") == {"things": '{"after": 2}'}


def test_bookkeeping_is_written_only_when_the_transaction_commits(open_wh) -> None:
    wh = open_wh()
    wh.ensure_bookkeeping()
    with pytest.raises(RuntimeError):
        with wh.transaction():
            wh.record_files("s", [("f1", 1)])
            wh.save_cursor("s", "c", "{}")
            raise RuntimeError("boom")
    assert wh.loaded_files("s") == set()
    assert wh.read_cursors("s") == {}
    with wh.transaction():
        with wh.transaction():  # nested blocks join the outer one
            wh.record_files("s", [("f1", 1)])
        assert wh.loaded_files("s") == set()  # not before the outermost block ends
    assert wh.loaded_files("s") == {"f1"}
    wh.record_files("s", [("f1", 1), ("f2", 2)])  # a replay re-records f1: skipped
    assert wh.loaded_files("s") == {"f1", "f2"}
    wh.record_turned_off("s", [("t", ""), ("t", "c")])
    wh.record_turned_off("s", [("t", "c")])
    assert wh.turned_off_names("s") == {"t": {"", "c"}}


def test_bookkeeping_tables_of_an_older_version_keep_their_timestamps(open_wh) -> None:
    """Bookkeeping tables an older Sluice created through the tables API have no column
    defaults: the load and reject times are still written, and `sluice rejects` shows
    when a line was rejected."""
    from google.cloud import bigquery

    from loader.rules.messages import Reject

    wh = open_wh()
    client = _client(wh)
    client.create_dataset(f"{client.project}._sluice")
    old = {
        "loaded_files": [("schema_name", "STRING"), ("file", "STRING"), ("lines", "INT64"),
                         ("loaded_at", "TIMESTAMP")],
        "rejected_events": [("schema_name", "STRING"), ("file", "STRING"), ("line", "INT64"),
                            ("raw", "STRING"), ("reason", "STRING"), ("rejected_at", "TIMESTAMP")],
    }  # fmt: skip
    for table, fields in old.items():
        schema = [bigquery.SchemaField(n, t) for n, t in fields]
        client.create_table(bigquery.Table(f"{client.project}._sluice.{table}", schema=schema))
    wh.ensure_bookkeeping()
    with wh.transaction():
        wh.record_files("s", [("f1", 3)])
        wh.record_rejects("s", [Reject("f1", 2, "{", "not JSON")])
    stamped = "SELECT COUNT(*) FROM _sluice.loaded_files WHERE loaded_at IS NOT NULL"
    assert list(wh.query(stamped)) == [(1,)]
    assert wh.recent_rejects("s")[0]["rejected_at"] is not None


class _Crash(Exception):
    pass


def test_crash_between_rows_and_ledger_reruns_without_duplicates(open_wh, tmp_path: Path) -> None:
    """The failure BigQuery's design must survive: a batch's MERGEs committed, its file
    ledger not. The rerun re-MERGEs those files (a no-op for ids already there)."""
    archive = _archive(tmp_path / "archive")
    wh = open_wh()
    real = wh.record_files

    def dies(schema: str, files: Any) -> None:
        raise _Crash("killed before the ledger write")

    wh.record_files = dies  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        Loader(wh).load(str(archive), SCHEMA)
    wh.record_files = real  # type: ignore[method-assign]
    assert wh.loaded_files(SCHEMA) == set()
    assert wh.table_stats(SCHEMA, "order_completed").rows == 3  # rows are in already
    report = Loader(wh).load(str(archive), SCHEMA)
    assert report.files_loaded == 3
    stats = {t: wh.table_stats(SCHEMA, t) for t in wh.read_schema(SCHEMA)}
    assert stats["order_completed"].rows == 3 and stats["identifies"].rows == 2
    assert all(s.duplicate_ids == 0 for s in stats.values())
    rejects = list(wh.query("SELECT COUNT(*) FROM _sluice.rejected_events"))
    assert rejects == [(1,)]  # keyed by file and line: recorded once


def test_lock_busy_across_adapters(open_wh) -> None:
    first, second = open_wh(), open_wh()
    first.ensure_bookkeeping()
    with first.lock("src"):
        with pytest.raises(LockBusy, match="another sync is loading schema 'src'"):
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


def test_expired_lock_is_taken_over(open_wh) -> None:
    crashed = open_wh(lock_lease_minutes=0)
    crashed.ensure_bookkeeping()
    crashed.lock("src").__enter__()  # never released: the process died
    other = open_wh()
    with other.lock("src"):
        pass


def test_recent_runs(open_wh) -> None:
    wh = open_wh()
    recent_runs_scenario(wh)
    assert [r["run_id"] for r in wh.recent_runs(limit=1)] == ["r2"]


def test_recent_rejects(open_wh) -> None:
    """What `sluice rejects` lists: one schema's rejected lines, or every schema's."""
    recent_rejects_scenario(open_wh())


def test_sync_report_is_kept_in_sluice_sync_runs(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    report = Loader(wh).load(str(_archive(tmp_path / "archive")), SCHEMA)
    runs = wh.recent_runs()
    assert runs[0]["run_id"] == report.run_id and runs[0]["status"] == "success"
    assert runs[0]["rows_loaded"]["order_completed"] == 3


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
    assert columns == {"id": ColumnType.TEXT, "n": ColumnType.BIGINT}
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
    # b changes, a disappears, c appears.
    wh.upsert_rows("src", "people", ("id", "n", "received_at"), [("b", 3, ts), ("c", 4, ts)])
    wh.retl_stage("m", "SELECT id, n FROM src.people WHERE id <> 'a'", "id", list(columns))
    assert wh.retl_diff("m", list(columns)) == {
        "added": 1,
        "changed": 1,
        "removed": 1,
        "unchanged": 0,
    }
    page = wh.retl_changes("m", ["added", "changed", "removed"], list(columns), 0, 10)
    assert [(r[1], r[2], r[5]) for r in page] == [
        ("added", "c", 4),
        ("changed", "b", 3),
        ("removed", "a", None),
    ]
    wh.retl_advance("m", [r[0] for r in page])
    assert wh.retl_snapshot_count("m") == 2  # a removed, c added
    wh.retl_drop_stage("m")
    client = _client(wh)
    assert not [t for t in client.list_tables(f"{client.project}._sluice") if "__m" in t.table_id]
    out_cols = {"id": ColumnType.TEXT, "n": ColumnType.BIGINT}
    wh.retl_write_table("dest", "out", "id", out_cols, [("a", 5), ("b", 1)], ["a", "b"])
    wh.retl_write_table("dest", "out", "id", out_cols, [("a", 6)], ["a", "b"])
    assert list(wh.query(f"SELECT id, n FROM {wh.table_ref('dest', 'out')}")) == [("a", 6)]
    report = {"run_id": "r1", "model": "m", "status": "success", "started_at": ts}
    wh.retl_record_run({**report, "finished_at": ts})
    assert wh.retl_recent_runs("m")[0]["run_id"] == "r1"
    assert wh.retl_recent_runs("other") == []


def test_generated_sql_parses_as_bigquery(open_wh) -> None:
    """The statements as BigQuery gets them (statements.py over BigQueryDialect, `@name`
    parameters), including the one-statement ALTER that the emulator cannot run (it gets
    one statement per column instead). Each parses as the statement it claims to be (not
    sqlglot's opaque Command fallback); their behaviour is the other tests'."""
    from loader.warehouses import statements as st
    from loader.warehouses.bigquery_api import bind

    wh = open_wh()
    d = wh.dialect  # type: ignore[attr-defined]
    project = _client(wh).project
    target, stage = d.table_ref("s", "t"), "`p._sluice._stage_x`"
    assert target == f"`{project}.s.t`"
    cols = ["id", "n", "uuid_ts", "_rescued_data"]
    fill = st.fill_nulls(d, target, stage, cols)
    assert "`n` = COALESCE(_sluice_t.`n`, _sluice_s.`n`)" in fill
    assert (
        "COALESCE(_sluice_t.`uuid_ts`" not in fill
        and "COALESCE(_sluice_t.`_rescued_data`" not in fill
    )
    spec = ProfileSpec("users", "identifies", "user_id", ["plan"])
    rows = st.profile_rows(
        d, d.table_ref("s", "identifies"), "user_id", spec.trait_columns,
        d.in_list(d.ident("user_id"), "keys"),
    )  # fmt: skip
    assert (
        "FIRST_VALUE(`plan` IGNORE NULLS) OVER (PARTITION BY `user_id` ORDER BY `timestamp` "
        "DESC NULLS LAST, `received_at` DESC NULLS LAST" in rows
    )
    assert "WHERE `user_id` IN UNNEST(%(keys)s)" in rows
    marks = d.table_ref("_sluice", "profile_marks")
    layout = {"id": ColumnType.TEXT, "received_at": ColumnType.TIMESTAMP, "n": ColumnType.BIGINT}
    retype = wh.retype_sql("s", "t", "n", ColumnType.TEXT, layout, stage)  # type: ignore[attr-defined]
    assert "PARTITION BY DATE(`received_at`) CLUSTER BY `id` AS SELECT t.* REPLACE" in retype
    sql = {
        sqlglot.exp.Insert: [
            st.insert_new(d, target, stage, cols),
            st.insert_new(d, target, stage, ["schema_name", "file"], ["schema_name", "file"], True),
            st.profile_insert(d, target, rows, spec.trait_columns),
        ],
        sqlglot.exp.Update: [
            fill,
            st.update_changed(d, target, stage, cols),
            st.mark_deleted(d, target),
            st.profile_update(d, target, rows, spec.trait_columns),
            st.profile_extend(d, target, rows, spec.trait_columns),
        ],
        sqlglot.exp.Union: [
            st.profile_evidence(
                d, target, marks, d.table_ref("s", "users"), "user_id", "_rescued_data"
            ),
        ],
        sqlglot.exp.Create: [
            *(st.create_bookkeeping(d, t) for t in st.BOOKKEEPING.values()),
            st.retl_stage(d, stage, "SELECT 1 AS id", "id", ["id"]),
            st.retl_diff(d, stage, stage, marks, "it's", ["id"]),
            retype,
        ],
    }
    params = {"keys": ["a"], "ids": ["b"], "at": "2026-11-01T00:00:00Z", "schema": "s"}
    params["profile"] = "users"
    for kind, statements in sql.items():
        for statement in statements:
            text, _ = bind(statement, {k: v for k, v in params.items() if k in statement})
            assert "%(" not in text and "PRIMARY KEY" not in text, text
            assert isinstance(sqlglot.parse_one(text, read="bigquery"), kind), text
    assert "@keys" in bind(rows, params)[0] and "IN UNNEST(@keys)" in bind(rows, params)[0]
    assert "'it\\'s'" in st.retl_diff(d, stage, stage, marks, "it's", ["id"])
    alter = wh.add_columns_sql("s", "t", {"b": ColumnType.BIGINT, "_rescued_data": ColumnType.TEXT})
    assert alter == (
        f"ALTER TABLE `{project}.s.t` ADD COLUMN IF NOT EXISTS `b` INT64, "
        "ADD COLUMN IF NOT EXISTS `_rescued_data` STRING"
    )
    parsed = sqlglot.parse_one(alter, read="bigquery")
    assert isinstance(parsed, sqlglot.exp.Alter) and len(parsed.args["actions"]) == 2
    # The lease statements, as the lock sends them.
    sent: list[str] = []
    execute, fetchall = wh.execute, wh.fetchall

    def recorded(run: Callable[..., Any]) -> Callable[..., Any]:
        def call(statement: str, p: Any = None) -> Any:
            sent.append(bind(statement, p)[0])
            return run(statement, p)

        return call

    wh.execute, wh.fetchall = recorded(execute), recorded(fetchall)  # type: ignore[method-assign]
    with wh.lock("src"):
        pass
    leases = [q for q in sent if "locks" in q]
    assert any("TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 360 MINUTE)" in q for q in leases)
    for statement in leases:
        assert not isinstance(sqlglot.parse_one(statement, read="bigquery"), sqlglot.exp.Command)


def test_dataset_prefix_keeps_environments_apart(open_wh) -> None:
    dev, prod = open_wh(dataset_prefix="dev_"), open_wh()
    for wh in (dev, prod):
        wh.ensure_bookkeeping()
        wh.create_table("src", "t", {"id": ColumnType.TEXT})
    dev.insert_new_rows("src", "t", ["id"], [("d",)])
    assert dev.table_ref("src", "t").endswith(".dev_src.t`")
    assert list(dev.query(f"SELECT id FROM {dev.table_ref('src', 't')}")) == [("d",)]
    assert list(prod.query("SELECT COUNT(*) FROM src.t")) == [(0,)]
    dev.record_files("src", [("f", 1)])
    assert dev.loaded_files("src") == {"f"} and prod.loaded_files("src") == set()
    client = _client(dev)
    assert {d.dataset_id for d in client.list_datasets()} == {
        "dev_src",
        "dev__sluice",
        "src",
        "_sluice",
    }


# --- failures a user sees: one sentence, the target, the fix, no secret -----------------


class _StandIn(BaseHTTPRequestHandler):
    """Answers BigQuery REST calls from a script; forwards the rest to `upstream`."""

    protocol_version = "HTTP/1.0"
    server: Any

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path))
        answer = self.server.script(self.command, self.path)
        if answer is not None:
            status, payload = answer
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        host, port = self.server.upstream
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        conn.request(self.command, self.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


def _error(status: int, reason: str, message: str) -> tuple[int, dict]:
    return status, {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": reason, "message": message, "domain": "global"}],
            "status": reason.upper(),
        }
    }


@contextmanager
def stand_in(
    script: Callable[[str, str], tuple[int, dict] | None], upstream: str | None = None
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.script = script  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    if upstream:
        host, port = upstream.removeprefix("http://").split(":")
        server.upstream = (host, int(port))  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def test_connection_failure_is_one_sentence(project: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(WarehouseError) as info:
        open_warehouse("bq_prod", _target(endpoint, project, retries=2))
    message = str(info.value)
    assert message == (
        f"cannot reach BigQuery target 'bq_prod' (project '{project}', endpoint {endpoint}): "
        "connection refused; check api_endpoint in profiles.yml and that the emulator is running"
    )


@pytest.mark.parametrize(
    ("status", "reason", "server_says", "expected"),
    [
        (
            403,
            "accessDenied",
            "Access Denied: Project p: User does not have bigquery.datasets.list permission",
            "permission denied on BigQuery target 'bq' (project '{project}', endpoint "
            "{endpoint}): Access Denied: Project p: User does not have bigquery.datasets.list "
            "permission; grant the service account BigQuery Data Editor and BigQuery Job User "
            "on project '{project}'",
        ),
        (
            404,
            "notFound",
            "Not found: Project {project}",
            "not found on BigQuery target 'bq' (project '{project}', endpoint {endpoint}): "
            "Not found: Project {project}; check project and location ('US') in profiles.yml",
        ),
        (
            401,
            "unauthorized",
            "Request had invalid authentication credentials",
            "BigQuery target 'bq' (project '{project}', endpoint {endpoint}) asks for "
            "credentials but the target is anonymous; set keyfile or keyfile_json (and remove "
            "anonymous: true) in profiles.yml",
        ),
    ],
    ids=["403", "404", "401"],
)
def test_refusals_name_the_target_and_the_fix(
    project: str, status: int, reason: str, server_says: str, expected: str
) -> None:
    answer = _error(status, reason, server_says.format(project=project))
    with stand_in(lambda method, path: answer) as (endpoint, seen):
        with pytest.raises(WarehouseError) as info:
            open_warehouse("bq", _target(endpoint, project))
    assert str(info.value) == expected.format(project=project, endpoint=endpoint)
    assert len(seen) == 1  # a refusal is not retried


def test_transient_errors_are_retried_with_backoff(bq_endpoint: str, project: str) -> None:
    failures = {"left": 2}

    def flaky(method: str, path: str) -> tuple[int, dict] | None:
        if failures["left"] > 0:
            failures["left"] -= 1
            return _error(503, "backendError", "The service is currently unavailable")
        return None  # forwarded to the emulator

    with stand_in(flaky, upstream=bq_endpoint) as (endpoint, seen):
        wh = open_warehouse("bq", _target(endpoint, project, retries=3))
        assert list(wh.query("SELECT 1 + 1")) == [(2,)]
        wh.close()
    assert failures["left"] == 0 and len(seen) >= 3

    def down(method: str, path: str) -> tuple[int, dict]:
        return _error(503, "backendError", "The service is currently unavailable")

    with stand_in(down) as (endpoint, seen):
        with pytest.raises(WarehouseError) as info:
            open_warehouse("bq", _target(endpoint, project, retries=2))
    assert len(seen) == 2  # bounded: `retries` attempts, then one sentence
    assert str(info.value).startswith("cannot reach BigQuery target 'bq'")
    assert "The service is currently unavailable; check api_endpoint" in str(info.value)


def test_statement_errors_are_one_sentence(open_wh) -> None:
    wh = open_wh()
    project = _client(wh).project
    where = f"BigQuery target 'bq_test' (project '{project}', endpoint "
    with pytest.raises(WarehouseError) as info:
        list(wh.query("SELECT * FROM nowhere.nothing"))
    message = str(info.value)
    assert message.startswith(f"not found on {where}") and "\n" not in message
    assert "Not found: " in message and "check project and location ('US')" in message
    with pytest.raises(WarehouseError) as info:
        list(wh.query("SELEC 1"))
    message = str(info.value)
    assert message.startswith(where) and "\n" not in message
    assert "reason:" not in message and "Job ID" not in message


def test_bad_keyfiles_are_named_and_secrets_never_shown(project: str, tmp_path: Path) -> None:
    secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7s3cr3t"
    bad_key = json.dumps(
        {
            "type": "service_account",
            "client_email": "loader@p.iam.gserviceaccount.com",
            "private_key": f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n",
            "token_uri": "http://127.0.0.1:1/token",
        }
    )
    fields = {"type": "bigquery", "project": project, "keyfile_json": bad_key}
    with pytest.raises(WarehouseError) as info:
        open_warehouse("bq", _OtherTarget.model_validate(fields))
    assert secret not in str(info.value) and "\n" not in str(info.value)
    assert "cannot use keyfile_json of BigQuery target 'bq'" in str(info.value)
    missing = tmp_path / "nope.json"
    fields = {"type": "bigquery", "project": project, "keyfile": str(missing)}
    with pytest.raises(WarehouseError) as info:
        open_warehouse("bq", _OtherTarget.model_validate(fields))
    assert str(info.value) == (
        f"cannot read the service-account keyfile '{missing}' of BigQuery target 'bq' "
        f"(project '{project}') (No such file or directory); check keyfile in profiles.yml"
    )


def test_a_service_account_token_refused_names_the_keyfile(project: str, tmp_path: Path) -> None:
    """A well-formed key whose token exchange is refused (the token endpoint is a
    loopback stand-in): one sentence, and the key never appears in it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )

    def token(method: str, path: str) -> tuple[int, dict]:
        return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}

    with stand_in(token) as (endpoint, _seen):
        key = {
            "type": "service_account",
            "client_email": "loader@p.iam.gserviceaccount.com",
            "private_key": pem,
            "token_uri": f"{endpoint}/token",
        }
        keyfile = tmp_path / "sa.json"
        keyfile.write_text(json.dumps(key))
        for fields in ({"keyfile": str(keyfile)}, {"keyfile_json": json.dumps(key)}):
            target = _OtherTarget.model_validate(
                {"type": "bigquery", "project": project, "api_endpoint": endpoint, **fields}
            )
            with pytest.raises(WarehouseError) as info:
                open_warehouse("bq", target)
            message = str(info.value)
            assert message.startswith("BigQuery rejected the credentials of BigQuery target 'bq'")
            assert "invalid_grant" in message and "check keyfile" in message
            assert "PRIVATE KEY" not in message and "\n" not in message


def test_bad_target_config_names_the_field() -> None:
    cases = [
        ({}, "field 'project': Field required"),
        ({"project": "My Project"}, "field 'project': 'My Project' is not a GCP project id"),
        ({"project": "p-123456", "dataset_prefix": "dev-"}, "field 'dataset_prefix': "),
        ({"project": "p-123456", "anonymous": True}, "anonymous: true is for an emulator"),
        ({"project": "p-123456", "retries": 0}, "field 'retries'"),
        ({"project": "p-123456", "datasets": "x"}, "field 'datasets': Extra inputs"),
        ({"project": "p-123456", "keyfile": "a", "keyfile_json": "{}"}, "not both"),
    ]
    for fields, expected in cases:
        target = _OtherTarget.model_validate({"type": "bigquery", **fields})
        with pytest.raises(ConfigError) as info:
            open_warehouse("bq", target)
        assert str(info.value).startswith("profiles.yml: target 'bq': ")
        assert expected in str(info.value)


def test_registry_opens_a_bigquery_target_from_profiles_yml(
    bq_endpoint: str, project: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BQ_PROJECT", project)
    monkeypatch.setenv("BQ_ENDPOINT", bq_endpoint)
    profiles = tmp_path / "profiles.yml"
    profiles.write_text(
        "default_target: warehouse_bq\n"
        "targets:\n"
        "  warehouse_bq:\n"
        "    type: bigquery\n"
        "    project: ${BQ_PROJECT}\n"
        "    location: US\n"
        "    dataset_prefix: raw_\n"
        "    api_endpoint: ${BQ_ENDPOINT}\n"
        "    anonymous: true\n"
    )
    name, target = load_profiles(profiles).target(None)
    wh = open_warehouse(name, target)
    try:
        wh.ensure_bookkeeping()
        assert wh.target_name == "warehouse_bq"
        assert wh.table_ref("web", "pages") == f"`{project}.raw_web.pages`"
        assert wh.loaded_files("web") == set()
    finally:
        wh.close()


def test_set_type_rewrites_the_table_in_one_statement(open_wh, tmp_path: Path) -> None:
    """BigQuery only widens a column in place: the table is rewritten by one CREATE OR
    REPLACE TABLE ... AS SELECT, the column's new values joined from a staging table."""
    import sqlglot

    from loader.sync.pipeline import Loader
    from tests.helpers import track, write_ndjson

    wh = open_wh()
    write_ndjson(
        tmp_path / "a" / "0.json.gz",
        [track("m1", sku=42), track("m2", sku="AB-7"), track("m3", sku=7)],
    )
    assert Loader(wh).load(str(tmp_path / "a"), "s").status == "success"
    table = wh.table_ref("s", "order_completed")
    rows = f"SELECT id, sku, _rescued_data FROM {table} ORDER BY id"

    def restored(r: tuple) -> tuple:
        return (r[0], r[1], json.loads(r[2]) if r[2] else None)

    before = [restored(r) for r in wh.query(rows)]
    assert before == [("m1", 42, None), ("m2", None, {"sku": "AB-7"}), ("m3", 7, None)]
    plan = wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=False)
    assert (plan.moved_in, plan.moved_out, plan.kept) == (1, 0, 2)
    assert [restored(r) for r in wh.query(rows)] == before
    columns = wh.read_schema("s")["order_completed"]
    stage = "`p._sluice._stage_x`"
    statement = wh.retype_sql("s", "order_completed", "sku", ColumnType.TEXT, columns, stage)
    assert sqlglot.parse_one(statement, read="bigquery").sql("bigquery")
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=True)
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.TEXT
    assert [restored(r) for r in wh.query(rows)] == [
        ("m1", "42", None),
        ("m2", "AB-7", None),
        ("m3", "7", None),
    ]
    assert wh.decided_types("s") == {"order_completed": {"sku": ColumnType.TEXT}}


def test_tracking_plan_bookkeeping(open_wh) -> None:
    from tests.test_tracking_plan_load import check_plan_bookkeeping

    check_plan_bookkeeping(open_wh())
