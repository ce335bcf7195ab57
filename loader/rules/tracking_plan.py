"""Tracking plans (Segment Protocols for the warehouse): which events and properties a
source is expected to send, with their types, and what a violation does.

The file is parsed with every value's line, so a mistake names the file, the line and
the field. Each planned event is compiled once into a JSON Schema validator (jsonschema
decides what is valid and says why); a conservative pure-Python pre-check answers
"valid" for the common case without calling it, so a conforming event costs a few dict
lookups. The rule (message + plan -> violations, omitted keys, blocked) is pure.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from loader.config.errors import ConfigError
from loader.config.suggest import did_you_mean
from loader.rules.normalize import event_table_name

ACTIONS = ("report", "omit", "block")
TYPES = ("string", "integer", "number", "boolean", "timestamp", "object", "array")
# The plan's names for a message's own kinds (never a track event's name: those are
# checked under `events:`).
IDENTIFY, GROUP = "(identify)", "(group)"
_TOP_KEYS = ("version", "violations", "events", "identify", "group")
_EVENT_KEYS = ("properties", "allow_unplanned")
_TRAIT_KEYS = ("traits", "allow_unplanned")
_PROPERTY_KEYS = ("type", "required", "enum", "pattern", "description")
_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?)?$"
_JSON_TYPE = {
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "timestamp": "string",
    "object": "object",
    "array": "array",
}
# Violation kinds, as _sluice.violations records them.
UNPLANNED_EVENT = "unplanned_event"
UNPLANNED_PROPERTY = "unplanned_property"
MISSING_REQUIRED = "missing_required"
WRONG_TYPE = "wrong_type"
NOT_IN_ENUM = "not_in_enum"
PATTERN_MISMATCH = "pattern_mismatch"


class PlanError(ConfigError):
    """A mistake in a tracking plan file: one sentence with its file and line."""


@dataclass(frozen=True)
class PropertySpec:
    type: str | None = None
    required: bool = False
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    line: int = 0

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.type is not None:
            schema["type"] = [_JSON_TYPE[self.type], "null"]
            if self.type == "timestamp":
                schema["pattern"] = _TIMESTAMP
        if self.enum is not None:
            # A null is no value, for an enum as for a type: JSON Schema's enum would
            # refuse it where Sluice's own checks (and Segment's Protocols) take it.
            schema["enum"] = [*self.enum, *([None] if None not in self.enum else [])]
        if self.pattern is not None:
            # Both a timestamp's shape and the user's pattern must hold.
            schema = (
                {"allOf": [schema, {"pattern": self.pattern}]}
                if "pattern" in schema
                else {
                    **schema,
                    "pattern": self.pattern,
                }
            )
        return schema


@dataclass(frozen=True)
class EventSpec:
    name: str  # a name or a glob
    properties: dict[str, PropertySpec]
    allow_unplanned: bool = False
    line: int = 0

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {k: p.json_schema() for k, p in self.properties.items()},
            "required": sorted(k for k, p in self.properties.items() if p.required),
            "additionalProperties": self.allow_unplanned,
        }


@dataclass(frozen=True)
class Violation:
    property: str  # '' for the event as a whole
    kind: str
    value: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"property": self.property, "kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Verdict:
    violations: tuple[Violation, ...]
    omit: frozenset[str]  # top-level keys to take out of the row (into _rescued_data)
    blocked: bool


class _Compiled:
    """One planned event: its JSON Schema validator (the whole event's, and one per
    property, which is what a violating event is checked with), and a pre-check that
    answers "valid" for most events without calling jsonschema."""

    __slots__ = (
        "spec",
        "validator",
        "checks",
        "required",
        "allow_unplanned",
        "by_property",
        "type_only",
        "known_kinds",
    )

    def __init__(self, spec: EventSpec) -> None:
        self.spec = spec
        self.validator = Draft202012Validator(spec.json_schema())
        self.by_property = {
            k: Draft202012Validator(p.json_schema()) for k, p in spec.properties.items()
        }
        self.required = tuple(k for k, p in spec.properties.items() if p.required)
        self.allow_unplanned = spec.allow_unplanned
        # Properties whose verdict depends on the value's JSON type alone: the
        # validator's answer is remembered per (property, Python type).
        self.type_only = frozenset(
            k
            for k, p in spec.properties.items()
            if p.enum is None and p.pattern is None and p.type != "timestamp"
        )
        self.known_kinds: dict[tuple[str, type], tuple[str, ...]] = {}
        self.checks: dict[str, tuple[tuple[type, ...], frozenset[str] | None, Any]] = {
            k: (
                _PY_TYPES[p.type] if p.type is not None else (),
                frozenset(p.enum)
                if p.enum is not None and all(type(v) is str for v in p.enum)
                else (None if p.enum is None else frozenset()),
                re.compile(p.pattern)
                if p.pattern is not None
                else (_TIMESTAMP_RE if p.type == "timestamp" else None),
            )
            for k, p in spec.properties.items()
        }

    def surely_valid(self, props: dict[str, Any]) -> bool:
        """True only when the validator would say valid too (tested against it); False
        means "ask the validator"."""
        for key in self.required:
            if key not in props:
                return False
        checks = self.checks
        for key, value in props.items():
            check = checks.get(key)
            if check is None:
                if self.allow_unplanned:
                    continue
                return False
            if value is None:
                continue
            # _fits, inlined: this loop runs for every property of every planned event.
            types, enum, pattern = check
            kind = type(value)
            if types and kind not in types:
                return False
            if enum is not None and (kind is not str or value not in enum):
                return False
            if pattern is not None and (kind is not str or pattern.search(value) is None):
                return False
        return True

    def violations(self, props: dict[str, Any]) -> list[Violation]:
        """What is wrong, property by property: each doubtful value is checked by its
        property's validator (never the others')."""
        out: list[Violation] = []
        checks = self.checks
        for key, value in props.items():
            check = checks.get(key)
            if check is None:
                if not self.allow_unplanned:
                    out.append(Violation(key, UNPLANNED_PROPERTY, value))
                continue
            if value is None or _fits(check, value):
                continue
            kind_of_value = type(value)
            # A float's verdict for an integer property depends on its value (2.0 fits).
            cacheable = key in self.type_only and kind_of_value is not float
            known = self.known_kinds.get((key, kind_of_value)) if cacheable else None
            if known is None:
                known = self._kinds(key, value)
                if cacheable:
                    self.known_kinds[(key, kind_of_value)] = known
            out.extend(Violation(key, kind, value) for kind in known)
        out.extend(Violation(k, MISSING_REQUIRED) for k in self.required if k not in props)
        return out

    def _kinds(self, key: str, value: Any) -> tuple[str, ...]:
        kinds: set[str] = set()
        for error in self.by_property[key].iter_errors(value):
            keyword = str(error.validator)
            if keyword == "enum":
                kinds.add(NOT_IN_ENUM)
            elif keyword == "pattern" and error.validator_value != _TIMESTAMP:
                kinds.add(PATTERN_MISMATCH)
            else:  # the type, or a timestamp's shape
                kinds.add(WRONG_TYPE)
        return tuple(sorted(kinds))


def _fits(check: tuple[tuple[type, ...], frozenset[str] | None, Any], value: Any) -> bool:
    types, enum, pattern = check
    kind = type(value)
    if types and kind not in types:
        return False
    if enum is not None and (kind is not str or value not in enum):
        return False
    return pattern is None or (kind is str and pattern.search(value) is not None)


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "timestamp": (str,),
    "object": (dict,),
    "array": (list,),
}
_TIMESTAMP_RE = re.compile(_TIMESTAMP)
_UNSEEN: Any = object()


@dataclass
class TrackingPlan:
    path: str = "<none>"
    action: str = "report"
    events: list[EventSpec] = field(default_factory=list)
    identify: EventSpec | None = None
    group: EventSpec | None = None
    # Validators, compiled on first use in each process (not pickled to readers).
    _compiled: dict[str, _Compiled | None] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = {}
        return state

    def with_action(self, action: str | None) -> TrackingPlan:
        if action is None:
            return self
        return TrackingPlan(self.path, action, self.events, self.identify, self.group)

    def spec_for(self, kind: str, event: str) -> EventSpec | None:
        if kind == "identify":
            return self.identify
        if kind == "group":
            return self.group
        for spec in self.events:
            if spec.name == event:
                return spec
        for spec in self.events:
            if fnmatch.fnmatchcase(event, spec.name):
                return spec
        return None

    def _compiled_for(self, kind: str, event: str) -> _Compiled | None:
        # Track events by their name; identify and group under their kind (a track
        # event may be called anything).
        key = event if kind == "track" else "\0" + kind
        try:
            return self._compiled[key]
        except KeyError:
            spec = self.spec_for(kind, event)
            compiled = self._compiled[key] = None if spec is None else _Compiled(spec)
            return compiled

    def check(self, kind: str, event: str, props: dict[str, Any] | None) -> Verdict | None:
        """None when the message conforms (or is of a kind the plan does not cover);
        else what is wrong and what to do about it."""
        if kind == "track":
            compiled = self._compiled.get(event, _UNSEEN)
            if compiled is _UNSEEN:
                compiled = self._compiled_for(kind, event)
        elif kind == "identify":
            if self.identify is None:
                return None
        elif kind == "group":
            if self.group is None:
                return None
        else:
            return None
        if kind != "track":
            compiled = self._compiled_for(kind, event)
        if compiled is None:
            # An event the plan does not name.
            return Verdict(
                (Violation("", UNPLANNED_EVENT, event),), frozenset(), self.action == "block"
            )
        values = props or {}
        if compiled.surely_valid(values):
            return None
        found = compiled.violations(values)
        if not found:
            return None
        if self.action == "block":
            return Verdict(tuple(found), frozenset(), True)
        omit = frozenset()
        if self.action == "omit":
            omit = frozenset(v.property for v in found if v.property and v.kind != MISSING_REQUIRED)
        return Verdict(tuple(found), omit, False)


def event_label(kind: str, event: Any) -> str:
    """The name a message's plan entry and violations go by."""
    if kind == "identify":
        return IDENTIFY
    if kind == "group":
        return GROUP
    return event if type(event) is str else str(event)


