"""The Redshift adapter.

No Redshift runs here. The adapter runs on a real PostgreSQL (everything both accept:
the staging, anti-join inserts, MERGE, window-function profiles, lock rows, bookkeeping)
with its staged gzip CSV objects really written to, and read back from, moto's S3 server.
Two hooks differ on PostgreSQL: the DDL drops Redshift's `SORTKEY`, and the Redshift
`COPY ... FROM 's3://...' IAM_ROLE ...` text the adapter builds is parsed with sqlglot's
Redshift dialect, and the table, columns and object *that text names* are what gets
downloaded from S3 and fed to PostgreSQL's `COPY ... FROM STDIN`. A `getdate()` function
is created on PostgreSQL so Redshift's timestamp function runs as is. Every statement the
adapter sends is recorded and must parse as Redshift, with no PostgreSQL-only construct
and no unquoted Redshift-reserved identifier; the Redshift-only texts are tested exactly.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import fsspec
import psycopg
import pytest
import sqlglot
from hypothesis import given
from hypothesis import strategies as st
from moto.server import ThreadedMotoServer
from sqlglot import exp
from sqlglot.dialects.redshift import Redshift

from loader.config.errors import ConfigError
from loader.config.profiles import Profiles
from loader.rules.messages import Reject
from loader.rules.schema import ColumnType, coerce, coerce_column, fits
from loader.sync.pipeline import Loader
from loader.warehouses import redshift
from loader.warehouses.base import LockBusy, WarehouseError
from loader.warehouses.dialect import positional
from loader.warehouses.redshift import (
    RedshiftTarget,
    RedshiftWarehouse,
    clip_bytes,
    copy_authorization,
    copy_statement,
    create_table_statement,
    csv_gzip,
)
from loader.warehouses.registry import open_warehouse
from tests.contract import CONTRACT
from tests.helpers import track, write_ndjson

BUCKET = "sluice-staging"
ROLE = "arn:aws:iam::123456789012:role/sluice-copy"


# --- fixtures: moto S3 + PostgreSQL ----------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _staged_objects(endpoint: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=BUCKET)
    return [o["Key"] for o in listing.get("Contents", [])]


class RedshiftOnPostgres(RedshiftWarehouse):
    """The adapter with its two Redshift-only statements replaced for PostgreSQL. Every
    statement its connection executes is recorded (`sent`, at the cursor, so nothing an
    inherited method sends escapes the dialect checks)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.copies: list[str] = []
        self.ddl: list[str] = []
        self.sent: list[str] = []
        super().__init__(*args, **kwargs)
        self.conn.execute(
            "CREATE OR REPLACE FUNCTION public.getdate() RETURNS timestamp LANGUAGE sql "
            "STABLE AS $$ SELECT now() AT TIME ZONE 'UTC' $$"
        )
        self.sent.clear()  # the emulation's own setup is not the adapter's SQL

    def _connect(self) -> psycopg.Connection[Any]:
        conn = super()._connect()
        sent = self.sent

        class Recording(psycopg.Cursor[Any]):
            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                sent.append(str(query))
                return super().execute(query, params, **kwargs)

            def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
                sent.append(str(query))
                super().executemany(query, params_seq, **kwargs)

        conn.cursor_factory = Recording
        return conn

    def _create_table_sql(self, schema: str, table: str, columns: dict[str, str]) -> str:
        sql = super()._create_table_sql(schema, table, columns)
        self.ddl.append(sql)
        return sql.removesuffix(" SORTKEY (received_at)")

    def _copy_from_s3(self, copy_sql: str) -> None:
        """Execute what the Redshift COPY text says, as Redshift would: its table, its
        columns, and the gzip CSV object at its s3:// URL, fetched from (moto's) S3."""
        self.copies.append(copy_sql)
        copy = sqlglot.parse_one(copy_sql, read="redshift")
        assert isinstance(copy, exp.Copy)
        params = {p.this.name.upper() for p in copy.args["params"]}
        assert {"FORMAT", "GZIP"} <= params
        table = copy.this.this.sql("postgres")
        cols = ", ".join(c.sql("postgres") for c in copy.this.expressions)
        (url,) = [f.name for f in copy.args["files"]]
        with fsspec.open(url, "rb", **self.target.fs_options()) as f:
            data = gzip.decompress(f.read())
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT csv, NULL '\\N')") as out:
                out.write(data)


