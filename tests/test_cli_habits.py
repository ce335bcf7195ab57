"""The `sluice` command's habits a dbt/dlt user expects, run as a user runs them: init that
never touches a project, progress on a terminal only, --version/-h/--verbose anywhere,
`sluice debug`, `sluice rejects`, Ctrl-C, a busy DuckDB file, missing driver extras."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import duckdb
import pytest
import tomllib
from click.testing import CliRunner, Result

from loader.cli.app import cli
from loader.sources.sample import write_archive
from tests.helpers import profiles_for, sluice

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = "interrupted; the last committed batch stands; rerun to finish"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", **(extra or {})}


def invoke(*args: str, cwd: Path, env: dict | None = None) -> Result:
    """The command in this process (click's runner): no interpreter start-up per call,
    for the tests that need no signals, terminals or a real process exit."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200", **(env or {})})
    finally:
        os.chdir(old)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project from `sluice init`, synced once (its sample has one malformed line)."""
    root = tmp_path_factory.mktemp("habits")
    assert sluice("init", "demo", "--events", "3000", cwd=root).returncode == 0
    project = root / "demo"
    # An absolute DuckDB path: these tests run commands from other folders too.
    profiles = project / "profiles.yml"
    db = project / "sluice.duckdb"
    profiles.write_text(profiles.read_text().replace("path: sluice.duckdb", f'path: "{db}"'))
    synced = sluice("sync", cwd=project)
    assert synced.returncode == 0, synced.stderr
    return project


# --- init -------------------------------------------------------------------------------


def test_init_on_an_existing_project_refuses_and_changes_nothing(tmp_path: Path) -> None:
    first = invoke("init", "demo", "--events", "6000", cwd=tmp_path)
    assert first.exit_code == 0, first.output
    demo = tmp_path / "demo"
    assert invoke("sync", cwd=demo).exit_code == 0
    before = _hashes(demo / "archive")
    configs = {n: (demo / n).read_text() for n in ("sluice.yml", "profiles.yml")}

    again = sluice("init", "demo", "--events", "1000", cwd=tmp_path)
    assert again.returncode == 2
    message = again.stderr.strip()
    assert "already holds" in message and "sluice.yml" in message and "archive/" in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert _hashes(demo / "archive") == before
    assert {n: (demo / n).read_text() for n in configs} == configs

    # An archive alone (no config yet) is as much a project's data: refused too.
    lone = tmp_path / "lone"
    write_archive(lone / "archive", 200)
    lone_before = _hashes(lone)
    assert invoke("init", "lone", cwd=tmp_path).exit_code == 2
    assert _hashes(lone) == lone_before


def test_init_writes_a_gitignore_for_local_state(tmp_path: Path) -> None:
    assert invoke("init", "fresh", "--events", "50", cwd=tmp_path).exit_code == 0
    ignored = (tmp_path / "fresh" / ".gitignore").read_text().splitlines()
    for pattern in ("*.duckdb", ".sluice/", "history/", "storage/", "schedules/"):
        assert pattern in ignored
    # Kept when the folder already has one (a git checkout): never overwritten.
    kept = tmp_path / "repo"
    kept.mkdir()
    (kept / ".gitignore").write_text("node_modules/\n")
    result = invoke("init", "repo", "--events", "50", cwd=tmp_path)
    assert result.exit_code == 0
    assert (kept / ".gitignore").read_text() == "node_modules/\n"
    assert "kept the existing" in result.stdout


# --- help, version, --verbose, --project -------------------------------------------------


def _commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.extend(_commands(command, (*path, name)))
        else:
            out.append(((*path, name), command))
    return out


def test_every_command_and_option_has_help_and_the_common_options() -> None:
    missing = []
    for path, command in _commands(cli):
        if not (command.help or "").strip():
            missing.append(f"{' '.join(path) or 'sluice'}: no help")
        names = set()
        for param in command.params:
            if isinstance(param, click.Option):
                names.update(param.opts)
                if not (param.help or "").strip():
                    missing.append(f"{' '.join(path)} {param.opts[0]}: no help")
        if "--verbose" not in names:
            missing.append(f"{' '.join(path)}: no --verbose")
        reads_project = path and path != ("init",) and not isinstance(command, click.Group)
        if reads_project and "--project" not in names:
            missing.append(f"{' '.join(path)}: no --project")
    assert missing == []


def test_version_short_help_and_verbose_after_the_subcommand(demo: Path) -> None:
    for args in (["--version"], ["sync", "--version"], ["schema", "show", "--version"]):
        version = invoke(*args, cwd=demo)
        assert version.exit_code == 0 and version.stdout.startswith("sluice "), args
    for args in (["-h"], ["schema", "show", "-h"], ["retl", "run", "-h"], ["sync", "-h"]):
        shown = invoke(*args, cwd=demo)
        assert shown.exit_code == 0 and "Usage:" in shown.stdout, args
    runs = invoke("runs", "--limit", "1", "--verbose", cwd=demo)
    assert runs.exit_code == 0, runs.stderr
    assert "success" in runs.stdout


def test_project_option_from_another_folder(demo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runs = invoke("runs", "--project", str(demo), cwd=elsewhere)
    assert runs.exit_code == 0, runs.stderr
    assert "success" in runs.stdout
    shown = invoke(
        "schema", "show", "javascript_production.pages", "--project", str(demo), cwd=elsewhere
    )
    assert shown.exit_code == 0 and "context_page_path" in shown.stdout
    rejects = invoke("rejects", "javascript_production", "--project", str(demo), cwd=elsewhere)
    assert rejects.exit_code == 0 and "line 12" in rejects.stdout


# --- debug --------------------------------------------------------------------------------


def test_debug_checks_every_target_without_loading(tmp_path: Path, pg_dsn: str) -> None:
    assert invoke("init", "proj", "--events", "50", cwd=tmp_path).exit_code == 0
    proj = tmp_path / "proj"
    (proj / "profiles.yml").write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: sluice.duckdb\n"
        f'  pg:\n    type: postgres\n    dsn: "{pg_dsn}"\n'
        "  down:\n    type: postgres\n    host: 127.0.0.1\n    port: 1\n"
        "    user: postgres\n    dbname: postgres\n    password: ${DEBUG_PW}\n"
    )
    result = invoke("debug", cwd=proj, env={"DEBUG_PW": "s3cret-pw-xyz"})
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("OK") and "target local" in line for line in lines)
    assert any(line.startswith("OK") and "target pg" in line for line in lines)
    down = [line for line in lines if "target down" in line]
    assert len(down) == 1 and down[0].startswith("FAIL") and "cannot connect" in down[0]
    assert "s3cret-pw-xyz" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # A check loads nothing and creates no database file.
    assert not (proj / "sluice.duckdb").exists()
    only_local = invoke("debug", "--target", "local", cwd=proj, env={"DEBUG_PW": "x"})
    assert only_local.exit_code == 0 and "all checks passed" in only_local.stdout


# --- rejects and schema show --------------------------------------------------------------


def test_rejects_command_and_the_report_pointing_at_it(demo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(demo, copy)
    (copy / "sluice.duckdb").unlink()
    (copy / "profiles.yml").write_text(
        (copy / "profiles.yml").read_text().replace(str(demo), str(copy))
    )
    synced = invoke("sync", cwd=copy)
    assert "rejects: 1" in synced.stdout
    assert "sluice rejects javascript_production" in synced.stdout
    shown = invoke("rejects", "javascript_production", "--width", "30", cwd=copy)
    assert shown.exit_code == 0, shown.stderr
    first, raw = [line for line in shown.stdout.splitlines() if "line 12" in line or "{" in line]
    assert ".00000.gz, line 12: not valid JSON" in first
    assert raw.strip().startswith('{"type": "track"') and raw.strip().endswith("...")
    assert len(raw.strip()) == 30
    none = invoke("rejects", "other_schema", cwd=copy)
    assert none.exit_code == 0 and "no rejected lines" in none.stdout


def test_rejects_on_postgres(tmp_path: Path, pg_dsn: str, sample_archive: Path) -> None:
    (tmp_path / "profiles.yml").write_text(
        f'default_target: pg\ntargets:\n  pg:\n    type: postgres\n    dsn: "{pg_dsn}"\n'
    )
    assert invoke("load", str(sample_archive), "--schema", "web", cwd=tmp_path).exit_code == 0
    shown = invoke("rejects", cwd=tmp_path)
    assert shown.exit_code == 0, shown.stderr
    assert "web: " in shown.stdout and "line 12: not valid JSON" in shown.stdout


def test_schema_show_unknown_table_suggests_the_closest(demo: Path) -> None:
    result = invoke("schema", "show", "javascript_production.order_complete", cwd=demo)
    assert result.exit_code == 1
    assert "did you mean 'order_completed'" in result.stderr


# --- progress -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough files that a load takes a few seconds: time to interrupt or break it."""
    root = tmp_path_factory.mktemp("big")
    write_archive(root, 4000, events_per_file=100)
    return root


