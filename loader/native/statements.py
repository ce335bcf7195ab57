"""Native mode's SQL: the Segment rules as set-based statements over the raw lines.

Written once, in DuckDB's dialect and its JSON functions (the local engine and the
test bed); tests read every statement a load sends with sqlglot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from loader.native.plan import Leaf, Path, Section, addressable
from loader.rules.messages import CALL_TYPES, MAX_MESSAGE_ID_CHARS
from loader.rules.schema import ColumnType

LINES = "_sluice_native_lines"  # file_no, line_no, txt (or raw: not UTF-8), strip
RAW = "coalesce(encode(l.txt), l.raw)"  # a line (`l`) as the bytes it was read as
MESSAGES = "_sluice_native_messages"  # one row per line: its JSON and the checks
PLAIN = "_sluice_native_plain"  # the plain messages, numbered per messageId
EVENTS = "_sluice_native_events"  # event text -> its table and `event` slug
RECENT = "_sluice_native_recent"  # the previous batch's messageIds
VALUES = "_sluice_native_values"  # + _<n>: one table's extracted values, per line

# An ISO-8601 date-time every reader agrees on: the reference parser and DuckDB's cast
# give the same instant. Years 0001 and 9999 are left to the reference path (a time
# there may fall outside what a UTC datetime holds).
# Hours, minutes and offsets in range as both read them (DuckDB takes 24:00 and +24:00,
# Python neither), and a date that exists (TRY_CAST, where the regex does not reach).
_TIME = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[T ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)?$"
)
# Text a line may hold that the SQL does not read as the reference parser does: a NUL
# or a lone surrogate escape, NaN and Infinity (JSON has neither), exponents past any
# double, integers past 64 bits (read as doubles by DuckDB, as integers by Python).
_ODD_TEXT = (
    r"\\u0000|\\u[dD][89a-fA-F]"
    r"|[:\[,]\s*-?(NaN|Infinity|\d{19}|\d+(\.\d+)?[eE][+-]?\d{3})"
)
# What keeps an array's JSON text (DuckDB's) from being the reference's (orjson's): an
# escape, or a number either spells with an exponent where the other does not.
_NOT_IN_ARRAY = r"\\|\d[eE]|\d{16}|\.0000"
_STRIPPED = " \t\n\r\x0b\x0c"  # what bytes.strip() strips
_TIME_FIELDS = ("receivedAt", "sentAt", "timestamp", "originalTimestamp")
_TEXT_FIELDS = ("userId", "anonymousId", "event", "name", "category", "groupId", "previousId")
_OBJECT_FIELDS = ("properties", "traits", "context")
_MAX_EXACT = 2**53
_MAX_BRACKETS = 256


def lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def jpath(path: Path) -> str:
    return lit("$" + "".join(f'."{key}"' for key in path))


SENT: list[str] | None = None  # tests set a list: every statement is kept in it


def checked(sql: str) -> str:
    """A statement to send (tests read each one with sqlglot in every dialect)."""
    if SENT is not None:
        SENT.append(sql)
    return sql


# The envelope's fields, read with one parse of each line (json_extract of a list).
FIELDS = (
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "category",
    "groupId",
    "previousId",
    "receivedAt",
    "sentAt",
    "timestamp",
    "originalTimestamp",
    "properties",
    "traits",
    "context",
)
# Where each section of a message sits in a MESSAGES row.
SECTION_COLUMN = {"context": "ctx", "properties": "body", "traits": "body"}


def _at(name: str) -> int:
    return FIELDS.index(name) + 1


def _text(name: str) -> str:
    return f"s[{_at(name)}]"


def _type(name: str) -> str:
    return f"t[{_at(name)}]"


def _object(name: str) -> str:
    return f"o[{_OBJECTS.index(name) + 1}]"


_OBJECTS = ("properties", "traits", "context")


def _time_ok(name: str) -> str:
    return time_text_ok(_text(name))


def time_text_ok(text: str) -> str:
    """Whether a text is an ISO-8601 date-time both parsers read as the same instant."""
    return (
        f"(regexp_matches({text}, {lit(_TIME)}) AND substr({text}, 1, 4) BETWEEN '0002' "
        f"AND '9998' AND TRY_CAST({text} AS TIMESTAMPTZ) IS NOT NULL)"
    )


def _time(name: str) -> str:
    return f"TRY_CAST({_text(name)} AS TIMESTAMPTZ)"


def messages() -> str:
    """Each line's envelope (one parse: its fields as a list), its messageId, call type
    and event, its context and properties/traits as JSON, the common columns typed, and
    `plain`: the line passes every check the reference parser makes, in the form the
    SQL reads exactly. A line that is not plain goes to the reference path, which
    decides (a reject and its reason, or a row)."""
    kinds = ", ".join(lit(k) for k in sorted(CALL_TYPES))
    optional_times = " AND ".join(
        f"(coalesce({_type(f)}, 'NULL') = 'NULL' OR ({_type(f)} = 'VARCHAR' AND {_time_ok(f)}))"
        for f in _TIME_FIELDS[1:]
    )
    texts = " AND ".join(
        f"coalesce({_type(f)}, 'NULL') IN ('NULL', 'VARCHAR')" for f in _TEXT_FIELDS
    )
    objects = " AND ".join(
        f"coalesce({_type(f)}, 'NULL') IN ('NULL', 'OBJECT')" for f in _OBJECT_FIELDS
    )
    given = "coalesce({}, '') <> ''".format
    required = (
        f"CASE kind WHEN 'track' THEN {given(_text('event'))} "
        f"WHEN 'group' THEN {given(_text('groupId'))} "
        f"WHEN 'alias' THEN {given(_text('previousId'))} ELSE true END "
        f"AND ({given(_text('userId'))} OR {given(_text('anonymousId'))})"
    )
    sent, original, received = (_time("sentAt"), _time("originalTimestamp"), _time("receivedAt"))
    # normalize: the event's time, or receivedAt - (sentAt - originalTimestamp).
    corrected = (
        f"CASE WHEN {_type('timestamp')} = 'VARCHAR' THEN {_time('timestamp')} "
        f"WHEN {sent} IS NOT NULL AND {original} IS NOT NULL "
        f"THEN {received} - ({sent} - {original}) "
        f"ELSE coalesce({original}, {received}) END"
    )
    checks = (
        f"object AND kind IN ({kinds}) AND {_type('messageId')} = 'VARCHAR' "
        f"AND length(mid) BETWEEN 1 AND {MAX_MESSAGE_ID_CHARS} "
        f"AND {_type('receivedAt')} = 'VARCHAR' AND {_time_ok('receivedAt')} "
        f"AND {optional_times} AND {texts} AND {objects} AND {required} "
        # No envelope field twice (the reference decoder keeps the last copy, DuckDB's
        # reads the first; other keys are read by neither): its keys, counted, are as
        # many as the fields found.
        f"AND len(list_filter(keys, lambda k: k IN ({', '.join(lit(f) for f in FIELDS)}))) "
        "= list_aggregate(t, 'count')"
    )
    fields = "[" + ", ".join(lit(f"$.{name}") for name in FIELDS) + "]"
    objects = "[" + ", ".join(lit(f"$.{name}") for name in _OBJECTS) + "]"
    body = (
        f"CASE WHEN kind IN ('track', 'page', 'screen') THEN {_object('properties')} "
        f"WHEN kind IN ('identify', 'group') THEN {_object('traits')} END"
    )
    return checked(
        f"CREATE OR REPLACE TEMP TABLE {MESSAGES} AS WITH "
        # Lines stripped of ASCII whitespace as the reference reader strips them; a
        # blank line is no line (not valid UTF-8: the reference path's, as it is).
        "text AS (SELECT * FROM (SELECT file_no, line_no, "
        f"CASE WHEN strip THEN trim(txt, {lit(_STRIPPED)}) ELSE txt END AS txt FROM {LINES}) "
        "WHERE txt IS NULL OR txt <> ''), "
        # (the argument, not the result, is NULL for a line that is not JSON: DuckDB
        # evaluates a CASE's branches for every row)
        "valid AS (SELECT *, CASE WHEN json_valid(txt) THEN txt END AS json FROM text), "
        # The envelope's JSON types and texts, and its objects, one parse each.
        f"parsed AS (SELECT *, json_type(json, {fields}) AS t, "
        f"json_extract_string(json, {fields}) AS s, json_extract(json, {objects}) AS o "
        "FROM valid), "
        # A valid JSON text that starts with `{` (lines are stripped) is an object.
        f"objects AS (SELECT *, json IS NOT NULL AND txt[1] = '{{' "
        f"AND NOT regexp_matches(txt, {lit(_ODD_TEXT)}) "
        # Deep nesting is the reference's to judge (it rejects ~1,000 levels): a line
        # with many brackets, in strings or not, goes to it.
        f"AND strlen(txt) - strlen(replace(replace(txt, '{{', ''), '[', '')) <= {_MAX_BRACKETS} "
        "AS object, "
        # Every JSON line's messageId as the reference reads it (NULs dropped), even of
        # a line the SQL leaves alone: its copies must follow it to the reference path.
        f"CASE WHEN {_type('messageId')} = 'VARCHAR' THEN "
        f"replace({_text('messageId')}, chr(0), '') END AS mid, "
        f"CASE WHEN {_type('type')} = 'VARCHAR' THEN lower({_text('type')}) END AS kind "
        "FROM parsed), "
        "keyed AS (SELECT *, json_keys(CASE WHEN object THEN txt END) AS keys FROM objects), "
        f"checked AS (SELECT *, coalesce({checks}, false) AS plain FROM keyed), "
        f"timed AS (SELECT *, CASE WHEN plain THEN {corrected} END AS event_time FROM checked) "
        f"SELECT file_no, line_no, mid, kind, {_text('event')} AS event, "
        "plain AND coalesce(year(event_time) BETWEEN 2 AND 9998, false) AS plain, "
        f"CASE WHEN {_type('context')} = 'OBJECT' THEN {_object('context')} END AS ctx, "
        f"{body} AS body, "
        + ", ".join(f"{expr} AS {ident(name)}" for name, expr in _COMMON_FROM_FIELDS.items())
        + ", event_time AS timestamp FROM timed"
    )


# The common columns as normalize._common writes them from a plain line.
_COMMON_FROM_FIELDS = {
    "anonymous_id": f"nullif({_text('anonymousId')}, '')",
    "user_id": f"nullif({_text('userId')}, '')",
    "received_at": _time("receivedAt"),
    "sent_at": _time("sentAt"),
    "original_timestamp": _time("originalTimestamp"),
    "name": _text("name"),
    "category": _text("category"),
    "group_id": _text("groupId"),
    "previous_id": _text("previousId"),
}


def structures() -> str:
    """Per call type (and event, for tracks): the merged structure of context and of
    the section the type flattens, over plain lines."""
    return checked(
        "SELECT kind, CASE WHEN kind = 'track' THEN event END AS ev, "
        "CAST(json_group_structure(ctx) AS VARCHAR), "
        "CAST(json_group_structure(body) AS VARCHAR) "
        f"FROM {MESSAGES} WHERE plain GROUP BY ALL"
    )


class Values:
    """Every path one table's statements read, each section's extracted with one parse
    per row (into the table `name`), and the SQL for a path's value there."""

    def __init__(self, name: str, sections: Sequence[Section]) -> None:
        self.name = name
        self.paths: dict[str, list[Path]] = {}
        for section in sections:
            column = SECTION_COLUMN[section.root[0]]
            wanted = self.paths.setdefault(column, [])
            for path in [
                *section.objects,
                *(leaf.path for leaf in section.leaves),
                *(p[:-1] if not all(map(addressable, p)) else p for p in section.hard),
            ]:
                if path not in wanted:
                    wanted.append(path)

    def create(self, where: str, sections: Sequence[Section]) -> str:
        """The table's plain messages' values (each section's JSON types and texts, two
        parses of it per row), and whether each is a hard row."""
        lists = []
        for column, paths in self.paths.items():
            if paths:
                where_all = f"[{', '.join(jpath(p[1:]) for p in paths)}]"
                lists.append(f"json_type({column}, {where_all}) AS t_{column}")
                lists.append(f"json_extract_string({column}, {where_all}) AS s_{column}")
        return checked(
            f"CREATE OR REPLACE TEMP TABLE {self.name} AS SELECT *, "
            f"{self.hard_rows(sections)} AS hard FROM (SELECT file_no, line_no"
            f"{''.join(', ' + x for x in lists)} FROM {MESSAGES} WHERE plain AND ({where})) AS v"
        )

    def of(self, path: Path) -> Value:
        column = SECTION_COLUMN[path[0]]
        at = self.paths[column].index(path) + 1
        return Value(f"v.t_{column}[{at}]", f"v.s_{column}[{at}]")

    def value_of(self, leaves: Sequence[Leaf]) -> Value:
        """A column's value: its one path's, or the present one of its paths (a plain
        row holds at most one of them)."""
        if len(leaves) == 1:
            return self.of(leaves[0].path)
        found = [self.of(x.path) for x in leaves]
        return Value(
            "coalesce(" + ", ".join(v.t for v in found) + ")",
            "coalesce(" + ", ".join(v.s for v in found) + ")",
        )

    def present(self, leaves: Sequence[Leaf]) -> str:
        return " OR ".join(f"{self.of(x.path).t} IS NOT NULL" for x in leaves)

    def hard_rows(self, sections: Sequence[Section]) -> str:
        """A plain line the SQL still cannot load as the reference would: a hard path
        present, two paths of one column present, an object with a key twice, a null
        where other rows hold an object (a column of its own name there), an object
        where other rows hold a value."""
        terms: list[str] = []
        for section in sections:
            for path in section.hard:
                if all(map(addressable, path)):
                    terms.append(f"{self.of(path).t} IS NOT NULL")
                else:
                    keys = f"json_keys({self.of(path[:-1]).s})"
                    terms.append(f"coalesce(list_contains({keys}, {lit(path[-1])}), false)")
            for leaf in section.leaves:
                if leaf.kind == "JSON":
                    terms.append(f"coalesce({self.of(leaf.path).t} = 'OBJECT', false)")
            for paths in section.shared.values():
                present = " + ".join(f"CAST({self.of(p).t} IS NOT NULL AS INT)" for p in paths)
                terms.append(f"({present}) > 1")
            for path in section.objects:
                value = self.of(path)
                keys = f"json_keys(CASE WHEN {value.t} = 'OBJECT' THEN {value.s} END)"
                terms.append(f"coalesce(len({keys}) <> len(list_distinct({keys})), false)")
                if path != section.root:
                    terms.append(f"coalesce({value.t} = 'NULL', false)")
        return " OR ".join(terms) if terms else "false"


