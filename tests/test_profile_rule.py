"""Which profiles a batch's new rows alone may update (rules.profiles.extendable_keys):
any doubt sends the key to a rebuild from all its rows, which is always right."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loader.rules.profiles import extendable_keys

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
LATER = T0 + timedelta(hours=1)
EARLIER = T0 - timedelta(hours=1)


@pytest.mark.parametrize(
    ("first", "untimed", "rescued", "mark", "profile", "extendable"),
    [
        (LATER, 0, 0, T0, False, True),  # every new row follows what the profile has seen
        (EARLIER, 0, 0, T0, False, False),  # a late arrival: order must be worked out again
        (T0, 0, 0, T0, False, False),  # a tie with the mark is not "after"
        (LATER, 1, 0, T0, False, False),  # a new row without an event time
        (LATER, 0, 1, T0, False, False),  # a new row holding a rescued value
        (LATER, 0, 0, T0, True, False),  # the profile holds a rescued value
        (LATER, 0, 0, None, False, False),  # the key has no mark (no timed row yet)
        (LATER, 0, 0, "absent", False, False),  # no mark row at all
        (LATER, 0, 0, T0, "absent", False),  # no profile row yet
        (None, 0, 0, T0, False, False),  # no event time among the new rows
    ],
)
def test_new_rows_alone_update_a_profile_only_when_nothing_is_in_doubt(
    first: datetime | None,
    untimed: int,
    rescued: int,
    mark: datetime | str | None,
    profile: bool | str,
    extendable: bool,
) -> None:
    evidence = [("u1", first, LATER, untimed, rescued)]
    marks = {} if mark == "absent" else {"u1": mark}
    profiles = {} if profile == "absent" else {"u1": profile}
    assert extendable_keys(evidence, marks, profiles) == (["u1"] if extendable else [])


def test_each_key_is_judged_on_its_own() -> None:
    evidence = [("a", LATER, LATER, 0, 0), ("b", EARLIER, LATER, 0, 0), ("c", LATER, LATER, 0, 0)]
    marks = {"a": T0, "b": T0, "c": T0}
    assert extendable_keys(evidence, marks, {"a": False, "b": False, "c": False}) == ["a", "c"]
