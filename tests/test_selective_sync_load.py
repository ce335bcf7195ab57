"""Selective sync and replay against real warehouses: what is off is neither created nor
loaded, what is turned back on loads from then on, and a replay fills the gap exactly."""

from __future__ import annotations

import gzip
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from loader.rules.selective_sync import PROTECTED_COLUMNS, SyncFilter, parse
from loader.sources.sample import default_first_day, write_archive
from loader.sync.pipeline import Loader

OFF = """\
version: 1
targets:
  t:
    web:
      collections: [screens]
      properties:
        "*": [context_campaign_*]
        order_completed: [revenue]
"""
# The sample archive's three received days (it ends yesterday, UTC).
DAYS = [default_first_day(3) + timedelta(days=i) for i in range(3)]


@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 3-day Segment archive; returns the three day folders in order."""
    root = tmp_path_factory.mktemp("three_days")
    # On DAYS, fixed when this module was imported (a run may cross midnight, UTC).
    write_archive(
        root, 2400, events_per_file=200, files_per_day=4, malformed=False, first_day=DAYS[0]
    )
    days = sorted((root / "segment-logs" / "sample-source").iterdir())
    assert len(days) == 3
    return days


def _live(tmp_path: Path, days: list[Path]) -> Path:
    """The archive as a sync sees it at some moment: the days received so far."""
    live = tmp_path / "live" / "segment-logs" / "sample-source"
    live.mkdir(parents=True, exist_ok=True)
    for day in days:
        if not (live / day.name).exists():
            shutil.copytree(day, live / day.name)
    return tmp_path / "live"


def _filter(text: str | None) -> SyncFilter:
    if text is None:
        return SyncFilter(None)
    sync, issues = parse(text, "selective_sync.yml")
    assert not issues
    return sync.filter_for("t", "web")


def _by_column(wh: Any, schema: str) -> dict[str, dict[str, list[str]]]:
    """Every table as {column: sorted values by id}, so column order does not matter."""
    out = {}
    for table, columns in wh.read_schema(schema).items():
        names = sorted(c for c in columns if c != "uuid_ts")
        select = ", ".join(f'"{c}"' for c in names)
        rows = sorted(
            wh.query(f'SELECT {select} FROM "{schema}"."{table}"'),
            key=lambda r: str(r[names.index("id")]),
        )
        out[table] = {n: [str(r[i]) for r in rows] for i, n in enumerate(names)}
    return out


def test_turned_off_data_is_not_created_and_replay_fills_the_gap(
    open_wh, tmp_path: Path, three_days: list[Path]
) -> None:
    wh = open_wh()
    off = Loader(wh, batch_lines=500, sync_filter=_filter(OFF))
    report = off.load(str(_live(tmp_path, three_days[:2])), "web")
    assert report.status == "success"

    tables = wh.read_schema("web")
    assert "screens" not in tables
    assert "pages" in tables and "order_completed" in tables and "tracks" in tables
    assert not [c for t in tables.values() for c in t if c.startswith("context_campaign_")]
    assert "revenue" not in tables["order_completed"]
    assert "revenue" in tables["product_viewed"]  # only turned off for order_completed
    assert "screens" in report.turned_off and "pages.context_campaign_source" in report.turned_off
    remembered = wh.turned_off_names("web")
    assert "" in remembered["screens"] and "revenue" in remembered["order_completed"]

    # The same archive without selective sync, for comparison.
    full = Loader(wh, batch_lines=500)
    full.load(str(_live(tmp_path, three_days)), "full")
    expected = _by_column(wh, "full")
    got = _by_column(wh, "web")
    # Everything not turned off loaded as without selective sync (first two days).
    for table in ("pages", "tracks", "identifies", "users"):
        assert set(got[table]["id"]) < set(expected[table]["id"])
        assert set(got[table]) == set(expected[table]) - {
            c for c in expected[table] if c.startswith("context_campaign_")
        }

    # Turned back on: new data loads from then on; existing rows are untouched.
    on = Loader(wh, batch_lines=500)
    later = on.load(str(_live(tmp_path, three_days)), "web")
    assert later.files_loaded == 4 and later.files_skipped == 8
    screens = list(wh.query('SELECT count(*) FROM "web"."screens"'))[0][0]
    assert 0 < screens < len(expected["screens"]["id"])
    nulls = list(wh.query('SELECT count(*) FROM "web"."order_completed" WHERE revenue IS NULL'))[0][
        0
    ]
    assert nulls > 0

    # Replay of the two days that were filtered: the gap is filled, exactly.
    replayed = on.replay(str(_live(tmp_path, three_days)), "web", DAYS[0], DAYS[1])
    assert replayed.status == "success" and replayed.files_seen == 8
    assert replayed.replay == {"from": DAYS[0].isoformat(), "to": DAYS[1].isoformat()}
    assert _by_column(wh, "web") == expected

    # A replay of loaded data changes nothing.
    again = on.replay(str(_live(tmp_path, three_days)), "web", DAYS[0], DAYS[2])
    assert again.status == "success" and sum(again.rows_loaded.values()) == sum(
        again.rows_loaded.get(p, 0) for p in ("users", "accounts")
    )
    assert _by_column(wh, "web") == expected


def test_turned_off_source_passes_its_files_over_until_turned_back_on(
    open_wh, tmp_path: Path, three_days: list[Path]
) -> None:
    wh = open_wh()
    text = "targets:\n  t:\n    web:\n      enabled: false\n"
    report = Loader(wh, sync_filter=_filter(text)).load(str(_live(tmp_path, three_days[:1])), "web")
    assert report.source_turned_off and "line 4" in report.source_turned_off
    assert wh.read_schema("web") == {}

    loader = Loader(wh)
    later = loader.load(str(_live(tmp_path, three_days[:2])), "web")
    assert later.files_loaded == 4 and later.files_skipped == 4
    assert _page_ids(wh) == _archive_page_ids(three_days[1])

    loader.replay(str(_live(tmp_path, three_days[:2])), "web", DAYS[0], DAYS[0])
    assert _page_ids(wh) == _archive_page_ids(three_days[0]) | _archive_page_ids(three_days[1])


def _page_ids(wh: Any) -> set[str]:
    return {r[0] for r in wh.query('SELECT id FROM "web"."pages"')}


def _archive_page_ids(day: Path) -> set[str]:
    ids = set()
    for path in day.glob("*.gz"):
        with gzip.open(path) as lines:
            ids |= {m["messageId"] for m in map(orjson.loads, lines) if m["type"] == "page"}
    return ids


def test_allow_mode_loads_only_the_listed_tables_and_columns(
    open_wh, tmp_path: Path, three_days: list[Path]
) -> None:
    wh = open_wh()
    text = """\