def _target(dsn: str, endpoint: str, **extra: Any) -> RedshiftTarget:
    fields: dict[str, Any] = {
        "type": "redshift",
        "dsn": dsn,
        "iam_role": ROLE,
        "s3_staging": f"s3://{BUCKET}/staging/",
        "region": "us-east-1",
        "storage_options": {"client_kwargs": {"endpoint_url": endpoint}},
    }
    return RedshiftTarget(**{**fields, **extra})


@pytest.fixture
def open_wh(pg_dsn: str, s3_endpoint: str):
    opened: list[RedshiftWarehouse] = []

    def factory(cls: type[RedshiftOnPostgres] = RedshiftOnPostgres, **extra: Any) -> Any:
        wh = cls("rs_test", _target(pg_dsn, s3_endpoint, **extra))
        opened.append(wh)
        return wh

    yield factory
    for wh in opened:
        try:
            wh.close()
        except Exception:  # noqa: BLE001
            pass


# --- the shared contract, on PostgreSQL + moto S3 --------------------------------------


@pytest.mark.parametrize("scenario", CONTRACT, ids=lambda s: s.__name__)
def test_contract(scenario, open_wh, tmp_path: Path, s3_endpoint: str) -> None:
    scenario(open_wh, tmp_path)
    # Every batch went through S3 (and its staged object was removed afterwards).
    assert _staged_objects(s3_endpoint) == []


