"""The `sluice` command as a user runs it: init, load, schema show, runs, exit codes."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import sluice


def test_init_then_load_prints_report_and_is_idempotent(tmp_path: Path) -> None:
    init = sluice("init", "demo", "--events", "3000", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    demo = tmp_path / "demo"
    first = sluice("load", "archive", "--schema", "Javascript Production", cwd=demo)
    assert first.returncode == 0, first.stderr
    assert "success" in first.stdout and "order_completed" in first.stdout
    assert "rejects: 1" in first.stdout
    second = sluice("load", "archive", "--schema", "Javascript Production", cwd=demo)
    assert second.returncode == 0
    assert "0 loaded" in second.stdout and "already loaded" in second.stdout
    shown = sluice("schema", "show", "javascript_production.pages", cwd=demo)
    assert shown.returncode == 0
    assert "context_page_path" in shown.stdout and "timestamp" in shown.stdout
    runs = sluice("runs", cwd=demo)
    assert runs.returncode == 0 and runs.stdout.count("success") == 2


def test_config_errors_exit_2_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    port: not-a-port\n"
    )
    result = sluice("load", "x", "--schema", "s", cwd=tmp_path)
    assert result.returncode == 2
    assert "profiles.yml, line 5" in result.stderr and "port" in result.stderr

    (tmp_path / "profiles.yml").write_text(
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n"
        "    password: ${SLUICE_TEST_UNSET_SECRET}\n"
    )
    result = sluice("load", "x", "--schema", "s", cwd=tmp_path)
    assert result.returncode == 2
    assert "line 5" in result.stderr and "SLUICE_TEST_UNSET_SECRET" in result.stderr

    missing = sluice("load", "x", "--schema", "s", "--target", "nope", cwd=tmp_path)
    assert missing.returncode == 2


def test_connection_failure_is_one_sentence_without_the_password(tmp_path: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    port: 1\n"
        "    host: 127.0.0.1\n    user: postgres\n    dbname: postgres\n"
        "    password: ${SECRET_PW}\n"
    )
    result = sluice("load", "x", "--schema", "s", cwd=tmp_path, env={"SECRET_PW": "hunter2xyz"})
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL target 'pg'" in result.stderr
    assert "hunter2xyz" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_postgres_target_from_profiles(tmp_path: Path, pg_dsn: str, sample_archive: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        f'default_target: pg\ntargets:\n  pg:\n    type: postgres\n    dsn: "{pg_dsn}"\n'
    )
    result = sluice("load", str(sample_archive), "--schema", "web", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tracks" in result.stdout
    bad = sluice("load", str(tmp_path / "nowhere"), "--schema", "web", cwd=tmp_path)
    assert bad.returncode == 2 and "archive not found" in bad.stderr


def test_readers_option_in_process_and_refused_when_negative(tmp_path: Path) -> None:
    init = sluice("init", "demo", "--events", "2000", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    demo = tmp_path / "demo"
    bad = sluice("load", "archive", "--schema", "web", "--readers", "-1", cwd=demo)
    assert bad.returncode == 2 and "--readers" in bad.stderr
    serial = sluice("load", "archive", "--schema", "web", "--readers", "0", cwd=demo)
    assert serial.returncode == 0, serial.stderr
    assert "success" in serial.stdout and "rejects: 1" in serial.stdout
