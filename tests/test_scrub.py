"""The one scrubber: every form a server may echo a secret in is masked (pure)."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from loader.scrub import Scrubber

SECRET = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=40
)


def _forms(token: str) -> list[str]:
    return [
        token,
        f"Bearer {token}",
        f"Authorization: Bearer {token}",
        quote(token, safe=""),
        quote_plus(token),
        json.dumps(token)[1:-1],
        base64.b64encode(f"{token}:".encode()).decode(),
        base64.b64encode(f":{token}".encode()).decode(),
        base64.b64encode(f"{token}:".encode()).decode().rstrip("="),
    ]


@settings(max_examples=60, deadline=None)
@given(token=SECRET)
def test_every_form_of_a_bearer_token_is_masked(token: str) -> None:
    scrub = Scrubber(f"Bearer {token}")
    for form in _forms(token):
        out = scrub(f"echo <{form}> end")
        assert token not in out and form not in out, form
        assert out.startswith("echo <") and out.endswith("> end")


@settings(max_examples=40, deadline=None)
@given(user=SECRET, password=SECRET)
def test_basic_credentials_are_masked_as_sent(user: str, password: str) -> None:
    scrub = Scrubber()
    scrub.add_basic(user, password)
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    out = scrub(f"you sent Authorization: {header} and {password}")
    assert password not in out and header[6:].rstrip("=") not in out


def test_ordinary_text_is_left_alone() -> None:
    """A derived form under 4 characters would mask ordinary words; the value held is
    masked whatever its length."""
    scrub = Scrubber("Bearer abc", "", "xy")
    assert scrub("a cabbage; Bearer abc; xy") == "a cabbage; ***; ***"
    assert Scrubber()("nothing to hide") == "nothing to hide"