def test_bulk_path_goes_through_s3_copy_and_sortkey_ddl(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    write_ndjson(tmp_path / "a" / "x.ndjson", [track("t1", "Signed Up", plan="pro")])
    report = Loader(wh).load(str(tmp_path / "a"), "web")
    assert report.status == "success"
    assert wh.copies and all(
        c.startswith("COPY ") and f"IAM_ROLE '{ROLE}'" in c and "FORMAT AS CSV GZIP" in c
        for c in wh.copies
    )
    assert all("FROM 's3://sluice-staging/staging/" in c for c in wh.copies)
    tracks = next(d for d in wh.ddl if '"web"."tracks"' in d)
    assert tracks.endswith("PRIMARY KEY (id)) SORTKEY (received_at)")
    assert '"event" varchar(65535)' in tracks and '"received_at" timestamp with time zone' in tracks
    assert '"_rescued_data" varchar(65535)' in tracks


# --- the rescue rule for over-wide strings --------------------------------------------


def test_over_wide_string_goes_to_rescued_data(open_wh, tmp_path: Path) -> None:
    wh = open_wh(varchar_bytes=64)  # 16 characters at 4 bytes each
    assert wh.capabilities.max_text_chars == 16
    write_ndjson(
        tmp_path / "a" / "x.ndjson",
        [
            track("t1", "Signed Up", note="short"),
            track("t2", "Signed Up", note="é" * 17),
            track("t3", "Signed Up", note="x" * 16, meta={"k": "v" * 40}),
        ],
    )
    report = Loader(wh).load(str(tmp_path / "a"), "web")
    assert report.status == "success" and report.rescued_values == 2
    rows = {
        r[0]: r[1:]
        for r in wh.query('SELECT id, note, meta_k, _rescued_data FROM "web"."signed_up"')
    }
    assert rows["t1"][:2] == ("short", None) and rows["t1"][2] is None
    assert rows["t2"][0] is None and json.loads(rows["t2"][2]) == {"note": "é" * 17}
    assert rows["t3"][0] == "x" * 16 and rows["t3"][1] is None
    assert json.loads(rows["t3"][2]) == {"meta_k": "v" * 40}


@pytest.mark.parametrize(
    ("value", "kind", "width", "expected"),
    [
        ("abc", ColumnType.TEXT, None, "abc"),
        ("abc", ColumnType.TEXT, 3, "abc"),
        ("abcd", ColumnType.TEXT, 3, None),
        ("", ColumnType.TEXT, 0, ""),
        ({"a": 1}, ColumnType.TEXT, 7, '{"a":1}'),
        ({"a": 1}, ColumnType.TEXT, 6, None),
        (12345, ColumnType.TEXT, 4, None),
        (12345, ColumnType.BIGINT, 2, 12345),  # the width is a text rule only
        ("2026-11-01T10:00:00Z", ColumnType.TIMESTAMP, 3, "2026-11-01T10:00:00+00:00"),
    ],
)
def test_coerce_text_width(value: Any, kind: ColumnType, width: int | None, expected: Any) -> None:
    got = coerce(value, kind, width)
    assert (got if fits(got) else None) == expected


@given(
    st.lists(st.one_of(st.none(), st.text(max_size=30), st.integers())),
    st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
)
def test_coerce_column_width_property(values: list[Any], width: int | None) -> None:
    out, misfits = coerce_column(list(values), ColumnType.TEXT, width)
    bad = {i for i, _ in misfits}
    for i, value in enumerate(values):
        text = None if value is None else value if isinstance(value, str) else json.dumps(value)
        too_wide = text is not None and width is not None and len(text) > width
        assert (i in bad) == too_wide
        assert out[i] == (None if too_wide else text)
    assert all(values[i] == original for i, original in misfits)


# --- exact Redshift-only statements ----------------------------------------------------


def test_copy_statement_text() -> None:
    role = copy_authorization(ROLE)
    assert copy_statement('"_stage"', ["id", "a b"], "s3://b/p/x.csv.gz", role, "eu-west-1") == (
        'COPY "_stage" ("id", "a b") FROM \'s3://b/p/x.csv.gz\' '
        f"IAM_ROLE '{ROLE}' REGION 'eu-west-1' FORMAT AS CSV GZIP NULL AS '\\\\N' "
        "TIMEFORMAT 'auto' COMPUPDATE OFF STATUPDATE OFF"
    )
    default = copy_authorization(None)
    assert default == "IAM_ROLE default"
    assert " IAM_ROLE default FORMAT" in copy_statement('"s"', ["id"], "s3://b/k", default, None)
    assert "FROM 's3://b/k''q'" in copy_statement('"s"', ["id"], "s3://b/k'q", default, None)
    keys = copy_authorization(None, "AKIAEXAMPLE", "se'cret", "tok")
    assert keys == ("ACCESS_KEY_ID 'AKIAEXAMPLE' SECRET_ACCESS_KEY 'se''cret' SESSION_TOKEN 'tok'")
    copy = sqlglot.parse_one(copy_statement('"s"', ["id"], "s3://b/k", keys, None), read="redshift")
    assert isinstance(copy, exp.Copy) and [f.name for f in copy.args["files"]] == ["s3://b/k"]


def test_create_table_statement_text() -> None:
    columns = {"id": "varchar(65535)", "received_at": "timestamp with time zone"}
    assert create_table_statement("web", "tracks", columns) == (
        'CREATE TABLE "web"."tracks" ("id" varchar(65535), "received_at" timestamp with time '
        "zone, PRIMARY KEY (id)) SORTKEY (received_at)"
    )
    # No received_at column: no SORTKEY clause at all.
    assert create_table_statement("s", "t", {"id": "bigint"}) == (
        'CREATE TABLE "s"."t" ("id" bigint, PRIMARY KEY (id))'
    )


def test_write_statements_in_redshift_dialect() -> None:
    """The shared statements, written for Redshift: no alias on an UPDATE's target, no
    IS DISTINCT FROM, lists as IN (...), getdate() for the time."""
    from loader.warehouses import statements

    d = redshift.RedshiftDialect(redshift.capabilities().type_names, redshift.WIDE)
    fill = statements.fill_nulls(d, '"s"."t"', '"st"', ["id", "a"])
    assert fill == (
        'UPDATE "s"."t" SET "a" = COALESCE("s"."t"."a", _sluice_s."a") FROM "st" AS _sluice_s '
        'WHERE "s"."t"."id" = _sluice_s."id" AND (("s"."t"."a" IS NULL AND _sluice_s."a" IS '
        "NOT NULL))"
    )
    upsert = statements.update_changed(d, '"s"."t"', '"st"', ["id", "name"])
    assert "DISTINCT" not in upsert and '"s"."t"."name" = _sluice_s."name"' in upsert
    rows = statements.profile_rows(d, '"s"."identifies"', "user_id", ["plan"], "TRUE")
    assert "FILTER" not in rows and "array_agg" not in rows
    update = statements.profile_update(d, '"s"."users"', rows, ["plan"])
    assert "current_timestamp" not in update and "getdate()" in update
    assert d.in_list('"k"', "keys") == '"k" IN (%(keys)s)'


def test_list_parameters_expand() -> None:
    assert positional("a = %(a)s AND b IN (%(b)s)", {"a": "x", "b": ["p", "q"]}) == (
        "a = %s AND b IN (%s, %s)",
        ["x", "p", "q"],
    )
    assert positional("b IN (%(b)s)", {"b": []}) == ("b IN (NULL)", [])
    assert positional("a = %(a)s", {"a": "x", "unused": 1}) == ("a = %s", ["x"])


def test_csv_keeps_null_and_empty_apart() -> None:
    text = gzip.decompress(csv_gzip([(None, "", 'a"b', True, 1.5, "\\N")])).decode()
    assert text == '\\N,"","a""b","true","1.5","\\N"\n'


# --- object writes, locks, config, errors ---------------------------------------------


def test_upsert_merge_and_mark_deleted(open_wh) -> None:
    wh = open_wh()
    wh.ensure_bookkeeping()
    columns = {
        "id": ColumnType.TEXT,
        "received_at": ColumnType.TIMESTAMP,
        "uuid_ts": ColumnType.TIMESTAMP,
        "_deleted_at": ColumnType.TIMESTAMP,
        "name": ColumnType.TEXT,
    }
    wh.create_table("obj", "customers", columns)
    at = "2026-11-01T00:00:00+00:00"
    cols = ["id", "received_at", "uuid_ts", "name"]
    assert wh.upsert_rows("obj", "customers", cols, [("c1", at, at, "a"), ("c2", at, at, "b")]) == 2
    assert wh.upsert_rows("obj", "customers", cols, [("c1", at, at, "A"), ("c3", at, at, "c")]) == 2
    assert wh.mark_deleted("obj", "customers", ["c2", "c9"], at) == 2
    rows = dict(wh.query('SELECT id, name FROM "obj"."customers" ORDER BY id'))
    assert rows == {"c1": "A", "c2": "b", "c3": "c", "c9": None}
    deleted = {
        r[0] for r in wh.query('SELECT id FROM "obj"."customers" WHERE _deleted_at IS NOT NULL')
    }
    assert deleted == {"c2", "c9"}
    assert wh.table_stats("obj", "customers").duplicate_ids == 0


def test_lock_row_is_exclusive_and_a_stale_lease_is_taken_over(open_wh) -> None:
    first, second = open_wh(), open_wh()
    with first.lock("web"):
        with pytest.raises(LockBusy, match="another sync is loading schema 'web' into target"):
            with second.lock("web"):
                pass
        with second.lock("other"):
            pass
        with pytest.raises(LockBusy, match="reverse-ETL run of model 'm'"):
            with first.retl_lock("m"), second.retl_lock("m"):
                pass
    # A sync that died holding the lock: its row stays, and blocks others while its
    # lease lasts...
    crashed = open_wh()
    held = crashed.lock("web")
    held.__enter__()
    crashed.close()
    with pytest.raises(LockBusy):
        with second.lock("web"):
            pass
    # ...and is taken over once the lease (timed by the warehouse's clock) has run out.
    with psycopg.connect(second.target.conninfo(), autocommit=True) as admin:
        admin.execute("UPDATE _sluice.locks SET expires_at = getdate() - interval '1 minute'")
    with second.lock("web"):
        with pytest.raises(LockBusy):
            with first.lock("web"):
                pass
    assert list(second.query("SELECT count(*) FROM _sluice.locks")) == [(0,)]
    with pytest.raises(psycopg.OperationalError):  # the dead sync cannot release anything
        held.__exit__(None, None, None)


def test_retl_stage_diff_and_advance(open_wh) -> None:
    wh = open_wh()
    wh.retl_ensure_bookkeeping()
    sql = "SELECT 'k1' AS id, true AS flag, 1.5 AS x UNION ALL SELECT 'k2', NULL, NULL"
    cols = list(wh.retl_model_columns("m", sql))
    assert cols == ["id", "flag", "x"]
    assert wh.retl_stage("m", sql, "id", cols) == 2
    assert wh.retl_key_problems("m") == (0, 0)
    assert wh.retl_diff("m", cols) == {"added": 2, "changed": 0, "removed": 0, "unchanged": 0}
    page = wh.retl_changes("m", ["added"], cols, 0, 10)
    assert [r[2] for r in page] == ["k1", "k2"]
    wh.retl_advance("m", [r[0] for r in page])
    assert wh.retl_snapshot_count("m") == 2
    sql2 = "SELECT 'k1' AS id, false AS flag, 1.5 AS x"
    wh.retl_stage("m", sql2, "id", cols)
    assert wh.retl_diff("m", cols) == {"added": 0, "changed": 1, "removed": 1, "unchanged": 0}
    assert wh.retl_baseline("m", ["changed", "removed"]) == 2
    assert wh.retl_snapshot_count("m") == 1
    wh.retl_drop_stage("m")


def test_registry_opens_a_redshift_target(pg_dsn: str, s3_endpoint: str) -> None:
    profiles = Profiles.model_validate(
        {
            "default_target": "rs",
            "targets": {
                "rs": {"type": "redshift", "dsn": pg_dsn, "s3_staging": f"s3://{BUCKET}/x"}
            },
        }
    )
    name, target = profiles.target(None)
    wh = open_warehouse(name, target)
    try:
        assert isinstance(wh, RedshiftWarehouse) and wh.target.port == 5439
        assert list(wh.query("SELECT 1")) == [(1,)]
    finally:
        wh.close()
    bad = Profiles.model_validate(
        {"default_target": "rs", "targets": {"rs": {"type": "redshift", "host": "h"}}}
    )
    with pytest.raises(ConfigError, match="field 'targets.rs.s3_staging' is required"):
        open_warehouse(*bad.target(None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_failure_is_one_sentence_without_the_secret() -> None:
    target = RedshiftTarget(
        type="redshift",
        host="127.0.0.1",
        port=_free_port(),
        password="hunter2-secret",
        s3_staging="s3://b/p",
        retries=2,
        connect_timeout=2,
    )
    with pytest.raises(WarehouseError) as err:
        RedshiftWarehouse("rs_prod", target)
    msg = str(err.value)
    assert msg.startswith("cannot connect to Redshift target 'rs_prod' (127.0.0.1:")
    assert "check host and port (or dsn) in profiles.yml" in msg
    assert "hunter2" not in msg and "\n" not in msg


def test_unknown_database_names_the_field(pg_dsn: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    info.update(dbname="no_such_db_sluice", password="hunter2-secret")
    target = RedshiftTarget(
        type="redshift", dsn=psycopg.conninfo.make_conninfo(**info), s3_staging="s3://b/p"
    )
    with pytest.raises(WarehouseError) as err:
        RedshiftWarehouse("rs_prod", target)
    msg = str(err.value)
    assert "Redshift target 'rs_prod'" in msg and "check dbname" in msg
    assert "hunter2" not in msg and "\n" not in msg


def test_unwritable_staging_is_one_sentence(open_wh, tmp_path: Path) -> None:
    wh = open_wh(s3_staging="s3://no-such-bucket-sluice/p")
    write_ndjson(tmp_path / "a" / "x.ndjson", [track("t1", "Signed Up")])
    with pytest.raises(WarehouseError, match="cannot write staged rows to s3://no-such-bucket"):
        Loader(wh).load(str(tmp_path / "a"), "web")


def test_connect_retries_a_transient_failure_with_backoff() -> None:
    """A server that drops every connection (a cluster restarting) is tried `retries`
    times before the one-sentence error."""
    accepted: list[int] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    target = RedshiftTarget(
        type="redshift",
        host="127.0.0.1",
        port=listener.getsockname()[1],
        sslmode="disable",
        s3_staging="s3://b/p",
        retries=3,
        connect_timeout=2,
    )
    started = time.monotonic()
    try:
        with pytest.raises(WarehouseError, match="cannot connect to Redshift target 'rs_prod'"):
            RedshiftWarehouse("rs_prod", target)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert len(accepted) == 3
    assert time.monotonic() - started >= 0.5  # two backoff pauses: >= 0.25 s + 0.5 s


def test_dropped_connection_is_reopened_and_a_loss_mid_batch_is_one_sentence(open_wh) -> None:
    wh = open_wh()

    def kill() -> None:
        with psycopg.connect(wh.target.conninfo(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (wh.conn.info.backend_pid,))

    kill()
    assert list(wh.query("SELECT 1")) == [(1,)]  # reconnected, no error seen
    with pytest.raises(WarehouseError) as err:
        with wh.transaction():
            kill()
            wh.query("SELECT 1")
    msg = str(err.value)
    assert msg.startswith("lost the connection to Redshift target 'rs_test'")
    assert "rerun" in msg and "\n" not in msg
    assert list(wh.query("SELECT 2")) == [(2,)]


def test_permission_error_is_one_sentence_naming_what_to_grant(
    open_wh, pg_dsn: str, s3_endpoint: str
) -> None:
    role = f"sluice_ro_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'hunter2-secret'")
    try:
        info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
        info.update(user=role, password="hunter2-secret")
        dsn = psycopg.conninfo.make_conninfo(**info)
        wh = RedshiftWarehouse("rs_ro", _target(dsn, s3_endpoint))
        try:
            with pytest.raises(WarehouseError) as err:
                wh.create_table("web", "tracks", {"id": ColumnType.TEXT})
        finally:
            wh.close()
        msg = str(err.value)
        assert msg.startswith("Redshift target 'rs_ro': permission denied")
        assert f"grant user '{role}' CREATE on database '{info['dbname']}'" in msg
        assert "hunter2" not in msg and "\n" not in msg
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_copy_with_a_key_pair_and_a_failed_copy_is_one_sentence(
    open_wh, tmp_path: Path, s3_endpoint: str
) -> None:
    keys = {"iam_role": None, "access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t-key"}
    wh = open_wh(**keys)
    write_ndjson(tmp_path / "a" / "x.ndjson", [track("t1", "Signed Up")])
    assert Loader(wh).load(str(tmp_path / "a"), "web").status == "success"
    assert all("ACCESS_KEY_ID 'AKIAEXAMPLE' SECRET_ACCESS_KEY 's3cr3t-key'" in c for c in wh.copies)
    assert wh.target.fs_options()["key"] == "AKIAEXAMPLE"  # the upload used the same pair

    class RealCopy(RedshiftOnPostgres):
        """Sends the Redshift COPY text itself: PostgreSQL refuses it, as a cluster that
        cannot read the bucket would."""

        def _copy_from_s3(self, copy_sql: str) -> None:
            RedshiftWarehouse._copy_from_s3(self, copy_sql)

    failing = open_wh(RealCopy, **keys)
    write_ndjson(tmp_path / "b" / "y.ndjson", [track("t2", "Signed Up")])
    with pytest.raises(WarehouseError) as err:
        Loader(failing).load(str(tmp_path / "b"), "web")
    msg = str(err.value)
    assert msg.startswith(f"Redshift target 'rs_test': COPY from s3://{BUCKET}/staging/")
    assert "check iam_role (or access_key_id and secret_access_key)" in msg
    assert "s3cr3t" not in msg and "\n" not in msg
    assert _staged_objects(s3_endpoint) == []  # the staged object is removed even then
    assert "y.ndjson" not in "".join(failing.loaded_files("web"))


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"access_key_id": "AKIA"}, "access_key_id and secret_access_key go together"),
        (
            {"iam_role": ROLE, "access_key_id": "AKIA", "secret_access_key": "x"},
            "give iam_role or access_key_id/secret_access_key, not both",
        ),
        ({"s3_staging": "/tmp/staging"}, "field 's3_staging': must be an s3://bucket/prefix"),
        ({"varchar_bytes": 16}, "field 'varchar_bytes'"),
    ],
)
def test_target_config_mistakes_are_named(fields: dict[str, Any], error: str) -> None:
    target = {"type": "redshift", "host": "h", "s3_staging": "s3://b/p", **fields}
    with pytest.raises(ConfigError, match=re.escape(f"profiles.yml: target 'rs': {error}")):
        RedshiftTarget.from_target("rs", target)