def hand_back(table: str, rows: Sequence[str]) -> str:
    """Lines of `table` (MESSAGES or PLAIN) no longer plain: those `rows` select."""
    return checked(
        f"UPDATE {table} SET plain = false WHERE plain AND (file_no, line_no) IN "
        f"({' UNION ALL '.join(rows)})"
    )


class Value(NamedTuple):
    """One JSON value as the SQL reads it: its JSON type, and its text (a string's
    characters, a number's or boolean's JSON spelling, an array's or object's JSON)."""

    t: str
    s: str


# Column type -> the kinds of a path's merged structure (DuckDB's json_group_structure
# over the batch's rows of the table, a superset of the rows checked) whose every value
# converts with nothing to rescue: the check of such a column is left out. Merging
# promotes (BIGINT with UBIGINT is HUGEINT, numbers with text JSON), so a kind here
# holds only values of that kind or nulls.
_ALWAYS_FITS: dict[ColumnType, frozenset[str]] = {
    ColumnType.TEXT: frozenset({"NULL", "VARCHAR", "BIGINT", "UBIGINT", "BOOLEAN"}),
    ColumnType.BOOLEAN: frozenset({"NULL", "BOOLEAN"}),
    ColumnType.BIGINT: frozenset({"NULL", "BIGINT"}),
    ColumnType.DOUBLE: frozenset({"NULL"}),
    ColumnType.TIMESTAMP: frozenset({"NULL"}),
}


