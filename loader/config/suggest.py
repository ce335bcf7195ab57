"""Close-name suggestions for names users type by hand (config keys, targets, tables)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_names(name: str, known: Iterable[str], n: int = 1) -> list[str]:
    """The known names a typo most likely meant, best first (none when nothing is close)."""
    return difflib.get_close_matches(name, sorted(set(known)), n=n)


def did_you_mean(name: str, known: Iterable[str], n: int = 1) -> str:
    """'; did you mean 'x'?' (or 'x' or 'y'), or '' when nothing is close."""
    close = close_names(name, known, n)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