def test_rescued_text_wider_than_a_varchar_is_cut_with_a_marker(
    open_wh, tmp_path: Path, s3_endpoint: str
) -> None:
    """A value far over its column's width is rescued, and the rescued JSON would be
    over _rescued_data's own varchar(65535): it is cut there, valid JSON still, with the
    value's length and hash kept and the cut counted; the batch loads."""
    wh = open_wh(varchar_bytes=64)
    assert wh.capabilities.max_rescued_bytes == 65535
    note = "é" * 40_000 + "x" * 20_000  # 100,000 bytes in UTF-8
    write_ndjson(
        tmp_path / "a" / "x.ndjson",
        [track("t1", "Signed Up", note=note, plan="p" * 100), track("t2", "Signed Up", n=1)],
    )
    report = Loader(wh).load(str(tmp_path / "a"), "web")
    assert report.status == "success" and wh.loaded_files("web")
    assert report.rescued_values == 2 and report.rescued_cut == 1
    (text,) = next(wh.query('SELECT _rescued_data FROM "web"."signed_up" WHERE id = \'t1\''))
    assert len(text.encode()) <= 65535
    rescued = json.loads(text)
    assert rescued["plan"] == "p" * 100  # the small value is whole
    marker = rescued["note"]
    whole = json.dumps(note, ensure_ascii=False)
    assert marker["$sluice_cut"] is True and marker["length"] == len(whole)
    assert marker["sha256"] == hashlib.sha256(whole.encode()).hexdigest()
    assert whole.startswith(marker["head"]) and len(marker["head"]) > 10_000
    assert _staged_objects(s3_endpoint) == []
    # An id cannot be rescued: over the width, the fix is a wider varchar_bytes.
    write_ndjson(tmp_path / "b" / "y.ndjson", [track("i" * 70, "Signed Up")])
    with pytest.raises(
        WarehouseError,
        match=r"the id value is 70 bytes, over its varchar\(64\) "
        r"column; raise varchar_bytes in profiles.yml",
    ):
        Loader(wh).load(str(tmp_path / "b"), "web")


