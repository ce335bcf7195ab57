"""profiles.yml and sluice.yml as admins write them: ${VAR} secrets of any shape, errors in
one sentence naming file, line and field, targets resolved only when used, paths relative
to the files, and connection strings no value can rewrite."""

from __future__ import annotations

import functools
import os
import socket
import threading
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loader.config.errors import ConfigError
from loader.config.profiles import load_profiles, parse_document, substitute
from loader.sources.sample import write_archive
from loader.sync.project import load_project
from tests import helpers

# Config errors are long sentences: a wide terminal keeps each on one line.
sluice = functools.partial(helpers.sluice, columns=400)


def _profiles(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.yml"
    path.write_text(text)
    return path


def _error(path: Path, target: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_profiles(path).target(target)
    return str(info.value)


def test_references_in_comments_are_documentation_not_settings(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLUICE_T_HOST", "db.internal")
    monkeypatch.delenv("SLUICE_T_UNSET", raising=False)
    path = tmp_path / "f.yml"
    text = (
        "host: ${SLUICE_T_HOST}  # or ${SLUICE_T_UNSET}\n"
        "#   api_key: ${SLUICE_T_UNSET}\n"
        "note: 'a # ${SLUICE_T_HOST}'\n"
        "port: ${SLUICE_T_UNSET:-5432}\n"
    )
    doc = parse_document(path, text)
    assert substitute(doc.data, doc, ()) == {
        "host": "db.internal",
        "note": "a # db.internal",
        "port": "5432",
    }
    doc = parse_document(path, "a: 1\nkey: ${SLUICE_T_UNSET}\n")
    with pytest.raises(ConfigError, match=r"f.yml, line 2: environment variable SLUICE_T_UNSET"):
        substitute(doc.data, doc, ())


# --- ${VAR} is substituted after parsing ----------------------------------------------

HOSTILE = [
    "{abc",
    "[abc",
    "'abc",
    '"abc',
    "*abc",
    "&abc",
    "!abc",
    "%abc",
    "@abc",
    "`abc",
    "|abc",
    ">abc",
    "-abc",
    "- abc",
    "?abc",
    "a: b",
    "x #y",
    "#x",
    "back\\slash\\n",
    "null",
    "~",
    "yes",
    "123",
    "  padded  ",
    "a'b\"c",
    "${OTHER}",
    "tab\there",
]


@pytest.mark.parametrize("secret", HOSTILE)
def test_a_secret_arrives_exactly_as_set_whatever_its_characters(
    tmp_path: Path, monkeypatch, secret: str
) -> None:
    monkeypatch.setenv("SLUICE_T_PW", secret)
    monkeypatch.setenv("SLUICE_T_KEY", secret)
    path = _profiles(
        tmp_path,
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    host: h\n"
        "    user: u\n    dbname: d\n    password: ${SLUICE_T_PW}  # from the environment\n"
        '    sslmode: "${SLUICE_T_UNSET_IN_COMMENT:-prefer}"\n',
    )
    _, target = load_profiles(path).target(None)
    assert target.password.get_secret_value() == secret
    assert target.sslmode == "prefer"
    # Glued into a longer value, quoted or not, in sluice.yml too.
    (tmp_path / "archive").mkdir()
    (tmp_path / "sluice.yml").write_text(
        "sources:\n  web:\n    archive: archive\n"
        "  pay:\n    kind: stripe\n    api_key: sk_${SLUICE_T_KEY}\n"
        "    base_url: 'http://x/${SLUICE_T_KEY}'\n"
    )
    project = load_project(tmp_path / "sluice.yml")
    assert project.source("pay").api_key.get_secret_value() == "sk_" + secret
    assert project.source("pay").base_url == "http://x/" + secret


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
@example(secret="fil")  # a part of "profiles.yml"
def test_any_secret_round_trips(tmp_path: Path, secret: str) -> None:
    os.environ["SLUICE_T_ANY"] = secret
    try:
        path = _profiles(
            tmp_path,
            "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    dsn: ${SLUICE_T_ANY}x\n"
            "    password: ${SLUICE_T_ANY}\n",
        )
        profiles = load_profiles(path)
        try:
            _, target = profiles.target(None)
        except ConfigError as exc:  # a dsn libpq cannot parse: named, never quoted
            # The whole message is fixed text: no part of the value can be in it (a
            # substring test drew a false alarm for the secret "fil", in "profiles.yml").
            assert str(exc) == (
                f"{path}, line 5: field 'targets.pg.dsn': not a libpq connection string "
                "(key=value pairs or a postgresql:// URL; quote values with spaces or quotes "
                "as 'it''s', or give the fields instead)"
            )
            return
        assert target.password.get_secret_value() == secret
        assert target.dsn.get_secret_value() == secret + "x"
    finally:
        del os.environ["SLUICE_T_ANY"]


def test_an_unset_variable_names_file_line_and_field_never_a_value(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SLUICE_T_PW", "hunter2-secret")
    monkeypatch.delenv("SLUICE_T_UNSET", raising=False)
    path = _profiles(
        tmp_path,
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    host: h\n"
        "    user: ${SLUICE_T_PW}\n    dbname: d\n"
        "    password: '${SLUICE_T_PW}:${SLUICE_T_UNSET}'\n",
    )
    message = _error(path)
    assert message.startswith(f"{path}, line 8: environment variable SLUICE_T_UNSET is not set")
    assert "targets.pg.password" in message and "hunter2" not in message


# --- errors: one sentence, file, line, full field path --------------------------------


def test_errors_point_at_the_right_target_line_and_field(tmp_path: Path) -> None:
    path = _profiles(
        tmp_path,
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: w.duckdb\n"
        "  pg:\n    type: postgres\n    host: h\n    port: five\n",
    )
    message = _error(path, "pg")
    assert message == f"{path}, line 9: field 'targets.pg.port' must be a whole number, not 'five'"
    assert load_profiles(path).target("local")[1].path == str(tmp_path / "w.duckdb")


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        (
            "  local:\n    type: duckdbb\n",
            "line 4: field 'targets.local.type' must be one of duckdb, postgres, redshift, "
            "bigquery, snowflake, clickhouse, not 'duckdbb'; did you mean 'duckdb'?",
        ),
        (
            "  local:\n    type: duckdb\n    pth: x.duckdb\n",
            "line 5: unknown field 'pth' in target 'local'; did you mean 'path'?",
        ),
        (
            "  local:\n    type: duckdb\n    threads: 0\n",
            "line 5: field 'targets.local.threads' must be at least 1, not 0",
        ),
        (
            "  local:\n    type: postgres\n    dbname: d\n    user: u\n",
            "line 3: field 'targets.local.host' is required (give host, user, dbname, or a dsn)",
        ),
        (
            "  local:\n    type: postgres\n    host: h\n    user: u\n",
            "line 3: field 'targets.local.dbname' is required",
        ),
        (
            "  local:\n    type: redshift\n    user: u\n    dbname: d\n    s3_staging: s3://b/p\n",
            "line 3: field 'targets.local.host' is required",
        ),
        (
            "  local:\n    type: snowflake\n    account: a\n    user: u\n    password: p\n",
            "line 3: field 'targets.local.database' is required",
        ),
        (
            "  local:\n    type: bigquery\n    location: EU\n",
            "line 3: field 'targets.local.project' is required",
        ),
        (
            '  local:\n    type: postgres\n    dsn: "host=\'x"\n',
            "line 5: field 'targets.local.dsn': not a libpq connection string",
        ),
        (
            '  local:\n    type: redshift\n    dsn: "password=\'x"\n    s3_staging: s3://b/p\n',
            "line 5: field 'targets.local.dsn': not a libpq connection string",
        ),
        ("  local:\n\ttype: duckdb\n", "line 4: not valid YAML: a tab indents this line"),
        (
            "  local:\n    type: duckdb\n    path: a: b\n",
            "line 5: not valid YAML: a ': ' inside a value; put the value in quotes",
        ),
        (
            "  local:\n    type: duckdb\n    type: postgres\n",
            "line 5: 'type' is given twice (also on line 4)",
        ),
    ],
)
def test_mistakes_are_translated_into_one_sentence(
    tmp_path: Path, profiles: str, expected: str
) -> None:
    path = _profiles(tmp_path, "default_target: local\ntargets:\n" + profiles)
    message = _error(path)
    assert message.startswith(f"{path}, {expected}"), message
    for pydantic_words in ("Input tag", "Extra inputs", "Field required", "<unicode string>"):
        assert pydantic_words not in message


def test_a_dsn_alone_is_enough_and_fields_beside_it_win(tmp_path: Path) -> None:
    path = _profiles(
        tmp_path,
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n"
        "    dsn: host=db.internal dbname=analytics user=loader\n    port: 6432\n",
    )
    info = psycopg.conninfo.conninfo_to_dict(load_profiles(path).target(None)[1].conninfo())
    assert info == {"host": "db.internal", "dbname": "analytics", "user": "loader", "port": "6432"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("start_date: 2026-11-01", "start_date: 2026-13-01"),
            "line 7: field 'sources.web.start_date' must be a date as YYYY-MM-DD, not "
            "'2026-13-01' (month value is outside expected range of 1-12)",
        ),
        (
            ("start_date: 2026-11-01", "start_date: 2026-11-31"),
            "line 7: field 'sources.web.start_date' must be a date as YYYY-MM-DD, not '2026-11-31'",
        ),
        (
            ("    archive: archive", "    archiv: archive"),
            "line 6: unknown field 'archiv' in source 'web'; did you mean 'archive'?",
        ),
        (
            ("    archive: archive", "    schema: x"),
            "line 4: field 'sources.web.archive' is required (a folder, a file, or an s3://",
        ),
        (
            ("    archive: archive", "    archive: nowhere"),
            "line 6: the archive of source 'web', {root}/nowhere, does not exist",
        ),
        (("kind: events", "kind: event"), "line 5: field 'sources.web.kind' must be one of"),
        (("sources:", "sauces:"), "line 3: unknown field 'sauces' in the top level; did you mean"),
        (
            ("max_reject_rate: 0.01", "max_reject_rate: [1]"),
            "line 8: field 'sources.web.max_reject_rate' must be a number",
        ),
    ],
)
def test_sluice_yml_mistakes_exit_2_with_one_sentence(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    (tmp_path / "archive").mkdir()
    text = (
        "version: 1\nprofiles: profiles.yml\nsources:\n  web:\n    kind: events\n"
        "    archive: archive\n    start_date: 2026-11-01\n    max_reject_rate: 0.01\n"
    )
    (tmp_path / "sluice.yml").write_text(text.replace(*change))
    _profiles(tmp_path, "default_target: local\ntargets:\n  local:\n    type: duckdb\n")
    result = sluice("sync", "--project", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    expected = expected.format(root=tmp_path)
    assert result.stderr.startswith(f"error: {tmp_path / 'sluice.yml'}, {expected}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "sluice.duckdb").exists()


# --- targets are resolved only when used; paths are relative to profiles.yml ----------


def _project(root: Path, extra_targets: str = "", sources: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_archive(root / "archive", 300, events_per_file=300, files_per_day=1)
    (root / "sluice.yml").write_text(
        "profiles: profiles.yml\nselective_sync: selective_sync.yml\nsources:\n"
        "  web:\n    archive: archive\n    readers: 0\n    targets: [local]\n" + sources
    )
    (root / "selective_sync.yml").write_text(
        "targets:\n  local:\n    web:\n      collections: [pages]\n"
    )
    _profiles(
        root,
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: sluice.duckdb\n"
        + extra_targets,
    )
    return root


BROKEN = (
    "  reporting:\n    type: postgres\n    host: h\n    user: u\n    dbname: d\n"
    "    password: ${SLUICE_T_REPORTING_PW}\n"
)


def test_an_unused_broken_target_breaks_no_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLUICE_T_REPORTING_PW", raising=False)
    root = _project(tmp_path / "proj", BROKEN)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = sluice("selective-sync", "check", "--project", str(root), cwd=elsewhere)
    assert check.returncode == 0, check.stderr
    # Checking reads the warehouse; it must not create it.
    assert not (root / "sluice.duckdb").exists() and not (elsewhere / "sluice.duckdb").exists()
    synced = sluice("sync", "--project", str(root), cwd=elsewhere)
    assert synced.returncode == 0, synced.stderr
    # The DuckDB file is beside profiles.yml, not in the working directory.
    assert (root / "sluice.duckdb").exists() and not (elsewhere / "sluice.duckdb").exists()
    runs = sluice("runs", "--profiles", str(root / "profiles.yml"), cwd=elsewhere)
    assert runs.returncode == 0 and "success" in runs.stdout, runs.stderr
    # The broken target, when used, says why.
    message = _error(root / "profiles.yml", "reporting")
    assert "line 11: environment variable SLUICE_T_REPORTING_PW is not set" in message


def test_keyfile_and_private_key_paths_are_relative_to_profiles(tmp_path: Path) -> None:
    path = _profiles(
        tmp_path,
        "default_target: bq\ntargets:\n  bq:\n    type: bigquery\n    project: my-proj-1\n"
        "    keyfile: keys/sa.json\n  mem:\n    type: duckdb\n    path: ':memory:'\n"
        "  abs:\n    type: duckdb\n    path: /data/x.duckdb\n",
    )
    profiles = load_profiles(path)
    assert profiles.target("bq")[1].keyfile == str(tmp_path / "keys" / "sa.json")
    assert profiles.target("mem")[1].path == ":memory:"
    assert profiles.target("abs")[1].path == "/data/x.duckdb"


# --- connection strings: values cannot rewrite them -----------------------------------


class _Listener:
    """A TCP port that records whether anything connected to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 18011))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


def test_a_password_cannot_redirect_the_connection(tmp_path: Path, pg_dsn: str) -> None:
    from loader.warehouses.registry import open_warehouse

    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    listener = _Listener()
    try:
        for password in ("x' port='18011", "x port=18011", "it's", "a\\' host='nowhere"):
            path = _profiles(
                tmp_path,
                f"default_target: pg\ntargets:\n  pg:\n    type: postgres\n"
                f"    host: 127.0.0.1\n    port: {info.get('port', 5432)}\n"
                f"    user: {info['user']}\n    dbname: {info['dbname']}\n"
                "    password: ${SLUICE_T_PW}\n",
            )
            os.environ["SLUICE_T_PW"] = password
            try:
                name, target = load_profiles(path).target(None)
            finally:
                del os.environ["SLUICE_T_PW"]
            wh = open_warehouse(name, target)  # trust auth: the password is not checked
            try:
                assert list(wh.query("SELECT current_database(), inet_server_port()")) == [
                    (info["dbname"], int(info.get("port", 5432)))
                ]
            finally:
                wh.close()
            assert psycopg.conninfo.conninfo_to_dict(target.conninfo())["password"] == password
    finally:
        listener.close()
    assert listener.connections == 0


def test_a_failed_connection_never_shows_the_password(tmp_path: Path) -> None:
    _profiles(
        tmp_path,
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    host: 127.0.0.1\n"
        "    port: 18012\n    user: u\n    dbname: d\n    password: ${SECRET_PW}\n",
    )
    from loader.warehouses.base import WarehouseError
    from loader.warehouses.registry import open_warehouse

    for password in ("sup3r'hidden", "sup3r' port='18011", "sup3r\\"):
        os.environ["SECRET_PW"] = password
        try:
            with pytest.raises(WarehouseError) as info:
                open_warehouse(*load_profiles(tmp_path / "profiles.yml").target(None))
        finally:
            del os.environ["SECRET_PW"]
        message = str(info.value)
        assert "cannot connect to PostgreSQL target 'pg'" in message and "18012" in message
        assert "18011" not in message and "sup3r" not in message and "hidden" not in message
    # As a user sees it.
    result = sluice("runs", cwd=tmp_path, env={"SECRET_PW": "sup3r' port='18011"})
    assert result.returncode in (1, 2), result.stderr
    assert "cannot connect to PostgreSQL target 'pg'" in result.stderr
    assert "sup3r" not in result.stderr + result.stdout and "18011" not in result.stderr
    assert "Traceback" not in result.stderr


def test_redshift_connection_string_quotes_every_value() -> None:
    from loader.config.targets import RedshiftTarget

    target = RedshiftTarget.from_target(
        "rs",
        {
            "type": "redshift",
            "host": "cluster.example",
            "user": "u",
            "dbname": "d",
            "password": "x' port='18011",
            "s3_staging": "s3://b/p",
        },
    )
    info = psycopg.conninfo.conninfo_to_dict(target.conninfo())
    assert info["port"] == "5439" and info["password"] == "x' port='18011"


def test_an_unset_secret_of_a_source_stops_only_that_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLUICE_T_STRIPE_KEY", raising=False)
    root = _project(
        tmp_path / "proj",
        sources="  pay:\n    kind: stripe\n    api_key: ${SLUICE_T_STRIPE_KEY}\n"
        "    targets: [local]\n",
    )
    project = load_project(root / "sluice.yml")
    assert "SLUICE_T_STRIPE_KEY" not in repr(project.source("pay"))
    web = sluice("sync", "web", "--project", str(root), cwd=tmp_path)
    assert web.returncode == 0, web.stderr
    pay = sluice("sync", "pay", "--project", str(root), cwd=tmp_path)
    assert pay.returncode == 2
    assert pay.stderr.startswith(
        f"error: {root / 'sluice.yml'}, line 10: "
        "environment variable SLUICE_T_STRIPE_KEY is not set"
    ), pay.stderr
