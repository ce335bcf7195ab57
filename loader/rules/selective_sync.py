"""Selective sync: which sources, collections (tables) and properties (columns) reach
each target, from a file admins edit by hand.

Parsing keeps every value's line so each error names the file, the line and the fix;
the decision functions are pure and cached, and say which line decided.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loader.config.errors import ConfigError
from loader.config.suggest import close_names, did_you_mean
from loader.rules.normalize import CORE_COLUMNS

# Columns a sync cannot do without: identity, dedupe, ordering and bookkeeping.
PROTECTED_COLUMNS: frozenset[str] = CORE_COLUMNS | {"event", "event_text", "group_id"}
_SOURCE_KEYS = {"enabled", "mode", "collections", "properties"}
_MODES = ("deny", "allow")


@dataclass(frozen=True)
class Decision:
    synced: bool
    line: int | None  # the line of the file that decided; None = the default (synced)
    reason: str


@dataclass
class Issue:
    line: int | None
    message: str
    error: bool = True

    def render(self, path: str) -> str:
        where = f"{path}, line {self.line}" if self.line else path
        return f"{where}: {self.message}"


@dataclass
class SourceRules:
    enabled: bool = True
    enabled_line: int | None = None
    mode: str = "deny"
    mode_line: int | None = None
    collections: list[tuple[str, int]] = field(default_factory=list)
    collections_given: bool = False
    properties: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    properties_lines: dict[str, int] = field(default_factory=dict)


@dataclass
class SelectiveSync:
    path: str = "<none>"
    targets: dict[str, dict[str, SourceRules]] = field(default_factory=dict)
    target_lines: dict[str, int] = field(default_factory=dict)
    source_lines: dict[tuple[str, str], int] = field(default_factory=dict)

    def rules(self, target: str, source: str) -> SourceRules | None:
        return self.targets.get(target, {}).get(source)

    def filter_for(self, target: str, source: str) -> SyncFilter:
        return SyncFilter(self.rules(target, source))


class SyncFilter:
    """What one source may load into one target.

    Decisions are cached per name, so the per-message cost is a dict lookup; the cache
    also remembers which names the archive showed that were turned off, so `show` can
    list data that never reached the warehouse.
    """

    def __init__(
        self, rules: SourceRules | None, only_tables: frozenset[str] | None = None
    ) -> None:
        self.rules = rules
        # A run that loads some tables only (a Dagster subset): not a rule, so what it
        # leaves out is not remembered as turned off.
        self.only_tables = only_tables
        self._tables: dict[str, Decision] = {}
        self._columns: dict[tuple[str, str], Decision] = {}
        self._reported: set[tuple[str, str]] = set()
        self._kept: dict[str, _KeptColumns] = {}

    def columns_kept(self, table: str) -> dict[str, bool]:
        """column -> synced, for one table; a plain dict lookup once a name is known, which
        is what normalisation asks millions of times."""
        kept = self._kept.get(table)
        if kept is None:
            kept = self._kept[table] = _KeptColumns(self, table)
        return kept

    def table_decision(self, table: str) -> Decision:
        decision = self._tables.get(table)
        if decision is None:
            decision = self._tables[table] = self._table_decision(table)
        return decision

    def column_decision(self, table: str, column: str) -> Decision:
        key = (table, column)
        decision = self._columns.get(key)
        if decision is None:
            decision = self._columns[key] = self._column_decision(table, column)
        return decision

    def new_turned_off_names(self) -> list[tuple[str, str]]:
        """(table, column) pairs turned off since the last call; column '' = whole table."""
        selected = self.only_tables
        off = [
            (t, "")
            for t, d in self._tables.items()
            if not d.synced and (selected is None or t in selected)
        ]
        off += [k for k, d in self._columns.items() if not d.synced and self._tables[k[0]].synced]
        fresh = [k for k in off if k not in self._reported]
        self._reported.update(fresh)
        return fresh

    def decided_names(self) -> tuple[list[str], list[tuple[str, str]]]:
        """The tables and (table, column) pairs decided so far: what a reader process's
        copy hands back so the loader's filter learns (and reports) them too."""
        return list(self._tables), list(self._columns)

    def learn(self, decided: tuple[list[str], list[tuple[str, str]]]) -> None:
        tables, columns = decided
        for table in tables:
            self.table_decision(table)
        for table, column in columns:
            self.column_decision(table, column)

    def restricted_to(self, tables: set[str] | frozenset[str]) -> SyncFilter:
        """The same rules, for a run that loads only `tables`."""
        return SyncFilter(self.rules, frozenset(tables))

    @property
    def active(self) -> bool:
        r = self.rules
        if self.only_tables is not None:
            return True
        return r is not None and (
            not r.enabled or r.mode == "allow" or bool(r.collections) or bool(r.properties)
        )

    @property
    def source_enabled(self) -> bool:
        return self.rules is None or self.rules.enabled

    def table_synced(self, table: str) -> bool:
        return self.table_decision(table).synced

    def column_synced(self, table: str, column: str) -> bool:
        return self.column_decision(table, column).synced

    def _table_decision(self, table: str) -> Decision:
        if self.only_tables is not None and table not in self.only_tables:
            return Decision(False, None, "not selected in this run")
        r = self.rules
        if r is None:
            return Decision(True, None, "default: everything is synced")
        if not r.enabled:
            return Decision(False, r.enabled_line, "the whole source is turned off")
        for pattern, line in r.collections:
            if fnmatch.fnmatchcase(table, pattern):
                if r.mode == "allow":
                    return Decision(True, line, f"allowed by '{pattern}'")
                return Decision(False, line, f"turned off by '{pattern}'")
        if r.mode == "allow" and r.collections_given:
            if table in ("users", "accounts"):
                # Profiles follow the event table they are built from.
                source = "identifies" if table == "users" else "groups"
                inner = self._table_decision(source)
                return Decision(inner.synced, inner.line, f"follows {source}: {inner.reason}")
            return Decision(False, r.mode_line, "not in the allow-list")
        return Decision(True, None, "default: synced")

    def _column_decision(self, table: str, column: str) -> Decision:
        if column in PROTECTED_COLUMNS:
            return Decision(True, None, "core column: always synced")
        table_decision = self.table_decision(table)
        if not table_decision.synced:
            return table_decision
        r = self.rules
        if r is None:
            return Decision(True, None, "default: everything is synced")
        for key in (table, "*"):
            for pattern, line in r.properties.get(key, []):
                if fnmatch.fnmatchcase(column, pattern):
                    if r.mode == "allow":
                        return Decision(True, line, f"allowed by '{pattern}'")
                    return Decision(False, line, f"turned off by '{pattern}'")
        if r.mode == "allow" and (table in r.properties or "*" in r.properties):
            key = table if table in r.properties else "*"
            return Decision(False, r.properties_lines.get(key), "not in the allow-list")
        return Decision(True, None, "default: synced")