targets:
  t:
    web:
      mode: allow
      collections: [identifies, order_completed]
      properties:
        order_completed: [revenue, currency]
"""
    Loader(wh, sync_filter=_filter(text)).load(str(_live(tmp_path, three_days[:1])), "web")
    tables = wh.read_schema("web")
    assert set(tables) == {"identifies", "order_completed", "users"}
    data = set(tables["order_completed"]) - PROTECTED_COLUMNS
    assert data == {"revenue", "currency"}
    assert "email" in tables["users"] and "plan" in tables["identifies"]


def test_turning_off_later_leaves_loaded_data_untouched(
    open_wh, tmp_path: Path, three_days: list[Path]
) -> None:
    """Data loaded before a collection or property is turned off keeps its tables,
    columns and values through later syncs with it off; new data only lacks it."""
    wh = open_wh()
    Loader(wh, batch_lines=500).load(str(_live(tmp_path, three_days[:1])), "web")
    before = _by_column(wh, "web")
    assert {"screens", "pages", "order_completed", "users"} <= set(before)
    assert "revenue" in before["order_completed"] and "plan" in before["identifies"]
    assert "context_campaign_source" in before["pages"]

    off = OFF + "        identifies: [plan]\n"
    later = Loader(wh, batch_lines=500, sync_filter=_filter(off))
    report = later.load(str(_live(tmp_path, three_days[:2])), "web")
    assert report.status == "success" and report.files_loaded == 4
    after = _by_column(wh, "web")

    # Every table and column is still there.
    for table, columns in before.items():
        assert set(columns) <= set(after[table]), table
    # Rows loaded before: every value unchanged.
    for table in ("screens", "pages", "order_completed", "identifies"):
        names = list(before[table])
        old = {row[names.index("id")]: row for row in zip(*before[table].values(), strict=True)}
        new = {
            row[names.index("id")]: row
            for row in zip(*(after[table][n] for n in names), strict=True)
        }
        assert {i: new[i] for i in old} == old, table
    # screens is off: nothing new; the other tables got day 2, without what is off.
    assert after["screens"]["id"] == before["screens"]["id"]
    old_ids = set(before["order_completed"]["id"])
    new_revenue = [
        revenue
        for i, revenue in zip(
            after["order_completed"]["id"], after["order_completed"]["revenue"], strict=True
        )
        if i not in old_ids
    ]
    assert new_revenue and set(new_revenue) == {"None"}


def test_turning_off_a_user_trait_keeps_the_value_users_have(open_wh, tmp_path: Path) -> None:
    from tests.helpers import identify, write_ndjson

    wh = open_wh()
    archive = tmp_path / "archive"
    write_ndjson(
        archive / "day1.json.gz",
        [identify("m1", "u1", "2026-11-01T10:00:00Z", "2026-11-01T10:00:01Z", plan="pro")],
    )
    Loader(wh).load(str(archive), "web")
    write_ndjson(
        archive / "day2.json.gz",
        [identify("m2", "u1", "2026-11-02T10:00:00Z", "2026-11-02T10:00:01Z", email="a@b.c")],
    )
    text = "targets:\n  t:\n    web:\n      properties:\n        users: [plan]\n"
    Loader(wh, sync_filter=_filter(text)).load(str(archive), "web")
    assert list(wh.query('SELECT id, email, plan FROM "web"."users"')) == [("u1", "a@b.c", "pro")]
