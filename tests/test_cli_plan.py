"""`sluice plan` as an admin uses it: check the file (exit 2 with file and line), sync
with the plan blocking, report the violations, replay after loosening it, and start a
plan from the warehouse without ever overwriting a file."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tests.helpers import track, write_ndjson
from tests.test_cli import sluice

PLAN = """\
version: 1
violations: block
events:
  Order Completed:
    properties:
      order_id: {type: string, required: true}
      total: number
"""


def _project(tmp_path: Path, plan: str = PLAN) -> Path:
    archive = tmp_path / "archive" / "2026-11-01"
    write_ndjson(
        archive / "b1.gz",
        [
            track("m1", order_id="o1", total=10, received="2026-11-01T10:00:00Z"),
            track("m2", order_id="o2", total="ten", received="2026-11-01T10:00:00Z"),
            track("m3", event="Signed Up", received="2026-11-01T10:00:00Z"),
        ],
    )
    (tmp_path / "profiles.yml").write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: wh.duckdb\n"
    )
    (tmp_path / "sluice.yml").write_text(
        "version: 1\nsources:\n  web:\n    archive: archive\n    tracking_plan: tracking_plan.yml\n"
    )
    (tmp_path / "tracking_plan.yml").write_text(plan)
    return tmp_path


def _ids(root: Path, table: str) -> list[str]:
    with duckdb.connect(str(root / "wh.duckdb"), read_only=True) as conn:
        return sorted(r[0] for r in conn.execute(f"SELECT id FROM web.{table}").fetchall())


def test_check_names_file_line_and_field(tmp_path: Path) -> None:
    root = _project(tmp_path, PLAN.replace("total: number", "total: {type: numbr}"))
    checked = sluice("plan", "check", cwd=root)
    assert checked.returncode == 2
    assert "tracking_plan.yml, line 7:" in checked.stderr
    assert "events.Order Completed.properties.total.type" in checked.stderr
    assert "did you mean 'number'" in checked.stderr and "Traceback" not in checked.stderr
    # A sync refuses to start on a broken plan, with the same sentence.
    synced = sluice("sync", cwd=root)
    assert synced.returncode == 2 and "line 7" in synced.stderr
    (root / "tracking_plan.yml").write_text(PLAN)
    ok = sluice("plan", "check", cwd=root)
    assert ok.returncode == 0, ok.stderr
    assert "1 event(s), 2 propert(ies)" in ok.stdout and "violations: block" in ok.stdout
    (root / "tracking_plan.yml").unlink()
    gone = sluice("plan", "check", cwd=root)
    assert gone.returncode == 2 and "sluice.yml, line 5" in gone.stderr


def test_sync_blocks_report_summarises_and_replay_loads_after_a_plan_change(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path)
    synced = sluice("sync", cwd=root)
    assert synced.returncode == 0, synced.stderr
    assert "2 event(s) blocked" in synced.stdout
    assert _ids(root, "order_completed") == ["m1"]
    reported = sluice("plan", "report", cwd=root)
    assert reported.returncode == 0, reported.stderr
    assert "wrong_type" in reported.stdout and '"ten"' in reported.stdout
    assert "unplanned_event" in reported.stdout and "2 violation(s) in all" in reported.stdout
    # Loosen the plan, replay the day: the blocked events load, nothing twice.
    (root / "tracking_plan.yml").write_text(PLAN.replace("violations: block", "violations: report"))
    replayed = sluice("replay", "web", "--from", "2026-11-01", "--to", "2026-11-01", cwd=root)
    assert replayed.returncode == 0, replayed.stderr
    assert _ids(root, "order_completed") == ["m1", "m2"]
    assert _ids(root, "signed_up") == ["m3"]


def test_infer_writes_a_starting_plan_and_never_overwrites(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "sluice.yml").write_text("version: 1\nsources:\n  web:\n    archive: archive\n")
    assert sluice("sync", cwd=root).returncode == 0
    # tracking_plan.yml is there already (the default name): it is not overwritten.
    inferred = sluice("plan", "infer", "web", cwd=root)
    assert inferred.returncode == 2 and "not overwritten" in inferred.stderr
    assert (root / "tracking_plan.yml").read_text() == PLAN
    out = root / "started.yml"
    started = sluice("plan", "infer", "web", "--output", str(out), cwd=root)
    assert started.returncode == 0, started.stderr
    text = out.read_text()
    assert "Order Completed:" in text and "Signed Up:" in text
    assert "order_id: string" in text and "total: integer" in text
    again = sluice("plan", "infer", "web", "--output", str(out), cwd=root)
    assert again.returncode == 2 and "not overwritten" in again.stderr
    assert out.read_text() == text
    # The written plan is valid and, used as is, passes the events it was inferred from.
    (root / "sluice.yml").write_text(
        "version: 1\nsources:\n  web:\n    archive: archive\n    tracking_plan: started.yml\n"
    )
    assert sluice("plan", "check", cwd=root).returncode == 0
