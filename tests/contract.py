"""The contract every warehouse adapter passes: the same scenarios, through the
`Warehouse` interface only (plus `table_ref` for read-only SQL), so a new adapter is
proven by running them (see tests/test_contract.py for DuckDB and PostgreSQL).

Each scenario is `scenario(open_wh, tmp_path)`, where `open_wh()` returns a connected
adapter for one fresh, empty target (several calls: the same target).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from loader.rules.selective_sync import parse
from loader.sync.pipeline import Loader
from loader.warehouses.warehouse import Warehouse
from tests.helpers import identify, track, write_ndjson

OpenWarehouse = Callable[[], Warehouse]
SCHEMA = "contract_src"


def _archive(root: Path) -> Path:
    """Every call type, a duplicate, a malformed line, a type conflict, a late change."""
    day1 = [
        track("t1", "Order Completed", revenue=10.5, coupon="A", nested={"x": 1}),
        track("t2", "Order Completed", revenue=20, items=[1, 2]),
        track("t1", "Order Completed", revenue=10.5, coupon="A", nested={"x": 1}),  # dupe
        {
            "type": "page",
            "messageId": "p1",
            "anonymousId": "a1",
            "name": "Home",
            "receivedAt": "2026-11-01T10:00:01Z",
            "properties": {"path": "/"},
        },
        {
            "type": "screen",
            "messageId": "s1",
            "userId": "u1",
            "name": "Main",
            "receivedAt": "2026-11-01T10:00:02Z",
        },
        identify(
            "i1",
            "u1",
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:03Z",
            plan="free",
            email="u1@example.com",
        ),
        {
            "type": "group",
            "messageId": "g1",
            "userId": "u1",
            "groupId": "acme",
            "receivedAt": "2026-11-01T10:00:04Z",
            "traits": {"employees": 40},
        },
        {
            "type": "alias",
            "messageId": "a1",
            "userId": "u1",
            "previousId": "anon-1",
            "receivedAt": "2026-11-01T10:00:05Z",
        },
    ]
    day2 = [
        # A new column, and a value that does not fit `revenue` (double): rescued.
        track("t3", "Order Completed", "2026-11-02T09:00:00Z", revenue="lots", channel="web"),
        # A later identify wins for plan; email stays from the earlier one.
        identify("i2", "u1", "2026-11-02T09:00:00Z", "2026-11-02T09:00:01Z", plan="pro"),
    ]
    write_ndjson(root / "day1.ndjson.gz", day1)
    path = write_ndjson(root / "day2.ndjson.gz", day2)
    with open(path.with_name("day3.ndjson"), "wb") as out:
        out.write(b'{"type": "track", "messageId": \n')  # malformed
    return root


def _one(wh: Warehouse, sql: str) -> Any:
    return list(wh.query(sql))[0][0]


def _rows(wh: Warehouse, table: str) -> int:
    return wh.table_stats(SCHEMA, table).rows


def _json(value: Any) -> Any:
    """A `_rescued_data` value as read back: JSON text or an already decoded object."""
    return json.loads(value) if isinstance(value, str) else value


def scenario_golden_archive(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    wh = open_wh()
    report = Loader(wh).load(str(_archive(tmp_path / "archive")), SCHEMA)
    assert report.status == "success" and report.rejects == 1
    tables = wh.read_schema(SCHEMA)
    expected = {
        "tracks": 3,
        "order_completed": 3,
        "pages": 1,
        "screens": 1,
        "identifies": 2,
        "groups": 1,
        "aliases": 1,
        "users": 1,
        "accounts": 1,
    }
    assert {t: _rows(wh, t) for t in expected} == expected
    assert {"revenue", "coupon", "nested_x", "items", "channel"} <= set(tables["order_completed"])
    assert tables["order_completed"]["revenue"].value == "double"
    assert "revenue" not in tables["tracks"]
    users = wh.table_ref(SCHEMA, "users")
    assert _one(wh, f"SELECT plan FROM {users} WHERE id = 'u1'") == "pro"
    assert _one(wh, f"SELECT email FROM {users} WHERE id = 'u1'") == "u1@example.com"
    rejects = wh.table_ref("_sluice", "rejected_events")
    assert "not valid JSON" in _one(wh, f"SELECT reason FROM {rejects}")


def scenario_rescue(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    wh = open_wh()
    Loader(wh).load(str(_archive(tmp_path / "archive")), SCHEMA)
    table = wh.table_ref(SCHEMA, "order_completed")
    revenue, rescued = list(
        wh.query(f"SELECT revenue, _rescued_data FROM {table} WHERE id = 't3'")
    )[0]
    assert revenue is None
    assert _json(rescued) == {"revenue": "lots"}


def scenario_schema_evolution(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    """A later sync brings a new event (a new table), a new property (a new column) and
    values that do not fit the types the first sync gave existing columns (rescued);
    rows loaded before keep their values."""
    root = tmp_path / "evolving"
    write_ndjson(root / "day1.ndjson.gz", [track("e1", revenue=10, coupon="A", gift=True)])
    first = Loader(open_wh()).load(str(root), SCHEMA)
    assert first.status == "success" and "order_completed" in first.new_tables
    day2 = [
        # revenue is bigint and gift boolean since day 1: 2.5 and "yes" do not fit.
        track(
            "e2",
            received="2026-11-02T09:00:00Z",
            revenue=2.5,
            coupon="B",
            gift="yes",
            channel="web",
        ),
        track("e3", "Signed Up", "2026-11-02T09:00:01Z", plan="pro"),
    ]
    write_ndjson(root / "day2.ndjson.gz", day2)
    wh = open_wh()  # a new connection: what the first sync created is read back
    later = Loader(wh).load(str(root), SCHEMA)
    assert later.status == "success" and later.files_loaded == 1
    assert "signed_up" in later.new_tables and "order_completed" not in later.new_tables
    assert "order_completed.channel" in later.new_columns
    assert later.rescued_values == 2
    tables = wh.read_schema(SCHEMA)
    assert tables["signed_up"]["plan"].value == "text"
    orders = tables["order_completed"]
    assert {c: orders[c].value for c in ("revenue", "gift", "coupon", "channel")} == {
        "revenue": "bigint",
        "gift": "boolean",
        "coupon": "text",
        "channel": "text",
    }
    assert "_rescued_data" in orders
    table = wh.table_ref(SCHEMA, "order_completed")
    rows = list(
        wh.query(
            f"SELECT id, revenue, gift, coupon, channel, _rescued_data FROM {table} ORDER BY id"
        )
    )
    assert [r[:5] for r in rows] == [("e1", 10, True, "A", None), ("e2", None, None, "B", "web")]
    assert rows[0][5] is None
    assert _json(rows[1][5]) == {"revenue": 2.5, "gift": "yes"}
    signed_up = wh.table_ref(SCHEMA, "signed_up")
    assert list(wh.query(f"SELECT id, plan FROM {signed_up}")) == [("e3", "pro")]
    assert {t: _rows(wh, t) for t in ("tracks", "order_completed", "signed_up")} == {
        "tracks": 3,
        "order_completed": 2,
        "signed_up": 1,
    }


def scenario_dedupe_across_runs(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    wh = open_wh()
    archive = _archive(tmp_path / "archive")
    Loader(wh).load(str(archive), SCHEMA)
    first = {t: wh.table_stats(SCHEMA, t) for t in wh.read_schema(SCHEMA)}
    again = Loader(wh).load(str(archive), SCHEMA)
    assert again.files_loaded == 0
    # The same messages under other names (an overlapping export) add nothing.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in archive.iterdir():
        (copy / f"copy-{f.name}").write_bytes(f.read_bytes())
    Loader(wh).load(str(copy), SCHEMA)
    after = {t: wh.table_stats(SCHEMA, t) for t in wh.read_schema(SCHEMA)}
    assert {t: s.rows for t, s in after.items()} == {t: s.rows for t, s in first.items()}
    assert all(s.duplicate_ids == 0 for s in after.values())


class _Crash(Exception):
    pass


def scenario_crash_then_rerun(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    """A failure after the first committed batch; the rerun finishes with no duplicate
    and no gap (a kill -9 of a real process is in tests/test_exactly_once.py)."""
    archive = _archive(tmp_path / "archive")
    clean = open_wh()
    Loader(clean).load(str(archive), "contract_clean")
    expected = {
        t: clean.table_stats("contract_clean", t).rows for t in clean.read_schema("contract_clean")
    }

    def crash(_report: Any) -> None:
        raise _Crash("the process dies here")

    wh = open_wh()
    try:
        Loader(wh, batch_lines=1, on_batch=crash).load(str(archive), SCHEMA)
    except _Crash:
        pass
    partial = sum(wh.table_stats(SCHEMA, t).rows for t in wh.read_schema(SCHEMA))
    assert 0 < partial < sum(expected.values())
    Loader(wh, batch_lines=1).load(str(archive), SCHEMA)
    got = {t: wh.table_stats(SCHEMA, t) for t in wh.read_schema(SCHEMA)}
    assert {t: s.rows for t, s in got.items()} == expected
    assert all(s.duplicate_ids == 0 for s in got.values())


def scenario_turned_off_trait_keeps_profile_values(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    """A trait turned off for `users` after it was loaded: a later identify of the same
    user updates the synced traits and leaves the turned-off one as it was; a new user
    is inserted without it (selective sync: existing data is untouched)."""
    root = tmp_path / "profiles"
    day1 = [identify("i1", "u1", "2026-11-01T10:00:00Z", "2026-11-01T10:00:01Z", plan="pro")]
    write_ndjson(root / "day1.ndjson.gz", day1)
    wh = open_wh()
    assert Loader(wh).load(str(root), SCHEMA).status == "success"
    day2 = [
        identify("i2", "u1", "2026-11-02T10:00:00Z", "2026-11-02T10:00:01Z", email="a@b.c"),
        identify("i3", "u2", "2026-11-02T10:00:00Z", "2026-11-02T10:00:02Z", plan="team"),
    ]
    write_ndjson(root / "day2.ndjson.gz", day2)
    text = f"targets:\n  t:\n    {SCHEMA}:\n      properties:\n        users: [plan]\n"
    rules, issues = parse(text, "selective_sync.yml")
    assert not issues
    wh = open_wh()  # a new connection, as a later sync has
    later = Loader(wh, sync_filter=rules.filter_for("t", SCHEMA))
    report = later.load(str(root), SCHEMA)
    assert report.status == "success" and report.files_loaded == 1
    users = wh.table_ref(SCHEMA, "users")
    rows = sorted(wh.query(f"SELECT id, email, plan FROM {users}"), key=lambda r: str(r[0]))
    assert rows == [("u1", "a@b.c", "pro"), ("u2", None, None)]
    assert wh.table_stats(SCHEMA, "users").duplicate_ids == 0
    identifies = wh.table_ref(SCHEMA, "identifies")  # only `users` has plan turned off
    assert _one(wh, f"SELECT plan FROM {identifies} WHERE id = 'i3'") == "team"


def _everything(wh: Warehouse) -> dict[str, list[str]]:
    """Every row and column of the source's tables and of `_sluice` (uuid_ts, loaded_at,
    rejected_at... included) as text; not sync_runs, which records each run."""
    out: dict[str, list[str]] = {}
    for schema in (SCHEMA, "_sluice"):
        for table in sorted(wh.read_schema(schema)):
            if table.lower() == "sync_runs":
                continue
            rows = wh.query(f"SELECT * FROM {wh.table_ref(schema, table)}")
            out[f"{schema}.{table}"] = sorted(repr(tuple(r)) for r in rows)
    return out


def scenario_replay_changes_nothing(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    """Replaying loaded days leaves every table byte for byte as it was: no uuid_ts of a
    profile bumped, no reject recorded twice (a reject is known by file and line)."""
    root = tmp_path / "dated"
    _archive(root / "2026-11-01")
    wh = open_wh()
    assert Loader(wh).load(str(root), SCHEMA).rejects == 1
    before = _everything(wh)
    for _ in range(2):
        report = Loader(wh).replay(str(root), SCHEMA, date(2026, 11, 1), date(2026, 11, 2))
        assert report.status == "success" and report.files_loaded == 3
        assert _everything(wh) == before
    rejects = wh.table_ref("_sluice", "rejected_events")
    assert _one(wh, f"SELECT count(*) FROM {rejects}") == 1


def scenario_profile_follows_a_rescued_trait(open_wh: OpenWarehouse, tmp_path: Path) -> None:
    """A trait's newest value wins even when it does not fit the column: NULL there and
    the value in the profile's _rescued_data; a later value that fits takes it back."""
    wh = open_wh()
    users = wh.table_ref(SCHEMA, "users")

    def load(name: str, day: int, **traits: Any) -> tuple[Any, Any, Any]:
        at = f"2026-11-0{day}T10:00:00Z"
        write_ndjson(tmp_path / name / "f.ndjson", [identify(name, "u1", at, at, **traits)])
        assert Loader(wh).load(str(tmp_path / name), SCHEMA).status == "success"
        logins, plan, rescued = list(
            wh.query(f"SELECT logins, plan, _rescued_data FROM {users} WHERE id = 'u1'")
        )[0]
        return logins, plan, _json(rescued)

    assert load("m1", 1, logins=5, plan="free") == (5, "free", None)
    assert load("m2", 2, logins="many") == (None, "free", {"logins": "many"})
    assert load("m3", 3, plan="pro") == (None, "pro", {"logins": "many"})
    assert load("m4", 4, logins=7) == (7, "pro", None)


CONTRACT = [
    scenario_golden_archive,
    scenario_rescue,
    scenario_schema_evolution,
    scenario_dedupe_across_runs,
    scenario_crash_then_rerun,
    scenario_turned_off_trait_keeps_profile_values,
    scenario_replay_changes_nothing,
    scenario_profile_follows_a_rescued_trait,
]
