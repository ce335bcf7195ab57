"""profiles.yml: named warehouse targets, secrets as ${ENV_VAR} references; and the
machinery every hand-edited YAML file of a project shares.

Files are parsed first and `${VAR}` / `${VAR:-default}` are substituted into the parsed
string values afterwards, so a secret's characters (quotes, `#`, `: `, a leading `{` or
`*`, `null`) arrive as written and can never change the file's structure. A target is
resolved (its variables read, its fields validated) only when a command uses it, as dbt
does: one target with an unset variable does not break the others. Relative paths in a
target (a DuckDB file, a key file) are relative to the profiles file, not to the working
directory. Every error is one sentence naming the file, the line and the field, and
never echoes a secret.

Looked up via --profiles, $SLUICE_PROFILES, then ./profiles.yml.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)

from loader.config.errors import ConfigError
from loader.config.suggest import did_you_mean
from loader.config.targets import (
    PATH_FIELDS,
    REQUIRED_UNLESS_DSN,
    TARGET_TYPES,
    _check_dsn,
    target_model,
)

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def check_cron(value: str | None) -> str | None:
    """A pydantic validator for `schedule:` fields (5-field cron, UTC)."""
    if value is not None and len(value.split()) != 5:
        raise ValueError("schedule must be a 5-field cron expression, e.g. '0 * * * *'")
    return value


# --- parsing: values with their lines -------------------------------------------------


@dataclass
class Document:
    """A parsed YAML file: plain values (strings not yet interpolated) and the line of
    every key and list item, by its path."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        """The line of `loc`, else of its nearest parent written in the file."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def where(self, loc: Loc) -> str:
        line = self.line(loc)
        return f"{self.path}, line {line}" if line else self.path


_YAML_PROBLEMS = (
    ("found character '\\t'", "a tab indents this line; YAML indents with spaces"),
    ("mapping values are not allowed", "a ': ' inside a value; put the value in quotes"),
    ("could not find expected ':'", "expected 'key: value' here (check the indentation)"),
    ("did not find expected key", "expected 'key: value' here (check the indentation)"),
    ("found undefined alias", "an undefined *alias"),
    ("cannot start any token", "this value cannot start with that character; quote it"),
    ("found unexpected end of stream", "a quote or bracket is not closed"),
    ("found duplicate anchor", "an &anchor is defined twice"),
    ("expected ',' or ']'", "a [list] is not closed, or its items lack commas"),
    ("expected ',' or '}'", "a {mapping} is not closed, or its items lack commas"),
)


def parse_document(path: Path, text: str | None = None) -> Document:
    """Parse a YAML file into plain values with lines; errors are one sentence."""
    if text is None:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read ({type(exc).__name__})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        problem = str(exc.problem or exc.context or "")
        # "expected ..." is found at the next token; the construct it belongs to (a key,
        # a [list]) starts where the mistake is.
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark is not None and problem.startswith(("expected", "could not")):
            mark = exc.context_mark
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        said = next((ours for theirs, ours in _YAML_PROBLEMS if theirs in problem), problem)
        raise ConfigError(f"{where}: not valid YAML: {said}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    doc = Document(str(path), None)
    doc.data = None if root is None else _build(root, (), doc)
    return doc


_BOOL = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}


