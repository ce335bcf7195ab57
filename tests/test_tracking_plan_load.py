"""Tracking plans on real loads (DuckDB and PostgreSQL): report loads and records,
omit moves the violating values into _rescued_data, block keeps events aside in
_sluice.blocked_events, and a replay after the plan changes loads them, once."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from loader.rules.tracking_plan import parse
from loader.sync.pipeline import Loader
from tests.helpers import identify, track, write_ndjson

PLAN = """\
version: 1
events:
  Order Completed:
    properties:
      order_id: {type: string, required: true}
      total: number
      currency: {type: string, enum: [USD, EUR]}
identify:
  traits:
    email: {type: string, required: true}
"""
DAY = "2026-11-01"


def _archive(root: Path) -> Path:
    messages = [
        track("m1", order_id="o1", total=10, currency="USD"),
        track("m2", order_id="o2", total="ten", currency="GBP", coupon="X"),
        track("m3", total=3),
        track("m4", event="Signed Up", plan="pro"),
        identify("m5", "u1", f"{DAY}T10:00:00Z", f"{DAY}T10:00:00Z", email="a@b", age=3),
        track("m6", order_id="o6", total="six", received=f"{DAY}T11:00:00Z"),
    ]
    write_ndjson(root / "segment-logs" / "src" / DAY / "batch-1.gz", messages)
    return root / "segment-logs"


def _loader(wh: Any, action: str, readers: int = 0, text: str = PLAN) -> Loader:
    plan = parse(text, "tracking_plan.yml").with_action(action)
    return Loader(wh, batch_lines=100, tracking_plan=plan, readers=readers)


def _violations(wh: Any) -> dict[tuple[str, str, str], tuple[Any, int]]:
    return {
        (r["event"], r["property"], r["kind"]): (r["example"], r["count"])
        for r in wh.violation_summary("web")
    }


def _json(value: Any) -> Any:
    """_rescued_data as a dict (DuckDB gives its text, PostgreSQL its jsonb parsed)."""
    return orjson.loads(value) if isinstance(value, str) else value


def _ids(wh: Any, table: str) -> list[str]:
    return sorted(r[0] for r in wh.query(f'SELECT id FROM "web"."{table}"'))


def test_report_loads_everything_and_records_each_violation(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    report = _loader(wh, "report").load(str(_archive(tmp_path)), "web")
    assert _ids(wh, "order_completed") == ["m1", "m2", "m3", "m6"]
    assert _ids(wh, "signed_up") == ["m4"]
    found = _violations(wh)
    assert found[("Order Completed", "total", "wrong_type")] == ('"ten"', 2)
    assert found[("Order Completed", "currency", "not_in_enum")] == ('"GBP"', 1)
    assert found[("Order Completed", "order_id", "missing_required")] == (None, 1)
    assert found[("Order Completed", "coupon", "unplanned_property")] == ('"X"', 1)
    assert found[("Signed Up", "", "unplanned_event")] == ('"Signed Up"', 1)
    assert found[("(identify)", "age", "unplanned_property")] == ("3", 1)
    summary = {r["property"]: r for r in wh.violation_summary("web")}
    assert summary["total"]["first_seen"] < summary["total"]["last_seen"]
    assert report.violations["order_completed"] == 5 and report.blocked_events == 0
    assert report.plan_checked["order_completed"] == 4
    assert report.plan_violating["order_completed"] == 3
    # A rerun (nothing pending) and a replay of the same day record nothing twice.
    _loader(wh, "report").replay(
        str(tmp_path / "segment-logs"), "web", date(2026, 11, 1), date(2026, 11, 1)
    )
    assert _violations(wh) == found


def test_omit_keeps_the_violating_values_in_rescued_data(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    _loader(wh, "omit").load(str(_archive(tmp_path)), "web")
    rows = dict(wh.query('SELECT id, _rescued_data FROM "web"."order_completed"'))
    rescued = {k: _json(v) for k, v in rows.items() if v}
    assert rescued["m2"] == {"total": "ten", "currency": "GBP", "coupon": "X"}
    columns = wh.read_schema("web")["order_completed"]
    assert "coupon" not in columns
    totals = dict(wh.query('SELECT id, total FROM "web"."order_completed"'))
    assert totals["m1"] == 10 and totals["m2"] is None
    traits = dict(wh.query('SELECT id, _rescued_data FROM "web"."identifies"'))
    assert _json(traits["m5"]) == {"age": 3}
    # The unplanned event itself loads (omit is about properties), and is recorded.
    assert _ids(wh, "signed_up") == ["m4"]


@pytest.mark.parametrize("readers", [0, 2])
def test_block_keeps_events_aside_and_replay_after_a_plan_change_loads_them(
    open_wh, tmp_path: Path, readers: int
) -> None:
    wh = open_wh()
    archive = str(_archive(tmp_path))
    _loader(wh, "block", readers).load(archive, "web")
    assert _ids(wh, "order_completed") == ["m1"]
    assert "signed_up" not in wh.read_schema("web")
    blocked = list(
        wh.query(
            "SELECT file, line, event, raw, violations FROM _sluice.blocked_events "
            "WHERE schema_name = 'web' ORDER BY line"
        )
    )
    assert [(r[1], r[2]) for r in blocked] == [
        (2, "Order Completed"),
        (3, "Order Completed"),
        (4, "Signed Up"),
        (5, "(identify)"),
        (6, "Order Completed"),
    ]
    assert "identifies" not in wh.read_schema("web")
    m2 = blocked[0]
    assert m2[0].endswith("batch-1.gz") and orjson.loads(m2[3])["messageId"] == "m2"
    assert {v["kind"] for v in orjson.loads(m2[4])} == {
        "wrong_type",
        "not_in_enum",
        "unplanned_property",
    }
    # The plan is loosened: the blocked events load on a replay, the others stay as they are.
    looser = (
        PLAN.replace("total: number", "total: {}")
        .replace("enum: [USD, EUR]", "enum: [USD, EUR, GBP]")
        .replace("events:\n", "events:\n  Signed Up:\n    allow_unplanned: true\n")
    )
    looser = looser.replace(
        "      order_id: {type: string, required: true}",
        "      order_id: string\n      coupon: string",
    ).replace("identify:\n", "identify:\n  allow_unplanned: true\n")
    m1 = 'SELECT id, total, currency FROM "web"."order_completed" WHERE id = \'m1\''
    before = list(wh.query(m1))
    report = _loader(wh, "block", readers, looser).replay(
        archive, "web", date(2026, 11, 1), date(2026, 11, 1)
    )
    assert _ids(wh, "order_completed") == ["m1", "m2", "m3", "m6"]
    assert _ids(wh, "signed_up") == ["m4"]
    assert list(wh.query(m1)) == before
    assert report.blocked_events == 0
    # A second replay is a no-op.
    again = _loader(wh, "block", readers, looser).replay(
        archive, "web", date(2026, 11, 1), date(2026, 11, 1)
    )
    assert sum(again.rows_loaded.get(t, 0) for t in ("order_completed", "signed_up")) == 0
    assert _ids(wh, "order_completed") == ["m1", "m2", "m3", "m6"]


def test_a_source_without_a_plan_records_nothing(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    Loader(wh, batch_lines=100, readers=0).load(str(_archive(tmp_path)), "web")
    assert wh.violation_summary("web") == []
    assert list(wh.query("SELECT count(*) FROM _sluice.blocked_events"))[0][0] == 0


def check_plan_bookkeeping(wh: Any) -> None:
    """The tracking plan's bookkeeping on one warehouse: violations keyed by file, event,
    property and kind (a replayed file records nothing twice) and summed over files;
    blocked events keyed by file and line. Run on every adapter (the emulator tests
    call it too)."""
    from loader.warehouses.base import BOOKKEEPING_SCHEMA

    wh.ensure_bookkeeping()
    assert wh.violation_summary("web") == []
    first = (
        "web",
        "f1",
        "Order Completed",
        "total",
        "wrong_type",
        '"ten"',
        3,
        "2026-11-01T10:00:00Z",
        "2026-11-01T12:00:00Z",
    )
    second = (
        "web",
        "f2",
        "Order Completed",
        "total",
        "wrong_type",
        '"six"',
        2,
        "2026-11-02T09:00:00Z",
        "2026-11-02T10:00:00Z",
    )
    with wh.transaction():
        wh.record_violations("web", [first])
        wh.record_blocked(
            "web", [("f1", 2, "Order Completed", '{"x":1}', '[{"kind":"wrong_type"}]')]
        )
    with wh.transaction():
        wh.record_violations("web", [first, second])  # f1 again: a replay
        wh.record_blocked("web", [("f1", 2, "Order Completed", '{"x":1}', "[]")])
    (row,) = wh.violation_summary("web")
    assert row["event"] == "Order Completed" and row["property"] == "total"
    assert row["kind"] == "wrong_type" and row["count"] == 5
    assert str(row["first_seen"]) == "2026-11-01T10:00:00Z"
    assert str(row["last_seen"]) == "2026-11-02T10:00:00Z"
    assert wh.violation_summary("other") == []
    blocked = wh.table_ref(BOOKKEEPING_SCHEMA, "blocked_events")
    assert list(wh.query(f"SELECT count(*) FROM {blocked}"))[0][0] == 1


def test_plan_bookkeeping(open_wh) -> None:
    check_plan_bookkeeping(open_wh())
