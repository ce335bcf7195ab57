"""The naming function: Segment's cases, table-driven, and its properties, with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader.rules.naming import MAX_IDENTIFIER_BYTES, is_valid_identifier, latin_fold, snake_case
from loader.rules.normalize import FIXED_TABLES, event_table_name

CASES = [
    ("accountType", "account_type"),
    ("userAgent", "user_agent"),
    ("Order Completed", "order_completed"),
    ("HTTPServer", "http_server"),
    ("context.page.path", "context_page_path"),
    ("  a--b  ", "a_b"),
    ("3d", "_3d"),
    ("Already_snake", "already_snake"),
    ("from", "_from"),
    ("select", "_select"),
    ("order", "_order"),
    ("group", "_group"),
    ("user", "_user"),
    # Latin letters are folded to ASCII, not dropped (before: `caf_visited`, `gre`).
    ("Café Visited", "cafe_visited"),
    ("größe", "grosse"),
    ("grüße", "grusse"),
    ("prénom", "prenom"),
    ("Straße", "strasse"),
    ("Æble", "aeble"),
    ("Łódź", "lodz"),
    ("ﬁleName", "file_name"),
    ("Ｗｉｄｅ", "wide"),
    # Other scripts have no Latin form: the stable hash name of the raw name, as before.
    ("北京", "col_685e1518"),
    ("имя", "col_3c0453ec"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_segment_naming_cases(raw: str, expected: str) -> None:
    assert snake_case(raw) == expected


def test_long_names_are_cut_with_a_stable_distinct_tag() -> None:
    a = snake_case("x" * 80 + "alpha")
    b = snake_case("x" * 80 + "beta")
    assert a != b
    assert len(a) == len(b) == MAX_IDENTIFIER_BYTES
    assert snake_case("x" * 80 + "alpha") == a


def test_event_tables_never_shadow_segment_tables() -> None:
    assert event_table_name("Pages") == "_pages"
    assert event_table_name("users") == "_users"
    assert event_table_name("Order Completed") == "order_completed"


names = st.text(min_size=0, max_size=120)


@given(names)
def test_total_valid_and_bounded(raw: str) -> None:
    name = snake_case(raw)
    assert is_valid_identifier(name), name
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES


@given(names)
def test_idempotent(raw: str) -> None:
    once = snake_case(raw)
    assert snake_case(once) == once


def test_every_latin_letter_of_latin_1_and_extended_a_has_an_ascii_form() -> None:
    """Folding never drops a letter of the Western and Central European alphabets (so
    such a name never falls back to a hash name)."""
    letters = [c for c in map(chr, range(0xC0, 0x180)) if c.isalpha()]
    assert len(letters) > 150
    for letter in letters:
        folded = latin_fold(letter)
        assert folded.isascii() and folded.isalpha(), (letter, folded)
        assert not snake_case(letter + "x").startswith("col_")


@given(names)
def test_event_table_names_are_valid_and_never_fixed(raw: str) -> None:
    table = event_table_name(raw or "x")
    assert table not in FIXED_TABLES
    assert len(table.encode()) <= MAX_IDENTIFIER_BYTES
