"""selective_sync.yml as an admin edits it: parsing, errors with lines, and decisions."""

from __future__ import annotations

import pytest

from loader.rules.normalize import rows_for
from loader.rules.selective_sync import check_names, parse
from tests.helpers import track

DENY = """\
version: 1
targets:
  warehouse:
    web:
      collections:
        - video_*
        - screens
      properties:
        pages: [context_campaign_*]
        "*": [context_ip]
"""


def rules(text: str):
    sync, issues = parse(text, "selective_sync.yml")
    assert [i for i in issues if i.error] == []
    return sync


@pytest.mark.parametrize(
    ("table", "column", "synced", "line"),
    [
        ("video_playback_started", None, False, 6),
        ("screens", None, False, 7),
        ("pages", None, True, None),
        ("pages", "context_campaign_source", False, 9),
        ("pages", "context_page_path", True, None),
        ("tracks", "context_ip", False, 10),
        ("tracks", "context_campaign_source", True, None),
        ("order_completed", "revenue", True, None),
        # Core columns are never off, whatever a pattern says.
        ("pages", "received_at", True, None),
        # A column of a turned-off table is off by the table's line.
        ("screens", "name", False, 7),
    ],
)
def test_deny_mode_decisions_name_the_deciding_line(
    table: str, column: str | None, synced: bool, line: int | None
) -> None:
    f = rules(DENY).filter_for("warehouse", "web")
    decision = f.table_decision(table) if column is None else f.column_decision(table, column)
    assert (decision.synced, decision.line) == (synced, line)


ALLOW = """\
version: 1
targets:
  warehouse:
    web:
      mode: allow
      collections: [identifies, order_*]
      properties:
        order_completed: [revenue, currency]
"""


@pytest.mark.parametrize(
    ("table", "column", "synced"),
    [
        ("order_completed", None, True),
        ("order_refunded", None, True),
        ("pages", None, False),
        ("tracks", None, False),
        ("users", None, True),  # follows identifies
        ("accounts", None, False),  # follows groups, which is not allowed
        ("order_completed", "revenue", True),
        ("order_completed", "shipping_cost", False),
        ("order_completed", "id", True),
        ("order_completed", "event_text", True),
        ("order_refunded", "shipping_cost", True),  # no property list for that table
    ],
)
def test_allow_mode_lists_only_what_is_on(table: str, column: str | None, synced: bool) -> None:
    f = rules(ALLOW).filter_for("warehouse", "web")
    decision = f.table_decision(table) if column is None else f.column_decision(table, column)
    assert decision.synced is synced


def test_allow_mode_with_only_properties_keeps_every_collection() -> None:
    text = "version: 1\ntargets:\n  w:\n    web:\n      mode: allow\n      properties:\n"
    text += '        "*": [revenue]\n'
    f = rules(text).filter_for("w", "web")
    assert f.table_synced("pages") and f.table_synced("order_completed")
    assert f.column_synced("pages", "revenue") and not f.column_synced("pages", "url")


def test_source_turned_off() -> None:
    text = "targets:\n  w:\n    web:\n      enabled: false\n"
    f = rules(text).filter_for("w", "web")
    assert not f.source_enabled and not f.table_synced("pages")
    assert f.table_decision("pages").line == 4
    # Other targets and sources are untouched.
    assert rules(text).filter_for("w", "mobile").table_synced("pages")
    assert rules(text).filter_for("other", "web").source_enabled


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("targets:\n  w:\n    web:\n      colections: [pages]\n", 4, ["colections", "collections"]),
        ("targets:\n  w:\n    web:\n      mode: block\n", 4, ["deny", "allow"]),
        ("targets:\n  w:\n    web:\n      enabled: maybe\n", 4, ["true or false"]),
        (
            "targets:\n  w:\n    web:\n      properties:\n        pages: [received_at]\n",
            5,
            ["received_at", "core column"],
        ),
        (
            "targets:\n  w:\n    web:\n      properties:\n        '*': ['*_at']\n",
            5,
            ["received_at", "sent_at", "narrow the pattern"],
        ),
        ("version: 2\n", 1, ["version must be 1"]),
        ("target:\n  w: {}\n", 1, ["unknown top-level key 'target'"]),
        ("targets:\n  w:\n    web:\n      collections: {a: b}\n", 4, ["list"]),
        ("targets:\n  w: [\n", 3, ["not valid YAML"]),
    ],
)
def test_errors_name_the_line_and_the_fix(text: str, line: int, words: list[str]) -> None:
    _, issues = parse(text, "selective_sync.yml")
    errors = [i for i in issues if i.error]
    assert errors, "expected an error"
    assert errors[0].line == line
    rendered = errors[0].render("selective_sync.yml")
    assert rendered.startswith(f"selective_sync.yml, line {line}:")
    for word in words:
        assert word in rendered


def test_check_names_errors_for_unknown_target_and_source_warnings_for_patterns() -> None:
    text = """\
targets:
  warehose:
    web: {}
  warehouse:
    wbe: {}
    web:
      collections: [order_complete, video_*]
      properties:
        pages: [context_campain_*]
        pagez: [url]
"""
    sync = rules(text)
    known = {
        ("warehouse", "web"): {
            "pages": ["id", "context_campaign_source", "url"],
            "order_completed": ["id", "revenue"],
        }
    }
    issues = check_names(sync, ["warehouse"], ["web"], known)
    by_line: dict[int | None, list] = {}
    for issue in issues:
        by_line.setdefault(issue.line, []).append(issue)
    (target,) = by_line[2]
    assert target.error and "did you mean 'warehouse'" in target.message
    (source,) = by_line[5]
    assert source.error and "did you mean 'web'" in source.message
    # Patterns that match nothing are warnings, with the closest known names.
    collections = by_line[7]
    assert [i.error for i in collections] == [False, False]
    assert "closest: order_completed" in collections[0].message
    assert "'video_*' matches nothing" in collections[1].message
    (prop,) = by_line[9]
    assert not prop.error and "context_campaign_source" in prop.message
    (table,) = by_line[10]
    assert not table.error and "pages" in table.message


def test_filtered_rows_never_contain_turned_off_tables_or_columns() -> None:
    f = rules(DENY).filter_for("warehouse", "web")
    body = track("m1", "Video Playback Started", position=3)
    body["context"] = {"ip": "1.2.3.4", "campaign": {"source": "x"}}
    assert [r.table for r in rows_for(body, f)] == ["tracks"]
    assert "context_ip" not in rows_for(body, f)[0].values
    body = track("m2", "Order Completed", revenue=5, nested={"ip": 1})
    body["context"] = {"ip": "1.2.3.4", "campaign": {"source": "x"}}
    tracks, order = rows_for(body, f)
    assert "context_ip" not in order.values and order.values["revenue"] == 5
    assert order.values["context_campaign_source"] == "x"
    assert order.values["nested_ip"] == 1
    # Without a filter, everything is built.
    assert "context_ip" in rows_for(body)[1].values
    # What the archive showed that was kept out is remembered, once.
    off = f.new_turned_off_names()
    assert ("video_playback_started", "") in off and ("order_completed", "context_ip") in off
    assert f.new_turned_off_names() == []
