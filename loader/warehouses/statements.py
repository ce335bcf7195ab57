"""Every warehouse operation's SQL, written once over a SqlDialect (pure: strings only).

Parameters are pyformat (`%(name)s`); a list-valued one appears only through
`dialect.in_list`. `tests/test_statements.py` renders each statement for every dialect
and parses it with sqlglot in that dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loader.rules.schema import ColumnType
from loader.warehouses.dialect import SqlDialect

BOOKKEEPING_SCHEMA = "_sluice"
RESCUED = "_rescued_data"
# Columns never filled by a replay: the load's own stamp and the rescued JSON.
_NOT_FILLED = ("id", "uuid_ts", RESCUED)


# --- bookkeeping tables, as data ---------------------------------------------------------
# Column kinds: a ColumnType, "json" (the report), or "now" (a timestamp defaulting to the
# time of the insert).
@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, ColumnType | str], ...]
    # The columns a row is known by: a write of a row already there is skipped.
    keys: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


_KINDS: dict[str, ColumnType | str] = {
    "": ColumnType.TEXT, "bigint": ColumnType.BIGINT, "ts": ColumnType.TIMESTAMP,
    "now": "now", "json": "json",
}  # fmt: skip


def _table(name: str, columns: str) -> Table:
    """A table from "name[*][!][:kind] ...": text unless a kind is given, `*` a key
    column, `!` one required (NOT NULL) besides the keys."""
    cols, keys, required = [], [], []
    for word in columns.split():
        col, _, kind = word.partition(":")
        name_ = col.rstrip("*!")
        cols.append((name_, _KINDS[kind]))
        keys += [name_] if "*" in col else []
        required += [name_] if "!" in col else []
    return Table(name, tuple(cols), tuple(keys), tuple(required))


_RUN = "run_id* {} target status started_at:ts finished_at:ts report:json"
BOOKKEEPING: dict[str, Table] = {
    t.name: t
    for t in (
        _table("loaded_files", "schema_name* file* lines:bigint loaded_at:now"),
        # A reject is known by its file and line: re-reading a file never records it twice.
        _table("rejected_events", "schema_name*! file*! line*:bigint raw reason! rejected_at:now"),
        _table("sync_runs", _RUN.format("schema_name")),
        _table("cursors", "schema_name* collection* cursor updated_at:now"),
        _table("profile_marks", "schema_name* profile* key* mark_ts:ts"),
        _table("turned_off_names", "schema_name* table_name* column_name* first_seen:now"),
        _table(
            "violations",
            "schema_name* file* event* property* kind* example "
            "occurrences:bigint first_seen last_seen recorded_at:now",
        ),
        _table(
            "blocked_events", "schema_name* file* line*:bigint event raw violations blocked_at:now"
        ),
        _table("column_types", "schema_name* table_name* column_name* column_type decided_at:ts"),
        _table("locks", "name* holder acquired_at:ts expires_at:ts"),
        _table("retl_snapshots", "model* key* row_hash synced_at:ts"),
        _table("retl_sent", "model* key* op row_hash record_id run_id sent_at:ts"),
        _table("retl_runs", _RUN.format("model")),
    )
}
LOAD_TABLES = (
    "loaded_files",
    "rejected_events",
    "sync_runs",
    "cursors",
    "profile_marks",
    "turned_off_names",
    "violations",
    "blocked_events",
)
RETL_TABLES = ("retl_snapshots", "retl_sent", "retl_runs")


def bookkeeping_type(d: SqlDialect, kind: ColumnType | str) -> str:
    if kind == "json":
        return d.json_type
    if kind == "now":
        return d.timestamp
    if kind is ColumnType.TEXT:
        return d.text_type
    return d.type_names[ColumnType(kind)]


def create_bookkeeping(d: SqlDialect, table: Table) -> str:
    cols = []
    for name, kind in table.columns:
        sql = f"{d.ident(name)} {bookkeeping_type(d, kind)}"
        if name in table.keys or name in table.required:
            sql += " NOT NULL"
        if kind == "now":
            sql += f" DEFAULT {d.now}"
        cols.append(sql)
    keys = ""
    if table.keys and table.name not in ("rejected_events", "violations", "blocked_events"):
        keys = d.primary_key(table.keys)
    return (
        f"CREATE TABLE IF NOT EXISTS {d.table_ref(BOOKKEEPING_SCHEMA, table.name)} "
        f"({', '.join(cols)}{keys}){d.table_options(table.keys or table.required, table.name)}"
    )


# --- event and object tables -------------------------------------------------------------
def create_table(d: SqlDialect, schema: str, table: str, columns: dict[str, ColumnType]) -> str:
    cols = ", ".join(f"{d.ident(n)} {d.column_type(n, k)}" for n, k in columns.items())
    options = d.table_options(["id"])
    return f"CREATE TABLE {d.table_ref(schema, table)} ({cols}{d.id_key()}){options}"


def add_column(d: SqlDialect, schema: str, table: str, name: str, kind: ColumnType) -> str:
    return (
        f"ALTER TABLE {d.table_ref(schema, table)} ADD COLUMN "
        f"{d.ident(name)} {d.column_type(name, kind)}"
    )


def _match(d: SqlDialect, keys: Sequence[str], a: str, b: str, nullable: bool) -> str:
    if nullable:
        return " AND ".join(d.same(f"{a}.{d.ident(k)}", f"{b}.{d.ident(k)}") for k in keys)
    return " AND ".join(f"{a}.{d.ident(k)} = {b}.{d.ident(k)}" for k in keys)


def insert_new(
    d: SqlDialect,
    target: str,
    stage: str,
    columns: Sequence[str],
    keys: Sequence[str] = ("id",),
    nullable_keys: bool = False,
    stamped: Sequence[str] = (),
) -> str:
    """The staged rows whose key is not in the target (an anti-join: no warehouse needs
    an enforced key for it); `stamped` columns take the time of the insert."""
    cols = ", ".join(d.ident(c) for c in [*columns, *stamped])
    s_cols = ", ".join([*(f"_sluice_s.{d.ident(c)}" for c in columns), *(d.now for _ in stamped)])
    match = _match(d, keys, "_sluice_t", "_sluice_s", nullable_keys)
    return (
        f"INSERT INTO {target} ({cols}) SELECT {s_cols} FROM {stage} AS _sluice_s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {target} AS _sluice_t WHERE {match})"
    )


def insert_all(
    d: SqlDialect, target: str, stage: str, columns: Sequence[str], stamped: Sequence[str] = ()
) -> str:
    cols = ", ".join(d.ident(c) for c in [*columns, *stamped])
    values = ", ".join([*(d.ident(c) for c in columns), *(d.now for _ in stamped)])
    return f"INSERT INTO {target} ({cols}) SELECT {values} FROM {stage} AS _sluice_s"


def fillable(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c not in _NOT_FILLED]


def fill_nulls(d: SqlDialect, target: str, stage: str, columns: Sequence[str]) -> str:
    """Replay: the NULL columns of rows already there filled from the staged row; nothing
    non-NULL is ever overwritten, and a row with nothing to fill is not touched."""
    cols = fillable(columns)
    head, t = d.update_target(target, "_sluice_t")
    s, i = "_sluice_s", d.ident
    sets = ", ".join(f"{i(c)} = COALESCE({t}.{i(c)}, {s}.{i(c)})" for c in cols)
    changed = " OR ".join(f"({t}.{i(c)} IS NULL AND {s}.{i(c)} IS NOT NULL)" for c in cols)
    return (
        f"UPDATE {head} SET {sets} FROM {stage} AS {s} "
        f"WHERE {t}.{i('id')} = {s}.{i('id')} AND ({changed})"
    )


def update_changed(
    d: SqlDialect,
    target: str,
    source: str,
    columns: Sequence[str],
    compare: Sequence[str] | None = None,
    keys: Sequence[str] = ("id",),
    source_key: str | None = None,
) -> str:
    """Rows there whose columns differ from the source's take the source's values (an
    upsert's update half); `compare` narrows what counts as a difference."""
    head, t = d.update_target(target, "_sluice_t")
    s, i = "_sluice_s", d.ident
    rest = [c for c in columns if c not in keys]
    sets = ", ".join(f"{i(c)} = {s}.{i(c)}" for c in rest)
    changed = " OR ".join(d.distinct(f"{t}.{i(c)}", f"{s}.{i(c)}") for c in (compare or rest))
    if source_key is not None:
        match = f"{t}.{i(keys[0])} = {s}.{i(source_key)}"
    else:
        match = _match(d, keys, t, s, False)
    return f"UPDATE {head} SET {sets} FROM {source} AS {s} WHERE {match} AND ({changed})"


def mark_deleted(d: SqlDialect, target: str) -> str:
    return (
        f"UPDATE {target} SET {d.ident('_deleted_at')} = {d.cast(d.param('at'), d.timestamp)} "
        f"WHERE {d.ident('_deleted_at')} IS NULL AND {d.in_list(d.ident('id'), 'ids')}"
    )


# --- profiles (users, accounts) ----------------------------------------------------------
def profile_rows(d: SqlDialect, source: str, key: str, traits: Sequence[str], where: str) -> str:
    """One row per key: each trait's newest non-NULL value (event time, then
    received_at), the newest received_at; as `id`, the traits, `received_at`."""
    i = d.ident
    k = i(key)
    order = f"{i('timestamp')} DESC NULLS LAST, {i('received_at')} DESC NULLS LAST"
    latest = [d.latest_non_null(i(c), order) for c in traits]
    if all(x is not None for x in latest):  # one GROUP BY, no sort per trait
        cols = [
            f"{k} AS {i('id')}",
            *(f"{x} AS {i(c)}" for x, c in zip(latest, traits, strict=True)),
            f"MAX({i('received_at')}) AS {i('received_at')}",
        ]
        return f"(SELECT {', '.join(cols)} FROM {source} WHERE {where} GROUP BY {k})"
    inner = [
        f"{k} AS {i('id')}",
        *(f"{d.first_non_null(i(c), k, order)} AS {i(c)}" for c in traits),
        f"MAX({i('received_at')}) OVER (PARTITION BY {k}) AS {i('received_at')}",
        f"ROW_NUMBER() OVER (PARTITION BY {k} ORDER BY {order}) AS {i('_sluice_rn')}",
    ]
    outer = ", ".join(i(c) for c in ["id", *traits, "received_at"])
    return (
        f"(SELECT {outer} FROM (SELECT {', '.join(inner)} FROM {source} WHERE {where}) "
        f"AS _sluice_p WHERE {i('_sluice_rn')} = 1)"
    )


def profile_update(d: SqlDialect, target: str, rows: str, traits: Sequence[str]) -> str:
    """The profiles there that differ from their rebuilt row take it (uuid_ts stamped);
    a column not among `traits` (turned off by selective sync) keeps its value."""
    head, t = d.update_target(target, "_sluice_t")
    s, i = "_sluice_s", d.ident
    cols = [*traits, "received_at"]
    sets = ", ".join([*(f"{i(c)} = {s}.{i(c)}" for c in cols), f"{i('uuid_ts')} = {d.now}"])
    changed = " OR ".join(d.distinct(f"{t}.{i(c)}", f"{s}.{i(c)}") for c in cols)
    return (
        f"UPDATE {head} SET {sets} FROM {rows} AS {s} "
        f"WHERE {t}.{i('id')} = {s}.{i('id')} AND ({changed})"
    )


def profile_insert(d: SqlDialect, target: str, rows: str, traits: Sequence[str]) -> str:
    i = d.ident
    cols = ", ".join(i(c) for c in ["id", *traits, "received_at", "uuid_ts"])
    values = ", ".join([*(f"_sluice_s.{i(c)}" for c in ["id", *traits, "received_at"]), d.now])
    return (
        f"INSERT INTO {target} ({cols}) SELECT {values} FROM {rows} AS _sluice_s WHERE NOT "
        f"EXISTS (SELECT 1 FROM {target} AS _sluice_t WHERE _sluice_t.{i('id')} = "
        f"_sluice_s.{i('id')})"
    )


def profile_extend(d: SqlDialect, target: str, rows: str, traits: Sequence[str]) -> str:
    """Profiles whose new rows all follow what they had seen: a new value wins, a
    missing one keeps the profile's."""
    head, t = d.update_target(target, "_sluice_t")
    s, i = "_sluice_s", d.ident
    sets = [f"{i(c)} = COALESCE({s}.{i(c)}, {t}.{i(c)})" for c in traits]
    received = d.greatest(f"{s}.{i('received_at')}", f"{t}.{i('received_at')}")
    sets.append(f"{i('received_at')} = COALESCE({received}, {s}.{i('received_at')})")
    sets.append(f"{i('uuid_ts')} = {d.now}")
    changed = " OR ".join(
        [
            *(
                f"({s}.{i(c)} IS NOT NULL AND {d.distinct(f'{t}.{i(c)}', f'{s}.{i(c)}')})"
                for c in traits
            ),  # fmt: skip
            d.distinct(f"{t}.{i('received_at')}", f"COALESCE({received}, {s}.{i('received_at')})"),
        ]
    )
    return (
        f"UPDATE {head} SET {', '.join(sets)} FROM {rows} AS {s} "
        f"WHERE {t}.{i('id')} = {s}.{i('id')} AND ({changed})"
    )


def profile_evidence(
    d: SqlDialect, source: str, marks: str, target: str, key: str, rescued: str | None
) -> str:
    """What rules.profiles.extendable_keys decides from, for the keys %(keys)s, in one
    read of three single-table parts (no join for a planner to get wrong on tables a
    load is still growing; one round trip, one job where a query is a job):
    ('n', key, first and last event time of its new rows %(ids)s, of them the rows
    without one, the rows with a rescued value); ('m', key, its mark); ('p', key, whether
    its profile holds a rescued value)."""
    i = d.ident
    k, ts, mark = i(key), i("timestamp"), i("mark_ts")
    no_time = d.cast("NULL", d.type_names[ColumnType.TIMESTAMP])
    no_count = d.cast("NULL", d.type_names[ColumnType.BIGINT])
    count_rescued = f"COUNT({i(rescued)})" if rescued else "0"
    held = f"CASE WHEN {i(rescued)} IS NULL THEN 0 ELSE 1 END" if rescued else "0"
    text = d.text_type
    return (
        f"SELECT 'n' AS {i('part')}, {d.cast(k, text)} AS {i('k')}, MIN({ts}) AS {i('t1')}, "
        f"MAX({ts}) AS {i('t2')}, COUNT(*) - COUNT({ts}) AS {i('n1')}, {count_rescued} AS "
        f"{i('n2')} FROM {source} WHERE {d.in_list(i('id'), 'ids')} AND {d.in_list(k, 'keys')} "
        f"GROUP BY {k} UNION ALL "
        f"SELECT 'm', {d.cast(i('key'), text)}, {mark}, {no_time}, {no_count}, {no_count} FROM "
        f"{marks} WHERE {i('schema_name')} = {d.param('schema')} AND {i('profile')} = "
        f"{d.param('profile')} AND {d.in_list(i('key'), 'keys')} UNION ALL "
        f"SELECT 'p', {d.cast(i('id'), text)}, {no_time}, {no_time}, {held}, {no_count} FROM "
        f"{target} WHERE {d.in_list(i('id'), 'keys')}"
    )


def key_marks(d: SqlDialect, source: str, key: str, where: str) -> str:
    """(key, newest event time) of the keys, over the source rows matching `where`."""
    k = d.ident(key)
    return (
        f"(SELECT {k} AS {d.ident('key')}, MAX({d.ident('timestamp')}) AS "
        f"{d.ident('mark_ts')} FROM {source} WHERE {where} GROUP BY {k})"
    )


# --- reverse ETL --------------------------------------------------------------------------
def retl_stage(d: SqlDialect, stage: str, sql: str, key: str, columns: Sequence[str]) -> str:
    """The model's rows with their key as text and a hash of the row (the alias is
    reserved: model columns may not start with _sluice_, so the hash sees the whole row)."""
    i = d.ident
    inner = f"SELECT {', '.join(i(c) for c in columns)} FROM (\n{sql}\n) AS m0"
    whole = d.whole_row_hash("_sluice_row")
    hashed = whole if whole is not None else f"CAST(NULL AS {d.text_type})"
    return (
        f"CREATE TABLE {stage} AS SELECT {d.cast(f'_sluice_row.{i(key)}', d.text_type)} AS "
        f"{i('_sluice_key')}, {hashed} AS {i('_sluice_hash')}, _sluice_row.* "
        f"FROM ({inner}) AS _sluice_row"
    )


def retl_diff(
    d: SqlDialect, changes: str, stage: str, snapshots: str, model: str, columns: Sequence[str]
) -> str:
    """The change set: added, changed and removed rows against the snapshot, numbered in
    (kind, key) order (CREATE TABLE AS takes no parameters: the model is a literal)."""
    i = d.ident
    sk, sh = i("_sluice_key"), i("_sluice_hash")
    kind, seq = i("_sluice_kind"), i("_sluice_seq")
    s_cols = "".join(f", s.{i(c)}" for c in columns)
    d_cols = "".join(f", _sluice_d.{i(c)}" for c in columns)
    return (
        f"CREATE TABLE {changes} AS SELECT CAST(ROW_NUMBER() OVER (ORDER BY _sluice_d.{kind}, "
        f"_sluice_d.{sk}) AS {d.bigint}) AS {seq}, _sluice_d.{kind}, _sluice_d.{sk}, "
        f"_sluice_d.{sh}{d_cols} FROM (SELECT CASE WHEN p.{i('key')} IS NULL THEN 'added' "
        f"WHEN s.{sk} IS NULL THEN 'removed' ELSE 'changed' END AS {kind}, "
        f"COALESCE(s.{sk}, p.{i('key')}) AS {sk}, COALESCE(s.{sh}, p.{i('row_hash')}) AS {sh}"
        f"{s_cols} FROM {stage} AS s FULL OUTER JOIN (SELECT {i('key')}, {i('row_hash')} "
        f"FROM {snapshots} WHERE {i('model')} = {d.literal(model)}) AS p "
        f"ON p.{i('key')} = s.{sk} WHERE p.{i('key')} IS NULL OR s.{sk} IS NULL OR "
        f"p.{i('row_hash')} <> s.{sh}) AS _sluice_d"
    )
