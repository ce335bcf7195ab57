"""What `sluice runs` and `sluice rejects` read back from a warehouse's `_sluice` ledger,
the same on every warehouse. Run by each emulated warehouse's tests."""

from __future__ import annotations

from typing import Any

from loader.rules.messages import Reject


def recent_runs_scenario(wh: Any) -> None:
    """Two recorded runs come back newest first."""
    wh.ensure_bookkeeping()
    report = {
        "run_id": "r1",
        "status": "success",
        "started_at": "2026-11-01T10:00:00+00:00",
        "finished_at": "2026-11-01T10:01:00+00:00",
    }
    wh.record_run("s", report)
    wh.record_run("s", {**report, "run_id": "r2", "started_at": "2026-11-02T10:00:00+00:00"})
    assert [r["run_id"] for r in wh.recent_runs()] == ["r2", "r1"]


def recent_rejects_scenario(wh: Any) -> None:
    """One schema's rejected lines, or every schema's."""
    wh.ensure_bookkeeping()
    with wh.transaction():
        wh.record_rejects("s", [Reject("f.gz", 3, '{"type": "track"', "not valid JSON")])
        wh.record_rejects("t", [Reject("g.gz", 7, "{", "not valid JSON")])
    (only,) = wh.recent_rejects("s")
    assert (only["schema"], only["file"], only["line"]) == ("s", "f.gz", 3)
    assert only["raw"] == '{"type": "track"' and only["reason"] == "not valid JSON"
    assert {r["schema"] for r in wh.recent_rejects(None)} == {"s", "t"}
    assert len(wh.recent_rejects(None, limit=1)) == 1
