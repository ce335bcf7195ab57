"""An admin's session: edit selective_sync.yml, check it, sync, see what each line decided,
turn something back on and replay the gap, all through the `sluice` command."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from loader.sources.archive import received_day
from tests.test_cli import sluice

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_example() -> tuple[str, list[list[str]]]:
    """The README's worked example: the selective_sync.yml it shows, and the rows it
    claims `sluice selective-sync show --target local --off-only` prints (cells)."""
    section = README.read_text().split("\n## Selective sync", 1)[1].split("\n## ", 1)[0]
    rules = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    commands = section.split("```bash\n", 1)[1].split("```", 1)[0]
    claimed = [
        re.split(r"\s{2,}", line.lstrip("#").strip())
        for line in commands.splitlines()
        if line.startswith("#")
    ]
    assert claimed[0] == ["table", "column", "synced", "decided by"]
    return rules, claimed[1:]


RULES, README_ROWS = _readme_example()


def _table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table as cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in stdout.splitlines()
        if line.startswith("│")
    ]


def _count(demo: Path, sql: str) -> int:
    with duckdb.connect(str(demo / "sluice.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchone()[0]


def test_check_sync_show_and_replay(tmp_path: Path) -> None:
    assert sluice("init", "demo", "--events", "3000", cwd=tmp_path).returncode == 0
    demo = tmp_path / "demo"
    for name in ("sluice.yml", "profiles.yml", "selective_sync.yml"):
        assert (demo / name).exists()
    # The shipped example turns nothing off and is valid.
    assert sluice("selective-sync", "check", cwd=demo).returncode == 0

    (demo / "selective_sync.yml").write_text(RULES)
    checked = sluice("selective-sync", "check", cwd=demo)
    assert checked.returncode == 0, checked.stderr
    # Nothing is loaded yet, so the patterns match nothing known: warnings, not errors.
    assert "warning" in checked.stderr and "matches nothing known yet" in checked.stderr

    synced = sluice("sync", cwd=demo)
    assert synced.returncode == 0, synced.stderr
    assert "kept out by selective sync" in synced.stdout
    assert (
        _count(
            demo,
            "SELECT count(*) FROM information_schema.tables WHERE "
            "table_name LIKE 'video_playback%'",
        )
        == 0
    )
    assert (
        _count(
            demo,
            "SELECT count(*) FROM information_schema.columns WHERE "
            "table_name = 'pages' AND column_name LIKE 'context_campaign%'",
        )
        == 0
    )

    shown = sluice("selective-sync", "show", "--target", "local", "--off-only", cwd=demo)
    assert shown.returncode == 0, shown.stderr
    out = " ".join(shown.stdout.split())
    assert "video_playback_started" in out and "selective_sync.yml:6" in out
    assert "context_campaign_source" in out and "selective_sync.yml:8" in out
    table_rows = _table_rows(shown.stdout)
    # --off-only: of order_completed (synced) only its turned-off column is listed.
    assert {r[1] for r in table_rows if r[0] == "order_completed"} == {"context_ip"}
    # Every row names its table, also the rows of columns of a synced table.
    assert table_rows and all(row[0] for row in table_rows), shown.stdout
    assert ["pages", "context_campaign_source", "no"] == table_rows[
        [r[1] for r in table_rows].index("context_campaign_source")
    ][:3]
    # What the README claims this example prints is what it prints.
    printed = [[cell for cell in row if cell] for row in table_rows]
    for claimed in README_ROWS:
        assert claimed in printed, (claimed, shown.stdout)
    full = " ".join(sluice("selective-sync", "show", cwd=demo).stdout.split())
    assert "order_completed" in full and "core column" in full

    # Turn everything back on and replay the first day: the gap is filled.
    (demo / "selective_sync.yml").write_text("version: 1\n")
    again = sluice("sync", cwd=demo)
    assert again.returncode == 0 and "0 loaded" in again.stdout
    assert (
        _count(
            demo,
            "SELECT count(*) FROM information_schema.tables WHERE "
            "table_name LIKE 'video_playback%'",
        )
        == 0
    )
    # The sample's one day (yesterday, UTC, when `init` wrote it), read off the archive.
    (folder,) = (demo / "archive" / "segment-logs").glob("*/*")
    day = received_day(str(folder)).isoformat()
    replayed = sluice("replay", "javascript_production", "--from", day, "--to", day, cwd=demo)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replay of files received {day} to {day}" in replayed.stdout
    assert _count(demo, "SELECT count(*) FROM javascript_production.video_playback_started") > 0
    assert (
        _count(
            demo,
            "SELECT count(*) FROM javascript_production.pages "
            "WHERE context_campaign_source IS NULL",
        )
        == 0
    )


def test_check_errors_exit_2_naming_file_line_and_fix(tmp_path: Path) -> None:
    assert sluice("init", "demo", "--events", "200", cwd=tmp_path).returncode == 0
    demo = tmp_path / "demo"
    (demo / "selective_sync.yml").write_text(
        "version: 1\ntargets:\n  locl:\n    javascript_production: {}\n"
        "  local:\n    javascript_production:\n      properties:\n        pages: [uuid_ts]\n"
    )
    checked = sluice("selective-sync", "check", cwd=demo)
    assert checked.returncode == 2
    err = " ".join(checked.stderr.split())
    assert "selective_sync.yml, line 8" in err and "uuid_ts" in err and "core column" in err
    # A sync refuses a file with errors, before touching the warehouse.
    synced = sluice("sync", cwd=demo)
    assert synced.returncode == 2 and "line 8" in synced.stderr

    (demo / "selective_sync.yml").write_text(
        "version: 1\ntargets:\n  locl:\n    javascript_production: {}\n"
    )
    checked = sluice("selective-sync", "check", cwd=demo)
    assert checked.returncode == 2
    assert "line 3" in checked.stderr and "did you mean 'local'" in checked.stderr

    bad_replay = sluice("replay", "nope", "--from", "2026-11-01", "--to", "2026-11-02", cwd=demo)
    assert bad_replay.returncode == 2 and "unknown source 'nope'" in bad_replay.stderr


def test_catalog_refresh_lists_what_the_warehouse_has(tmp_path: Path) -> None:
    import json

    assert sluice("init", "demo", "--events", "500", cwd=tmp_path).returncode == 0
    demo = tmp_path / "demo"
    assert sluice("load", "archive", "--schema", "javascript_production", cwd=demo).returncode == 0
    assert not (demo / ".sluice" / "catalog.json").exists()  # `load` is not a project run
    refreshed = sluice("catalog", "refresh", cwd=demo)
    assert refreshed.returncode == 0, refreshed.stderr
    catalog = json.loads((demo / ".sluice" / "catalog.json").read_text())
    tables = catalog["local"]["javascript_production"]
    assert "order_completed" in tables and tables["tracks"]["received_at"] == "timestamp"
