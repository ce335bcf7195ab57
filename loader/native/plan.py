"""Native mode's plan, pure: which JSON paths become which columns, which rows the SQL
can load exactly as the reference rules would, and each new column's evidence.

The warehouse gathers facts (the structure of each table's objects, the first lines
where a column is named and has a value, whether fractions were among its numbers);
the rules that decide (names, reserved words, collisions, types) are the reference
path's own functions, run here on those facts and on a few witness lines. A row the
SQL cannot prove it would load identically (a key collision, a reserved name, a value
that must be rescued...) is handed to the reference path whole, with every copy of
its messageId, so both paths never share a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loader.rules.naming import snake_case
from loader.rules.normalize import (
    _GROUP_RESERVED,
    _PAGE_RESERVED,
    _TABLE_OF_KIND,
    _TRACK_RESERVED,
    CORE_COLUMNS,
)
from loader.rules.schema import ColumnEvidence, infer_type

# Call type -> its table, the section flattened into its rows, the names that section
# may not write: normalize.rows_into's own tables where it has them.
KIND_TABLE: dict[str, str] = _TABLE_OF_KIND
SECTION: dict[str, str | None] = {
    "track": "properties",
    "page": "properties",
    "screen": "properties",
    "identify": "traits",
    "group": "traits",
    "alias": None,
}
RESERVED: dict[str, frozenset[str]] = {
    "track": _TRACK_RESERVED,
    "page": _PAGE_RESERVED,
    "screen": _PAGE_RESERVED,
    "identify": CORE_COLUMNS,
    "group": _GROUP_RESERVED,
    "alias": frozenset(),
}

Path = tuple[str, ...]  # JSON keys from the message's top level


@dataclass
class Leaf:
    """One JSON path that names a column (`kind` of it, from the warehouse's merged
    structure: a scalar type, "ARRAY", or "JSON" where rows disagree)."""

    path: Path
    name: str
    kind: str


@dataclass
class Section:
    """One object of a message kind (context, properties, traits) as the SQL reads it."""

    root: Path
    leaves: list[Leaf] = field(default_factory=list)
    objects: list[Path] = field(default_factory=list)  # every object path, root first
    # Paths whose presence makes a row the reference path's: a reserved or context_
    # name, a key JSONPath cannot address, rows that disagree on its shape.
    hard: list[Path] = field(default_factory=list)
    # Column name -> its paths, when more than one key names it (`orderId`, `order_id`):
    # a row holding two of them is the reference path's.
    shared: dict[str, list[Path]] = field(default_factory=dict)


def merge_structure(a: Any, b: Any) -> Any:
    """Two merged JSON structures (DuckDB's json_group_structure) as one, the way
    DuckDB merges rows: NULL gives way, objects merge key by key (first seen first),
    arrays merge their elements, and any other disagreement is "JSON"."""
    if a is None or a == "NULL":
        return b
    if b is None or b == "NULL":
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, sub in b.items():
            out[key] = merge_structure(out[key], sub) if key in out else sub
        return out
    if isinstance(a, list) and isinstance(b, list):
        return [merge_structure(a[0] if a else None, b[0] if b else None)]
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return "JSON"
    return a if a == b else "JSON"


def addressable(key: str) -> bool:
    """Whether a key can be written in a quoted JSONPath step as it is."""
    return bool(key) and not any(c in key for c in '"\\') and all(ord(c) >= 0x20 for c in key)


def read_section(
    root: Path, structure: Any, prefix: str, reserved: frozenset[str], guard_context: bool
) -> Section:
    """A section's leaves, named as normalize.flatten_into names them (the parent's
    column name joined to the key, snake-cased), from DuckDB's merged JSON structure."""
    section = Section(root)
    if not isinstance(structure, dict):
        return section
    by_name: dict[str, list[Path]] = {}

    def walk(node: dict[str, Any], path: Path, parent: str) -> None:
        section.objects.append(path)
        for key, sub in node.items():
            where = (*path, key)
            name = snake_case(f"{parent}_{key}" if parent else str(key))
            if not addressable(key):
                section.hard.append(where)
                continue
            if isinstance(sub, dict):
                walk(sub, where, name)
                continue
            kind = "ARRAY" if isinstance(sub, list) else str(sub)
            if name in reserved or (guard_context and name.startswith("context_")):
                section.hard.append(where)
                continue
            # "JSON": rows disagree (a number here, text there: one column; an object
            # in some rows: those are the reference path's, Values.hard_rows).
            section.leaves.append(Leaf(where, name, kind))
            by_name.setdefault(name, []).append(where)

    walk(structure, root, prefix)
    section.shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    return section


def context_section(structure: Any) -> Section:
    return read_section(("context",), structure, "context", frozenset(), False)


def body_section(kind: str, structure: Any) -> Section | None:
    root = SECTION[kind]
    if root is None:
        return None
    return read_section((root,), structure, "", RESERVED[kind], True)


def columns_of(sections: Iterable[Section | None]) -> dict[str, list[Leaf]]:
    """Column name -> the leaves that write it, in structure order."""
    out: dict[str, list[Leaf]] = {}
    for section in sections:
        if section is not None:
            for leaf in section.leaves:
                out.setdefault(leaf.name, []).append(leaf)
    return out


@dataclass
class Seen:
    """What one file shows of one column: the first line naming it (and where in that
    line's row), the first line giving it a value (and the value), fractions among
    its numbers. Lines from the SQL carry no value or position until their witness
    line is normalised."""

    name_line: int
    name_at: int = -1
    value_line: int | None = None
    value: Any = None
    saw_double: bool = False

    def merged(self, other: Seen) -> Seen:
        first_name = self if self.name_line <= other.name_line else other
        values = [s for s in (self, other) if s.value_line is not None]
        first_value = min(values, key=lambda s: s.value_line or 0) if values else None
        return Seen(
            first_name.name_line,
            first_name.name_at,
            first_value.value_line if first_value else None,
            first_value.value if first_value else None,
            self.saw_double or other.saw_double,
        )


def evidence_in_order(
    files: Iterable[Mapping[str, Seen]], skip: Mapping[str, Any]
) -> dict[str, ColumnEvidence]:
    """The batch's evidence for a table's new columns: each typed by the first file (in
    archive order) where it has a value, by that value's type and the file's fractions;
    ordered by that file, then by first appearance in it: what the reference path's
    per-file evidence gives (file_reader._file_evidence, TableWriter.ensure_from_evidence)."""
    out: dict[str, ColumnEvidence] = {}
    for seen in files:
        valued = [(n, s) for n, s in seen.items() if s.value_line is not None]
        valued.sort(key=lambda item: (item[1].name_line, item[1].name_at))
        for name, s in valued:
            if name in out or name in skip:
                continue
            kind = infer_type(s.value)
            if kind is not None:
                out[name] = ColumnEvidence(kind, s.saw_double)
    return out