def _build(node: yaml.Node, loc: Loc, doc: Document) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                merged = [value] if isinstance(value, yaml.MappingNode) else value.value
                for part in merged:
                    for name, item in _build(part, loc, doc).items():
                        if name not in explicit:
                            out[name] = item
                continue
            if not isinstance(key, yaml.ScalarNode):
                raise ConfigError(f"{doc.where(loc)}: a key must be a plain name")
            name = key.value
            if name in explicit:
                raise ConfigError(
                    f"{doc.path}, line {key.start_mark.line + 1}: '{name}' is given twice "
                    f"(also on line {doc.lines[(*loc, name)]})"
                )
            explicit.add(name)
            doc.lines[(*loc, name)] = key.start_mark.line + 1
            out[name] = _build(value, (*loc, name), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            doc.lines[(*loc, index)] = item.start_mark.line + 1
            items.append(_build(item, (*loc, index), doc))
        return items
    return _scalar(node, loc, doc)


def _scalar(node: yaml.Node, loc: Loc, doc: Document) -> Any:
    tag, text = node.tag, node.value
    if tag == "tag:yaml.org,2002:str":
        return text
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        return _BOOL[text.lower()]
    if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        constructor = yaml.constructor.SafeConstructor()
        if tag.endswith("int"):
            return constructor.construct_yaml_int(node)
        return constructor.construct_yaml_float(node)
    if tag == "tag:yaml.org,2002:timestamp":
        return text  # validated by the field (a date like 2026-13-01 is named there)
    raise ConfigError(f"{doc.where(loc)}: the YAML tag {tag} is not supported here")


# --- ${VAR} substitution into parsed values -------------------------------------------


def references(value: Any) -> list[tuple[str, str | None]]:
    """(name, default) of every ${VAR} reference in a parsed value, nested ones too."""
    if isinstance(value, str):
        return [(m.group(1), m.group(2)) for m in _ENV.finditer(value)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in references(item)]
    return []


def substitute(value: Any, doc: Document, loc: Loc) -> Any:
    """The value with ${VAR} / ${VAR:-default} replaced in its strings (never in keys);
    an unset variable without a default names the file, line and field, not a value."""
    if isinstance(value, dict):
        return {k: substitute(v, doc, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, doc, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name, default)
        if found is None:
            raise ConfigError(
                f"{doc.where(loc)}: environment variable {name} is not set (field "
                f"'{_dotted(loc)}'); export it or give a default as ${{{name}:-value}}"
            )
        return found

    return _ENV.sub(one, value)


class DeferredSecret(SecretStr):
    """A secret field written with ${VAR}: its variables are read when the value is
    used, so a source nobody runs needs no environment (an unset one is named then)."""

    def __init__(self, written: str, doc: Document, loc: Loc) -> None:
        super().__init__("")
        self._written, self._doc, self._loc = written, doc, loc

    def get_secret_value(self) -> str:
        return substitute(self._written, self._doc, self._loc)

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __len__(self) -> int:
        return len(self.get_secret_value())

    def __hash__(self) -> int:
        return hash(self._written)


def defer_secrets(data: dict[str, Any], model: type[BaseModel], doc: Document, loc: Loc) -> None:
    """Wrap the model's secret fields that hold ${VAR} references as DeferredSecret."""
    for key, value in list(data.items()):
        info = _model_field(model, key)
        if info is not None and "SecretStr" in str(info.annotation) and references(value):
            if isinstance(value, str):
                data[key] = DeferredSecret(value, doc, (*loc, key))


def line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a pydantic error location in the YAML text."""
    node = yaml.compose(text)
    line = None
    for part in loc:
        if node is None or not isinstance(node, yaml.MappingNode):
            break
        for key, value in node.value:
            if key.value == str(part):
                line = key.start_mark.line + 1
                node = value
                break
        else:
            break
    return line


# --- validation with plain sentences --------------------------------------------------


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a user may write for a model (aliases where given)."""
    return [
        info.alias or name
        for name, info in model.model_fields.items()
        if not info.exclude and name != "model_config"
    ]


def _model_field(model: type[BaseModel], name: str | int) -> Any:
    for key, info in model.model_fields.items():
        if name in (key, info.alias):
            return info
    return None


def check_keys(
    data: Mapping[str, Any], model: type[BaseModel], doc: Document, loc: Loc, what: str
) -> None:
    """The first key the model does not know, as an error with the closest name."""
    known = field_names(model)
    allowed = set(known) | set(model.model_fields)
    for key in data:
        if key not in allowed:
            hint = did_you_mean(str(key), known) or f" (allowed: {', '.join(sorted(known))})"
            raise ConfigError(f"{doc.where((*loc, key))}: unknown field '{key}' in {what}{hint}")


def _shown(value: Any) -> str:
    if isinstance(value, (str, int, float, bool)) and len(str(value)) <= 60:
        return f", not {value!r}"
    return ""


def _secret_field(model: type[BaseModel], rel: Loc) -> bool:
    info = _model_field(model, rel[0]) if rel else None
    if info is not None and "SecretStr" in str(info.annotation):
        return True
    name = str(rel[0]) if rel else ""
    return any(word in name for word in ("password", "secret", "token", "key", "dsn"))


def _expected(err: Any) -> str | None:
    kind, ctx = err["type"], err.get("ctx") or {}
    simple = {
        "int_parsing": "a whole number",
        "int_type": "a whole number",
        "int_from_float": "a whole number",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "text",
        "dict_type": "a mapping (key: value lines)",
        "list_type": "a list",
        "date_parsing": "a date as YYYY-MM-DD",
        "date_from_datetime_parsing": "a date as YYYY-MM-DD",
        "date_from_datetime_inexact": "a date as YYYY-MM-DD",
        "date_type": "a date as YYYY-MM-DD",
    }
    if kind in simple:
        return simple[kind]
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{words} {ctx.get(key)}"
    return None


def describe(err: Any, model: type[BaseModel], doc: Document, base: Loc, what: str) -> str:
    """One pydantic error as the sentence a user reads (no pydantic wording)."""
    rel: Loc = tuple(err["loc"])
    full = (*base, *rel)
    where, dotted = doc.where(full), _dotted(full)
    kind = err["type"]
    if kind == "missing":
        info = _model_field(model, rel[0]) if len(rel) == 1 else None
        about = f" ({info.description})" if info is not None and info.description else ""
        return f"{where}: field '{dotted}' is required{about}"
    if kind == "extra_forbidden":
        return f"{where}: unknown field '{rel[-1]}' in {_dotted(full[:-1]) or what}"
    if kind in ("value_error", "assertion_error"):
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{where}: {what}: {msg}" if not rel else f"{where}: field '{dotted}': {msg}"
    expected = _expected(err)
    given = "" if _secret_field(model, rel) else _shown(err.get("input"))
    if expected is None:
        return f"{where}: field '{dotted}' has a value that is not allowed here{given}"
    detail = ""
    if kind.startswith("date") and (err.get("ctx") or {}).get("error"):
        detail = f" ({err['ctx']['error']})"
    return f"{where}: field '{dotted}' must be {expected}{given}{detail}"


def validate_model(
    model: type[M],
    data: Any,
    doc: Document,
    loc: Loc,
    what: str,
    ignore: frozenset[str] = frozenset(),
) -> M | None:
    """Validate one mapping of a file; the first problem raises ConfigError. Errors of
    the fields in `ignore` (values not resolved yet) are left out; then None is returned
    when they were the only ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{doc.where(loc)}: {what} must be a mapping (key: value lines)")
    check_keys(data, model, doc, loc, what)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            e for e in exc.errors() if not (ignore and (not e["loc"] or str(e["loc"][0]) in ignore))
        ]
        if not errors:
            return None
        errors.sort(key=lambda e: e["type"] != "extra_forbidden")
        raise ConfigError(describe(errors[0], model, doc, loc, what)) from None


# --- profiles.yml ---------------------------------------------------------------------


class Profiles:
    """The targets of one profiles.yml. The file's structure is checked when it is read;
    a target is resolved (variables read, fields validated) when a command asks for it."""

    def __init__(self, doc: Document, base: Path | None = None) -> None:
        self.doc = doc
        self.base = base  # relative paths in targets are relative to this folder
        data = doc.data
        if not isinstance(data, dict):
            raise ConfigError(f"{doc.path}: expected 'default_target:' and 'targets:'")
        known = ["default_target", "targets"]
        for key in data:
            if key not in known:
                hint = did_you_mean(str(key), known) or " (allowed: default_target, targets)"
                raise ConfigError(f"{doc.where((key,))}: unknown top-level field '{key}'{hint}")
        raw_targets = data.get("targets")
        if not isinstance(raw_targets, dict) or not raw_targets:
            raise ConfigError(
                f"{doc.where(('targets',))}: 'targets' must be a mapping of target names to "
                "their settings (see profiles.example.yml)"
            )
        for name, body in raw_targets.items():
            if not isinstance(body, dict):
                raise ConfigError(
                    f"{doc.where(('targets', name))}: target '{name}' must be a mapping "
                    "with a 'type' and its settings"
                )
        self._raw: dict[str, dict[str, Any]] = raw_targets
        default = data.get("default_target")
        if not isinstance(default, str) or not default:
            raise ConfigError(
                f"{doc.where(('default_target',))}: field 'default_target' is required "
                f"(the target used when --target is not given; one of {self._known()})"
            )
        if default not in raw_targets:
            raise ConfigError(
                f"{doc.where(('default_target',))}: default_target '{default}' is not a "
                f"target (targets: {self._known()}){did_you_mean(default, raw_targets)}"
            )
        self.default_target = default
        self._resolved: dict[str, Any] = {}
        self.targets = _Targets(self)

    @classmethod
    def model_validate(cls, data: Any, path: str = "profiles.yml") -> Profiles:
        """Profiles from values already parsed (tests, programs building a profile)."""
        return cls(Document(path, data))

    def _known(self) -> str:
        return ", ".join(sorted(self._raw)) or "none"

    def name(self, name: str | None) -> str:
        """The target a command means (default_target when None); unknown names fail."""
        chosen = name or self.default_target
        if chosen not in self._raw:
            raise ConfigError(
                f"unknown target '{chosen}' (targets in {self.doc.path}: {self._known()})"
                f"{did_you_mean(chosen, self._raw)}"
            )
        return chosen

    def kind(self, name: str) -> str:
        """The `type:` as written (no variable read, no validation)."""
        return str(self._raw[self.name(name)].get("type") or "")

    def target(self, name: str | None) -> tuple[str, Any]:
        chosen = self.name(name)
        if chosen not in self._resolved:
            raw = self._raw[chosen]
            self._model(chosen)  # a bad type is named before a variable is read
            data = substitute(raw, self.doc, ("targets", chosen))
            self._resolved[chosen] = self._validate(chosen, data)
        return chosen, self._resolved[chosen]

    def check(self, name: str) -> tuple[str | None, list[str]]:
        """(the target's config problem or None, variables it needs that are unset here),
        found without reading any variable's value: for a code location that must load
        while a target is broken and resolve secrets only at run time."""
        chosen = self.name(name)
        raw = self._raw[chosen]
        unset: list[str] = []
        pending: set[str] = set()
        for key, value in raw.items():
            refs = references(value)
            if refs:
                pending.add(str(key))
                unset += [n for n, default in refs if default is None and n not in os.environ]
        try:
            self._model(chosen)
            data = {k: v for k, v in raw.items() if str(k) not in pending}
            self._validate(chosen, data, frozenset(pending), keys=raw)
        except ConfigError as exc:
            return str(exc), unset
        return None, sorted(set(unset))

    def _model(self, name: str) -> type[BaseModel]:
        kind = self._raw[name].get("type")
        loc = ("targets", name, "type")
        if kind is None:
            raise ConfigError(
                f"{self.doc.where(loc)}: field '{_dotted(loc)}' is required (one of "
                f"{', '.join(TARGET_TYPES)})"
            )
        if kind not in TARGET_TYPES:
            raise ConfigError(
                f"{self.doc.where(loc)}: field '{_dotted(loc)}' must be one of "
                f"{', '.join(TARGET_TYPES)}, not {str(kind)!r}"
                f"{did_you_mean(str(kind), TARGET_TYPES)}"
            )
        return target_model(kind)

    def _validate(
        self,
        name: str,
        data: dict[str, Any],
        pending: frozenset[str] = frozenset(),
        keys: Mapping[str, Any] | None = None,
    ) -> Any:
        kind = str(data.get("type") or self._raw[name].get("type"))
        model = target_model(kind)
        loc: Loc = ("targets", name)
        what = f"target '{name}'"
        check_keys(keys if keys is not None else data, model, self.doc, loc, what)
        data = dict(data)
        for key in PATH_FIELDS.get(kind, ()):
            if key in data:
                data[key] = self._relative(data[key])
        spec = validate_model(model, data, self.doc, loc, what, pending)
        if kind in REQUIRED_UNLESS_DSN and isinstance(data.get("dsn"), str):
            try:  # every libpq target (Redshift's model keeps its dsn as written)
                _check_dsn(SecretStr(data["dsn"]))
            except ValueError as exc:
                field_loc = (*loc, "dsn")
                raise ConfigError(
                    f"{self.doc.where(field_loc)}: field '{_dotted(field_loc)}': {exc}"
                ) from None
        if data.get("dsn") is None and "dsn" not in pending:
            for key in REQUIRED_UNLESS_DSN.get(kind, ()):
                if data.get(key) in (None, "") and key not in pending:
                    field_loc = (*loc, key)
                    raise ConfigError(
                        f"{self.doc.where(field_loc)}: field '{_dotted(field_loc)}' is "
                        f"required (give {', '.join(REQUIRED_UNLESS_DSN[kind])}, or a dsn)"
                    )
        for key in PATH_FIELDS.get(kind, ()):
            if spec is not None and key not in data and getattr(spec, key, None):
                spec = spec.model_copy(update={key: self._relative(getattr(spec, key))})
        return spec

    def _relative(self, value: Any) -> Any:
        """A relative local path, made relative to the profiles file's folder."""
        if not isinstance(value, str) or not value or self.base is None:
            return value
        if value == ":memory:" or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", value):
            return value  # in-memory, md:, s3://...
        path = Path(value).expanduser()
        return value if path.is_absolute() else str((self.base / path).absolute())


class _Targets(Mapping[str, Any]):
    """name -> resolved target; iterating and `in` read no variable."""

    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    def __getitem__(self, name: str) -> Any:
        if name not in self._profiles._raw:
            raise KeyError(name)
        return self._profiles.target(name)[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles._raw)

    def __len__(self) -> int:
        return len(self._profiles._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._profiles._raw


def find_file(explicit: str | None, env_var: str, default: str, flag: str) -> Path:
    """The file named by the flag, else by the environment, else ./default; a name
    given explicitly must exist. A folder means the default file inside it."""
    from_env = os.environ.get(env_var)
    for candidate in (explicit, from_env, default):
        if candidate:
            path = Path(candidate)
            if path.is_dir():
                path = path / default
            if path.exists():
                return path
            if candidate is explicit or candidate == from_env:
                raise ConfigError(f"{default} file '{path.absolute()}' does not exist")
    raise ConfigError(f"no {default} found: pass {flag}, set {env_var}, or run `sluice init`")


def find_profiles(explicit: str | None) -> Path:
    return find_file(explicit, "SLUICE_PROFILES", "profiles.yml", "--profiles")


def load_profiles(path: Path) -> Profiles:
    return Profiles(parse_document(path), base=path.parent)
