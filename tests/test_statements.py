"""Every shared statement, rendered for every dialect, parses in that dialect (sqlglot).

The statements are written once (loader/warehouses/statements.py); what differs between
warehouses is the SqlDialect each adapter declares. A statement that a dialect's renderer
turns into something its warehouse cannot parse fails here, before any warehouse runs it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import sqlglot

from loader.rules.schema import ColumnType
from loader.warehouses import statements as st
from loader.warehouses.dialect import SqlDialect, positional


def _dialects() -> dict[str, Callable[[], SqlDialect]]:
    from loader.warehouses import bigquery, duckdb, postgres, redshift, snowflake

    found: dict[str, Callable[[], SqlDialect]] = {
        "postgres": lambda: postgres.PostgresWarehouse.dialect,
        "duckdb": lambda: duckdb.DuckDBDialect("wh"),
        "bigquery": lambda: bigquery.BigQueryDialect("p-123456", "raw_"),
        "redshift": lambda: redshift.RedshiftDialect(
            redshift.capabilities().type_names, redshift.WIDE
        ),
        "snowflake": lambda: snowflake.SnowflakeWarehouse.dialect,
    }
    return found


DIALECTS = _dialects()
TRAITS = ["plan", "email"]
COLUMNS = ["id", "received_at", "uuid_ts", "n", "_rescued_data"]


def _statements(d: SqlDialect) -> dict[str, str]:
    t, s = d.table_ref("web", "tracks"), d.table_ref(st.BOOKKEEPING_SCHEMA, "stage__x")
    src, users = d.table_ref("web", "identifies"), d.table_ref("web", "users")
    marks = d.table_ref(st.BOOKKEEPING_SCHEMA, "profile_marks")
    rows = st.profile_rows(d, src, "user_id", TRAITS, d.in_list(d.ident("user_id"), "keys"))
    out = {
        f"create_bookkeeping[{name}]": st.create_bookkeeping(d, table)
        for name, table in st.BOOKKEEPING.items()
    }
    columns = {"id": ColumnType.TEXT, "n": ColumnType.BIGINT, "_rescued_data": ColumnType.TEXT}
    out.update(
        create_table=st.create_table(d, "web", "tracks", columns),
        add_column=st.add_column(d, "web", "tracks", "score", ColumnType.DOUBLE),
        insert_new=st.insert_new(d, t, s, COLUMNS),
        insert_new_keys=st.insert_new(d, t, s, ["schema_name", "file"], ["file"], True),
        insert_all=st.insert_all(d, t, s, COLUMNS),
        fill_nulls=st.fill_nulls(d, t, s, COLUMNS),
        update_changed=st.update_changed(d, t, s, COLUMNS),
        mark_deleted=st.mark_deleted(d, t),
        profile_update=st.profile_update(d, users, rows, TRAITS),
        profile_insert=st.profile_insert(d, users, rows, TRAITS),
        profile_extend=st.profile_extend(d, users, rows, TRAITS),
        profile_evidence=st.profile_evidence(d, src, marks, users, "user_id", "_rescued_data"),
        key_marks="SELECT * FROM "
        + st.key_marks(d, src, "user_id", d.in_list(d.ident("user_id"), "keys")),
        retl_stage=st.retl_stage(d, s, "SELECT 1 AS k, 'a' AS v", "k", ["k", "v"]),
        retl_diff=st.retl_diff(d, s, s, s, "model's", ["k", "v"]),
        row_hash=f"SELECT {d.row_hash([('k', ColumnType.BIGINT), ('b', ColumnType.BOOLEAN)])}",
    )
    return out


_PARAM = re.compile(r"%\((\w+)\)s")


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_every_statement_parses_in_its_dialect(name: str) -> None:
    d = DIALECTS[name]()
    for what, sql in _statements(d).items():
        # Parameters bound as literals: a list one as two items.
        bound = _PARAM.sub(lambda m: "'p'", positional(sql, _Lists())[0].replace("%s", "'p'"))
        try:
            sqlglot.parse_one(bound, read=d.sqlglot_name)
        except sqlglot.errors.ParseError as exc:  # pragma: no cover - the failure shown
            raise AssertionError(f"{name} {what}: {exc}\n{bound}") from None


class _Lists(dict):  # type: ignore[type-arg]
    """Every parameter present: list-valued names as two items, others as one value."""

    def __getitem__(self, key: str) -> object:
        return ["a", "b"] if key in ("ids", "keys", "kinds", "seqs") else "v"


def test_statements_name_every_identifier_through_the_dialect() -> None:
    """A dialect that writes names its own way (case, quotes) gets them everywhere: no
    name appears in PostgreSQL's quoting when the dialect quotes otherwise."""

    class Backticks(SqlDialect):
        def ident(self, name: str) -> str:
            return "`" + name + "`"

    d = Backticks({k: "T" for k in ColumnType}, "J")
    for what, sql in _statements(d).items():
        assert '"' not in sql, (what, sql)


def test_anti_join_keeps_nullable_keys_apart_from_values() -> None:
    d = DIALECTS["postgres"]()
    sql = st.insert_new(d, '"a"', '"b"', ["k", "v"], ["k"], nullable_keys=True)
    assert '_sluice_t."k" IS NOT DISTINCT FROM _sluice_s."k"' in sql
    assert st.fillable(COLUMNS) == ["received_at", "n"]