def _duck_profiles(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "profiles.yml"
    path.write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n"
        f'    path: "{folder / "wh.duckdb"}"\n'
    )
    return path


def test_progress_is_quiet_when_stderr_is_not_a_terminal(demo: Path, tmp_path: Path) -> None:
    archive = demo / "archive"
    profiles = _duck_profiles(tmp_path)
    result = sluice(
        "load", str(archive), "--schema", "s", "--profiles", str(profiles), "--batch-lines",
        "500", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "rows loaded" in result.stdout and "tracks" in result.stdout


def test_progress_shows_on_a_terminal(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    write_archive(archive, 1000, events_per_file=100)
    profiles = _duck_profiles(tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "loader.cli.app", "load", str(archive), "--schema", "s",
         "--profiles", str(profiles), "--batch-lines", "300"],
        stdout=subprocess.PIPE, stderr=slave, env=_env({"TERM": "xterm"}), cwd=tmp_path,
    )  # fmt: skip
    os.close(slave)
    screen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0
    os.close(master)
    text = screen.decode(errors="replace")
    assert "files " in text and "/10" in text
    assert "events/s" in text and "ETA" in text and "events " in text
    # The report itself stays on stdout, rows per table included.
    assert "rows loaded" in stdout and "tracks" in stdout


# --- Ctrl-C, a busy DuckDB file, a file deleted mid-load ---------------------------------


def _start_load(archive: Path, profiles: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loader.cli.app", "load", str(archive), "--schema", "src",
         "--profiles", str(profiles), "--batch-lines", "100", "--verbose", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd,
        start_new_session=True,  # its own process group, as a terminal's job is
    )  # fmt: skip


def _wait_commits(proc: subprocess.Popen, n: int) -> list[str]:
    lines = []
    while sum(line.startswith("committed:") for line in lines) < n:
        line = proc.stderr.readline()
        assert line, f"the load ended early: {lines}"
        lines.append(line)
    assert proc.poll() is None, "the load finished before the test could act"
    return lines


def _run_status(kind: str, where: str) -> list[str]:
    if kind == "duckdb":
        with duckdb.connect(where, read_only=True) as conn:
            return [r[0] for r in conn.execute("SELECT status FROM _sluice.sync_runs").fetchall()]
    import psycopg

    with psycopg.connect(where) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM _sluice.sync_runs").fetchall()]


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_ctrl_c_is_one_line_exit_130_and_the_run_ends_interrupted(
    kind: str, big_archive: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    profiles, where = profiles_for(kind, tmp_path, request)
    proc = _start_load(big_archive, profiles, tmp_path)
    _wait_commits(proc, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    after = [line for line in stderr.splitlines() if not line.startswith("committed:")]
    assert after == [INTERRUPTED]
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr
    # Not "running" forever; (the kill -9 tests show a rerun then finishes the job).
    assert _run_status(kind, where) == ["interrupted"]


def test_duckdb_file_open_in_another_process_is_named(demo: Path, tmp_path: Path) -> None:
    profiles = _duck_profiles(tmp_path)
    db = tmp_path / "wh.duckdb"
    duckdb.connect(str(db)).close()
    # A notebook holding a read-only connection is enough to lock writers out.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, time; c = duckdb.connect({str(db)!r}, read_only=True); "
         "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        load = sluice(
            "load", str(demo / "archive"), "--schema", "s", "--profiles", str(profiles),
            cwd=tmp_path,
        )  # fmt: skip
        assert load.returncode == 1
        message = load.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message
        assert str(db) in message and "is open in another process" in message
        assert f"PID {holder.pid}" in message and "notebook" in message
        debug = sluice("debug", "--profiles", str(profiles), cwd=tmp_path)
        assert debug.returncode == 0  # a read-only check can share the file with readers
    finally:
        holder.kill()
        holder.wait()


def test_file_deleted_during_a_load_exits_1_naming_it(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    # One file per batch; readers work at most a few files ahead of the commits.
    write_archive(archive, 1200, events_per_file=100)
    files = sorted(archive.rglob("*.gz"))
    profiles = _duck_profiles(tmp_path / "wh")
    proc = _start_load(archive, profiles, tmp_path)
    _wait_commits(proc, 1)
    files[-1].unlink()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    after = [line for line in stderr.splitlines() if not line.startswith("committed:")]
    assert len(after) == 1, stderr
    assert str(files[-1]) in after[0] and "disappeared during the load" in after[0]
    assert "Traceback" not in stderr
    with duckdb.connect(str(tmp_path / "wh" / "wh.duckdb"), read_only=True) as conn:
        committed = conn.execute("SELECT count(*) FROM _sluice.loaded_files").fetchone()[0]
    # The other files loaded (the run is partial, not stopped at the missing one).
    assert committed == len(files) - 1
    rerun = sluice("load", str(archive), "--schema", "src", "--profiles", str(profiles),
                   cwd=tmp_path)  # fmt: skip
    assert rerun.returncode == 0 and "0 loaded" in rerun.stdout


# --- driver extras ------------------------------------------------------------------------


def test_missing_driver_names_the_extra_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('psycopg', 'snowflake', 'google.cloud.bigquery'):\n"
        "    sys.modules[name] = None\n"
    )
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    (tmp_path / "profiles.yml").write_text(
        "default_target: pg\ntargets:\n  pg:\n    type: postgres\n    host: 127.0.0.1\n"
        "    user: postgres\n    dbname: postgres\n"
    )
    result = sluice("load", "x", "--schema", "s", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert "pip install 'sluice[postgres]'" in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    # Nothing of the CLI itself needs a driver: help and a DuckDB load work without any.
    assert sluice("--help", cwd=tmp_path, env=env).returncode == 0
    check = subprocess.run(
        [sys.executable, "-c", "import loader.cli.app, sys; "
         "print([m for m in ('psycopg', 'snowflake.connector', 'google.cloud.bigquery') "
         "if sys.modules.get(m) is not None])"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert check.stdout.strip() == "[]"


def test_drivers_are_extras_and_pytest_is_not_a_runtime_dependency() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(meta["dependencies"])
    for name in ("psycopg", "snowflake", "google-cloud-bigquery", "pytest"):
        assert name not in runtime
    assert "duckdb" in runtime
    extras = meta["optional-dependencies"]
    assert {"postgres", "snowflake", "bigquery", "all"} <= set(extras)
    assert "sluice[all]" in extras["test"] and any(d.startswith("pytest") for d in extras["test"])


# --- replay and selective sync warnings ---------------------------------------------------


def _copy_project(demo: Path, to: Path) -> Path:
    """The synced demo project, its DuckDB file included, under `to`."""
    shutil.copytree(demo, to)
    profiles = to / "profiles.yml"
    profiles.write_text(profiles.read_text().replace(str(demo), str(to)))
    return to


def _rules(*collections: str) -> str:
    """selective_sync.yml turning off `collections` (the first on line 6)."""
    return "version: 1\ntargets:\n  local:\n    javascript_production:\n      collections:\n" + (
        "".join(f"        - {c}\n" for c in collections)
    )


def test_replay_of_days_without_files_says_so(demo: Path) -> None:
    result = invoke(
        "replay", "javascript_production", "--from", "2020-01-01", "--to", "2020-01-02", cwd=demo
    )
    assert result.exit_code == 0, result.output
    assert "warning: no archive files were received on any day from 2020-01-01 to 2020-01-02" in (
        result.stderr
    )


def test_sync_gives_the_warnings_of_selective_sync_check(demo: Path, tmp_path: Path) -> None:
    proj = _copy_project(demo, tmp_path / "p")
    (proj / "selective_sync.yml").write_text(_rules("video_playbak_*", "screens"))
    check = invoke("selective-sync", "check", cwd=proj)
    assert check.exit_code == 0
    synced = invoke("sync", cwd=proj)
    assert synced.exit_code == 0, synced.output
    warned = [line for line in synced.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1
    assert "selective_sync.yml, line 6" in warned[0]
    assert "'video_playbak_*' matches nothing known yet" in warned[0]
    assert "closest: video_playback_" in warned[0]
    assert warned[0].removeprefix("warning: ") in check.stderr


def test_an_unclosed_bracket_is_an_error_not_matches_nothing(demo: Path, tmp_path: Path) -> None:
    proj = _copy_project(demo, tmp_path / "p")
    (proj / "selective_sync.yml").write_text(_rules("video_[started"))
    check = invoke("selective-sync", "check", cwd=proj)
    assert check.exit_code == 2
    assert "selective_sync.yml, line 6" in check.stderr
    assert "invalid pattern 'video_[started'" in check.stderr
    assert "matches nothing" not in check.stderr
    synced = invoke("sync", cwd=proj)
    assert synced.exit_code == 2 and "invalid pattern 'video_[started'" in synced.stderr


def test_report_sections_each_start_their_own_line(demo: Path, tmp_path: Path) -> None:
    """Two syncs in one command, their batch lines (stderr) and reports (stdout) in one
    stream as a terminal shows them: no section is glued to the end of another
    ("new tables: ..., accountscommitted: 4 of 4 files")."""
    proj = _copy_project(demo, tmp_path / "p")
    with (proj / "sluice.yml").open("a") as out:
        out.write("  second:\n    kind: events\n    archive: archive\n    targets: [local]\n")
    result = invoke("sync", "--verbose", cwd=proj)
    assert result.exit_code == 0, result.output
    markers = ("committed:", "success:", "files:", "new tables:", "see the rejected lines")
    lines = result.output.splitlines()
    assert any(line.startswith("committed:") for line in lines)
    for line in lines:
        for marker in markers:
            assert marker not in line or line.startswith(marker), line
    report_of_second = result.output.split("success: ", 2)[2]
    assert "\nnew tables: " in report_of_second and "accounts\n" in report_of_second