class _KeptColumns(dict):
    """A dict that decides (and remembers) a column the first time it is looked up."""

    def __init__(self, sync_filter: SyncFilter, table: str) -> None:
        super().__init__()
        self.sync_filter, self.table = sync_filter, table

    def __missing__(self, column: str) -> bool:
        synced = self[column] = self.sync_filter.column_decision(self.table, column).synced
        return synced


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")


def _glob_problem(pattern: str) -> str | None:
    """Why `pattern` is not a usable glob, or None. fnmatch reads an unclosed '[' as a
    literal, which no table or column name can contain: a typo, not "matches nothing"."""
    if "\\[" in fnmatch.translate(pattern):
        return (
            f"invalid pattern '{pattern}': '[' opens a character class that is never "
            "closed (names cannot contain '['); close it with ']' or remove it"
        )
    return None


def _scalar_list(node: yaml.Node, what: str, issues: list[Issue]) -> list[tuple[str, int]]:
    if _is_null(node):
        return []  # a key left with everything under it commented out
    if isinstance(node, yaml.ScalarNode) and node.value:
        problem = _glob_problem(node.value)
        if problem is not None:
            issues.append(Issue(_line(node), f"{what}: {problem}"))
            return []
        return [(node.value, _line(node))]
    if not isinstance(node, yaml.SequenceNode):
        issues.append(Issue(_line(node), f"{what} must be a list of names or glob patterns"))
        return []
    out = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or not item.value:
            issues.append(Issue(_line(item), f"{what}: each entry must be a name or pattern"))
            continue
        problem = _glob_problem(item.value)
        if problem is not None:
            issues.append(Issue(_line(item), f"{what}: {problem}"))
            continue
        out.append((item.value, _line(item)))
    return out


def _mapping(node: yaml.Node, what: str, issues: list[Issue]) -> list[tuple[yaml.Node, yaml.Node]]:
    if _is_null(node):
        return []
    if not isinstance(node, yaml.MappingNode):
        issues.append(Issue(_line(node), f"{what} must be a mapping"))
        return []
    return list(node.value)


