"""`sluice schema set-type`: a column's type changed after its first value decided it,
on real DuckDB and PostgreSQL; the rule of what fits, pure."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.rules.retype import RetypePlan, plan_retype
from loader.rules.schema import ColumnType
from loader.sync.pipeline import Loader
from tests.helpers import snapshot, table_rows, track, write_ndjson

T = "s.order_completed"


def _load(wh: Any, archive: Path, readers: int = 0) -> None:
    Loader(wh, readers=readers).load(str(archive), "s")


def _rows(wh: Any) -> list[tuple[Any, Any]]:
    """(sku, rescued JSON as a dict) by id."""
    out = []
    for sku, rescued in table_rows(
        wh, f"SELECT sku, CAST(_rescued_data AS text) FROM {T} ORDER BY id"
    ):
        out.append((sku, orjson.loads(rescued) if rescued else None))
    return out


def _archive(tmp_path: Path) -> Path:
    """sku typed bigint by its first value; later text skus are rescued."""
    write_ndjson(
        tmp_path / "a" / "2026-11-01" / "0.json.gz",
        [
            track("m1", sku=42),
            track("m2", sku="AB-7"),
            track("m3", sku="CD-9", size=3),
            track("m4", sku=7),
        ],
    )
    return tmp_path / "a"


def test_set_type_text_moves_rescued_values_in_and_later_loads_keep_them(
    open_wh: Any, tmp_path: Path
) -> None:
    wh = open_wh()
    archive = _archive(tmp_path)
    _load(wh, archive)
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.BIGINT
    assert _rows(wh) == [(42, None), (None, {"sku": "AB-7"}), (None, {"sku": "CD-9"}), (7, None)]

    before = snapshot(wh, "s")
    plan = wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=False)
    assert (plan.moved_in, plan.moved_out, plan.kept) == (2, 0, 2)
    assert snapshot(wh, "s") == before  # the dry run changes nothing
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.BIGINT

    with wh.lock("s"):
        plan = wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=True)
    assert plan.applied and plan.moved_in == 2
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.TEXT
    assert _rows(wh) == [("42", None), ("AB-7", None), ("CD-9", None), ("7", None)]
    assert wh.decided_types("s") == {"order_completed": {"sku": ColumnType.TEXT}}

    # More such values: into the column now, not rescued.
    write_ndjson(
        archive / "2026-11-02" / "0.json.gz", [track("m5", sku="EF-1"), track("m6", sku=9)]
    )
    _load(wh, archive)
    got = dict(table_rows(wh, f"SELECT id, sku FROM {T} WHERE id IN ('m5', 'm6')"))
    assert got == {"m5": "EF-1", "m6": "9"}
    assert table_rows(wh, f"SELECT count(*) FROM {T} WHERE _rescued_data IS NOT NULL") == [(0,)]


def test_set_type_bigint_rescues_the_non_numeric_values_and_back_restores_them(
    open_wh: Any, tmp_path: Path
) -> None:
    wh = open_wh()
    write_ndjson(
        tmp_path / "a" / "0.json.gz",
        [track("m1", sku="AB-7"), track("m2", sku=42), track("m3", sku="12")],
    )
    _load(wh, tmp_path / "a")
    assert _rows(wh) == [("AB-7", None), ("42", None), ("12", None)]
    with wh.lock("s"):
        plan = wh.retype_column("s", "order_completed", "sku", ColumnType.BIGINT, apply=True)
    assert (plan.moved_in, plan.moved_out, plan.kept) == (0, 1, 2)
    assert _rows(wh) == [(None, {"sku": "AB-7"}), (42, None), (12, None)]
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=True)
    assert _rows(wh) == [("AB-7", None), ("42", None), ("12", None)]


def test_recorded_type_types_a_new_column_of_that_name(open_wh: Any, tmp_path: Path) -> None:
    """A column dropped by hand and then met again is created with the type set."""
    wh = open_wh()
    write_ndjson(tmp_path / "a" / "0.json.gz", [track("m1", sku=1)])
    _load(wh, tmp_path / "a")
    with wh.lock("s"):
        wh.retype_column("s", "order_completed", "sku", ColumnType.TEXT, apply=True)
    with wh.transaction():
        wh.execute(f"ALTER TABLE {wh.table_ref('s', 'order_completed')} DROP COLUMN sku")
    write_ndjson(tmp_path / "a" / "1.json.gz", [track("m2", sku=5)])
    _load(wh, tmp_path / "a", readers=1)  # typed in a reader process, laid out again
    assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.TEXT
    assert table_rows(wh, f"SELECT sku FROM {T} WHERE id = 'm2'") == [("5",)]


def test_rule_moves_only_what_fits_and_never_loses_a_value() -> None:
    rows = [
        ("a", 3.0, None),  # a double that is an integer: kept
        ("b", 3.5, None),  # a fraction: out to _rescued_data
        ("c", None, '{"sku": 8, "other": "x"}'),  # rescued integer: in
        ("d", None, {"sku": "zz"}),  # still does not fit: stays rescued, no change
        ("e", 2.0, {"sku": 9}),  # the column has a value: the rescued one stays
    ]
    plan = plan_retype(RetypePlan("s", "t", "sku", ColumnType.DOUBLE, ColumnType.BIGINT), rows)
    assert (plan.kept, plan.moved_out, plan.moved_in) == (2, 1, 1)
    by_id = {c.id: (c.value, c.rescued_changed, c.rescued) for c in plan.changes}
    assert by_id == {
        "a": (3, False, None),
        "b": (None, True, '{"sku":3.5}'),
        "c": (8, True, '{"other":"x"}'),
        "e": (2, False, None),
    }


def test_cli_set_type_dry_run_then_apply_and_one_sentence_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from loader.cli.app import cli

    def sluice(*args: str, cwd: Path) -> Any:
        """In process (the command as installed is run by tests/test_cli.py)."""
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            mp.setenv("COLUMNS", "200")
            return CliRunner().invoke(cli, list(args))

    (tmp_path / "profiles.yml").write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: sluice.duckdb\n"
    )
    archive = _archive(tmp_path)
    assert sluice("load", str(archive), "--schema", "s", cwd=tmp_path).exit_code == 0
    db = tmp_path / "sluice.duckdb"
    before = db.read_bytes()

    dry = sluice("schema", "set-type", "s.order_completed.sku", "text", cwd=tmp_path)
    assert dry.exit_code == 0, dry.output
    assert "would change from bigint to text" in dry.stdout
    assert "2 value(s) would move out of _rescued_data" in dry.stdout
    assert "--apply" in dry.stdout
    assert db.read_bytes() == before  # byte for byte

    for args, words in [
        (
            ("s.order_complete.sku", "text"),
            "no table 'order_complete' in schema 's'; did you mean 'order_completed'?",
        ),
        (
            ("s.order_completed.skus", "text"),
            "no column 'skus' in s.order_completed; did you mean 'sku'?",
        ),
        (("t.order_completed.sku", "text"), "no schema 't'"),
        (
            ("s.order_completed.sku", "string"),
            "unknown type 'string': use one of boolean, bigint, double, timestamp, text",
        ),
        (("s.order_completed.received_at", "text"), "Sluice types itself"),
    ]:
        bad = sluice("schema", "set-type", *args, cwd=tmp_path)
        assert bad.exit_code == 2, bad.output
        assert words in " ".join(bad.stderr.split()) and "Traceback" not in bad.stderr
    assert db.read_bytes() == before

    done = sluice("schema", "set-type", "s.order_completed.sku", "text", "--apply", cwd=tmp_path)
    assert done.exit_code == 0, done.output
    assert "changed from bigint to text: 2 value(s) moved" in done.stdout
    shown = sluice("schema", "show", "s.order_completed", cwd=tmp_path)
    assert "sku" in shown.stdout and "text" in shown.stdout


def test_a_trait_changes_type_with_its_profile_column(tmp_path: Path) -> None:
    """identifies.plan and users.plan share a type (the profile is rebuilt from the
    identifies rows): set-type on one changes both, and later loads keep working."""
    from click.testing import CliRunner

    from loader.cli.app import cli
    from tests.helpers import identify

    (tmp_path / "profiles.yml").write_text(
        "default_target: local\ntargets:\n  local:\n    type: duckdb\n    path: sluice.duckdb\n"
    )
    at = "2026-11-01T10:00:0{}Z"
    write_ndjson(
        tmp_path / "a" / "0.json.gz",
        [identify("i1", "u1", at.format(1), at.format(1), plan=1)],
    )
    write_ndjson(
        tmp_path / "a" / "1.json.gz",
        [identify("i2", "u1", at.format(2), at.format(2), plan="pro")],
    )

    def sluice(*args: str) -> Any:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path)
            return CliRunner().invoke(cli, list(args))

    assert sluice("load", "a", "--schema", "s").exit_code == 0
    done = sluice("schema", "set-type", "s.identifies.plan", "text", "--apply")
    assert done.exit_code == 0, done.output
    assert "s.users.plan changed from bigint to text" in " ".join(done.output.split())
    write_ndjson(
        tmp_path / "a" / "2.json.gz",
        [identify("i3", "u1", at.format(3), at.format(3), plan="team")],
    )
    again = sluice("load", "a", "--schema", "s")
    assert again.exit_code == 0, again.output
    from loader.warehouses.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse("local", str(tmp_path / "sluice.duckdb"))
    try:
        assert table_rows(wh, "SELECT plan FROM s.users") == [("team",)]
        assert wh.read_schema("s")["users"]["plan"] is ColumnType.TEXT
    finally:
        wh.close()


def test_profile_links_match_the_loaders() -> None:
    from loader.rules.retype import linked_tables
    from loader.sync.pipeline import PROFILES

    for profile, (source, _) in PROFILES.items():
        assert linked_tables(profile) == [source] and linked_tables(source) == [profile]


def test_apply_is_refused_while_a_sync_holds_the_lock(tmp_path: Path, pg_dsn: str) -> None:
    from click.testing import CliRunner

    from loader.cli.app import cli
    from loader.warehouses.postgres import PostgresWarehouse

    (tmp_path / "profiles.yml").write_text(
        f'default_target: pg\ntargets:\n  pg:\n    type: postgres\n    dsn: "{pg_dsn}"\n'
    )
    wh = PostgresWarehouse("pg", pg_dsn)
    try:
        _load(wh, _archive(tmp_path))
        before = snapshot(wh, "s")
        with wh.lock("s"), pytest.MonkeyPatch.context() as mp:  # a sync is running
            mp.chdir(tmp_path)
            result = CliRunner().invoke(
                cli, ["schema", "set-type", "s.order_completed.sku", "text", "--apply"]
            )
        assert result.exit_code == 1, result.output
        assert "another sync" in result.stderr and "Traceback" not in result.output
        assert snapshot(wh, "s") == before
        assert wh.read_schema("s")["order_completed"]["sku"] is ColumnType.BIGINT
    finally:
        wh.close()


_VALUES = {
    ColumnType.BIGINT: st.integers(-(2**63), 2**63 - 1),
    ColumnType.DOUBLE: st.floats(allow_nan=False, allow_infinity=False),
    ColumnType.BOOLEAN: st.booleans(),
    ColumnType.TEXT: st.one_of(st.text(max_size=8), st.sampled_from(["42", "2.5", "true"])),
    ColumnType.TIMESTAMP: st.datetimes(timezones=st.just(timezone.utc)),
}
_RESCUED = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=8), st.none()
)


@settings(max_examples=60, deadline=None)
@given(
    old=st.sampled_from(list(ColumnType)),
    new=st.sampled_from(list(ColumnType)),
    data=st.data(),
)
def test_rule_never_loses_a_value(old: ColumnType, new: ColumnType, data: st.DataObject) -> None:
    """Whatever the types, each row keeps as many values for the column (in it or
    rescued under its name) as it had, and a row the plan leaves out is unchanged."""
    rows = []
    for i in range(data.draw(st.integers(0, 6))):
        current = data.draw(st.one_of(st.none(), _VALUES[old]))
        rescued = data.draw(st.one_of(st.none(), st.fixed_dictionaries({"sku": _RESCUED})))
        if rescued is not None and rescued["sku"] is None:
            rescued = None
        rows.append((f"r{i}", current, rescued))
    plan = plan_retype(RetypePlan("s", "t", "sku", old, new), rows)
    changes = {c.id: c for c in plan.changes}

    def held(value: Any, rescued: dict[str, Any] | None) -> int:
        keys = [k for k in rescued or {} if k == "sku" or k.startswith("sku#")]
        return (value is not None) + len(keys)

    for row_id, current, rescued in rows:
        change = changes.get(row_id)
        if change is None:
            assert current is None  # nothing moves: the row is left as it is
            continue
        after = orjson.loads(change.rescued) if change.rescued_changed and change.rescued else None
        if not change.rescued_changed:
            after = rescued
        assert held(change.value, after) == held(current, rescued)


def test_text_to_timestamp_keeps_date_times_and_rescues_the_rest(
    open_wh: Any, tmp_path: Path
) -> None:
    wh = open_wh()
    write_ndjson(
        tmp_path / "a" / "0.json.gz",
        [track("m1", sku="soon"), track("m2", sku="2026-11-01T10:00:00Z"), track("m3", sku=5)],
    )
    _load(wh, tmp_path / "a")
    with wh.lock("s"):
        plan = wh.retype_column("s", "order_completed", "sku", ColumnType.TIMESTAMP, apply=True)
    assert (plan.kept, plan.moved_out) == (1, 2)
    got = _rows(wh)
    assert [r[1] for r in got] == [{"sku": "soon"}, None, {"sku": "5"}]
    assert got[1][0].isoformat() == "2026-11-01T10:00:00+00:00"