def plan_table(label: str) -> str:
    """The table an event's rows go to, from its plan label."""
    if label == IDENTIFY:
        return "identifies"
    if label == GROUP:
        return "groups"
    return event_table_name(label)


# --- the file ---------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, node: yaml.Node, message: str) -> PlanError:
        return PlanError(f"{self.path}, line {_line(node)}: {message}")

    def mapping(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
        if _is_null(node):
            return []
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        return list(node.value)

    def keys(self, key: yaml.Node, allowed: tuple[str, ...], where: str) -> None:
        if key.value not in allowed:
            swapped = {"properties": "traits", "traits": "properties"}.get(str(key.value))
            hint = (
                f"; did you mean '{swapped}'?"
                if swapped in allowed
                else did_you_mean(str(key.value), allowed)
            )
            raise self.fail(
                key, f"unknown key '{key.value}' in {where} (allowed: {', '.join(allowed)}){hint}"
            )

    def scalar(self, node: yaml.Node, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        return yaml.safe_load(yaml.serialize(node))

    def boolean(self, node: yaml.Node, what: str) -> bool:
        value = self.scalar(node, what)
        if type(value) is not bool:
            raise self.fail(node, f"{what} must be true or false, not {value!r}")
        return value

    def prop(self, name: str, node: yaml.Node, where: str) -> PropertySpec:
        if isinstance(node, yaml.ScalarNode) and not _is_null(node):
            # `total: number` is short for `total: {type: number}`.
            return PropertySpec(type=self.type_of(node, where), line=_line(node))
        kind: str | None = None
        required = False
        enum: tuple[Any, ...] | None = None
        pattern: str | None = None
        for key, value in self.mapping(node, where):
            self.keys(key, _PROPERTY_KEYS, where)
            if key.value == "type":
                kind = self.type_of(value, f"{where}.type")
            elif key.value == "required":
                required = self.boolean(value, f"{where}.required")
            elif key.value == "enum":
                if not isinstance(value, yaml.SequenceNode) or not value.value:
                    raise self.fail(value, f"{where}.enum must be a list of allowed values")
                enum = tuple(self.scalar(v, f"{where}.enum") for v in value.value)
            elif key.value == "pattern":
                text = self.scalar(value, f"{where}.pattern")
                try:
                    re.compile(str(text))
                except re.error as exc:
                    raise self.fail(value, f"{where}.pattern is not a valid regex: {exc}") from None
                pattern = str(text)
        spec = PropertySpec(kind, required, enum, pattern, _line(node))
        try:
            Draft202012Validator.check_schema(spec.json_schema())
        except SchemaError as exc:
            raise self.fail(node, f"{where}: {exc.message}") from None
        return spec

    def type_of(self, node: yaml.Node, where: str) -> str:
        return self.one_of(node, where, TYPES)

    def one_of(self, node: yaml.Node, where: str, allowed: Sequence[str]) -> str:
        """A scalar that must be one of `allowed`; a near miss gets a suggestion."""
        value = self.scalar(node, where)
        if value not in allowed:
            raise self.fail(
                node,
                f"{where} must be one of {', '.join(allowed)}, not {value!r}"
                f"{did_you_mean(str(value), allowed)}",
            )
        return str(value)

    def event(self, name: str, node: yaml.Node, where: str, inner: str) -> EventSpec:
        allowed = _EVENT_KEYS if inner == "properties" else _TRAIT_KEYS
        properties: dict[str, PropertySpec] = {}
        allow = False
        for key, value in self.mapping(node, where):
            self.keys(key, allowed, where)
            if key.value == "allow_unplanned":
                allow = self.boolean(value, f"{where}.allow_unplanned")
                continue
            for prop_key, prop_value in self.mapping(value, f"{where}.{inner}"):
                prop_name = str(prop_key.value)
                if prop_name in properties:
                    raise self.fail(prop_key, f"{where}.{inner}: '{prop_name}' is listed twice")
                properties[prop_name] = self.prop(
                    prop_name, prop_value, f"{where}.{inner}.{prop_name}"
                )
        return EventSpec(name, properties, allow, _line(node))

    def parse(self, text: str) -> TrackingPlan:
        plan = TrackingPlan(path=self.path)
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}, line {mark.line + 1}" if mark is not None else self.path
            raise PlanError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if root is None:
            return plan
        for key, value in self.mapping(root, "the file"):
            self.keys(key, _TOP_KEYS, "the file")
            if key.value == "version":
                if self.scalar(value, "version") != 1:
                    raise self.fail(value, "version must be 1")
            elif key.value == "violations":
                plan.action = self.action(value, "violations")
            elif key.value == "events":
                names: set[str] = set()
                for event_key, body in self.mapping(value, "events"):
                    name = str(event_key.value)
                    if name in names:
                        raise self.fail(event_key, f"event '{name}' is listed twice")
                    names.add(name)
                    plan.events.append(self.event(name, body, f"events.{name}", "properties"))
            elif key.value == "identify":
                plan.identify = self.event(IDENTIFY, value, "identify", "traits")
            else:
                plan.group = self.event(GROUP, value, "group", "traits")
        return plan

    def action(self, node: yaml.Node, where: str) -> str:
        return self.one_of(node, where, ACTIONS)


def parse(text: str, path: str) -> TrackingPlan:
    """The plan, or PlanError naming the file, line and field of its first mistake."""
    return _Parser(path).parse(text)


def load_file(path: Path) -> TrackingPlan:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{path}: tracking plan file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: tracking plan file cannot be read: {exc}") from None
    return parse(text, str(path))


# --- a starting plan from a warehouse -----------------------------------------------------

_COLUMN_TYPES = {
    "text": "string",
    "bigint": "integer",
    "double": "number",
    "boolean": "boolean",
    "timestamp": "timestamp",
}


def infer_plan(
    tables: dict[str, dict[str, Any]], events: dict[str, str], skip: frozenset[str]
) -> str:
    """A plan's YAML from the event tables' columns: `tables` is table -> column ->
    ColumnType, `events` table -> the event's name as sent. Flattened columns
    (context_..., nested_x) are only a starting point: the plan lists top-level keys."""
    lines = [
        "# A starting tracking plan, written by `sluice plan infer` from the warehouse's",
        "# tables: check every type, mark what is required, add enums and patterns.",
        "version: 1",
        "violations: report  # report | omit | block",
        "events:",
    ]
    for table in sorted(events):
        columns = tables.get(table, {})
        props = {c: t for c, t in columns.items() if c not in skip}
        lines.append(f"  {_yaml_key(events[table])}:")
        if not props:
            lines.append("    properties: {}")
            continue
        lines.append("    properties:")
        for column, kind in props.items():
            value = getattr(kind, "value", str(kind))
            lines.append(f"      {_yaml_key(column)}: {_COLUMN_TYPES.get(value, 'string')}")
    for kind, table in (("identify", "identifies"), ("group", "groups")):
        columns = tables.get(table)
        if columns is None:
            continue
        props = {c: t for c, t in columns.items() if c not in skip and c != "group_id"}
        props = {c: t for c, t in props.items() if not c.startswith("context_")}
        lines.append(f"{kind}:")
        lines.append("  traits:" if props else "  traits: {}")
        for column, column_type in props.items():
            value = getattr(column_type, "value", str(column_type))
            lines.append(f"    {_yaml_key(column)}: {_COLUMN_TYPES.get(value, 'string')}")
    return "\n".join(lines) + "\n"


def _yaml_key(name: str) -> str:
    dumped = yaml.safe_dump({name: None}, default_flow_style=True).strip()
    return dumped[1 : dumped.rindex(":")]
