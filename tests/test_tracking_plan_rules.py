"""The tracking-plan rule, pure and fast: the file's mistakes with their lines, and
message + plan -> violations, omitted keys, blocked."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.rules.tracking_plan import (
    GROUP,
    IDENTIFY,
    MISSING_REQUIRED,
    NOT_IN_ENUM,
    PATTERN_MISMATCH,
    UNPLANNED_EVENT,
    UNPLANNED_PROPERTY,
    WRONG_TYPE,
    PlanError,
    _Compiled,
    parse,
)

PLAN = """\
version: 1
violations: report
events:
  Order Completed:
    properties:
      order_id: {type: string, required: true}
      total: number
      quantity: {type: integer}
      currency: {type: string, enum: [USD, EUR]}
      coupon: {type: string, pattern: "^[A-Z]{4}$"}
      paid_at: timestamp
      gift: boolean
      items: array
      shipping: object
  "Product *":
    allow_unplanned: true
    properties:
      product_id: {type: string, required: true}
identify:
  traits:
    email: {type: string, pattern: "@", required: true}
group:
  traits:
    plan: {type: string, enum: [free, pro]}
"""


def _plan(action: str = "report") -> Any:
    return parse(PLAN, "tracking_plan.yml").with_action(action)


def _kinds(verdict: Any) -> set[tuple[str, str]]:
    return {(v.property, v.kind) for v in verdict.violations}


def test_a_conforming_event_has_no_verdict() -> None:
    plan = _plan("block")
    ok = {"order_id": "o1", "total": 3, "quantity": 2, "currency": "EUR", "coupon": "ABCD"}
    ok |= {"paid_at": "2026-11-01T10:00:00Z", "gift": False, "items": [1], "shipping": {}}
    assert plan.check("track", "Order Completed", ok) is None
    # 2.0 is an integer to JSON Schema; null is "not sent" for an optional property.
    assert plan.check("track", "Order Completed", {"order_id": "o", "quantity": 2.0}) is None
    assert plan.check("track", "Order Completed", {"order_id": "o", "total": None}) is None
    # Pages, screens and aliases are not in the plan's scope.
    assert plan.check("page", "", {"anything": 1}) is None


def test_each_kind_of_violation() -> None:
    plan = _plan()
    bad = {"total": "3", "quantity": True, "currency": "GBP", "coupon": "abcd", "extra": 1}
    bad |= {"paid_at": "yesterday"}
    verdict = plan.check("track", "Order Completed", bad)
    assert verdict is not None and not verdict.blocked and not verdict.omit
    assert _kinds(verdict) == {
        ("order_id", MISSING_REQUIRED),
        ("total", WRONG_TYPE),
        ("quantity", WRONG_TYPE),
        ("currency", NOT_IN_ENUM),
        ("coupon", PATTERN_MISMATCH),
        ("extra", UNPLANNED_PROPERTY),
        ("paid_at", WRONG_TYPE),
    }
    values = {v.property: v.value for v in verdict.violations}
    assert values["currency"] == "GBP" and values["extra"] == 1


def test_globs_unplanned_events_and_traits() -> None:
    plan = _plan()
    # A glob matches, and allow_unplanned lets other properties through.
    assert plan.check("track", "Product Viewed", {"product_id": "p", "x": 1}) is None
    missing = plan.check("track", "Product Viewed", {"x": 1})
    assert _kinds(missing) == {("product_id", MISSING_REQUIRED)}
    unplanned = plan.check("track", "Signed Up", {"a": 1})
    assert _kinds(unplanned) == {("", UNPLANNED_EVENT)}
    traits = plan.check("identify", IDENTIFY, {"email": "nobody"})
    assert _kinds(traits) == {("email", PATTERN_MISMATCH)}
    assert _kinds(plan.check("group", GROUP, {"plan": "gold"})) == {("plan", NOT_IN_ENUM)}


def test_omit_names_the_properties_to_take_out_and_block_blocks() -> None:
    bad = {"order_id": "o", "total": "3", "extra": 1}
    omit = _plan("omit").check("track", "Order Completed", bad)
    assert omit.omit == {"total", "extra"} and not omit.blocked
    # A missing required property cannot be omitted: it is reported.
    missing = _plan("omit").check("track", "Order Completed", {"total": 1})
    assert missing.omit == frozenset() and _kinds(missing) == {("order_id", MISSING_REQUIRED)}
    block = _plan("block").check("track", "Order Completed", bad)
    assert block.blocked and block.omit == frozenset()
    assert _plan("block").check("track", "Nope", {}).blocked


def test_the_plan_pickles_to_reader_processes_without_its_validators() -> None:
    plan = _plan("block")
    plan.check("track", "Order Completed", {"order_id": 1})
    copy = pickle.loads(pickle.dumps(plan))
    assert copy._compiled == {}
    assert copy.check("track", "Order Completed", {"order_id": 1}).blocked


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("violations: blok\n", 1, "violations must be one of report, omit, block"),
        ("events:\n  A:\n    propertes: {}\n", 3, "did you mean 'properties'"),
        ("events:\n  A:\n    properties:\n      x: {type: strin}\n", 4, "did you mean 'string'"),
        ("events:\n  A:\n    properties:\n      x: {requird: true}\n", 4, "'required'"),
        ("events:\n  A:\n    properties:\n      x: {pattern: '('}\n", 4, "not a valid regex"),
        ("events:\n  A:\n    properties:\n      x: {enum: []}\n", 4, "list of allowed values"),
        ("events:\n  A:\n    properties:\n      x: {required: maybe}\n", 4, "true or false"),
        ("identify:\n  properties: {}\n", 2, "did you mean 'traits'"),
        ("version: 2\n", 1, "version must be 1"),
        ("events: [a\n", 2, "not valid YAML"),
        ("evnts: {}\n", 1, "did you mean 'events'"),
    ],
)
def test_plan_mistakes_name_file_line_and_field(text: str, line: int, words: str) -> None:
    with pytest.raises(PlanError) as err:
        parse(text, "tracking_plan.yml")
    assert str(err.value).startswith(f"tracking_plan.yml, line {line}: ")
    assert words in str(err.value)


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["USD", "EUR", "ABCD", "2026-11-01T10:00:00Z", "o1"]),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)
_keys = st.sampled_from(
    [
        "order_id",
        "total",
        "quantity",
        "currency",
        "coupon",
        "paid_at",
        "gift",
        "items",
        "shipping",
        "x",
    ]
)


_SHARED = _Compiled(next(e for e in _plan().events if e.name == "Order Completed"))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_the_fast_precheck_never_passes_what_the_validator_refuses(props: dict) -> None:
    # One compiled event for every example, so its remembered verdicts are tested too.
    compiled = _SHARED
    if compiled.surely_valid(props):
        assert compiled.validator.is_valid(props)
        assert compiled.violations(props) == []
    # And whatever the validator refuses yields a violation, named by property.
    if not compiled.validator.is_valid(props):
        assert compiled.violations(props)
    else:
        assert compiled.violations(props) == []


def test_a_null_is_no_violation_of_an_enum() -> None:
    """Found by the precheck test above: a null currency (enum USD/EUR) passed the fast
    check but not JSON Schema's enum; a null is no value for either."""
    props = {"currency": None, "order_id": None}
    assert _SHARED.validator.is_valid(props)
    assert _SHARED.violations(props) == []