def _parse_source(node: yaml.Node, where: str, issues: list[Issue]) -> SourceRules:
    rules = SourceRules()
    for key, value in _mapping(node, where, issues):
        name = key.value
        if name not in _SOURCE_KEYS:
            hint = did_you_mean(name, _SOURCE_KEYS)
            issues.append(
                Issue(
                    _line(key),
                    f"unknown key '{name}' under {where} (allowed: "
                    f"{', '.join(sorted(_SOURCE_KEYS))}){hint}",
                )
            )
        elif name == "enabled":
            if value.value not in ("true", "false", "True", "False", "yes", "no"):
                issues.append(Issue(_line(value), "enabled must be true or false"))
            else:
                rules.enabled = value.value in ("true", "True", "yes")
                rules.enabled_line = _line(key)
        elif name == "mode":
            if value.value not in _MODES:
                issues.append(
                    Issue(
                        _line(value),
                        f"mode must be 'deny' (list what is off) or 'allow' "
                        f"(list only what is on), not '{value.value}'",
                    )
                )
            else:
                rules.mode = value.value
                rules.mode_line = _line(key)
        elif name == "collections":
            rules.collections = _scalar_list(value, f"{where}.collections", issues)
            rules.collections_given = not _is_null(value)
        else:
            for table_node, columns in _mapping(value, f"{where}.properties", issues):
                table = table_node.value
                problem = _glob_problem(table)
                if problem is not None:
                    issues.append(Issue(_line(table_node), f"{where}.properties: {problem}"))
                rules.properties[table] = _scalar_list(
                    columns, f"{where}.properties.{table}", issues
                )
                rules.properties_lines[table] = _line(table_node)
    for table, patterns in rules.properties.items():
        for pattern, line in patterns:
            protected = sorted(c for c in PROTECTED_COLUMNS if fnmatch.fnmatchcase(c, pattern))
            if protected and rules.mode == "deny":
                issues.append(
                    Issue(
                        line,
                        f"'{pattern}' would turn off core column(s) "
                        f"{', '.join(protected)} of {table}, which every sync needs; "
                        "remove it or narrow the pattern",
                    )
                )
    return rules


def parse(text: str, path: str) -> tuple[SelectiveSync, list[Issue]]:
    """The file's rules and every structural problem found, each with its line."""
    issues: list[Issue] = []
    result = SelectiveSync(path=path)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return result, [Issue(line, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
    if root is None:
        return result, []
    for key, value in _mapping(root, "the file", issues):
        if key.value == "version":
            if value.value != "1":
                issues.append(Issue(_line(value), "version must be 1"))
            continue
        if key.value != "targets":
            issues.append(
                Issue(
                    _line(key), f"unknown top-level key '{key.value}' (allowed: version, targets)"
                )
            )
            continue
        for target_node, sources in _mapping(value, "targets", issues):
            target = target_node.value
            result.target_lines[target] = _line(target_node)
            per_source = result.targets.setdefault(target, {})
            for source_node, body in _mapping(sources, f"targets.{target}", issues):
                source = source_node.value
                result.source_lines[(target, source)] = _line(source_node)
                per_source[source] = _parse_source(body, f"{target}.{source}", issues)
    return result, issues


def check_names(
    sync: SelectiveSync,
    known_targets: Iterable[str],
    known_sources: Iterable[str],
    known_tables: dict[tuple[str, str], dict[str, Iterable[str]]],
) -> list[Issue]:
    """Errors for unknown targets/sources; warnings for patterns matching nothing known.

    known_tables maps (target, source) to {table: columns} as far as the warehouse and
    the archive have shown them; a pair absent from it is not checked for patterns.
    """
    issues: list[Issue] = []
    targets, sources = sorted(set(known_targets)), sorted(set(known_sources))
    for target, per_source in sync.targets.items():
        if target not in targets:
            issues.append(Issue(sync.target_lines.get(target), _unknown("target", target, targets)))
        for source, rules in per_source.items():
            line = sync.source_lines.get((target, source))
            if source not in sources:
                issues.append(Issue(line, _unknown("source", source, sources)))
                continue
            tables = known_tables.get((target, source))
            if tables is None:
                continue
            names = sorted(tables)
            for pattern, pline in rules.collections:
                if not fnmatch.filter(names, pattern):
                    issues.append(Issue(pline, _nothing("collection", pattern, names), False))
            for table, patterns in rules.properties.items():
                if table != "*" and not fnmatch.filter(names, table):
                    issues.append(
                        Issue(
                            rules.properties_lines.get(table),
                            _nothing("collection", table, names),
                            False,
                        )
                    )
                    continue
                columns = sorted({c for t in fnmatch.filter(names, table) for c in tables[t]})
                for pattern, pline in patterns:
                    if not fnmatch.filter(columns, pattern):
                        issues.append(Issue(pline, _nothing("property", pattern, columns), False))
    return issues


def _unknown(kind: str, name: str, known: list[str]) -> str:
    hint = did_you_mean(name, known, n=2)
    listed = ", ".join(known) or "none"
    return f"unknown {kind} '{name}' (known: {listed}){hint}"


def _nothing(kind: str, pattern: str, known: list[str]) -> str:
    close = close_names(pattern.replace("*", ""), known, n=3)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"{kind} pattern '{pattern}' matches nothing known yet{hint}"


def load_file(path: Path) -> SelectiveSync:
    """Parse and raise ConfigError on the first structural error (with all listed)."""
    sync, issues = parse(path.read_text(), str(path))
    errors = [i for i in issues if i.error]
    if errors:
        raise ConfigError("; ".join(i.render(str(path)) for i in errors))
    return sync