def always_fits(leaves: Sequence[Leaf], kind: ColumnType) -> bool:
    """Whether every value of these paths fits the column, by their merged kinds."""
    return all(leaf.kind in _ALWAYS_FITS[kind] for leaf in leaves)


def fits(value: Value, kind: ColumnType) -> str:
    """Whether a JSON value converts to the column's type as schema.coerce would, with
    nothing to rescue (else its row is the reference path's)."""
    t, text = value
    as_double = f"TRY_CAST({text} AS DOUBLE)"
    if kind is ColumnType.BOOLEAN:
        return f"({t} IS NULL OR {t} IN ('NULL', 'BOOLEAN'))"
    if kind is ColumnType.BIGINT:
        return (
            f"({t} IS NULL OR {t} IN ('NULL', 'BIGINT') "
            f"OR ({t} = 'UBIGINT' AND TRY_CAST({text} AS BIGINT) IS NOT NULL) "
            f"OR ({t} = 'DOUBLE' AND {as_double} = trunc({as_double}) "
            f"AND {as_double} >= -9223372036854775808.0 AND {as_double} < 9223372036854775808.0))"
        )
    if kind is ColumnType.DOUBLE:
        return (
            f"({t} IS NULL OR {t} IN ('NULL', 'DOUBLE') OR ({t} IN ('BIGINT', 'UBIGINT') "
            f"AND abs(TRY_CAST({text} AS HUGEINT)) <= {_MAX_EXACT}))"
        )
    if kind is ColumnType.TIMESTAMP:
        return f"({t} IS NULL OR {t} = 'NULL' OR ({t} = 'VARCHAR' AND {time_text_ok(text)}))"
    # text: an array's JSON text only where no number or escape could be spelt otherwise
    return (
        f"({t} IS NULL OR {t} IN ('NULL', 'VARCHAR', 'BIGINT', 'UBIGINT', 'BOOLEAN') "
        f"OR ({t} = 'ARRAY' AND NOT regexp_matches({text}, {lit(_NOT_IN_ARRAY)})))"
    )


def cast(value: Value, kind: ColumnType) -> str:
    t, text = value
    if kind is ColumnType.TEXT:
        return text
    if kind is ColumnType.TIMESTAMP:
        return f"TRY_CAST({text} AS TIMESTAMPTZ)"
    if kind is ColumnType.BIGINT:
        return (
            f"CASE WHEN {t} = 'DOUBLE' THEN TRY_CAST(TRY_CAST({text} AS DOUBLE) AS BIGINT) "
            f"ELSE TRY_CAST({text} AS BIGINT) END"
        )
    if kind is ColumnType.DOUBLE:
        return f"TRY_CAST({text} AS DOUBLE)"
    return f"TRY_CAST({text} AS BOOLEAN)"


# Fixed columns of a table, from MESSAGES (as `m`).
COMMON: dict[str, str] = {
    "id": "m.mid",
    **{name: f"m.{ident(name)}" for name in _COMMON_FROM_FIELDS},
    "timestamp": "m.timestamp",
    "event": f"(SELECT slug FROM {EVENTS} WHERE {EVENTS}.text = m.event)",
    "event_text": "m.event",
}