def test_a_rejected_line_longer_than_a_varchar_is_kept_cut_short(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.ndjson").write_bytes(b'{"type": "track", "x": "' + b"y" * 70_000 + b"\n")
    report = Loader(wh).load(str(tmp_path / "a"), "web")
    assert report.status == "success" and report.rejects == 1
    (raw,) = next(wh.query('SELECT length("raw") FROM _sluice.rejected_events'))
    assert raw == 65535
    assert clip_bytes("aé", 2) == "a" and clip_bytes("abc", 3) == "abc"
    wh.record_rejects("web", [Reject("f", 1, "é" * 40_000, "bad")])  # 80000 bytes
    lengths = [r[0] for r in wh.query("SELECT octet_length(raw) FROM _sluice.rejected_events")]
    assert sorted(lengths) == [65534, 65535]


def test_mark_deleted_splits_long_id_lists(open_wh, monkeypatch: pytest.MonkeyPatch) -> None:
    wh = open_wh()
    monkeypatch.setattr(wh.dialect, "max_list", 2)
    sent = len(wh.sent)
    columns = {
        "id": ColumnType.TEXT,
        "received_at": ColumnType.TIMESTAMP,
        "uuid_ts": ColumnType.TIMESTAMP,
        "_deleted_at": ColumnType.TIMESTAMP,
    }
    wh.create_table("obj", "things", columns)
    ids = [f"c{i}" for i in range(5)]
    assert wh.mark_deleted("obj", "things", ids, "2026-11-01T00:00:00+00:00") == 5
    assert list(wh.query('SELECT count(*) FROM "obj"."things" WHERE _deleted_at IS NOT NULL')) == [
        (5,)
    ]
    marks = [q for q in wh.sent[sent:] if q.startswith("UPDATE") and "_deleted_at" in q]
    assert len(marks) == 3  # 5 ids, 2 per statement


_PG_ONLY = re.compile(
    r"ON CONFLICT|current_timestamp|\bnow\(\)|= ANY\(|::|\bjsonb\b|array_agg|FILTER \(|"
    r"row_to_json|SAVEPOINT|pg_try_advisory|AS text\)|\btext\b,|\btext\)",
    re.IGNORECASE,
)


def test_every_statement_sent_is_redshift_sql(open_wh, tmp_path: Path) -> None:
    """Everything a sync, an object upsert, a deletion and a reverse-ETL run send parses
    as Redshift, with no PostgreSQL-only construct and no unquoted reserved word."""
    wh = open_wh()
    archive = tmp_path / "a"
    write_ndjson(
        archive / "x.ndjson",
        [
            track("t1", "Order Completed", revenue=1.5, raw="r", timestamp_x="t", user="u"),
            {"type": "identify", "messageId": "i1", "userId": "u1", "traits": {"plan": "p"}},
        ],
    )
    (archive / "y.ndjson").write_bytes(b"not json\n")
    assert Loader(wh).load(str(archive), "web").status == "success"
    day = date(2026, 11, 1)
    assert Loader(wh).replay(str(archive), "web", day, day).status == "success"
    wh.create_table(
        "obj",
        "c",
        {
            "id": ColumnType.TEXT,
            "received_at": ColumnType.TIMESTAMP,
            "uuid_ts": ColumnType.TIMESTAMP,
            "_deleted_at": ColumnType.TIMESTAMP,
        },
    )
    at = "2026-11-01T00:00:00+00:00"
    wh.upsert_rows("obj", "c", ["id", "received_at", "uuid_ts"], [("c1", at, at)])
    wh.mark_deleted("obj", "c", ["c1", "c2"], at)
    wh.retl_ensure_bookkeeping()
    with wh.retl_lock("m"):
        sql = "SELECT 'k1' AS id, true AS flag"
        cols = list(wh.retl_model_columns("m", sql))
        wh.retl_stage("m", sql, "id", cols)
        wh.retl_diff("m", cols)
        wh.retl_advance("m", [r[0] for r in wh.retl_changes("m", ["added"], cols, 0, 10)])
        wh.retl_drop_stage("m")
    kinds = {"id": ColumnType.TEXT, "flag": ColumnType.BOOLEAN}
    wh.retl_write_table("out", "m", "id", kinds, [("k1", True)], [])
    wh.retl_write_table("out", "m", "id", kinds, [("k1", False)], ["k1"])
    assert list(wh.query('SELECT id, flag FROM "out"."m"')) == [("k1", False)]
    statements = [*wh.sent, *wh.copies, *wh.ddl]
    # Upserts (profiles, objects) are an UPDATE ... FROM and an anti-join INSERT.
    assert any(s.startswith("UPDATE") and " FROM " in s for s in statements)
    _check_redshift_sql(statements)


def test_reverse_etl_record_ids(open_wh, tmp_path: Path) -> None:
    """One id per change sent, kept by a re-send (tests/retl_ids_scenario.py)."""
    from tests.retl_ids_scenario import ids_scenario
    from tests.test_reverse_etl import Receiver

    receiver = Receiver()
    try:
        ids_scenario(open_wh(), tmp_path, receiver)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def _check_redshift_sql(statements: list[str]) -> None:
    reserved = Redshift.Generator.RESERVED_KEYWORDS
    for sql in statements:
        assert not _PG_ONLY.search(re.sub(r"'(?:[^']|'')*'", "''", sql)), sql
        tree = sqlglot.parse_one(sql.replace("%s", "NULL"), read="redshift")
        if isinstance(tree, exp.Command):
            assert sql.startswith("LOCK "), sql
            continue
        bare = {i.name for i in tree.find_all(exp.Identifier) if not i.quoted}
        assert not {b for b in bare if b.lower() in reserved}, sql


def test_set_type_rebuilds_the_column_and_sends_only_redshift_sql(open_wh, tmp_path: Path) -> None:
    """Redshift cannot ALTER a column's type: the column is rebuilt (add, fill, drop,
    rename) in one transaction, in place of the old one."""
    wh = open_wh()
    write_ndjson(
        tmp_path / "a" / "0.json.gz",
        [track("m1", sku=42), track("m2", sku="AB-7"), track("m3", sku=7)],
    )
    assert Loader(wh).load(str(tmp_path / "a"), "s").status == "success"
    table = '"s"."order_completed"'
    rows = 'SELECT id, sku, _rescued_data FROM "s"."order_completed" ORDER BY id'
    assert list(wh.query(rows)) == [
        ("m1", 42, None),
        ("m2", None, '{"sku":"AB-7"}'),
        ("m3", 7, None),
    ]
    wh.sent.clear()
    plan = wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=False)
    assert (plan.moved_in, plan.moved_out, plan.kept) == (1, 0, 2)
    assert list(wh.query(rows))[1] == ("m2", None, '{"sku":"AB-7"}')
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=True)
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.TEXT
    assert list(wh.query(rows)) == [("m1", "42", None), ("m2", "AB-7", None), ("m3", "7", None)]
    assert "sku__retype" not in wh.read_schema("s")["order_completed"]
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.BIGINT, apply=True)
    assert list(wh.query(rows)) == [
        ("m1", 42, None),
        ("m2", None, '{"sku":"AB-7"}'),
        ("m3", 7, None),
    ]
    assert wh.decided_types("s") == {"order_completed": {"sku": ColumnType.BIGINT}}
    assert any(s.startswith(f"ALTER TABLE {table} RENAME COLUMN") for s in wh.sent)
    assert any("retype_stage" in c for c in wh.copies)  # staged through S3, not row by row
    _check_redshift_sql([*wh.sent, *wh.copies])


def test_tracking_plan_bookkeeping(open_wh) -> None:
    from tests.test_tracking_plan_load import check_plan_bookkeeping

    check_plan_bookkeeping(open_wh())
