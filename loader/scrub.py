"""The one scrubber every output path uses: API error bodies, destination failures,
run reports, anything printed or stored in `_sluice`.

A server rarely echoes a secret exactly as we hold it: a webhook may echo the bare token
of `Bearer X`, a Segment-like API the Basic auth header (base64 of `key:`), Stripe the
whole `Authorization: Bearer sk_...` header, a proxy the URL-encoded value. So each
secret is registered once and every form derived from it is replaced.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

MASK = "***"
# A derived form shorter than this would mask ordinary text; the secret itself is always
# masked, whatever its length.
_MIN_DERIVED = 4
_SCHEMES = ("bearer", "basic", "token", "apikey", "api-key", "key")


def _b64(raw: str) -> list[str]:
    """base64 of `raw`, padded and not (a truncated echo may lose the padding)."""
    text = base64.b64encode(raw.encode()).decode()
    return [text, text.rstrip("="), base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")]


class Scrubber:
    """Registered secrets -> text with each of their forms replaced by ***."""

    def __init__(self, *secrets: str) -> None:
        self._forms: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """A secret value, or an auth header value (`Bearer X`: X is a secret too)."""
        if not secret:
            return
        self._forms.add(secret)
        values = [secret]
        scheme, _, rest = secret.strip().partition(" ")
        if rest.strip() and scheme.lower() in _SCHEMES:
            token = rest.strip()
            values.append(token)
            if scheme.lower() == "basic":
                try:
                    values.append(base64.b64decode(token, validate=True).decode())
                except ValueError:
                    pass
        for value in values:
            self._derive(value)

    def add_basic(self, user: str, password: str) -> None:
        """HTTP Basic credentials: the header value is base64 of `user:password`."""
        self.add(password)
        self._derive(f"{user}:{password}")
        for form in _b64(f"{user}:{password}"):
            self._keep(form)

    def _derive(self, value: str) -> None:
        self._keep(value)
        for form in (
            quote(value, safe=""),
            quote_plus(value),
            json.dumps(value)[1:-1],
            json.dumps(value)[1:-1].replace("/", "\\/"),  # JSON encoders that escape /
            *_b64(value),
            *_b64(f"{value}:"),
            *_b64(f":{value}"),
        ):
            self._keep(form)

    def _keep(self, form: str) -> None:
        if len(form) >= _MIN_DERIVED:
            self._forms.add(form)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __call__(self, text: str) -> str:
        # Longest first: a form that contains another is masked whole.
        for form in sorted(self._forms, key=len, reverse=True):
            if form in text:
                text = text.replace(form, MASK)
        return text
